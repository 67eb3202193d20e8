"""Who calls the resource API, and what they may do: the caller's uid from the unix
socket's peer credentials, as Kubernetes' RBAC authorizes an authenticated user.

    front = await PeerFront.start(public_path, private_path)   # api.sock → grpc's own socket
    access = Access.of(cfg)
    access.check(context, write=True)      # PermissionDenied unless the caller may write

grpc-python does not give a handler its unix peer's uid (``context.peer()`` is just
``unix:``), so apigw serves the resource API's socket itself: ``PeerFront`` accepts each
connection, reads its SO_PEERCRED (uid and gid, as the kernel vouches for them) and relays
it to the gRPC server's private socket (0600, apigw's own user only) from a client socket
bound to a name that carries them, in a directory of apigw's own — which the handler
reads back from ``context.peer()`` (``unix:/tmp/volplane-api-…/volplane-api.<uid>.<gid>.<nonce>``;
a path, not an abstract name, because OpenTelemetry's server interceptor parses any peer
not starting with ``unix:`` as host:port). Only apigw's own user can reach the private
socket, so only it can name a peer; a caller connected there directly is that user.

Roles: root, apigw's own user and ``VOLPLANE_API_ADMINS`` (users, uids, ``group:<name>``)
are cluster-admin; every other local user gets ``VOLPLANE_API_OTHERS``: "view" (get, list,
watch, history — the default) or "none". A caller over TCP has no peer credentials (no
mTLS here) and gets the others' role.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import secrets
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from volplane.config import Config
from volplane.errors import PermissionDenied

__all__ = ["Access", "Caller", "PeerFront"]

log = logging.getLogger(__name__)
_PREFIX = "volplane-api"
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Caller:
    uid: int | None  # None: no peer credentials (TCP)
    gid: int | None

    def __str__(self) -> str:
        if self.uid is None:
            return "an unauthenticated caller (TCP)"
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            name = str(self.uid)
        return f'user "{name}" (uid {self.uid})'


def caller_of(peer: str) -> Caller:
    """The caller behind ``context.peer()`` (see the module's docstring)."""
    if peer.startswith("unix:"):
        parts = peer.rpartition("/")[2].split(".")
        if len(parts) == 4 and parts[0] == _PREFIX and parts[1].isdigit() and parts[2].isdigit():
            return Caller(int(parts[1]), int(parts[2]))
        # Directly on the private socket, which only apigw's own user can reach.
        return Caller(os.geteuid(), os.getegid())
    return Caller(None, None)


@dataclass(frozen=True)
class Access:
    admin_uids: frozenset[int]
    admin_gids: frozenset[int]
    others: str  # "view" or "none"

    @classmethod
    def of(cls, cfg: Config) -> Access:
        uids, gids = {0, os.geteuid()}, set()
        for entry in cfg.api_admins:
            kind, _, name = entry.rpartition(":")
            if kind == "group":
                gids.add(grp.getgrnam(name).gr_gid)
            else:
                uids.add(int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid)
        return cls(frozenset(uids), frozenset(gids), cfg.api_others)

    def role(self, caller: Caller) -> str:
        if caller.uid is not None and (caller.uid in self.admin_uids or self._in_admin_group(caller)):
            return "admin"
        return self.others

    def _in_admin_group(self, caller: Caller) -> bool:
        if not self.admin_gids or caller.uid is None:
            return False
        groups = {caller.gid} if caller.gid is not None else set()
        try:
            user = pwd.getpwuid(caller.uid)
            groups.update(os.getgrouplist(user.pw_name, user.pw_gid))
        except KeyError:
            pass
        return bool(groups & self.admin_gids)

    def check(self, context: grpc.aio.ServicerContext, *, write: bool, what: str) -> None:
        """PermissionDenied (gRPC PERMISSION_DENIED) unless the caller may ``what``."""
        caller = caller_of(context.peer())
        role = self.role(caller)
        if role == "admin" or (role == "view" and not write):
            return
        hint = "; ask for VOLPLANE_API_ADMINS" if caller.uid is not None else "; use the unix socket"
        raise PermissionDenied(f"{caller} may not {what}: its role is {role!r}{hint}")


class PeerFront:
    """The resource API's public unix socket: relays each connection to the gRPC server's
    private socket, naming the caller's uid and gid in the relay's own address."""

    def __init__(self, server: asyncio.base_events.Server, private: Path, names: Path) -> None:
        self._server = server
        self._private = private
        self._names = names  # where the relays' sockets are named: apigw's own, 0700
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, public: Path, private: Path) -> PeerFront:
        front: PeerFront | None = None

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert front is not None
            task = asyncio.current_task()
            if task is not None:
                front._tasks.add(task)
                task.add_done_callback(front._tasks.discard)
            await front._relay(reader, writer)

        public.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(accepted, path=str(public), limit=_CHUNK)
        # Any local user may connect; what each may do is decided per call by its uid.
        os.chmod(public, 0o666)
        # A short path of its own (a socket's name has at most 107 bytes), 0700.
        front = cls(server, private, Path(tempfile.mkdtemp(prefix="volplane-api-")))
        return front

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            name = self._names / f"{_PREFIX}.{uid}.{gid}.{secrets.token_hex(8)}"
            inner.bind(str(name))
            inner.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(inner, str(self._private))
            finally:
                # The server has the name; the file is no longer needed.
                name.unlink(missing_ok=True)
            up_reader, up_writer = await asyncio.open_unix_connection(sock=inner, limit=_CHUNK)
        except OSError as exc:
            log.warning("resource API: cannot relay a connection: %s", exc)
            writer.close()
            return
        pumps = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                w.close()

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        shutil.rmtree(self._names, ignore_errors=True)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
