"""Finding volplane's resource API, calling it, and its errors in kubectl's words.

    client = Client.connect(endpoint())              # Unreachable if nobody answers
    obj, action = client.apply(doc)                  # (the stored object, "created")
    client.get("pvc", "nfs-pvc", "default")          # ServerError: Error from server (NotFound): ...

Every failure is a ``VolctlError`` whose ``line`` is the one line volctl prints.
"""

from __future__ import annotations

import builtins
import json
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc

__all__ = ["Client", "Entry", "ServerError", "TimedOut", "Unreachable", "VolctlError", "endpoint"]

Obj = dict[str, Any]
MANAGER = "volctl"
_CONNECT_TIMEOUT = 5.0  # the machine may be busy; a unix socket that answers at all answers fast

# kubectl's words for the status codes (its StatusReason), so an error reads the same.
REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
}


class VolctlError(Exception):
    """A failure volctl reports as one line on stderr."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class ServerError(VolctlError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"Error from server ({reason}): {message}")
        self.reason = reason
        self.message = message

    @classmethod
    def of(cls, exc: grpc.RpcError) -> ServerError:
        code = exc.code()
        return cls(REASONS.get(code, "InternalError"), exc.details() or code.name)


class Unreachable(VolctlError):
    def __init__(self, target: str) -> None:
        super().__init__(f"volctl: cannot reach volplane at {target} (is `make run` running? set VOLPLANE_API_ENDPOINT)")


class TimedOut(Exception):
    """A watch ran past its deadline."""


def endpoint(server: str | None = None, env: dict[str, str] | None = None) -> str:
    """Where the resource API listens: ``--server``, else VOLPLANE_API_ENDPOINT, else
    ``$VOLPLANE_RUN_DIR/api.sock``, else ``./run/api.sock`` — as an absolute unix target.

        endpoint(env={"VOLPLANE_RUN_DIR": "/srv/vp"}) == "unix:///srv/vp/api.sock"
    """
    e = os.environ if env is None else env
    given = server or e.get("VOLPLANE_API_ENDPOINT")
    if given:
        return _target(given)
    run_dir = Path(e.get("VOLPLANE_RUN_DIR") or "run")
    return f"unix://{(run_dir / 'api.sock').absolute()}"


def _target(text: str) -> str:
    if text.startswith("unix:"):
        return text
    if text.startswith(("/", ".")) or text.endswith(".sock"):
        return f"unix://{Path(text).absolute()}"
    return text  # host:port


def _socket_path(target: str) -> Path | None:
    if target.startswith("unix://"):
        return Path(target.removeprefix("unix://"))
    if target.startswith("unix:"):
        return Path(target.removeprefix("unix:"))
    return None


class Entry:
    """One line of an object's history: its position, type, time and fields."""

    def __init__(self, seq: int, type: str, at_ns: int, fields: Obj) -> None:
        self.seq, self.type, self.at_ns, self.fields = seq, type, at_ns, fields


class Client:
    def __init__(self, target: str, channel: grpc.Channel, request_timeout: float | None = None) -> None:
        self.target = target
        self._channel = channel
        self._stub = resources_pb2_grpc.ResourcesStub(channel)
        # kubectl's --request-timeout: how long one call may take (None: as long as it takes).
        self.request_timeout = request_timeout

    @classmethod
    def connect(cls, target: str, timeout: float = _CONNECT_TIMEOUT) -> Client:
        """A client whose server answered; Unreachable otherwise."""
        path = _socket_path(target)
        if path is not None and not path.exists():
            # No socket file: nothing to wait for, and grpc would only retry for `timeout`.
            raise Unreachable(target)
        channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            raise Unreachable(target) from None
        return cls(target, channel)

    def close(self) -> None:
        self._channel.close()

    def apply(self, obj: Obj) -> tuple[Obj, str]:
        reply = self._call(self._stub.Apply, pb.ApplyRequest(json=json.dumps(obj).encode(), field_manager=MANAGER))
        return json.loads(reply.json), reply.action

    def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        return json.loads(self._call(self._stub.Get, pb.ObjectRef(kind=kind, namespace=namespace, name=name)).json)

    def list(self, kind: str, namespace: str = "", all_namespaces: bool = False, selector: str = "") -> list[Obj]:
        return self.list_at(kind, namespace, all_namespaces, selector)[0]

    def list_at(self, kind: str, namespace: str = "", all_namespaces: bool = False, selector: str = "") -> tuple[builtins.list[Obj], int]:
        """The objects and the stream position they are as of: where a watch takes over."""
        req = pb.ListRequest(kind=kind, namespace=namespace, all_namespaces=all_namespaces, label_selector=selector)
        reply = self._call(self._stub.List, req)
        return [json.loads(o.json) for o in reply.items], reply.resource_version

    def delete(self, kind: str, name: str, namespace: str = "") -> Obj:
        return json.loads(self._call(self._stub.Delete, pb.ObjectRef(kind=kind, namespace=namespace, name=name)).json)

    def history(self, kind: str, name: str, namespace: str = "") -> builtins.list[Entry]:
        reply = self._call(self._stub.History, pb.ObjectRef(kind=kind, namespace=namespace, name=name))
        return [Entry(e.seq, e.type, e.at_ns, json.loads(e.json)) for e in reply.entries]

    def watch(self, kind: str, namespace: str, after: int, timeout: float | None, name: str = "",
              all_namespaces: bool = False, selector: str = "") -> Iterator[tuple[str, Obj]]:
        """(ADDED|MODIFIED|DELETED, object) of ``kind`` (only ``name`` if given) after
        stream position ``after``; TimedOut once ``timeout`` seconds have passed."""
        request = pb.WatchRequest(kind=kind, namespace=namespace, resource_version=after, name=name,
                                  all_namespaces=all_namespaces, label_selector=selector)
        call = self._stub.Watch(request, timeout=timeout)
        # grpc's own iteration is read on a thread of its own, so that Ctrl-C (a
        # KeyboardInterrupt in the main thread) lands in this queue's wait, never inside
        # grpc: interrupted mid-call, a call can be left half torn down and closing the
        # channel then blocks for ever.
        events: queue.Queue[tuple[str, Obj] | Exception | None] = queue.Queue()

        def pump() -> None:
            try:
                for event in call:
                    events.put((event.type, json.loads(event.object.json)))
                events.put(None)
            except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
                events.put(exc)

        threading.Thread(target=pump, name="volctl-watch", daemon=True).start()
        try:
            while (item := events.get()) is not None:
                if isinstance(item, grpc.RpcError):
                    if item.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise TimedOut()
                    raise ServerError.of(item)
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            call.cancel()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.request_timeout)
        except grpc.RpcError as exc:
            raise ServerError.of(exc) from None
