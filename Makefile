# volplane — `make run` starts the whole system, `make test` runs the tests.
# Everything lives in .venv, created here from pyproject.toml; nothing is installed globally.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GEN    := volplane/csi
STUBS  := $(GEN)/csi_pb2.py $(GEN)/csi_pb2_grpc.py $(GEN)/resources_pb2.py $(GEN)/resources_pb2_grpc.py

.PHONY: all install proto run test lint unit integration bench bench-csi bench-controlplane bench-qos bench-restart chaos rebuild clean distclean

all: install proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $@

install: $(STAMP)

# Python stubs for proto/*.proto (CSI and the resource API); generated, never edited by hand.
# The editable install writes them too: both run build_hooks/protostubs.py, as a wheel's build does.
$(STUBS) &: $(wildcard proto/*.proto) build_hooks/protostubs.py $(STAMP)
	$(BIN)/python build_hooks/protostubs.py $(GEN) >/dev/null

proto: $(STUBS)

# make run NODES=3: every service of services/catalog.py, the per-node ones (nodeagent, apigw
# as node plugin) once per node (docs/architecture.md). Ctrl-C stops them in reverse order.
# make run HOSTS=3 (root): three machines simulated on this one, each a network and mount
# namespace with its own nats-server cluster member, node agent and node plugin (devstack/hosts.py);
# Ctrl-C removes every namespace, link, mount and loop device it made.
NODES ?= 1
HOSTS ?=
run: install proto
	NODES=$(NODES) HOSTS=$(HOSTS) $(BIN)/python -m devstack.launcher

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
	$(BIN)/python -m bench.all $(BENCH_ARGS)

# The CSI bench alone (controller pairs, node cycles, snapshots), as `make bench` ran it before.
bench-csi: install proto
	$(BIN)/python -m bench.csi_bench $(BENCH_ARGS)

# A volume's I/O limit: measured IOPS at writeIOPS=N, after ControllerModifyVolume to 2N, and unlimited (root).
bench-qos: install proto
	$(BIN)/python -m bench.qos_bench $(BENCH_ARGS)

# N claims + N pods through the standalone control plane until every volume is mounted (root).
bench-controlplane: install proto
	$(BIN)/python -m bench.controlplane_bench $(BENCH_ARGS)

# Each service's restart until healthy, on an empty log and on one with 1,000,000 object events.
bench-restart: install proto
	$(BIN)/python -m bench.restart_bench $(BENCH_ARGS)

# Memory under a steady load: CreateVolume+DeleteVolume pairs and claims+pods for 30 minutes,
# every process's RSS sampled; prints first/last/max and the slope. BENCH_ARGS="--minutes 5"
.PHONY: bench-soak
bench-soak: install proto
	$(BIN)/python -m bench.soak_bench $(BENCH_ARGS)

# kill -9 at randomized points of every step (CSI calls, then the control plane's loops), per
# victim (the step's service, apigw, nats-server, redis-server); root. CHAOS_ARGS="--suite cp --trials 1"
chaos: install proto
	$(BIN)/python -m tests.chaos.runner $(CHAOS_ARGS)

# Drop every projection in Redis and replay the event log (services may keep running).
rebuild: install proto
	$(BIN)/python -m services.rebuild

clean:
	rm -rf $(GEN) .pytest_cache build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Hypothesis fuzzing of every CSI RPC against a real stack (root); prints (RPC, status) → count.
.PHONY: fuzz
fuzz: install proto
	VOLPLANE_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/fuzz

# The container image (Dockerfile), with podman or else docker. BASE_IMAGE overrides the base
# (python:3.11-slim); CA_CERTIFICATES, a PEM bundle the build's pip and apt trust (an HTTPS proxy
# that re-signs traffic), goes in as a build secret: it never lands in a layer.
ENGINE          ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || (docker info >/dev/null 2>&1 && echo docker))
IMAGE           ?= volplane:0.1.0
BASE_IMAGE      ?=
CA_CERTIFICATES ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
comma           := ,
.PHONY: image e2e
image:
	@test -n "$(ENGINE)" || { echo "make image: needs podman, or docker with a running daemon" >&2; exit 1; }
	$(ENGINE) build -t $(IMAGE) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(if $(CA_CERTIFICATES),--secret id=ca-certificates$(comma)src=$(CA_CERTIFICATES)) .

# The image built and the compose stack run for real (podman, installed from Debian if missing; root):
# the one-server stack, then the three-member NATS cluster override with one member killed.
e2e: install proto
	VOLPLANE_E2E=1 $(BIN)/python -m pytest -q -s tests/deploy/test_image_compose.py tests/deploy/test_compose_cluster_e2e.py $(PYTEST_ARGS)
