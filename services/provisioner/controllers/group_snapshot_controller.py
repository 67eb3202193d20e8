"""The snapshot controller's group part (external-snapshotter's groupsnapshot_controller_helper):
VolumeGroupSnapshots over a label selector, their VolumeGroupSnapshotContents, and one
VolumeSnapshot with its VolumeSnapshotContent per member.

    groups = GroupSnapshotController(informer, objects)
    await groups.start()     # loops: group snapshots ``<ns>/<name>``, group contents ``<name>``

Dynamic: the claims of the group snapshot's namespace that its ``spec.source.selector``
matches, each bound to a CSI volume of one driver, make a content named
``groupsnapcontent-<uid>`` listing their volume handles (class from
``spec.volumeGroupSnapshotClassName``, else the driver's class marked
``groupsnapshot.storage.kubernetes.io/is-default-class``, written into that field
first). Once the CSI snapshotter has
cut it (one CreateVolumeGroupSnapshot: one consistent cut), every member gets a
VolumeSnapshotContent and a VolumeSnapshot named ``snapcontent-`` / ``snapshot-`` +
sha256(group uid + volume handle), as the real controller names them: the snapshot
owned by the group, carrying ``volumesnapshot-in-group-protection`` and
``status.volumeGroupSnapshotName``, bound to its content from the start, which holds the
member's snapshot handle, the group's, and the member volume's ``sourceVolumeMode``. The
group is ready when its content is and every member exists; events GroupSnapshotCreated,
GroupSnapshotReady. A bound group carries ``volumegroupsnapshot-bound-protection``.

Deleting a group snapshot deletes its members first (each per its content's policy: with
Delete the member contents go without a CSI call, their snapshots being the group's),
then, with policy Delete, its content — DeleteVolumeGroupSnapshot — and only then lets the
group go. With Retain the group goes once its members have, and the group content and
the member contents stay. A member whose group is gone without having deleted it (a group
deleted before it was bound) is garbage-collected by the snapshot controller.
"""

from __future__ import annotations

import hashlib
import logging

from volplane.resources.controller import Loop
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.names import (
    ANN_GROUP_SNAPSHOT_BEING_DELETED,
    FINALIZER_CONTENT_BOUND,
    FINALIZER_GROUP_CONTENT_BOUND,
    FINALIZER_GROUP_SNAPSHOT_BOUND,
    FINALIZER_SNAPSHOT_IN_GROUP,
    SNAPSHOT_GROUP,
)
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim
from volplane.resources.selectors import LabelSelector
from volplane.resources.snapshots import VolumeGroupSnapshot, VolumeGroupSnapshotClass, VolumeGroupSnapshotContent, VolumeSnapshot
from volplane.resources.store import ObjectStore

from .writes import SnapshotError, Writes

__all__ = ["GroupSnapshotController", "format_selector", "member_names"]

log = logging.getLogger(__name__)

VS, VSC, VGS, VGSC, VGSCLASS, PVC, PV = (
    BY_NAME[k]
    for k in ("VolumeSnapshot", "VolumeSnapshotContent", "VolumeGroupSnapshot", "VolumeGroupSnapshotContent", "VolumeGroupSnapshotClass",
              "PersistentVolumeClaim", "PersistentVolume")
)
API_VERSION = VGS.api_version
SNAPSHOT_API_VERSION = f"{SNAPSHOT_GROUP}/v1"


def member_names(group_uid: str, volume_handle: str) -> tuple[str, str]:
    """(VolumeSnapshot name, VolumeSnapshotContent name) of a group's member, as
    external-snapshotter names them: ``snapshot-`` / ``snapcontent-`` + sha256(uid + handle)."""
    digest = hashlib.sha256(f"{group_uid}{volume_handle}".encode()).hexdigest()
    return f"snapshot-{digest}", f"snapcontent-{digest}"


def format_selector(selector: Obj | None) -> str:
    """A label selector as Kubernetes prints one (metav1.FormatLabelSelector): ``app=db,tier in (a,b)``."""
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, values = str(expr.get("operator", "")), ",".join(expr.get("values") or [])
        if op in ("Exists", "DoesNotExist"):
            parts.append(("" if op == "Exists" else "!") + str(expr.get("key", "")))
        else:
            parts.append(f"{expr.get('key', '')} {op.lower()} ({values})")
    return ",".join(parts) or "<none>"


class GroupSnapshotController:
    def __init__(self, informer: Informer, objects: ObjectStore, *, workers: int = 4) -> None:
        self.informer = informer
        self.writes = Writes(informer, objects)
        self.groups = Loop("group-snapshot-controller-groups", self._sync_group_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VGS)])
        self.contents = Loop("group-snapshot-controller-contents", self._sync_content_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VGSC)])
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.groups.start()
        await self.contents.start()

    async def stop(self) -> None:
        await self.groups.stop()
        await self.contents.stop()

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if kind is VGS:
            self.groups.add(key_of(obj))
        elif kind is VGSC:
            self.contents.add(key_of(obj))
            ref = VolumeGroupSnapshotContent(obj).ref
            if ref.name:
                self.groups.add(ref.key)
        elif kind is VS or kind is VSC:
            # A member made or gone: its group may be ready, or done deleting.
            for owner in obj["metadata"].get("ownerReferences") or []:
                if owner.get("kind") == VGS.name:
                    self.groups.add(f"{obj['metadata'].get('namespace')}/{owner.get('name')}")
            if kind is VS and VolumeSnapshot(obj).group_name:
                self.groups.add(f"{VolumeSnapshot(obj).namespace}/{VolumeSnapshot(obj).group_name}")
        elif kind in (PVC, PV, VGSCLASS):
            for group in map(VolumeGroupSnapshot, self.informer.list(VGS)):
                if not group.ready:
                    self.groups.add(group.key)

    # --- group snapshots --------------------------------------------------------------

    async def _sync_group_key(self, key: str) -> None:
        await self.writes.sync(VGS, key, self.sync_group)

    async def sync_group(self, obj: Obj) -> None:
        group = VolumeGroupSnapshot(obj)
        if group.deleting:
            await self._delete(group)
            return
        content = self._content_of(group)
        if content is None:
            if group.content_name or group.bound_content:
                raise SnapshotError("GroupSnapshotContentMissing", "VolumeGroupSnapshotContent is missing")
            await self._create_content(group)
            return
        content = await self._bind(group, content)
        if group.bound_content == content.name:
            # Whatever the policy (external-snapshotter's rule for groups): deleting the group
            # deletes its members first, and only then lets it go.
            written = await self.writes.finalizers(group.raw, add=(FINALIZER_GROUP_SNAPSHOT_BOUND,))
            if written is None:
                return
            group = VolumeGroupSnapshot(written)
        members_made = await self._members(group, content)
        await self._mirror(group, content, members_made)

    def _content_name(self, group: VolumeGroupSnapshot) -> str:
        return group.content_name or group.bound_content or f"groupsnapcontent-{group.uid}"

    def _content_of(self, group: VolumeGroupSnapshot) -> VolumeGroupSnapshotContent | None:
        name = self._content_name(group)
        content = VolumeGroupSnapshotContent.get(self.informer.get, name)
        if content is None:
            return None
        if group.content_name:
            if not content.preprovisioned:
                raise SnapshotError("GroupSnapshotContentMismatch", "VolumeGroupSnapshotContent is dynamically provisioned while expecting a pre-provisioned one")
            if not content.ref.matches(group):
                raise SnapshotError("GroupSnapshotContentMisbound", f"VolumeGroupSnapshotContent [{name}] is bound to a different group snapshot")
            return content
        if content.preprovisioned:
            raise SnapshotError("GroupSnapshotHandleSet", f"GroupSnapshot handle should not be set in group snapshot content {group.key} for dynamic provisioning")
        if content.ref.uid != group.uid or not content.ref.matches(group):
            reason = "GroupSnapshotMisbound" if group.ready else "GroupSnapshotContentMisbound"
            raise SnapshotError(reason, f"VolumeGroupSnapshotContent [{name}] is bound to a different group snapshot")
        return content

    async def _bind(self, group: VolumeGroupSnapshot, content: VolumeGroupSnapshotContent) -> VolumeGroupSnapshotContent:
        patch: Obj = {}
        if not content.ref.uid:
            patch["volumeGroupSnapshotRef"] = {"uid": group.uid}
        if group.class_name and not content.class_name:
            patch["volumeGroupSnapshotClassName"] = group.class_name
        if not patch:
            return content
        # The finalizer with the uid, in one write: a bound content is never deleted unseen.
        finalizers = [f for f in content.finalizers if f != FINALIZER_GROUP_CONTENT_BOUND] + [FINALIZER_GROUP_CONTENT_BOUND]
        written = await self.writes.update(content.raw, {"spec": patch, "metadata": {"finalizers": finalizers}}, "bind")
        assert written is not None  # a spec change deletes nothing
        return VolumeGroupSnapshotContent(written)

    def _claims(self, group: VolumeGroupSnapshot) -> list[PersistentVolumeClaim]:
        selector = LabelSelector.from_spec(group.selector)
        claims = [c for c in map(PersistentVolumeClaim, self.informer.list(PVC)) if c.namespace == group.namespace and selector.matches(c.labels)]
        return sorted(claims, key=lambda c: c.name)

    async def _create_content(self, group: VolumeGroupSnapshot) -> None:
        failed = "GroupSnapshotContentCreationFailed"
        claims = self._claims(group)
        if not claims:
            raise SnapshotError(failed, f"failed to create group snapshot content with error label selector {format_selector(group.selector)} for group snapshot not applied to any PVC")
        volumes: list[PersistentVolume] = []
        for claim in claims:
            pv = PersistentVolume.get(self.informer.get, claim.volume_name) if claim.phase == "Bound" and claim.volume_name else None
            if pv is None:
                raise SnapshotError(failed, f"failed to create group snapshot content with error the PVC {claim.name} is not yet bound to a PV, will not attempt to take a group snapshot")
            ref = pv.claim_ref
            if ref is None or not ref.matches(claim):
                raise SnapshotError(failed, "failed to create group snapshot content with error claim in dataSource not bound or invalid")
            if pv.csi is None:
                raise SnapshotError(failed, f"failed to create group snapshot content with error snapshotting non-CSI volumes is not supported, group snapshot:{group.key}")
            volumes.append(pv)
        drivers = sorted({v.csi_driver for v in volumes})
        if len(drivers) > 1:
            raise SnapshotError(failed, f"failed to create group snapshot content with error the selected claims' volumes are of more than one driver: {', '.join(drivers)}")
        cls = self._class(group, drivers[0])
        if cls.driver != drivers[0]:
            raise SnapshotError(failed, f'failed to create group snapshot content with error VolumeGroupSnapshotClass "{cls.name}" is for driver {cls.driver}, '
                                        f"the selected claims' volumes are of driver {drivers[0]}")
        if not group.class_name:
            # SetDefaultGroupSnapshotClass: the default class is written into the group, whose
            # next sync makes the content.
            await self.writes.update(group.raw, {"spec": {"volumeGroupSnapshotClassName": cls.name}}, "default group snapshot class")
            return
        content = {
            "apiVersion": API_VERSION,
            "kind": VGSC.name,
            # Bound, and so protected, from the start: deleting it always goes through the
            # CSI snapshotter, which deletes the group snapshot first.
            "metadata": {"name": f"groupsnapcontent-{group.uid}", "finalizers": [FINALIZER_GROUP_CONTENT_BOUND]},
            "spec": {
                "volumeGroupSnapshotRef": {"kind": VGS.name, "apiVersion": API_VERSION, "namespace": group.namespace, "name": group.name, "uid": group.uid},
                "source": {"volumeHandles": [v.csi["volumeHandle"] for v in volumes if v.csi is not None]},
                "volumeGroupSnapshotClassName": cls.name,
                "deletionPolicy": cls.deletion_policy,
                "driver": cls.driver,
            },
        }
        created = await self.writes.create(content)
        await self.writes.event(group.raw, "Normal", "CreatingGroupSnapshot", f"Waiting for a group snapshot {group.key} to be created by the CSI driver.")
        await self._mirror(group, VolumeGroupSnapshotContent(created), False)

    def _class(self, group: VolumeGroupSnapshot, driver: str) -> VolumeGroupSnapshotClass:
        if group.class_name:
            cls = VolumeGroupSnapshotClass.get(self.informer.get, group.class_name)
            if cls is None:
                raise SnapshotError("GroupSnapshotContentCreationFailed", "failed to create group snapshot content with error "
                                                                          f'volumegroupsnapshotclass.groupsnapshot.storage.k8s.io "{group.class_name}" not found')
            return cls
        defaults = [c for c in map(VolumeGroupSnapshotClass, self.informer.list(VGSCLASS)) if c.default and c.driver == driver]
        if len(defaults) != 1:
            why = "cannot find default group snapshot class" if not defaults else f"{len(defaults)} default snapshot classes were found"
            raise SnapshotError("SetDefaultGroupSnapshotClassFailed", f"Failed to set default group snapshot class with error {why}")
        return defaults[0]

    async def _members(self, group: VolumeGroupSnapshot, content: VolumeGroupSnapshotContent) -> bool:
        """A VolumeSnapshot and a VolumeSnapshotContent for every member the content lists
        (createSnapshotsForGroupSnapshotContent); whether all of them exist."""
        if not content.group_handle or not content.members:
            return False
        for info in content.members:
            handle = str(info.get("volumeHandle") or "")
            vs_name, vsc_name = member_names(group.uid, handle)
            snap = VolumeSnapshot.get(self.informer.get, f"{group.namespace}/{vs_name}")
            if snap is not None and self.informer.get(VSC, vsc_name) is not None:
                continue  # made already (the common case: no scan of the PVs)
            pv = self._volume_of(content.driver, handle)
            if snap is None:
                claim = pv.claim_ref.name if pv is not None and pv.claim_ref is not None else None
                if claim is None:
                    raise SnapshotError("GroupSnapshotContentCreationFailed", f"failed to create the member snapshots of group snapshot {group.key}: "
                                                                              f"no claim is bound to the volume {handle}")
                created = await self.writes.create({
                    "apiVersion": SNAPSHOT_API_VERSION,
                    "kind": VS.name,
                    "metadata": {
                        "name": vs_name,
                        "namespace": group.namespace,
                        "ownerReferences": [{"apiVersion": API_VERSION, "kind": VGS.name, "name": group.name, "uid": group.uid}],
                        "finalizers": [FINALIZER_SNAPSHOT_IN_GROUP],
                    },
                    "spec": {"source": {"persistentVolumeClaimName": claim}},
                    # Bound from the start, so the snapshot controller never takes it for
                    # a snapshot of its own to cut.
                    "status": {"boundVolumeSnapshotContentName": vsc_name, "volumeGroupSnapshotName": group.name, "readyToUse": False},
                })
                snap = VolumeSnapshot(created)
            if self.informer.get(VSC, vsc_name) is not None:
                continue
            await self.writes.create({
                "apiVersion": SNAPSHOT_API_VERSION,
                "kind": VSC.name,
                "metadata": {"name": vsc_name, "finalizers": [FINALIZER_CONTENT_BOUND]},
                "spec": {
                    "volumeSnapshotRef": {"kind": VS.name, "apiVersion": SNAPSHOT_API_VERSION, "namespace": group.namespace, "name": vs_name, "uid": snap.uid},
                    "source": {"volumeHandle": handle},
                    "deletionPolicy": content.deletion_policy,
                    "driver": content.driver,
                    # What a restore checks a claim's volumeMode against, as for any snapshot.
                    **({"sourceVolumeMode": pv.volume_mode} if pv is not None else {}),
                },
                "status": {
                    "snapshotHandle": info.get("snapshotHandle"),
                    "volumeGroupSnapshotHandle": content.group_handle,
                    "creationTime": info.get("creationTime"),
                    "restoreSize": info.get("restoreSize"),
                    "readyToUse": info.get("readyToUse") is True,
                },
            })
        return True

    def _volume_of(self, driver: str, handle: str) -> PersistentVolume | None:
        """The PV of a member's volume (findPersistentVolumeByCSIDriverHandle), None if there is none here."""
        for pv in map(PersistentVolume, self.informer.list(PV)):
            csi = pv.csi
            if csi is not None and csi.get("driver") == driver and csi.get("volumeHandle") == handle:
                return pv
        return None

    async def _mirror(self, group: VolumeGroupSnapshot, content: VolumeGroupSnapshotContent, members_made: bool) -> None:
        cs = content.status
        ready = content.ready and members_made
        status: Obj = {"boundVolumeGroupSnapshotContentName": content.name, "readyToUse": ready}
        if cs.get("creationTime") and not group.status.get("creationTime"):
            status["creationTime"] = cs["creationTime"]
        if ready:
            status["error"] = None
        elif cs.get("error"):
            status["error"] = cs["error"]
        changed = {k: v for k, v in status.items() if group.status.get(k) != v}
        if not changed:
            return
        written = await self.writes.update(group.raw, {"status": changed}, "status")
        if written is None:
            return
        after = VolumeGroupSnapshot(written)
        if not group.status.get("creationTime") and after.status.get("creationTime"):
            await self.writes.event(written, "Normal", "GroupSnapshotCreated", f"GroupSnapshot {group.key} was successfully created by the CSI driver.")
        if not group.ready and after.ready:
            await self.writes.event(written, "Normal", "GroupSnapshotReady", f"GroupSnapshot {group.key} is ready to use.")

    # --- deletion -------------------------------------------------------------------

    def _owned_members(self, group: VolumeGroupSnapshot) -> list[VolumeSnapshot]:
        out = []
        for snap in map(VolumeSnapshot, self.informer.list(VS)):
            owners = {o.get("uid") for o in snap.metadata.get("ownerReferences") or []}
            if snap.namespace == group.namespace and group.uid in owners:
                out.append(snap)
        return out

    async def _delete(self, group: VolumeGroupSnapshot) -> None:
        members = self._owned_members(group)
        for snap in members:
            # The members go first, each by the snapshot controller's rules; nothing holds
            # them to their group any more.
            written = await self.writes.finalizers(snap.raw, remove=(FINALIZER_SNAPSHOT_IN_GROUP,))
            if written is not None:
                await self.writes.delete(written)
        if self._owned_members(group):
            return  # their deletions bring the group back here
        name = self._content_name(group)
        content = VolumeGroupSnapshotContent.get(self.informer.get, name)
        if content is not None and not (content.ref.uid == group.uid and content.ref.matches(group)):
            content = None
        delete_content = content is not None and content.deletion_policy == "Delete"
        if content is not None:
            written = await self.writes.annotate(content.raw, ANN_GROUP_SNAPSHOT_BEING_DELETED, "yes")
            if written is not None and delete_content:
                await self.writes.delete(written)
        if not delete_content:
            # No content, or one retained: nothing to wait for. A content being deleted
            # brings the group back here once it is gone.
            await self.writes.finalizers(group.raw, remove=(FINALIZER_GROUP_SNAPSHOT_BOUND,))

    # --- group contents ---------------------------------------------------------------

    async def _sync_content_key(self, key: str) -> None:
        obj = self.informer.get(VGSC, key)
        if obj is None:
            return
        content = VolumeGroupSnapshotContent(obj)
        if content.ref.uid:
            await self.writes.finalizers(obj, add=(FINALIZER_GROUP_CONTENT_BOUND,))
