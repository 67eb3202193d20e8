"""What a user's change to an existing object must also satisfy, beyond its schema and its
immutable fields: the API server's update validation and its admission plugins, in
Kubernetes' words.

    await admit_update(current, new, store.read)      # InvalidArgument / PermissionDenied, or None

A claim (ValidatePersistentVolumeClaimUpdate, the PersistentVolumeClaimResize plugin):

- unbound, its ``spec.resources.requests`` and ``spec.volumeAttributesClassName`` do not
  change — "spec is immutable after creation except resources.requests and
  volumeAttributesClassName for bound claims";
- its request may go down (to recover from an expansion that failed) but never to or
  below ``status.capacity`` — "field can not be less than status.capacity";
- it may grow only when Bound and its StorageClass says ``allowVolumeExpansion: true`` —
  "only dynamically provisioned pvc can be resized and the storageclass that provisions
  the pvc must support resize" (Forbidden);
- its VolumeAttributesClass may not be taken away once one is in effect.

A volume's ``spec.volumeAttributesClassName`` may not be taken away either. Controllers
write through ``ObjectStore.update``, which does not come here: these are the rules of
the user's API, not of the loops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from volplane.errors import InvalidArgument, PermissionDenied
from volplane.resources.kinds import BY_NAME, Ref, ref
from volplane.resources.objects import PersistentVolume, PersistentVolumeClaim, StorageClass
from volplane.resources.schema import quantity

__all__ = ["admit_update"]

Obj = dict[str, Any]
Read = Callable[[Ref], Awaitable[tuple[Obj | None, int]]]
_SC = BY_NAME["StorageClass"]


async def admit_update(current: Obj, new: Obj, read: Read) -> None:
    """Refuse ``new`` as the next version of ``current`` when Kubernetes would; ``read``
    fetches another object (the claim's StorageClass)."""
    if current["kind"] == "PersistentVolumeClaim":
        await _claim(PersistentVolumeClaim(current), PersistentVolumeClaim(new), read)
    elif current["kind"] == "PersistentVolume":
        old_class, new_class = PersistentVolume(current).attributes_class, PersistentVolume(new).attributes_class
        if old_class and not new_class:
            raise InvalidArgument(f'PersistentVolume "{current["metadata"]["name"]}": spec.volumeAttributesClassName: Forbidden: update from non-nil value to nil is forbidden')


async def _claim(old: PersistentVolumeClaim, new: PersistentVolumeClaim, read: Read) -> None:
    label = f'PersistentVolumeClaim "{old.name}"'
    if old.phase != "Bound" and (old.request != new.request or old.attributes_class != new.attributes_class):
        raise InvalidArgument(f"{label}: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims")
    if old.attributes_class and not new.attributes_class and old.status.get("currentVolumeAttributesClassName"):
        raise InvalidArgument(f"{label}: spec.volumeAttributesClassName: Forbidden: update to nil is forbidden when status.currentVolumeAttributesClassName is not nil")
    if new.request < old.request:
        have = (old.status.get("capacity") or {}).get("storage")
        if have is not None and new.request <= quantity(have):
            raise InvalidArgument(f"{label}: spec.resources.requests.storage: Forbidden: field can not be less than status.capacity")
    if new.request > old.request:
        if old.phase != "Bound":
            raise PermissionDenied(f'persistentvolumeclaims "{old.name}" is forbidden: Only bound persistent volume claims can be expanded')
        if not await _expandable(old, new, read):
            raise PermissionDenied(
                f'persistentvolumeclaims "{old.name}" is forbidden: only dynamically provisioned pvc can be resized '
                "and the storageclass that provisions the pvc must support resize"
            )


async def _expandable(old: PersistentVolumeClaim, new: PersistentVolumeClaim, read: Read) -> bool:
    """The claim's class (the same before and after) exists and allows volume expansion."""
    name = old.storage_class
    if not name or new.storage_class != name:
        return False
    sc, _ = await read(ref(_SC, None, name))
    return sc is not None and StorageClass(sc).raw.get("allowVolumeExpansion") is True
