"""How a tool on this machine finds the stack ``make run`` started: ``run/stack.json``.

The launcher (``devstack.launcher``) hands each process it starts its NATS and Redis
URLs. A tool started by hand beside it — ``make rebuild``, a bench, a script — is not
one of them, so the launcher also writes what it handed out to ``$VOLPLANE_RUN_DIR/stack.json``
(mode 0600: the URLs carry the admin credentials of its own servers) once everything is
healthy, and removes it when it stops. Such a tool looks there when ``NATS_URL`` /
``REDIS_URL`` are unset, as volctl finds ``run/api.sock``:

    publish(run_dir, RunningStack(nats_url=..., redis_url=..., pid=os.getpid()))   # the launcher
    env = with_running_stack(os.environ)   # NATS_URL / REDIS_URL filled in; NoStack says what to do
    withdraw(run_dir)                      # the launcher, stopping

A file left behind by a launcher that was killed names a process that is gone, and
counts as no stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["STACK_FILE", "NoStack", "RunningStack", "find", "publish", "with_running_stack", "withdraw"]

STACK_FILE = "stack.json"


class NoStack(Exception):
    """No running stack to be found, and no ``NATS_URL`` / ``REDIS_URL`` either; the
    message is one line saying what to do."""


@dataclass(frozen=True)
class RunningStack:
    nats_url: str  # with the admin user's credentials for the launcher's own nats-server
    redis_url: str
    pid: int  # the launcher's: a file whose process is gone is stale
    csi_endpoint: str = ""
    api_endpoint: str = ""
    metrics: dict[str, str] = field(default_factory=dict)  # process name → host:port of /metrics
    # VOLPLANE_TLS_CA / _CERT / _KEY of a client of its servers (empty: they speak plaintext).
    tls: dict[str, str] = field(default_factory=dict)


def _run_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("VOLPLANE_RUN_DIR") or "run").absolute()


def publish(run_dir: Path, stack: RunningStack) -> Path:
    """Write ``run_dir/stack.json`` (0600) in one step: a reader sees all of it or none."""
    path = run_dir / STACK_FILE
    tmp = path.with_name(f".{STACK_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(stack), f, indent=2)
    os.replace(tmp, path)
    return path


def withdraw(run_dir: Path, pid: int | None = None) -> None:
    """Remove ``run_dir/stack.json`` if it is this process's (``pid``, default ours)."""
    found = _read(run_dir / STACK_FILE)
    if found is not None and found.pid == (os.getpid() if pid is None else pid):
        (run_dir / STACK_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive all the same
        return True
    return True


def _read(path: Path) -> RunningStack | None:
    try:
        data = json.loads(path.read_text())
        return RunningStack(
            nats_url=str(data["nats_url"]),
            redis_url=str(data["redis_url"]),
            pid=int(data["pid"]),
            csi_endpoint=str(data.get("csi_endpoint", "")),
            api_endpoint=str(data.get("api_endpoint", "")),
            metrics={str(k): str(v) for k, v in dict(data.get("metrics", {})).items()},
            tls={str(k): str(v) for k, v in dict(data.get("tls", {})).items()},
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # half a file from an older launcher, or edited by hand
        return None


def find(run_dir: Path) -> RunningStack | None:
    """The stack whose launcher is running with ``run_dir``, or None."""
    stack = _read(run_dir / STACK_FILE)
    return stack if stack is not None and _alive(stack.pid) else None


def with_running_stack(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``NATS_URL`` / ``REDIS_URL`` taken from the running stack where unset.

    Both set: ``env`` as it is (servers of your own). Otherwise the stack of
    ``$VOLPLANE_RUN_DIR`` (default ``./run``) fills in what is missing, or ``NoStack`` —
    and, when its NATS URL is taken, the TLS files its servers want of a client.
    """
    out = dict(env)
    if out.get("NATS_URL") and out.get("REDIS_URL"):
        return out
    run_dir = _run_dir(out)
    stack = find(run_dir)
    if stack is None:
        raise NoStack(
            f"no running volplane stack: {run_dir / STACK_FILE} is missing or stale — start `make run` (or `volplane run`) "
            "in another terminal, from the same directory, and try again; or set NATS_URL and REDIS_URL to servers of your own"
        )
    if not out.get("NATS_URL"):
        out.update(stack.tls)  # its servers' CA and client certificate go with its URLs
    for key, value in (("NATS_URL", stack.nats_url), ("REDIS_URL", stack.redis_url)):
        if not out.get(key):
            out[key] = value
    return out
