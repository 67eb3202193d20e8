# volplane — `make run` starts the whole system, `make test` runs the tests.
# Everything lives in .venv, created here from pyproject.toml; nothing is installed globally.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GEN    := volplane/csi
STUBS  := $(GEN)/csi_pb2.py $(GEN)/csi_pb2_grpc.py $(GEN)/resources_pb2.py $(GEN)/resources_pb2_grpc.py

.PHONY: all install proto run test lint unit integration bench bench-controlplane chaos rebuild clean distclean

all: install proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# Python stubs for proto/*.proto (CSI and the resource API); generated, never edited by hand.
$(STUBS) &: proto/csi.proto proto/resources.proto $(STAMP)
	mkdir -p $(GEN)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) proto/csi.proto proto/resources.proto
	sed -i -E 's/^import (csi|resources)_pb2 as /from . import \1_pb2 as /' $(GEN)/csi_pb2_grpc.py $(GEN)/resources_pb2_grpc.py
	touch $(GEN)/__init__.py

proto: $(STUBS)

# make run NODES=3: one nodeagent and one node-plugin endpoint per node (docs/architecture.md).
NODES ?= 1
run: install proto
	NODES=$(NODES) $(BIN)/python -m devstack.launcher

test: install proto
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The gates: ruff over the tree, mypy (strict on the core, volplane/; default elsewhere).
lint: install proto
	$(BIN)/ruff check .
	$(BIN)/python -m mypy volplane services volctl devstack access

unit: install proto
	$(BIN)/python -m pytest -q tests/unit

integration: install proto
	$(BIN)/python -m pytest -q tests/integration

bench: install proto
	$(BIN)/python -m bench.csi_bench $(BENCH_ARGS)

# N claims + N pods through the standalone control plane until every volume is mounted (root).
bench-controlplane: install proto
	$(BIN)/python -m bench.controlplane_bench $(BENCH_ARGS)

# kill -9 at randomized points of every step (CSI calls, then the control plane's loops), per
# victim (the step's service, apigw, nats-server, redis-server); root. CHAOS_ARGS="--suite cp --trials 1"
chaos: install proto
	$(BIN)/python -m tests.chaos.runner $(CHAOS_ARGS)

# Drop every projection in Redis and replay the event log (services may keep running).
rebuild: install proto
	$(BIN)/python -m services.rebuild

clean:
	rm -rf $(GEN) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Hypothesis fuzzing of every CSI RPC against a real stack (root); prints (RPC, status) → count.
.PHONY: fuzz
fuzz: install proto
	VOLPLANE_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/fuzz
