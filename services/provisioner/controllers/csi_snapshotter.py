"""The CSI snapshotter role (kubernetes-csi/external-snapshotter, pkg/sidecar-controller):
VolumeSnapshotContents and VolumeGroupSnapshotContents of drivers this process reaches,
cut and deleted through CSI.

    snapshotter = CsiSnapshotter(informer, objects, own_endpoint=cfg.csi_endpoint)
    await snapshotter.start()     # loops: contents ``<name>``, group contents ``<name>``

A dynamic content (``spec.source.volumeHandle``) is cut with CreateSnapshot named
``snapshot-<VolumeSnapshot uid>`` (external-snapshotter's name, with its default prefix),
its class's parameters less the ``csi.storage.k8s.io/`` ones; a group content with
CreateVolumeGroupSnapshot named ``groupsnapshot-<VolumeGroupSnapshot uid>``. The call is
marked on the content first (``…-being-created``) and its answer recorded in the content's
status (snapshotHandle, creationTime in ns, restoreSize in bytes, readyToUse): a crash
between the call and the record calls again with the same name, which CSI answers with
the same snapshot, so nothing is cut twice. A pre-provisioned content
(``spec.source.snapshotHandle``) is looked up with ListSnapshots (a group one with
GetVolumeGroupSnapshot) until it is ready.

A content marked for deletion whose snapshot is being deleted (or gone) is deleted on
the storage when its policy is Delete (DeleteSnapshot; DeleteVolumeGroupSnapshot for a
group's content, whose members go with it) and then lets go of its finalizer; with
Retain only the finalizer goes.
"""

from __future__ import annotations

import logging
from typing import Any

from volplane.csi import csi_pb2 as csi
from volplane.csiclient import CsiClient, client_for
from volplane.errors import NotFound, VolplaneError
from volplane.events import now_ns
from volplane.resources.controller import Loop, Retry
from volplane.resources.drivers import controller_endpoint
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.names import (
    ANN_GROUP_SNAPSHOT_BEING_CREATED,
    ANN_GROUP_SNAPSHOT_BEING_DELETED,
    ANN_SNAPSHOT_BEING_CREATED,
    ANN_SNAPSHOT_BEING_DELETED,
    FINALIZER_CONTENT_BOUND,
    FINALIZER_GROUP_CONTENT_BOUND,
)
from volplane.resources.objects import Obj
from volplane.resources.snapshots import (
    VolumeGroupSnapshot,
    VolumeGroupSnapshotClass,
    VolumeGroupSnapshotContent,
    VolumeSnapshot,
    VolumeSnapshotClass,
    VolumeSnapshotContent,
)
from volplane.resources.store import ObjectStore, rfc3339

from .writes import SnapshotError, Writes

__all__ = ["MANAGER", "CsiSnapshotter", "group_snapshot_name", "snapshot_name"]

log = logging.getLogger(__name__)

MANAGER = "csi-snapshotter"
VS, VSC, VSCLASS, VGS, VGSC, VGSCLASS = (
    BY_NAME[k]
    for k in ("VolumeSnapshot", "VolumeSnapshotContent", "VolumeSnapshotClass", "VolumeGroupSnapshot", "VolumeGroupSnapshotContent", "VolumeGroupSnapshotClass")
)
_CSI_PARAM = "csi.storage.k8s.io/"
_READY_POLL = 2.0  # seconds between looks at a snapshot the driver says is not ready yet


def snapshot_name(snapshot_uid: str) -> str:
    """The CSI name of a VolumeSnapshot's snapshot (external-snapshotter's makeSnapshotName)."""
    return f"snapshot-{snapshot_uid}"


def group_snapshot_name(group_snapshot_uid: str) -> str:
    return f"groupsnapshot-{group_snapshot_uid}"


def _ns(timestamp: Any) -> int:
    at = int(timestamp.ToNanoseconds()) if timestamp is not None else 0
    return at or now_ns()


def _member(snapshot: csi.Snapshot) -> Obj:
    """One entry of a group content's ``status.volumeSnapshotInfoList``."""
    return {
        "volumeHandle": snapshot.source_volume_id,
        "snapshotHandle": snapshot.snapshot_id,
        "creationTime": _ns(snapshot.creation_time),
        "readyToUse": snapshot.ready_to_use,
        "restoreSize": int(snapshot.size_bytes),
    }


class CsiSnapshotter:
    def __init__(self, informer: Informer, objects: ObjectStore, *, own_endpoint: str, workers: int = 4) -> None:
        self.informer = informer
        self.writes = Writes(informer, objects)
        self.own_endpoint = own_endpoint
        self.contents = Loop("csi-snapshotter-contents", self._sync_content_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VSC)])
        self.groups = Loop("csi-snapshotter-group-contents", self._sync_group_key, workers=workers, keys=lambda: [key_of(o) for o in informer.list(VGSC)])
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.contents.start()
        await self.groups.start()

    async def stop(self) -> None:
        await self.contents.stop()
        await self.groups.stop()

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if kind is VSC:
            self.contents.add(key_of(obj))
        elif kind is VGSC:
            self.groups.add(key_of(obj))
        elif kind is VS:
            # A snapshot deleted, or marked so: its content may go now.
            self.contents.add(VolumeSnapshot(obj).bound_content or None)
        elif kind is VGS:
            self.groups.add(VolumeGroupSnapshot(obj).bound_content or None)
        elif kind is VSCLASS:
            for content in map(VolumeSnapshotContent, self.informer.list(VSC)):
                if not content.ready:
                    self.contents.add(content.name)
        elif kind is VGSCLASS:
            for group in map(VolumeGroupSnapshotContent, self.informer.list(VGSC)):
                if not group.ready:
                    self.groups.add(group.name)

    def _client(self, driver: str) -> CsiClient | None:
        endpoint = controller_endpoint(self.informer, driver, self.own_endpoint)
        return None if endpoint is None else client_for(endpoint)

    @staticmethod
    def _parameters(parameters: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in parameters.items() if not k.startswith(_CSI_PARAM)}

    # --- VolumeSnapshotContents ------------------------------------------------------

    async def _sync_content_key(self, key: str) -> None:
        await self.writes.sync(VSC, key, self.sync_content)

    async def sync_content(self, obj: Obj) -> None:
        content = VolumeSnapshotContent(obj)
        client = self._client(content.driver)
        if client is None:
            return  # another driver's, served by someone else (or by nobody yet)
        if content.deleting:
            if self._should_delete(content):
                await self._delete(content, client)
            return
        if content.volume_handle and not content.status.get("snapshotHandle"):
            await self._cut(content, client)
        elif not content.ready:
            await self._refresh(content, client)

    def _should_delete(self, content: VolumeSnapshotContent) -> bool:
        """Marked for deletion because its snapshot is being deleted, or has none: a content
        deleted under a live snapshot waits (external-snapshotter's shouldDelete)."""
        if ANN_SNAPSHOT_BEING_DELETED in content.annotations or not content.ref.uid:
            return True
        snap = VolumeSnapshot.get(self.informer.get, content.ref.key)
        return snap is None or snap.uid != content.ref.uid

    async def _cut(self, content: VolumeSnapshotContent, client: CsiClient) -> None:
        if not content.ref.uid:
            return  # not bound to a snapshot yet: nothing names the cut
        cls = VolumeSnapshotClass.get(self.informer.get, content.class_name) if content.class_name else None
        if cls is None:
            raise SnapshotError("SnapshotCreationFailed", f"Failed to create snapshot: failed to get input parameters to create snapshot for content {content.name}: "
                                                          f'volumesnapshotclass.snapshot.storage.k8s.io "{content.class_name}" not found')
        marked = await self.writes.annotate(content.raw, ANN_SNAPSHOT_BEING_CREATED, "yes")
        if marked is None:
            return
        try:
            snapshot = await client.create_snapshot(snapshot_name(content.ref.uid), content.volume_handle, self._parameters(cls.parameters))
        except VolplaneError as exc:
            raise SnapshotError("SnapshotCreationFailed", f"Failed to create snapshot: failed to take snapshot of the volume {content.volume_handle}: {exc.message}") from None
        status: Obj = {
            "snapshotHandle": snapshot.snapshot_id,
            "creationTime": _ns(snapshot.creation_time),
            "restoreSize": int(snapshot.size_bytes),
            "readyToUse": snapshot.ready_to_use,
            "error": None,
        }
        await self.writes.update(marked, {"status": status, "metadata": {"annotations": {ANN_SNAPSHOT_BEING_CREATED: None}}}, "snapshot created")

    async def _refresh(self, content: VolumeSnapshotContent, client: CsiClient) -> None:
        """A snapshot not ready yet (or a pre-provisioned one never looked at): as ListSnapshots says."""
        handle = content.snapshot_handle
        failed = "SnapshotContentCheckandUpdateFailed"
        try:
            found = await client.find_snapshot(handle)
        except VolplaneError as exc:
            raise SnapshotError(failed, f"Failed to check and update snapshot content: failed to list snapshot for content {content.name}: {exc.message}") from None
        if found is None:
            raise SnapshotError(failed, f"Failed to check and update snapshot content: failed to list snapshot for content {content.name}: snapshot {handle} not found")
        status: Obj = {"snapshotHandle": handle, "readyToUse": found.ready_to_use, "restoreSize": int(found.size_bytes), "error": None}
        if content.status.get("creationTime") is None:
            status["creationTime"] = _ns(found.creation_time)
        changed = {k: v for k, v in status.items() if content.status.get(k) != v}
        if changed:
            await self.writes.update(content.raw, {"status": changed}, "snapshot status")
        if not found.ready_to_use:
            raise Retry(_READY_POLL, f"snapshot {handle} is not ready yet")

    async def _delete(self, content: VolumeSnapshotContent, client: CsiClient) -> None:
        handle = content.snapshot_handle
        delete = content.deletion_policy == "Delete"
        if delete and not handle and content.volume_handle and ANN_SNAPSHOT_BEING_CREATED in content.annotations and content.ref.uid:
            # A cut was asked for and its answer never recorded: ask again (same name, same
            # snapshot) to learn what to delete, rather than leak it. Never under Retain:
            # there the call could cut a snapshot that nothing would ever record or delete.
            cls = VolumeSnapshotClass.get(self.informer.get, content.class_name)
            parameters = self._parameters(cls.parameters) if cls is not None else {}
            try:
                handle = (await client.create_snapshot(snapshot_name(content.ref.uid), content.volume_handle, parameters)).snapshot_id
            except NotFound:
                handle = ""  # its volume is gone, and so is anything cut from it here
        # A group member goes with its group (DeleteVolumeGroupSnapshot), never alone.
        if delete and handle and not content.group_handle:
            try:
                await client.delete_snapshot(handle)
            except NotFound:
                pass  # gone already: deleting is done
            except VolplaneError as exc:
                await self.writes.event(content.raw, "Warning", "SnapshotDeleteError", f"Failed to delete snapshot: {exc.message}")
                raise
        await self.writes.finalizers(content.raw, remove=(FINALIZER_CONTENT_BOUND,))

    # --- VolumeGroupSnapshotContents -------------------------------------------------

    async def _sync_group_key(self, key: str) -> None:
        await self.writes.sync(VGSC, key, self.sync_group)

    async def sync_group(self, obj: Obj) -> None:
        content = VolumeGroupSnapshotContent(obj)
        client = self._client(content.driver)
        if client is None:
            return
        if content.deleting:
            if self._should_delete_group(content):
                await self._delete_group(content, client)
            return
        if content.preprovisioned:
            if not content.ready:
                handles = content.spec["source"]["groupSnapshotHandles"]
                await self._refresh_group(content, client, handles["volumeGroupSnapshotHandle"], list(handles["volumeSnapshotHandles"]))
        elif not content.group_handle:
            await self._cut_group(content, client)
        elif not content.ready:
            await self._refresh_group(content, client, content.group_handle, [m.get("snapshotHandle", "") for m in content.members])

    def _should_delete_group(self, content: VolumeGroupSnapshotContent) -> bool:
        if ANN_GROUP_SNAPSHOT_BEING_DELETED in content.annotations or not content.ref.uid:
            return True
        group = VolumeGroupSnapshot.get(self.informer.get, content.ref.key)
        return group is None or group.uid != content.ref.uid

    def _group_status(self, group: csi.VolumeGroupSnapshot) -> Obj:
        return {
            "volumeGroupSnapshotHandle": group.group_snapshot_id,
            "creationTime": rfc3339(_ns(group.creation_time)),
            "readyToUse": group.ready_to_use,
            "volumeSnapshotInfoList": [_member(s) for s in group.snapshots],
            "error": None,
        }

    async def _cut_group(self, content: VolumeGroupSnapshotContent, client: CsiClient) -> None:
        if not content.ref.uid:
            return
        failed = "GroupSnapshotCreationFailed"
        cls = VolumeGroupSnapshotClass.get(self.informer.get, content.class_name) if content.class_name else None
        if cls is None:
            raise SnapshotError(failed, f"Failed to create group snapshot: failed to get input parameters to create group snapshot for group snapshot content {content.name}: "
                                        f'volumegroupsnapshotclass.groupsnapshot.storage.k8s.io "{content.class_name}" not found')
        marked = await self.writes.annotate(content.raw, ANN_GROUP_SNAPSHOT_BEING_CREATED, "yes")
        if marked is None:
            return
        try:
            group = await client.create_group_snapshot(group_snapshot_name(content.ref.uid), content.volume_handles, self._parameters(cls.parameters))
        except VolplaneError as exc:
            raise SnapshotError(failed, f"Failed to create group snapshot: failed to take group snapshot of the volumes {content.volume_handles}: {exc.message}") from None
        patch = {"status": self._group_status(group), "metadata": {"annotations": {ANN_GROUP_SNAPSHOT_BEING_CREATED: None}}}
        await self.writes.update(marked, patch, "group snapshot created")

    async def _refresh_group(self, content: VolumeGroupSnapshotContent, client: CsiClient, handle: str, snapshot_ids: list[str]) -> None:
        try:
            group = await client.get_group_snapshot(handle, snapshot_ids)
        except VolplaneError as exc:
            raise SnapshotError("GroupSnapshotContentCheckandUpdateFailed",
                                f"Failed to check and update group snapshot content: failed to get group snapshot {handle}: {exc.message}") from None
        status = self._group_status(group)
        if content.status.get("creationTime"):
            status.pop("creationTime")
        changed = {k: v for k, v in status.items() if content.status.get(k) != v}
        if changed:
            await self.writes.update(content.raw, {"status": changed}, "group snapshot status")
        if not group.ready_to_use:
            raise Retry(_READY_POLL, f"group snapshot {handle} is not ready yet")

    async def _delete_group(self, content: VolumeGroupSnapshotContent, client: CsiClient) -> None:
        handle = content.group_handle
        delete = content.deletion_policy == "Delete"
        if delete and not handle and not content.preprovisioned and ANN_GROUP_SNAPSHOT_BEING_CREATED in content.annotations and content.ref.uid:
            # As for a single snapshot: learn the unrecorded cut's handle, to delete it.
            cls = VolumeGroupSnapshotClass.get(self.informer.get, content.class_name)
            parameters = self._parameters(cls.parameters) if cls is not None else {}
            try:
                handle = (await client.create_group_snapshot(group_snapshot_name(content.ref.uid), content.volume_handles, parameters)).group_snapshot_id
            except NotFound:
                handle = ""
        if not handle and content.preprovisioned:
            handle = content.spec["source"]["groupSnapshotHandles"]["volumeGroupSnapshotHandle"]
        if delete and handle:
            try:
                await client.delete_group_snapshot(handle, [m["snapshotHandle"] for m in content.members if m.get("snapshotHandle")])
            except NotFound:
                pass
            except VolplaneError as exc:
                await self.writes.event(content.raw, "Warning", "GroupSnapshotDeleteError", f"Failed to delete group snapshot: {exc.message}")
                raise
        await self.writes.finalizers(content.raw, remove=(FINALIZER_GROUP_CONTENT_BOUND,))
