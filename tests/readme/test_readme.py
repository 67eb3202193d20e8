"""Every command the README shows, run as a reader would type it (issue 13, item 10).

The README's shell blocks (```sh / ```bash, indented ones too) and its Python example are
read in order. Each command is either run — in a copy of the repository, beside a real
``make run`` started there, with ``.venv/bin`` first on PATH as after ``source
.venv/bin/activate`` and none of the test session's NATS_URL / REDIS_URL / VOLPLANE_*
variables — or listed in ``NOT_RUN`` with the reason. A command that is neither fails
``test_every_readme_command_is_run_or_listed``, so a new README command gets run or
explained; an entry of ``NOT_RUN`` the README no longer shows fails it too.

    .venv/bin/python -m pytest -q -s tests/readme     # -s: the list of what ran and what did not
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import loops_backing, mounts_under, needs_root

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Commands the README shows that this test does not run, as the README spells them
# (without their trailing comment), each with the reason.
NOT_RUN: dict[str, str] = {
    # Long, or a suite of their own (the machine here has two cores).
    "make test": "the whole suite, this test included (long; mount tests need root)",
    "make bench": "long: benchmarks over 10,000 volumes",
    "make bench-controlplane": "long: 100 and 1000 claims and pods through the control plane",
    "make bench-restart": "long: restarts over a log of 1,000,000 events",
    "make bench-soak": "long: 30 minutes at a steady rate",
    "make chaos": "long: kill -9 at random points of every step, per process",
    "make fuzz": "long: ~35,000 generated requests",
    "make unit": "the unit tests, which pytest runs on their own (make test, .ci/run)",
    # Packaging: tests/integration/test_packaging.py builds the wheel, installs it into a fresh venv, runs its commands.
    "pip install '.[embedded]'": "installs into the reader's environment; tests/integration/test_packaging.py installs the wheel into a fresh venv",
    "volplane run": "the launcher make run starts, which this test runs",
    # Docker Engine and a Kubernetes cluster are not here.
    "deploy/compose/init-env.sh": "writes deploy/compose/.env for the compose stack; make e2e (tests/deploy/test_image_compose.py) runs it",
    "make image": "builds the container image (a minute or more); make e2e (tests/deploy/test_image_compose.py) runs it with podman",
    "docker compose -f deploy/compose/docker-compose.yaml up --wait": (
        "needs Docker Engine with the compose plugin; make e2e (tests/deploy/test_image_compose.py) runs this compose file with podman-compose"
    ),
    "docker build -t volplane:0.1.0 .": "needs Docker Engine; make image / make e2e build the same Dockerfile with podman",
    "kind load docker-image volplane:0.1.0": "needs a kind cluster",
    "minikube image load volplane:0.1.0": "needs a minikube cluster",
    "docker save volplane:0.1.0 | sudo k3s ctr images import -": "needs Docker Engine and a k3s node",
    "kubectl apply -k 'https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=v8.6.0'": "needs a Kubernetes cluster (and GitHub)",
    "kubectl -n kube-system apply -k 'https://github.com/kubernetes-csi/external-snapshotter/deploy/kubernetes/snapshot-controller?ref=v8.6.0'": (
        "needs a Kubernetes cluster (and GitHub)"
    ),
    "kubectl apply -k deploy/kubernetes": "needs a Kubernetes cluster; tests/deploy render it and start each of its containers locally",
    "kubectl -n volplane rollout status deployment/volplane-controller --timeout=5m": "needs a Kubernetes cluster",
    "kubectl -n volplane rollout status daemonset/volplane-node --timeout=5m": "needs a Kubernetes cluster",
    "kubectl apply -f deploy/kubernetes/examples/volume.yaml": "needs a Kubernetes cluster",
    "kubectl -n volplane-demo wait --for=condition=Ready pod/volplane-demo --timeout=5m": "needs a Kubernetes cluster",
    "kubectl -n volplane-demo exec volplane-demo -- cat /data/hello": "needs a Kubernetes cluster",
    "kubectl delete -f deploy/kubernetes/examples/volume.yaml": "needs a Kubernetes cluster",
}

# What a command run here is: its first word (make: its target) decides.
RUNNABLE = ("volctl", "ls", "python", "python3", "curl", "grpcurl", "csc")
MAKE_TARGETS_RUN = ("run", "rebuild")

# Beyond exit status 0 and no traceback: text each command's output must hold.
EXPECT: dict[str, str] = {
    "make rebuild": "replayed",
    "volctl apply -f examples/seed/": "persistentvolumeclaim/nfs created",
    "volctl get pv,pvc": "Bound",
    "volctl wait pvc/nfs --for=phase=Bound --timeout=60s": "condition met",
    "volctl describe pvc nfs": "Timeline",
    "volctl history pvc/nfs": "ObjectCreated",
    "volctl delete pod test-nfs": "deleted",
    "volctl wait pod/app --for=condition=VolumesReady --timeout=60s": "condition met",
    "ls run/kubelet/*/pods/*/volumes/kubernetes.io~csi/": "pvc-",
}

# make's own status after Ctrl-C: it re-raises SIGINT once its child (the launcher) is done.
STOPPED = (0, -signal.SIGINT)
STARTUP_TIMEOUT = 180.0  # make run: install and proto are no-ops once made; then a handful of processes
COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Command:
    text: str  # as typed, continuation lines joined
    key: str  # without its trailing comment: what NOT_RUN and EXPECT name
    lang: str  # "sh" or "python"
    line: int  # where it starts in the README

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.key.splitlines()[0]}"


_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_COMMENT = re.compile(r"\s+#(\s.*)?$")  # a trailing "  # what it does"


def readme_commands(text: str) -> list[Command]:
    """Every command of the README's sh/bash/python blocks, in order."""
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i + 1
        i += 1
        body: list[tuple[int, str]] = []
        while i < len(lines) and not _FENCE.match(lines[i]):
            body.append((i + 1, lines[i][indent:] if not lines[i][:indent].strip() else lines[i].lstrip()))
            i += 1
        i += 1  # the closing fence
        if lang == "python":
            code = "\n".join(line for _, line in body) + "\n"
            commands.append(Command(code, code, "python", start + 1))
        elif lang in ("sh", "bash", "shell", "console"):
            pending: list[str] = []
            first = 0
            for number, line in body:
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                first = first or number
                pending.append(line)
                if line.rstrip().endswith("\\"):
                    continue
                typed = "\n".join(pending)
                commands.append(Command(typed, _COMMENT.sub("", " ".join(p.rstrip().rstrip("\\").strip() for p in pending)), "sh", first))
                pending, first = [], 0
    return commands


def classify(command: Command) -> str | None:
    """"stack" (a make run), "run", "not run", or None: neither run nor listed."""
    if command.lang == "python":
        return "run"
    if command.key in NOT_RUN:
        return "not run"
    words = command.key.split()
    if words[:2] == ["make", "run"]:
        return "stack"
    if words[0] == "make":
        return "run" if len(words) == 2 and words[1] in MAKE_TARGETS_RUN else None
    return "run" if words[0] in RUNNABLE else None


def test_every_readme_command_is_run_or_listed() -> None:
    commands = readme_commands(README.read_text())
    assert any(c.key == "make run" for c in commands), "the README shows no `make run`"
    unlisted = [str(c) for c in commands if classify(c) is None]
    assert not unlisted, f"README commands neither run by this test nor listed in NOT_RUN with a reason: {unlisted}"
    stale = sorted(set(NOT_RUN) - {c.key for c in commands})
    assert not stale, f"NOT_RUN names commands the README no longer shows: {stale}"


class MakeRun:
    """``make run [ARGS]`` in the foreground of its own terminal-less session; ``stop`` is
    the reader's Ctrl-C (SIGINT to the foreground process group: make and the launcher)."""

    def __init__(self, cwd: Path, env: dict[str, str], argv: list[str]) -> None:
        self.argv = argv
        self.output: list[str] = []
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_up(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "Press Ctrl-C to stop." not in self.text:
            assert self.proc.poll() is None, f"{' '.join(self.argv)} exited with {self.proc.returncode}:\n{self.text}"
            assert time.monotonic() < deadline, f"{' '.join(self.argv)} not up after {timeout:.0f}s:\n{self.text}"
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """The repository as a reader has it, in a directory of its own (its own run/): the
    sources linked, deploy/ copied (the README's generate.py writes into it). The shared
    .venv is brought up to date first, from the repository itself, so that no make in the
    copy reinstalls it from there."""
    made = subprocess.run(["make", "install", "proto"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    copy = tmp_path / "volplane"
    copy.mkdir()
    for entry in ROOT.iterdir():
        if entry.name in ("run", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"):
            continue
        if entry.name == "deploy":
            shutil.copytree(entry, copy / entry.name, symlinks=True)
        else:
            (copy / entry.name).symlink_to(entry)
    yield copy
    # What a failure may leave: mounts and loop devices under the copy (a volume mid-life).
    for line in reversed(mounts_under(copy)):
        subprocess.run(["umount", "-l", line.split(" ")[4]], capture_output=True)
    for line in loops_backing(copy):
        subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)


def reader_env(copy: Path) -> dict[str, str]:
    """A shell after ``source .venv/bin/activate``, with nothing of this test session's stack."""
    # A reader's shell: none of our settings, and not inside a make (CI runs this under
    # `make test`, whose MAKELEVEL would turn a reader's "make:" lines into "make[1]:").
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("VOLPLANE_", "OTEL_", "PYTEST_")) or k in ("NATS_URL", "REDIS_URL", "PYTHONPATH", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"))}
    env["VIRTUAL_ENV"] = str(copy / ".venv")
    env["PATH"] = f"{copy / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def run(command: Command, copy: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if command.lang == "python":
        argv, stdin = ["python", "-"], command.text  # pasted into the venv's python in the repository
    else:
        argv, stdin = ["bash", "-e", "-o", "pipefail", "-c", command.text], ""
    return subprocess.run(argv, cwd=copy, env=env, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


@needs_root
@pytest.mark.timeout(900)
def test_every_readme_command_works_as_typed_beside_make_run(checkout: Path) -> None:
    copy, env = checkout, reader_env(checkout)
    commands = readme_commands(README.read_text())
    assert all(classify(c) is not None for c in commands), "see test_every_readme_command_is_run_or_listed"
    ran: list[str] = []
    not_run: list[str] = []
    stack: MakeRun | None = None
    code = -1
    started = time.monotonic()
    try:
        for command in commands:
            kind = classify(command)
            if kind == "not run":
                not_run.append(f"{command}  — not run here: {NOT_RUN[command.key]}")
                continue
            if kind == "stack":
                if stack is not None:  # a second make run (NODES=3): Ctrl-C the first, as a reader must
                    assert stack.stop() in STOPPED and "volplane stopped" in stack.text, stack.text
                stack = MakeRun(copy, env, command.key.split())
                stack.wait_up()
                for promised in ("CSI endpoint", "node id", "resource API", "/metrics"):
                    assert promised in stack.text, f"{command}: `{promised}` not printed:\n{stack.text}"
                for arg in command.key.split()[2:]:
                    if arg.startswith("NODES="):
                        last = int(arg.partition("=")[2])
                        assert f"node node-{last}:" in stack.text, stack.text
                assert (copy / "run" / "stack.json").stat().st_mode & 0o777 == 0o600
                ran.append(f"{command}  ({stack.text.count(chr(10))} lines of output, up)")
                continue
            assert stack is not None, f"{command}: shown before any `make run`"
            t0 = time.monotonic()
            out = run(command, copy, env)
            said = out.stdout + out.stderr
            assert out.returncode == 0, f"{command}: exit status {out.returncode}\n{said}"
            assert "Traceback" not in said, f"{command}:\n{said}"
            if command.key in EXPECT:
                assert EXPECT[command.key] in said, f"{command}: `{EXPECT[command.key]}` not in its output:\n{said}"
            ran.append(f"{command}  ({time.monotonic() - t0:.1f}s)")
        assert stack is not None
        # Everything the README made was also unmade: no mount or loop device of ours is left.
        deadline = time.monotonic() + 30
        while mounts_under(copy / "run") or loops_backing(copy / "run"):
            assert time.monotonic() < deadline, f"left behind: {mounts_under(copy / 'run')} {loops_backing(copy / 'run')}"
            time.sleep(0.5)
    finally:
        if stack is not None:
            code = stack.stop()
    assert code in STOPPED and "volplane stopped" in stack.text, stack.text
    assert not (copy / "run" / "stack.json").exists(), "make run left run/stack.json behind"

    # Without a running stack, the tools say what to do in one line (no traceback).
    out = subprocess.run(["make", "rebuild"], cwd=copy, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    lines = [line for line in out.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1 and "no running volplane stack" in lines[0] and "make run" in lines[0], out.stderr

    print(f"\nREADME commands run beside make run ({time.monotonic() - started:.0f}s):", *ran, "listed, not run:", *not_run, sep="\n  ", file=sys.stderr)
