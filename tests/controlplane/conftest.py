"""Fixtures for the standalone control plane: a two-node stack and a resource API client.

    def test_something(cp, api):
        api.apply(PVC)                                    # a dict or YAML text (many docs)
        pvc = api.wait("pvc", "data", lambda o: phase(o) == "Bound")
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from devstack.launcher import Stack
from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc

Obj = dict[str, Any]


def phase(obj: Obj | None) -> str | None:
    return None if obj is None else (obj.get("status") or {}).get("phase")


def ready(pod: Obj | None) -> bool:
    """The pod's VolumesReady condition is True (every volume mounted)."""
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "VolumesReady" and c.get("status") == "True" for c in conditions)


def annotations(obj: Obj) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def until(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll ``check`` until it returns something true (and return it); fail naming ``what``.
    For what ``Api.wait`` does not cover: events, lists, the storage itself."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Api:
    """The resource API over gRPC, as volctl uses it."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = resources_pb2_grpc.ResourcesStub(self.channel)

    def apply(self, obj: Obj | str) -> list[Obj]:
        docs = [d for d in yaml.safe_load_all(obj)] if isinstance(obj, str) else [obj]
        out = []
        for doc in docs:
            if doc:
                reply = self.stub.Apply(pb.ApplyRequest(json=json.dumps(doc).encode(), field_manager="test"))
                out.append(json.loads(reply.json))
        return out

    def get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return json.loads(self.stub.Get(pb.ObjectRef(kind=kind, namespace=namespace, name=name)).json)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list(self, kind: str, namespace: str = "", all_namespaces: bool = True, selector: str = "") -> list[Obj]:
        reply = self.stub.List(pb.ListRequest(kind=kind, namespace=namespace, all_namespaces=all_namespaces, label_selector=selector))
        return [json.loads(o.json) for o in reply.items]

    def delete(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return json.loads(self.stub.Delete(pb.ObjectRef(kind=kind, namespace=namespace, name=name)).json)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def history(self, kind: str, name: str, namespace: str = "") -> list[tuple[str, Obj]]:
        reply = self.stub.History(pb.ObjectRef(kind=kind, namespace=namespace, name=name))
        return [(e.type, json.loads(e.json)) for e in reply.entries]

    def events(self, kind: str, name: str, namespace: str = "") -> list[Obj]:
        """The lines recorded on the object's timeline (reason, message, event_type)."""
        return [e for t, e in self.history(kind, name, namespace) if t == "EventRecorded"]

    def wait(self, kind: str, name: str, until: Callable[[Obj | None], bool], namespace: str = "", timeout: float = 30.0) -> Obj | None:
        """Poll until ``until(object or None)`` holds; fail with the last state seen."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(kind, name, namespace)
            if until(obj):
                return obj
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind}/{name} did not converge in {timeout}s; last: {json.dumps(obj, indent=1)[:3000]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="session")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A two-node stack (node-1, node-2) for the control-plane tests."""
    run = tmp_path_factory.mktemp("cp")
    s = Stack(run, env={"VOLPLANE_POOL_CAPACITY": "64Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "64Gi"}, nodes=2)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def api(cp: Stack) -> Iterator[Api]:
    a = Api(cp.api_endpoint)
    yield a
    a.close()


def kubelet_dir(stack: Stack, node: str) -> Path:
    return stack.run_dir / "kubelet" / node
