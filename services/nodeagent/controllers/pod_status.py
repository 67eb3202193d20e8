"""What the volume manager writes on a pod: ``status.volumes`` and the VolumesReady condition.

    status = PodStatus(objects, informer)
    await status.write(pod, [volume_entry("data", True, "/…/pods/<uid>/volumes/kubernetes.io~csi/pv-1", "")])
    await status.mark_unmounted(terminated_pod)

A write happens only when something changed (the informer's copy is compared first, so a
converged pod costs no read), merges into the newest object and keeps every other
condition; the condition's lastTransitionTime moves only when its status does.
"""

from __future__ import annotations

from volplane.errors import ConcurrencyConflict
from volplane.events import now_ns
from volplane.resources.informer import Informer
from volplane.resources.kinds import ref_of
from volplane.resources.objects import Obj, Pod
from volplane.resources.store import ObjectStore, rfc3339

__all__ = ["VOLUMES_READY", "PodStatus", "status_patch", "volume_entry"]

VOLUMES_READY = "VolumesReady"
_ATTEMPTS = 10


def volume_entry(name: str, ready: bool, path: str, message: str) -> Obj:
    """One line of status.volumes: ``{name, ready, path, message}``."""
    return {"name": name, "ready": ready, "path": path, "message": message}


def status_patch(pod: Obj, volumes: list[Obj]) -> Obj | None:
    """The merge patch that makes the pod's status say ``volumes``; None when it already does."""
    ready = all(v["ready"] for v in volumes)
    condition = {
        "type": VOLUMES_READY, "status": "True" if ready else "False",
        "reason": "VolumesMounted" if ready else "VolumesNotReady",
        "message": next((v["message"] for v in volumes if not v["ready"]), ""),
    }
    status = Pod(pod).status
    conditions = status.get("conditions") or []
    old = next((c for c in conditions if c.get("type") == VOLUMES_READY), None)
    if status.get("volumes") == volumes and old is not None and all(old.get(k) == v for k, v in condition.items()):
        return None
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == condition["status"] else None
    new = {**condition, "lastTransitionTime": since or rfc3339(now_ns())}
    return {"status": {"volumes": volumes, "conditions": [c for c in conditions if c.get("type") != VOLUMES_READY] + [new]}}


class PodStatus:
    def __init__(self, objects: ObjectStore, informer: Informer) -> None:
        self._objects = objects
        self._informer = informer

    async def write(self, pod: Obj, volumes: list[Obj]) -> None:
        if status_patch(pod, volumes) is None:
            return
        uid = Pod(pod).uid
        for _ in range(_ATTEMPTS):
            current, version = await self._objects.read(ref_of(pod))
            if current is None or Pod(current).uid != uid:
                return  # Deleted (or re-created) meanwhile: its own sync follows.
            patch = status_patch(current, volumes)
            if patch is None:
                self._informer.observe(current)
                return
            try:
                new = await self._objects.update(current, patch, reason="volumes", version=version)
            except ConcurrencyConflict:
                continue
            self._informer.observe(new)
            return
        raise ConcurrencyConflict(f"pod {ref_of(pod).key} keeps changing; status not written")

    async def mark_unmounted(self, pod: Obj) -> None:
        """A pod that stays on this node but no longer wants its volumes (it terminated) says so."""
        p = Pod(pod)
        volumes = p.status.get("volumes") or []
        if any(v.get("ready") for v in volumes):
            why = "being deleted" if p.deleting else "terminated"
            await self.write(pod, [volume_entry(v.get("name", ""), False, "", f"unmounted: the pod is {why}") for v in volumes])
