"""The volume manager of one node (the kubelet's storage part): desired state of world from the
objects in memory, actual state of world from the disk, and a level-based reconciler.

    vm = VolumeManager(informer, ObjectStore(store, manager="kubelet/node-1"), cfg.kubelet_dir, node="node-1",
                       csi_endpoint=cfg.csi_endpoint)
    informer.on_change(vm.on_change)
    await informer.start(); await vm.start()

Keys, as in docs/control-plane.md:

- ``pod:<ns>/<name>`` — MountAttachVolumes for the pod if it is desired here (waits for
  attach, MountDevice, SetUp; writes status.volumes and the VolumesReady condition; then
  NodeExpandVolume for a mounted volume whose claim's expansion is the node's turn,
  ``node_expansion.py``), and
  UnmountVolumes for what the disk holds of another incarnation of that name (or of the
  pod itself once it is deleted, terminated or moved).
- ``node:<node>`` — UnmountVolumes for every pod directory no desired pod owns (pods
  deleted while this process was down included), then UnmountDetachDevices for every
  global mount no pod uses any more, then Node status.volumesInUse made to list what the
  disk has staged and what desired pods want (the kubelet's DSW and ASW), in one write.

The actual state is read from the disk on every sync (``kubelet_paths.py``), so a process
killed at any point converges after a restart with nothing to rebuild: half-done mounts
are redone (the CSI calls are idempotent), and what belongs to no pod is taken down.
Operations on one volume never overlap: they take the volume's lock (its unique name for
CSI, the pod's directory for in-tree volumes) with ``KeyedLocks.acquire``, which waits
rather than fails: a pod's sync and the node's may reach one volume at once, and the
second looks again at what the first left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from volplane.errors import Internal, VolplaneError
from volplane.locks import KeyedLocks
from volplane.resources.controller import Loop, Retry
from volplane.resources.informer import Informer
from volplane.resources.kinds import Kind
from volplane.resources.objects import Node, Obj, PersistentVolume, PersistentVolumeClaim, Pod, VolumeAttachment
from volplane.resources.store import ObjectStore

from ..adapters.storage import HostStorage
from .csi_volumes import CSIDRIVER, VA, CsiVolumes, WaitingForAttach
from .desired_state import CSI, POD, PV, PVC, DesiredVolume, Unresolved, is_desired, resolve
from .kubelet_paths import KubeletDir, PodVolumeOnDisk
from .node_expansion import NodeExpansion
from .node_object import NODE, NodeObject
from .pod_status import PodStatus, volume_entry
from .volume_plugins import InTreePlugins

__all__ = ["VolumeManager"]

log = logging.getLogger(__name__)

_ATTACH_POLL_S = 2.0


class _StepFailed(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause


class VolumeManager:
    def __init__(
        self, informer: Informer, objects: ObjectStore, kubelet_dir: Path, *, node: str, csi_endpoint: str,
        storage: HostStorage | None = None, workers: int = 4, resync: float = 30.0,
    ) -> None:
        storage = storage or HostStorage()
        self.node = node
        self._informer = informer
        self._objects = objects
        self.paths = KubeletDir(kubelet_dir)
        self.node_object = NodeObject(objects, informer, node)
        self._csi = CsiVolumes(self.paths, informer, storage, node=node, own_endpoint=csi_endpoint)
        self._in_tree = InTreePlugins(storage)
        self._status = PodStatus(objects, informer)
        self._expansion = NodeExpansion(objects, informer, self._csi, node=node)
        self._locks = KeyedLocks("volume")
        self.node_key = f"node:{node}"
        self._pods_by_claim: dict[str, set[str]] = {}  # claim key → keys ("pod:ns/name") of pods here using it
        self._claims_by_pv: dict[str, set[str]] = {}  # PV name → claim keys naming it
        self._pods_by_uid: dict[str, str] = {}  # uid → key ("ns/name") of a pod here
        # MountDevice/SetUp started per unique name, numbered: a node sync that looked at the
        # disk when the count was n knows that a volume set up after n is in use, without
        # reading every pod's directories again.
        self._set_up_seq = 0
        self._set_up_at: dict[str, int] = {}
        self.loop = Loop(f"volume-manager/{node}", self.sync, workers=workers, resync=resync, keys=self.keys)
        self._starting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin in the background, as a kubelet does: the node agent serves its CSI calls
        at once, and the volume manager starts once the API server (apigw, which writes the
        Node object for it) has taken the Node's registration."""
        self._starting = asyncio.create_task(self._register_then_run(), name=f"volume-manager/{self.node}:start")

    async def _register_then_run(self) -> None:
        # Whatever the disk says may be staged stays in use until UnmountDevice is done:
        # nothing is reconciled (and so nothing unstaged) before that is on the Node.
        pause = 0.5
        while True:
            try:
                await self.node_object.register([d.unique_name for d in self.paths.devices() if d.unique_name])
                break
            except Exception as exc:  # noqa: BLE001 - the API server away or refusing: ask again, never give up
                log.warning("volume manager on %s: the Node object could not be registered (%s); again in %.0fs", self.node, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
        await self.loop.start()

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        await self.loop.stop()

    # -- keys ---------------------------------------------------------------------------

    def keys(self) -> list[str]:
        pods = {_pod_key(p) for p in self._pods_here()}
        pods |= {f"pod:{v.pod_key}" for v in self.paths.pod_volumes() if v.pod_key}
        return [self.node_key, *sorted(pods)]

    def on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        """Enqueue the keys an object change may concern; cheap, runs in the informer: the
        pods here are found through indexes (claim → pods, volume → claims), not a scan."""
        if kind is POD:
            here = [(p, add) for o, add in ((old, False), (new, True)) if o is not None and (p := Pod(o)).node_name == self.node]
            for p, add in here:
                if add:
                    self._pods_by_uid[p.uid] = p.key
                elif self._pods_by_uid.get(p.uid) == p.key:
                    del self._pods_by_uid[p.uid]
                for claim_key in p.claim_keys:
                    _index(self._pods_by_claim, claim_key, f"pod:{p.key}", add)
            if here:
                self.loop.add(f"pod:{here[0][0].key}")  # old and new are one pod: one key
                self._node_soon()
        elif kind is NODE:
            obj = new or old
            if obj is not None and Node(obj).name == self.node and _labels(old) != _labels(new):
                for key in self.keys():
                    self.loop.add(key)
        elif kind is PVC:
            changed = [(PersistentVolumeClaim(o), add) for o, add in ((old, False), (new, True)) if o is not None]
            for claim, add in changed:
                if claim.volume_name:
                    _index(self._claims_by_pv, claim.volume_name, claim.key, add)
            self._add_pods({claim.key for claim, _ in changed})
        elif kind is PV:
            pvs = {PersistentVolume(o).name for o in (old, new) if o is not None}
            self._add_pods({c for pv in pvs for c in self._claims_by_pv.get(pv, ())})
        elif kind is VA:
            vas = [va for o in (old, new) if o is not None and (va := VolumeAttachment(o)).node_name == self.node]
            pvs = {va.pv_name for va in vas}
            if pvs:
                self._add_pods({c for pv in pvs for c in self._claims_by_pv.get(pv, ())})
        elif kind is CSIDRIVER:
            for pod in self._pods_here():
                self.loop.add(_pod_key(pod))
            self._node_soon()

    def _add_pods(self, claims: set[str]) -> None:
        for claim in claims:
            for pod_key in self._pods_by_claim.get(claim, ()):
                self.loop.add(pod_key)
        self._node_soon()

    def _node_soon(self) -> None:
        """The node-wide sync (UnmountDetachDevices, volumesInUse) scans the disk: changes
        within half a second share one run instead of each paying for a scan."""
        self.loop.add_after(self.node_key, 0.5)

    def _pods_here(self) -> list[Obj]:
        return [p for p in self._informer.list(POD) if Pod(p).node_name == self.node]

    def _desired(self, pod: Obj | None) -> bool:
        return is_desired(pod, self.node, keep_terminated=self.node_object.keep_terminated)

    def _desired_uids(self) -> set[str]:
        return {Pod(p).uid for p in self._pods_here() if self._desired(p)}

    def _uid_desired(self, uid: str) -> bool:
        """Whether the pod of ``uid`` is desired here: an index lookup, since it is asked for
        every pod volume a node sync takes down (a scan of the pods each time was O(N²))."""
        key = self._pods_by_uid.get(uid)
        pod = self._informer.get(POD, key) if key is not None else None
        return pod is not None and Pod(pod).uid == uid and self._desired(pod)

    # -- sync ---------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        if key == self.node_key:
            await self.sync_node()
        elif key.startswith("pod:"):
            await self.sync_pod(key.removeprefix("pod:"))

    async def sync_pod(self, pod_key: str) -> None:
        pod = self._informer.get(POD, pod_key)
        desired = pod if self._desired(pod) else None
        uid = Pod(desired).uid if desired is not None else None
        stale = [v for v in self.paths.pod_volumes(pod_key) if v.pod_uid != uid]
        if stale:
            await self._tear_down_all(stale, lambda v: not self._uid_desired(v.pod_uid))
            self.loop.add(self.node_key)
        if desired is not None:
            await self._mount_pod(desired)
        elif pod is not None and Pod(pod).node_name == self.node:
            await self._status.mark_unmounted(pod)

    async def sync_node(self) -> None:
        if not self.node_object.registered():
            await self.node_object.register()
        desired = self._desired_uids()
        # UnmountVolumes: pod directories of pods no longer desired here, whoever they were.
        seen_at = self._set_up_seq
        on_disk = self.paths.pod_volumes()
        unwanted = [v for v in on_disk if v.pod_uid not in desired]
        errors = await self._tear_down_all(unwanted, lambda v: not self._uid_desired(v.pod_uid), raise_=False)
        # UnmountDetachDevices: global mounts no pod uses or wants any more (the volumes just
        # torn down no longer count as used; anything set up since the scan is skipped below).
        torn = {v.path for v in unwanted if not self.paths.on_disk(v)}
        used = {v.unique_name for v in on_disk if v.unique_name and v.path not in torn} | self._desired_devices()
        released: list[str] = []
        for device in self.paths.devices():
            if device.unique_name in used:
                continue
            async with self._locks.acquire(device.unique_name or str(device.path)):
                if self._set_up_at.get(device.unique_name, -1) > seen_at or self._wanted(device.unique_name, str(device.data.get("specVolID") or "")):
                    continue  # A pod mounted it, or wants it now, while we waited.
                if not device.path.parent.exists():
                    continue  # Another sync took it down while we waited.
                try:
                    await self._csi.unmount_device(device)
                except Exception as exc:  # noqa: BLE001 - one device must not block the others.
                    errors.append(f'UnmountDevice failed for volume "{device.data.get("specVolID", device.path)}": {_reason(exc)}')
                    continue
                self.paths.remove_device(device)
                if device.unique_name:
                    self._expansion.forget(device.unique_name)
                    self._set_up_at.pop(device.unique_name, None)
                    released.append(device.unique_name)
                log.info("unmounted device %s from %s", device.unique_name or "?", device.path)
        # One write of the Node for every device taken down (it stays listed a little longer:
        # the AD controller only waits the longer to detach; a crash before the write is
        # healed below on the next sync).
        if released:
            await self.node_object.remove_in_use(*released)
        await self._report_in_use()
        if errors:
            raise Internal("; ".join(errors))

    def _desired_devices(self) -> set[str]:
        """Unique names of the CSI volumes the desired pods here want (the DSW's)."""
        wanted = set()
        for pod in self._pods_here():
            if self._desired(pod):
                for volume in Pod(pod).volumes:
                    r = resolve(pod, volume, self._informer.get)
                    if isinstance(r, DesiredVolume) and r.is_csi:
                        wanted.add(r.unique_name)
        return wanted

    def _wanted(self, unique_name: str, pv_name: str) -> bool:
        """Whether a desired pod here wants the volume, found through the claim indexes from its PV."""
        if not unique_name:
            return False
        for claim in self._claims_by_pv.get(pv_name, ()):
            for pod_key in self._pods_by_claim.get(claim, ()):
                pod = self._informer.get(POD, pod_key.removeprefix("pod:"))
                if pod is None or not self._desired(pod):
                    continue
                for volume in Pod(pod).volumes:
                    r = resolve(pod, volume, self._informer.get)
                    if isinstance(r, DesiredVolume) and r.unique_name == unique_name:
                        return True
        return False

    async def _report_in_use(self) -> None:
        """Node status.volumesInUse: the devices the disk records and the CSI volumes desired
        pods here want, as the kubelet reports the volumes of its desired and actual states of
        world. Reported in one write for all, ahead of MountDevice, so that a burst of pods
        does not write the Node once per volume (MountDevice still makes sure its own volume
        is listed first). A crash between a device's record and its entry leaves them apart;
        this heals it."""
        on_disk = {d.unique_name for d in self.paths.devices() if d.unique_name}
        wanted = on_disk | self._desired_devices()
        listed = set(self.node_object.in_use())
        stale = sorted(listed - wanted)
        if stale:
            async with contextlib.AsyncExitStack() as held:
                # Every stale name's lock (in order: a MountDevice holds one at most), so that
                # none is being mounted while we look.
                for name in stale:
                    await held.enter_async_context(self._locks.acquire(name))
                on_disk = {d.unique_name for d in self.paths.devices() if d.unique_name}
                wanted = on_disk | self._desired_devices()
                gone = [n for n in stale if n not in wanted]
                if gone:
                    await self.node_object.remove_in_use(*gone)
        missing = wanted - set(self.node_object.in_use())
        if missing:
            await self.node_object.add_in_use(*sorted(missing))

    # -- MountAttachVolumes ---------------------------------------------------------------

    async def _mount_pod(self, pod: Obj) -> None:
        statuses: list[Obj] = []
        failed: list[str] = []
        waiting: list[str] = []
        mounted: list[tuple[DesiredVolume, Path]] = []
        for volume in Pod(pod).volumes:
            r = resolve(pod, volume, self._informer.get)
            if isinstance(r, Unresolved):
                statuses.append(volume_entry(r.name, False, "", r.message))
                if r.hard:
                    failed.append(f'MountVolume.SetUp failed for volume "{r.name}": {r.message}')
                    await self._objects.record(pod, "Warning", "FailedMount", failed[-1])
                continue
            path = self._target_of(pod, r)
            try:
                await self._mount(pod, r, path)
            except WaitingForAttach as exc:
                statuses.append(volume_entry(r.name, False, str(path), str(exc)))
                waiting.append(str(exc))
            except _StepFailed as exc:
                message = f'MountVolume.{exc.step} failed for volume "{r.spec_name}": {_reason(exc.cause)}'
                statuses.append(volume_entry(r.name, False, str(path), message))
                failed.append(message)
                await self._objects.record(pod, "Warning", "FailedMount", message)
            else:
                statuses.append(volume_entry(r.name, True, str(path), ""))
                mounted.append((r, path))
        await self._status.write(pod, statuses)
        await self._expand(pod, mounted)
        if failed:
            raise Internal(f"pod {Pod(pod).key}: " + "; ".join(failed))
        if waiting:
            raise Retry(_ATTACH_POLL_S, waiting[0])

    async def _expand(self, pod: Obj, mounted: list[tuple[DesiredVolume, Path]]) -> None:
        """NodeExpandVolume for each mounted volume whose claim waits for the node (after the
        pod's status: an expansion never holds a pod's volumes back from being ready)."""
        errors: list[BaseException] = []
        for volume, path in mounted:
            if self._expansion.due(volume) is None:
                continue
            async with self._locks.acquire(volume.unique_name):
                try:
                    await self._expansion.expand(pod, volume, path)
                except Exception as exc:  # noqa: BLE001 - one volume must not hold back the others; raised below.
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _target_of(self, pod: Obj, volume: DesiredVolume) -> Path:
        return self.paths.pod_volume(Pod(pod).uid, volume.plugin, volume.spec_name, block=volume.block)

    async def _mount(self, pod: Obj, volume: DesiredVolume, target: Path) -> None:
        if volume.is_csi:
            if self._csi.set_up_done(target):
                return
            async with self._locks.acquire(volume.unique_name):
                self._set_up_seq += 1
                self._set_up_at[volume.unique_name] = self._set_up_seq
                context = self._csi.publish_context(volume)
                try:
                    # Before MountDevice: the AD controller never detaches a volume in use.
                    await self.node_object.add_in_use(volume.unique_name)
                    staging, staged = await self._csi.mount_device(volume, context)
                except Exception as exc:  # Any failure: reported on the pod, retried by the loop.
                    raise _StepFailed("MountDevice", exc) from exc
                if staged:
                    message = f'MountVolume.MountDevice succeeded for volume "{volume.spec_name}" device mount path "{staging}"'
                    await self._objects.record(pod, "Normal", "SuccessfulMountVolume", message)
                try:
                    done = await self._csi.set_up(pod, volume, staging, context)
                except Exception as exc:  # Any failure, as the step that failed.
                    raise _StepFailed("SetUp", exc) from exc
        else:
            async with self._locks.acquire(str(target)):
                owner = Pod(pod)
                record = {
                    "plugin": volume.plugin, "specVolID": volume.spec_name, "volumeName": volume.name, "uniqueName": volume.unique_name,
                    "podUID": owner.uid, "podNamespace": owner.namespace, "podName": owner.name, "nodeName": self.node,
                }
                try:
                    if self.paths.read_pod_volume_data(target) != record:
                        self.paths.write_pod_volume_data(target, record)
                    done = await self._in_tree.set_up(volume, target)
                except Exception as exc:  # Any failure, as the step that failed.
                    raise _StepFailed("SetUp", exc) from exc
        if done:
            log.info("mounted volume %s for pod %s at %s", volume.spec_name, Pod(pod).key, target)
            await self._objects.record(pod, "Normal", "SuccessfulMountVolume", f'MountVolume.SetUp succeeded for volume "{volume.spec_name}"')

    # -- UnmountVolumes ---------------------------------------------------------------------

    async def _tear_down_all(self, volumes: list[PodVolumeOnDisk], unwanted: Callable[[PodVolumeOnDisk], bool], *, raise_: bool = True) -> list[str]:
        """TearDown each volume that is still ``unwanted`` once its lock is held (a pod may have
        become desired again while we waited: keep-terminated-pod-volumes set meanwhile)."""
        errors = []
        for volume in volumes:
            key = volume.unique_name if volume.plugin == CSI and volume.unique_name else str(volume.path)
            async with self._locks.acquire(key):
                if not unwanted(volume) or not self.paths.on_disk(volume):
                    continue  # Wanted again, or another key took it down while we waited.
                try:
                    if volume.plugin == CSI:
                        await self._csi.tear_down(volume)
                    else:
                        await self._in_tree.tear_down(volume.path)
                except Exception as exc:  # noqa: BLE001 - one volume must not block the others.
                    errors.append(f'UnmountVolume.TearDown failed for volume "{volume.spec_name}" of pod {volume.pod_uid}: {_reason(exc)}')
                    continue
                self.paths.remove_pod_volume(volume)
                log.info("unmounted volume %s of pod %s (%s)", volume.spec_name, volume.pod_uid, volume.pod_key or "pod gone")
        if errors and raise_:
            raise Internal("; ".join(errors))
        return errors


def _pod_key(pod: Obj) -> str:
    return f"pod:{Pod(pod).key}"


def _labels(obj: Obj | None) -> dict[str, str]:
    return dict(Node(obj).labels) if obj is not None else {}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, VolplaneError):
        return exc.message
    return str(exc) or type(exc).__name__


def _index(index: dict[str, set[str]], key: str, value: str, add: bool) -> None:
    """Add ``value`` under ``key``, or take it away; a key left with nothing goes (the index
    holds only what is here, not one entry per claim or volume ever seen)."""
    if add:
        index.setdefault(key, set()).add(value)
    elif (values := index.get(key)) is not None:
        values.discard(value)
        if not values:
            del index[key]
