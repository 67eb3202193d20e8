"""How kubectl names kinds and objects on its command line and in its output.

    type_name(resolve("sc"))               == "storageclass.storage.k8s.io"
    qualified(pv)                          == "persistentvolume/nfs-pv"
    targets(["pvc/a", "pv/b"])             == [("pvc", "a"), ("pv", "b")]
    targets(["pvc", "a", "b"])             == [("pvc", "a"), ("pvc", "b")]
"""

from __future__ import annotations

from typing import Any

from volctl.client import VolctlError
from volplane.errors import InvalidArgument
from volplane.resources.kinds import BY_NAME, Kind, resolve

__all__ = ["kind_named", "kind_of", "namespace_of", "qualified", "targets", "type_name"]


def type_name(kind: Kind) -> str:
    """kubectl's lowercase ``kind.group``: core kinds have no group."""
    group = kind.api_version.rpartition("/")[0]
    return f"{kind.name.lower()}.{group}" if group else kind.name.lower()


def kind_named(spelling: str) -> Kind:
    """The kind of one of kubectl's spellings; the same table the server resolves with."""
    try:
        return resolve(spelling)
    except InvalidArgument as exc:
        raise VolctlError(f"error: {exc.message}") from None


def kind_of(obj: dict[str, Any]) -> Kind:
    return BY_NAME[obj["kind"]]


def qualified(obj: dict[str, Any]) -> str:
    return f"{type_name(kind_of(obj))}/{obj['metadata']['name']}"


def namespace_of(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


def targets(args: list[str]) -> list[tuple[str, str]]:
    """(kind spelling, name) pairs from ``KIND NAME...`` or ``KIND/NAME...``, as kubectl reads them."""
    if not args:
        raise VolctlError("error: you must specify the type of resource and a name")
    if "/" in args[0]:
        pairs = []
        for arg in args:
            kind, sep, name = arg.partition("/")
            if not sep or not kind or not name:
                raise VolctlError("error: arguments in resource/name form must have a single resource and name")
            pairs.append((kind, name))
        return pairs
    if len(args) == 1:
        raise VolctlError(f'error: you must specify the name of the "{args[0]}" to act on')
    if any("/" in a for a in args[1:]):
        raise VolctlError("error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form")
    return [(args[0], name) for name in args[1:]]
