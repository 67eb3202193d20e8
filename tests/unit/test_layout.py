"""The layout's rules, read from the source (docs/architecture.md, "Packages").

- the core (``volplane/``) imports no service, CLI or dev tool;
- a service's ``domain/`` does no I/O: it imports nothing from ``adapters/``, ``csi/`` or
  ``controllers/``, nor ``redis`` or ``nats``;
- no module under ``services/`` imports ``redis``: read models offer typed queries;
- a ``# type: ignore`` names its reason on the same line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("volplane", "services", "volctl", "devstack", "access")
GENERATED = ROOT / "volplane" / "csi"


def sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if GENERATED not in path.parents:
                yield path


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_the_core_imports_no_service_cli_or_dev_tool() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("volplane")
        for name in imports(path)
        if name.split(".")[0] in ("services", "volctl", "devstack", "access")
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("service", ["provisioner", "attacher", "nodeagent"])
def test_a_domain_imports_no_adapter_backend_loop_or_client(service: str) -> None:
    domain = ROOT / "services" / service / "domain"
    forbidden = re.compile(rf"^(services\.{service}\.(adapters|csi|controllers)|redis|nats)(\.|$)")
    offenders = {f"{path.relative_to(ROOT)} imports {name}" for path in sorted(domain.rglob("*.py")) for name in imports(path) if forbidden.match(name)}
    assert not offenders, sorted(offenders)


def test_no_service_module_talks_to_redis_itself() -> None:
    offenders = {f"{path.relative_to(ROOT)} imports {name}" for path in sources("services") for name in imports(path) if name.split(".")[0] == "redis"}
    assert not offenders, sorted(offenders)


def test_every_type_ignore_names_its_reason() -> None:
    bare = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?\s*$")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in [*sources(*PACKAGES), *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert not offenders, offenders
