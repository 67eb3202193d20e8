"""The snapshot controller role (kubernetes-csi/external-snapshotter, pkg/common-controller):
VolumeSnapshots bound to VolumeSnapshotContents, their finalizers and deletion policies.

    snaps = SnapshotController(informer, objects)
    await snaps.start()   # loops: snapshots ``<ns>/<name>``, contents ``<name>``, claims ``<ns>/<name>``

Dynamic: a VolumeSnapshot of a claim gets a content named ``snapcontent-<snapshot uid>``
(its class from ``spec.volumeSnapshotClassName``, or the class marked
``snapshot.storage.kubernetes.io/is-default-class`` for the claim's driver), pointing
at the claim's CSI volume and back at the snapshot by uid; the CSI snapshotter role
(``csi_snapshotter.py``) cuts it and fills the content's status, which is mirrored into
the snapshot's (boundVolumeSnapshotContentName, creationTime, readyToUse, restoreSize,
error) with Kubernetes' events (CreatingSnapshot, SnapshotCreated, SnapshotReady).
Pre-provisioned: a snapshot naming a content binds it, the content's
``volumeSnapshotRef`` getting the snapshot's uid.

Finalizers, Kubernetes' own: ``volumesnapshot-as-source-protection`` and, while a
content with policy Delete is bound, ``volumesnapshot-bound-protection`` on the
snapshot; ``volumesnapshotcontent-bound-protection`` on a bound content;
``pvc-as-source-protection`` on a claim while a snapshot of it is being cut. Deleting a
snapshot: not while a claim is being restored from it (SnapshotDeletePending), nor while
its cut is in flight; then the content is annotated ``volumesnapshot-being-deleted`` and,
with policy Delete, deleted — the CSI snapshotter deletes the snapshot on the storage and
lets the content go, and only then does the snapshot go. With Retain the content stays.
A member of a group snapshot goes with its group (``volumesnapshot-in-group-protection``);
one whose owning group is gone is deleted, as Kubernetes' garbage collector would.

Every step is one write to one object, and each sync starts from what the objects say,
so a crash anywhere is finished by the next sync.
"""

from __future__ import annotations

import logging

from volplane.resources.controller import Loop
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of, namespaced_key
from volplane.resources.names import (
    ANN_SNAPSHOT_BEING_CREATED,
    ANN_SNAPSHOT_BEING_DELETED,
    FINALIZER_CONTENT_BOUND,
    FINALIZER_PVC_AS_SOURCE,
    FINALIZER_SNAPSHOT_AS_SOURCE,
    FINALIZER_SNAPSHOT_BOUND,
    FINALIZER_SNAPSHOT_IN_GROUP,
    SNAPSHOT_GROUP,
)
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim
from volplane.resources.schema import format_quantity
from volplane.resources.snapshots import VolumeGroupSnapshot, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent
from volplane.resources.store import ObjectStore, rfc3339

from .data_sources import data_source
from .writes import SnapshotError, Writes

__all__ = ["MANAGER", "SnapshotController", "content_name_for"]

log = logging.getLogger(__name__)

MANAGER = "snapshot-controller"
VS, VSC, VSCLASS, PVC, PV, VGS = (
    BY_NAME[k] for k in ("VolumeSnapshot", "VolumeSnapshotContent", "VolumeSnapshotClass", "PersistentVolumeClaim", "PersistentVolume", "VolumeGroupSnapshot")
)
API_VERSION = f"{SNAPSHOT_GROUP}/v1"


def content_name_for(snapshot: VolumeSnapshot) -> str:
    """The content a snapshot binds: the one it names, the one it is bound to, else the
    dynamic ``snapcontent-<uid>`` (external-snapshotter's GetDynamicSnapshotContentNameForSnapshot)."""
    return snapshot.content_name or snapshot.bound_content or f"snapcontent-{snapshot.uid}"


class SnapshotController:
    def __init__(self, informer: Informer, objects: ObjectStore, *, workers: int = 4) -> None:
        self.informer = informer
        self.writes = Writes(informer, objects)
        self.snapshots = Loop("snapshot-controller-snapshots", self._sync_snapshot_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VS)])
        self.contents = Loop("snapshot-controller-contents", self._sync_content_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VSC)])
        self.claims = Loop("snapshot-controller-claims", self._sync_claim_key, workers=workers, keys=self._protected_claims)
        informer.on_change(self._on_change)

    async def start(self) -> None:
        for loop in (self.snapshots, self.contents, self.claims):
            await loop.start()

    async def stop(self) -> None:
        for loop in (self.snapshots, self.contents, self.claims):
            await loop.stop()

    def _protected_claims(self) -> list[str]:
        return [key_of(c) for c in self.informer.list(PVC) if FINALIZER_PVC_AS_SOURCE in (c["metadata"].get("finalizers") or [])]

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if kind is VS:
            self.snapshots.add(key_of(obj))
            snap = VolumeSnapshot(obj)
            if snap.claim_name:
                self.claims.add(snap.claim_key())
            if new is None and snap.bound_content:
                self.contents.add(snap.bound_content)
        elif kind is VSC:
            self.contents.add(key_of(obj))
            ref = VolumeSnapshotContent(obj).ref
            if ref.name:
                self.snapshots.add(ref.key)
        elif kind is PVC:
            claim = PersistentVolumeClaim(obj)
            if FINALIZER_PVC_AS_SOURCE in claim.finalizers:
                self.claims.add(claim.key)
            source = data_source(claim)
            for snap in map(VolumeSnapshot, self.informer.list(VS)):
                # A snapshot of this claim (it may be bound now), or one this claim restores
                # from (a deletion waiting for the restore).
                if snap.namespace == claim.namespace and (snap.claim_name == claim.name or (source.get("kind") == VS.name and source.get("name") == snap.name)):
                    self.snapshots.add(snap.key)
        elif kind is VGS and new is None:
            # Its members are garbage now (they name it as their owner).
            uid = obj["metadata"].get("uid")
            for snap in map(VolumeSnapshot, self.informer.list(VS)):
                if any(o.get("uid") == uid for o in snap.metadata.get("ownerReferences") or []):
                    self.snapshots.add(snap.key)
        elif kind is VSCLASS or kind is PV:
            for snap in map(VolumeSnapshot, self.informer.list(VS)):
                if not snap.ready:
                    self.snapshots.add(snap.key)

    # --- snapshots ------------------------------------------------------------------

    async def _sync_snapshot_key(self, key: str) -> None:
        await self.writes.sync(VS, key, self.sync_snapshot)

    async def sync_snapshot(self, obj: Obj) -> None:
        snap = VolumeSnapshot(obj)
        if not snap.deleting and self._orphaned(snap):
            # Kubernetes' garbage collector deletes what a deleted owner owned: a group
            # snapshot deleted without a finalizer (policy Retain) leaves its members here.
            written = await self.writes.delete(obj)
            if written is None:
                return
            snap = VolumeSnapshot(written)
        if snap.deleting:
            await self._delete(snap)
            return
        written = await self.writes.finalizers(obj, add=(FINALIZER_SNAPSHOT_AS_SOURCE,))
        if written is None:
            return
        snap = VolumeSnapshot(written)
        content = self._content_of(snap)
        if content is None:
            if snap.ready or snap.bound_content:
                if snap.group_name and not snap.ready:
                    return  # a group member, whose content its group controller makes next
                raise SnapshotError("SnapshotContentMissing", "VolumeSnapshotContent is missing")
            if snap.content_name:
                raise SnapshotError("SnapshotContentMissing", "VolumeSnapshotContent is missing")
            await self._create_content(snap)
            return
        content = await self._bind_content(snap, content)
        if content.deletion_policy == "Delete" and snap.bound_content == content.name:
            written = await self.writes.finalizers(snap.raw, add=(FINALIZER_SNAPSHOT_BOUND,))
            if written is None:
                return
            snap = VolumeSnapshot(written)
        await self._mirror(snap, content)

    def _owner(self, snap: VolumeSnapshot) -> tuple[VolumeGroupSnapshot | None, bool]:
        """(the group snapshot that owns this member, whether it owns one at all)."""
        owners = [o for o in snap.metadata.get("ownerReferences") or [] if o.get("kind") == VGS.name]
        if not owners:
            return None, False
        group = VolumeGroupSnapshot.get(self.informer.get, namespaced_key(snap.namespace, str(owners[0].get("name") or "")))
        return (group if group is not None and group.uid == owners[0].get("uid") else None), True

    def _orphaned(self, snap: VolumeSnapshot) -> bool:
        group, owned = self._owner(snap)
        return owned and group is None

    def _content_of(self, snap: VolumeSnapshot) -> VolumeSnapshotContent | None:
        """The snapshot's content, checked as external-snapshotter checks it (the right kind of
        source, pointing back at this snapshot) — SnapshotError otherwise; None if there is none."""
        name = content_name_for(snap)
        content = VolumeSnapshotContent.get(self.informer.get, name)
        if content is None:
            return None
        if snap.content_name:
            if not content.source_snapshot_handle:
                raise SnapshotError("SnapshotContentMismatch", "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one")
            if not content.ref.matches(snap):
                raise SnapshotError("SnapshotContentMisbound", f"VolumeSnapshotContent [{name}] is bound to a different snapshot")
            return content
        if content.source_snapshot_handle and not snap.group_name:
            raise SnapshotError("SnapshotHandleSet", f"Snapshot handle should not be set in content {snap.key} for dynamic provisioning")
        if content.ref.uid != snap.uid or not content.ref.matches(snap):
            if snap.ready:
                raise SnapshotError("SnapshotMisbound", "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly")
            raise SnapshotError("SnapshotContentMisbound", f"VolumeSnapshotContent [{name}] is bound to a different snapshot")
        return content

    async def _bind_content(self, snap: VolumeSnapshot, content: VolumeSnapshotContent) -> VolumeSnapshotContent:
        """A pre-provisioned content gets the snapshot's uid (and class) in its volumeSnapshotRef."""
        patch: Obj = {}
        if not content.ref.uid:
            patch["volumeSnapshotRef"] = {"uid": snap.uid}
        if snap.class_name and not content.class_name:
            patch["volumeSnapshotClassName"] = snap.class_name
        if not patch:
            return content
        # The finalizer with the uid, in one write: a bound content is never deleted unseen.
        finalizers = [f for f in content.finalizers if f != FINALIZER_CONTENT_BOUND] + [FINALIZER_CONTENT_BOUND]
        written = await self.writes.update(content.raw, {"spec": patch, "metadata": {"finalizers": finalizers}}, "bind")
        assert written is not None  # a spec change deletes nothing
        return VolumeSnapshotContent(written)

    async def _mirror(self, snap: VolumeSnapshot, content: VolumeSnapshotContent) -> None:
        """The snapshot's status from its content's (external-snapshotter's updateSnapshotStatus)."""
        cs = content.status
        status: Obj = {"boundVolumeSnapshotContentName": content.name, "readyToUse": content.ready}
        if cs.get("creationTime") is not None and not snap.status.get("creationTime"):
            status["creationTime"] = rfc3339(int(cs["creationTime"]))
        size = cs.get("restoreSize")
        if size is not None and (not snap.status.get("restoreSize") or snap.status.get("restoreSize") in ("0", 0)):
            status["restoreSize"] = format_quantity(int(size))
        if content.ready:
            status["error"] = None
        elif cs.get("error"):
            status["error"] = cs["error"]
        changed = {k: v for k, v in status.items() if snap.status.get(k) != v}
        if not changed:
            return
        written = await self.writes.update(snap.raw, {"status": changed}, "status")
        if written is None:
            return
        after = VolumeSnapshot(written)
        if not snap.status.get("creationTime") and after.status.get("creationTime"):
            await self.writes.event(written, "Normal", "SnapshotCreated", f"Snapshot {snap.key} was successfully created by the CSI driver.")
        if not snap.ready and after.ready:
            await self.writes.event(written, "Normal", "SnapshotReady", f"Snapshot {snap.key} is ready to use.")

    async def _create_content(self, snap: VolumeSnapshot) -> None:
        """A dynamic snapshot's content (createSnapshotContent): the claim protected first, so
        its volume cannot go while the snapshot is being cut."""
        if not snap.class_name:
            default = self._default_class(snap)
            written = await self.writes.update(snap.raw, {"spec": {"volumeSnapshotClassName": default.name}}, "default snapshot class")
            if written is None:
                return
            snap = VolumeSnapshot(written)
        failed = "SnapshotContentCreationFailed"
        claim = PersistentVolumeClaim.get(self.informer.get, snap.claim_key())
        if claim is None:
            raise SnapshotError(failed, f"Failed to create snapshot content with error snapshot controller failed to update {snap.name} on API server: cannot get claim from snapshot")
        if claim.deleting:
            raise SnapshotError(failed, f"Failed to create snapshot content with error snapshot controller failed to update {claim.name} on API server: "
                                        "cannot add finalizer on claim because it is being deleted")
        cls = VolumeSnapshotClass.get(self.informer.get, snap.class_name)
        if cls is None:
            raise SnapshotError(failed, f"Failed to create snapshot content with error failed to get input parameters to create snapshot {snap.name}: "
                                        f'volumesnapshotclass.snapshot.storage.k8s.io "{snap.class_name}" not found')
        pv, why = self._volume_of(claim)
        if pv is None:
            raise SnapshotError(failed, f"Failed to create snapshot content with error {why}")
        csi = PersistentVolume(pv).csi
        if csi is None:
            raise SnapshotError(failed, f"Failed to create snapshot content with error cannot find CSI PersistentVolumeSource for volume {PersistentVolume(pv).name}")
        if csi["driver"] != cls.driver:
            raise SnapshotError(failed, f'Failed to create snapshot content with error VolumeSnapshotClass "{cls.name}" is for driver {cls.driver}, '
                                        f"the volume of claim {claim.name} is of driver {csi['driver']}")
        if await self.writes.finalizers(claim.raw, add=(FINALIZER_PVC_AS_SOURCE,)) is None:
            return
        content = {
            "apiVersion": API_VERSION,
            "kind": VSC.name,
            # Bound, and so protected, from the start: deleting it always goes through the
            # CSI snapshotter, which deletes the snapshot first.
            "metadata": {"name": f"snapcontent-{snap.uid}", "finalizers": [FINALIZER_CONTENT_BOUND]},
            "spec": {
                "volumeSnapshotRef": {"kind": VS.name, "apiVersion": API_VERSION, "namespace": snap.namespace, "name": snap.name, "uid": snap.uid},
                "source": {"volumeHandle": csi["volumeHandle"]},
                "volumeSnapshotClassName": cls.name,
                "deletionPolicy": cls.deletion_policy,
                "driver": cls.driver,
                "sourceVolumeMode": PersistentVolume(pv).volume_mode,
            },
        }
        created = await self.writes.create(content)
        await self.writes.event(snap.raw, "Normal", "CreatingSnapshot", f"Waiting for a snapshot {snap.key} to be created by the CSI driver.")
        await self._mirror(snap, VolumeSnapshotContent(created))

    def _default_class(self, snap: VolumeSnapshot) -> VolumeSnapshotClass:
        """The class marked default for the driver of the claim's volume (SetDefaultSnapshotClass)."""
        def failed(why: str) -> SnapshotError:
            return SnapshotError("SetDefaultSnapshotClassFailed", f"Failed to set default snapshot class with error {why}")

        if snap.content_name:
            raise failed("a pre-provisioned snapshot needs no class")  # not reached: only dynamic ones ask
        claim = PersistentVolumeClaim.get(self.informer.get, snap.claim_key())
        if claim is None:
            raise failed(f'persistentvolumeclaim "{snap.claim_name}" not found')
        pv, why = self._volume_of(claim)
        if pv is None:
            raise failed(why)
        driver = PersistentVolume(pv).csi_driver
        defaults = [c for c in map(VolumeSnapshotClass, self.informer.list(VSCLASS)) if c.default and c.driver == driver]
        if not defaults:
            raise failed("cannot find default snapshot class")
        if len(defaults) > 1:
            raise failed(f"{len(defaults)} default snapshot classes were found")
        return defaults[0]

    def _volume_of(self, claim: PersistentVolumeClaim) -> tuple[Obj | None, str]:
        """(the claim's bound PV, "") or (None, why not) (getVolumeFromVolumeSnapshot)."""
        if claim.phase != "Bound" or not claim.volume_name:
            return None, f"the PVC {claim.name} is not yet bound to a PV, will not attempt to take a snapshot"
        pv = self.informer.get(PV, claim.volume_name)
        ref = PersistentVolume(pv).claim_ref if pv is not None else None
        if pv is None or ref is None or not ref.matches(claim):
            return None, "claim in dataSource not bound or invalid"
        return pv, ""

    # --- deletion -------------------------------------------------------------------

    async def _delete(self, snap: VolumeSnapshot) -> None:
        """processSnapshotWithDeletionTimestamp: the content per its policy, then the finalizers."""
        name = content_name_for(snap)
        content = VolumeSnapshotContent.get(self.informer.get, name)
        if content is not None and not (content.ref.uid == snap.uid and content.ref.matches(snap)):
            content = None  # not this snapshot's: leave it alone
        remove: tuple[str, ...] = (FINALIZER_SNAPSHOT_AS_SOURCE,)
        if FINALIZER_SNAPSHOT_IN_GROUP in snap.finalizers:
            group, _ = self._owner(snap)
            if group is not None and not group.deleting:
                await self.writes.event(snap.raw, "Warning", "SnapshotDeletePending",
                                        f"deletion of the individual volume snapshot {snap.key} is not allowed as it belongs to group snapshot "
                                        f"{group.key}. Deleting the group snapshot will trigger the deletion of all the individual volume "
                                        "snapshots that are part of the group.")
                return
            remove += (FINALIZER_SNAPSHOT_IN_GROUP,)
        if content is not None:
            if not content.deleting and not content.snapshot_handle and not content.error and content.volume_handle:
                # The cut may be in flight (or done, unrecorded): let the CSI snapshotter
                # finish it, so that deleting the content deletes the snapshot too. Its
                # status write brings the snapshot back here.
                return
            if self._restoring(snap):
                await self.writes.event(snap.raw, "Warning", "SnapshotDeletePending", "Snapshot is being used to restore a PVC")
                return
            written = await self.writes.annotate(content.raw, ANN_SNAPSHOT_BEING_DELETED, "yes")
            content = VolumeSnapshotContent(written) if written is not None else None
        delete_content = content is not None and content.deletion_policy == "Delete"
        if content is not None and delete_content:
            await self.writes.delete(content.raw)
        else:
            remove += (FINALIZER_SNAPSHOT_BOUND,)  # nothing to wait for: no content, or one retained
        await self.writes.finalizers(snap.raw, remove=remove)

    def _restoring(self, snap: VolumeSnapshot) -> bool:
        """A claim in the snapshot's namespace is still being provisioned from it."""
        for claim in map(PersistentVolumeClaim, self.informer.list(PVC)):
            source = data_source(claim)
            if claim.namespace == snap.namespace and source.get("kind") == VS.name and source.get("name") == snap.name and claim.phase in ("", "Pending"):
                return True
        return False

    # --- contents -----------------------------------------------------------------

    async def _sync_content_key(self, key: str) -> None:
        obj = self.informer.get(VSC, key)
        if obj is not None:
            await self.sync_content(obj)

    async def sync_content(self, obj: Obj) -> None:
        """A bound content carries volumesnapshotcontent-bound-protection; one whose snapshot
        is being deleted is marked so for the CSI snapshotter. A content whose snapshot is gone
        is left as it is: deleting it could delete the data of someone's copied YAML."""
        content = VolumeSnapshotContent(obj)
        if not content.ref.uid:
            return  # pre-provisioned, not bound yet: the snapshot's sync binds it
        written = await self.writes.finalizers(obj, add=(FINALIZER_CONTENT_BOUND,))
        if written is None:
            return
        snap = VolumeSnapshot.get(self.informer.get, content.ref.key)
        if snap is not None and snap.uid == content.ref.uid and snap.deleting:
            await self.writes.annotate(written, ANN_SNAPSHOT_BEING_DELETED, "yes")

    # --- claims ------------------------------------------------------------------------

    async def _sync_claim_key(self, key: str) -> None:
        obj = self.informer.get(PVC, key)
        if obj is not None:
            await self.sync_claim(obj)

    async def sync_claim(self, obj: Obj) -> None:
        """pvc-as-source-protection goes once no snapshot of the claim is being cut."""
        claim = PersistentVolumeClaim(obj)
        if FINALIZER_PVC_AS_SOURCE not in claim.finalizers or self._being_cut(claim):
            return
        await self.writes.finalizers(obj, remove=(FINALIZER_PVC_AS_SOURCE,))

    def _being_cut(self, claim: PersistentVolumeClaim) -> bool:
        for snap in map(VolumeSnapshot, self.informer.list(VS)):
            if snap.namespace != claim.namespace or snap.claim_name != claim.name or snap.ready or snap.group_name:
                continue
            content = VolumeSnapshotContent.get(self.informer.get, content_name_for(snap))
            if content is None:
                if not snap.deleting and not snap.error:
                    return True  # its content is about to be made
                continue
            if not content.snapshot_handle and not content.error:
                return True
            if ANN_SNAPSHOT_BEING_CREATED in content.annotations:
                return True
        return False
