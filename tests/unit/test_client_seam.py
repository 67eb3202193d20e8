"""The core (``volplane/``) is the only place that builds NATS, Redis and OpenTelemetry
clients: services, the launcher, the CLI and the benchmarks get theirs from
``volplane.clients`` / ``volplane.telemetry``, so connection settings, retries and
redaction are decided once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_CORE = ("services", "devstack", "access", "volctl", "bench")
# Callables that make a client: nats.connect, redis's Redis(...) / from_url(...), OTel providers and exporters.
BUILDERS = {"connect", "Redis", "StrictRedis", "from_url", "TracerProvider", "MeterProvider", "OTLPSpanExporter"}


def _builder_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in BUILDERS:
            continue
        # ``x.connect(...)`` is a client builder only on the nats module; sockets connect too.
        if name == "connect" and not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "nats"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_no_client_is_built_outside_the_core() -> None:
    files = [p for top in OUTSIDE_THE_CORE if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*.py")]
    assert files, "no sources found"
    assert [hit for p in files for hit in _builder_calls(p)] == []
