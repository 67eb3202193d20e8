"""The CSI and resource-API stubs (``volplane/csi``), generated from ``proto/*.proto`` when
the package is built — the one place that knows how.

    python build_hooks/protostubs.py                 # make proto: regenerate volplane/csi in place
    pip install .  /  pip wheel .                    # setuptools runs BuildPy (pyproject.toml's cmdclass)

The stubs are never committed: setuptools calls ``BuildPy`` instead of its own ``build_py``,
which writes them into the wheel's build directory (into the source tree for an editable
install, where the tree is what gets imported). They are written with the ``grpcio-tools``
of the build environment (``[build-system] requires`` pins it), whose gencode checks the
runtime at import: ``protobuf`` and ``grpcio`` in ``[project] dependencies`` must be at
least the versions it writes (tests/integration/test_packaging.py checks that they are).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from setuptools.command.build_py import build_py

__all__ = ["PACKAGE", "BuildPy", "generate", "outputs"]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = Path("volplane", "csi")  # where the stubs live, relative to the root and to build_lib

_INIT = "# Generated from proto/*.proto by build_hooks/protostubs.py; never edited by hand.\n"


def protos(proto_dir: Path = PROTO_DIR) -> list[Path]:
    found = sorted(proto_dir.glob("*.proto"))
    if not found:
        raise FileNotFoundError(f"no .proto files in {proto_dir}: the stubs cannot be generated")
    return found


def outputs(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """The files ``generate`` writes, relative to its output directory."""
    names = ["__init__.py"]
    for proto in protos(proto_dir):
        names += [f"{proto.stem}_pb2.py", f"{proto.stem}_pb2.pyi", f"{proto.stem}_pb2_grpc.py"]
    return [Path(n) for n in names]


def _package_relative(text: str, stems: list[str]) -> str:
    # protoc writes `import csi_pb2 as csi__pb2`, an import that only works with the output
    # directory on sys.path; inside the package it must be relative (the Makefile's old sed).
    pattern = re.compile(rf"^import ({'|'.join(map(re.escape, stems))})_pb2 as ", re.MULTILINE)
    return pattern.sub(r"from . import \1_pb2 as ", text)


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Write the stubs of every ``proto_dir/*.proto`` into ``out_dir``; return their paths.

    Each file is written beside its destination and renamed over it, so a process that
    imports the stubs meanwhile (a test of the dev tree) sees the old file or the new one.
    """
    from grpc_tools import protoc  # a build requirement, not a runtime one

    sources = protos(proto_dir)
    stems = [p.stem for p in sources]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".protoc-") as tmp:
        include = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
        argv = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, sources)]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(map(str, sources))}")
        Path(tmp, "__init__.py").write_text(_INIT)
        written = []
        for name in outputs(proto_dir):
            staged = Path(tmp, name)
            if name.name.endswith("_grpc.py"):
                staged.write_text(_package_relative(staged.read_text(), stems))
            os.replace(staged, out_dir / name)
            written.append(out_dir / name)
    return written


class BuildPy(build_py):
    """setuptools' ``build_py``, then the stubs: into ``build_lib`` for a wheel, in place
    for an editable install (whose import hook maps ``volplane`` to the source tree)."""

    def run(self) -> None:
        super().run()
        generate(self._stub_dir())

    def _stub_dir(self) -> Path:
        return ROOT / PACKAGE if self.editable_mode else Path(self.build_lib) / PACKAGE

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        stubs = [] if self.editable_mode else [str(self._stub_dir() / name) for name in outputs()]
        return sorted({*super().get_outputs(include_bytecode), *stubs})


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else ROOT / PACKAGE
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
