"""What a claim is to be filled from: external-provisioner's dataSource rules, as a
CreateVolume content source.

    source = content_source(informer.get, claim, driver)   # ("snapshot", id) | ("volume", id) | None
    pending_clones(informer.list(PVC), source_claim)        # claims still being cloned from it

``spec.dataSourceRef`` wins over ``spec.dataSource`` (they agree unless the ref names
another namespace). A VolumeSnapshot (apiGroup ``snapshot.storage.k8s.io``) restores its
bound content's snapshot: it must not be being deleted, be bound both ways to a content of
the class's driver, be ready, hold no more than the claim asks for (restoreSize), and be
of the claim's volumeMode unless its content allows a change
(``snapshot.storage.kubernetes.io/allow-volume-mode-change``). A
PersistentVolumeClaim in the claim's namespace is cloned: it must be Bound (and not being
deleted) to a CSI volume of the class's driver bound back to it, of the same volumeMode,
and ask for no more than the claim. Anything else is refused with external-provisioner's
message (``DataSourceError``, which the caller turns into a ProvisioningFailed event and a
retry): a snapshot not ready yet is waited for that way.
"""

from __future__ import annotations

from volplane.errors import FailedPrecondition
from volplane.resources.kinds import BY_NAME, namespaced_key
from volplane.resources.names import SNAPSHOT_GROUP
from volplane.resources.objects import Getter, Obj, PersistentVolume, PersistentVolumeClaim
from volplane.resources.schema import quantity
from volplane.resources.snapshots import VolumeSnapshot, VolumeSnapshotContent

__all__ = ["DataSourceError", "clone_source_key", "content_source", "data_source", "pending_clones"]

VS, PVC = BY_NAME["VolumeSnapshot"], BY_NAME["PersistentVolumeClaim"]
ANN_ALLOW_VOLUME_MODE_CHANGE = "snapshot.storage.kubernetes.io/allow-volume-mode-change"


class DataSourceError(FailedPrecondition):
    """The claim's data source cannot be used (yet)."""


def data_source(claim: PersistentVolumeClaim) -> Obj:
    """The claim's data source ({} for none), its namespace filled in."""
    ref = claim.spec.get("dataSourceRef") or claim.spec.get("dataSource")
    if not ref:
        return {}
    return {**ref, "namespace": ref.get("namespace") or claim.namespace}


def clone_source_key(claim: PersistentVolumeClaim) -> str | None:
    """``namespace/name`` of the claim this one is a clone of, if it is one."""
    source = data_source(claim)
    if source.get("kind") == PVC.name and not source.get("apiGroup"):
        return namespaced_key(source["namespace"], str(source.get("name") or ""))
    return None


def pending_clones(claims: list[Obj], source: PersistentVolumeClaim) -> list[str]:
    """Claims not provisioned yet that clone ``source`` (external-provisioner's clone
    controller keeps cloning-protection on the source while there are any)."""
    out = []
    for claim in map(PersistentVolumeClaim, claims):
        if not claim.deleting and not claim.volume_name and clone_source_key(claim) == source.key:
            out.append(claim.key)
    return sorted(out)


def content_source(get: Getter, claim: PersistentVolumeClaim, driver: str) -> tuple[str, str] | None:
    """("snapshot", CSI snapshot id) or ("volume", CSI volume id) to create the claim's
    volume from, None for an empty volume; DataSourceError when the source cannot be used."""
    source = data_source(claim)
    if not source:
        return None
    kind, name = str(source.get("kind") or ""), str(source.get("name") or "")
    if source["namespace"] != claim.namespace:
        raise DataSourceError(f"data source {kind} {source['namespace']}/{name}: volplane does not provision across namespaces (no ReferenceGrant)")
    if kind == VS.name:
        if source.get("apiGroup") != SNAPSHOT_GROUP:
            raise DataSourceError(f"the PVC source does not belong to the right APIGroup. Expected {SNAPSHOT_GROUP}, Got {source.get('apiGroup') or ''}")
        handle = _snapshot(get, claim, name, driver)
        return "snapshot", handle
    if kind == PVC.name and not source.get("apiGroup"):
        return "volume", _claim(get, claim, name, driver)
    raise DataSourceError(f"data source ({kind}) is not handled by the provisioner, and volplane runs no populator for it")


def _why(kind: str, name: str, message: str) -> DataSourceError:
    return DataSourceError(f"error getting handle for DataSource Type {kind} by Name {name}: {message}")


def _snapshot(get: Getter, claim: PersistentVolumeClaim, name: str, driver: str) -> str:
    """getSnapshotSource."""
    snap = VolumeSnapshot.get(get, namespaced_key(claim.namespace, name))
    if snap is None:
        raise _why(VS.name, name, f'error getting snapshot {name} from api server: volumesnapshots.snapshot.storage.k8s.io "{name}" not found')
    if snap.deleting:
        raise _why(VS.name, name, f"snapshot {name} is being deleted")
    not_bound = f"snapshot {name} not bound"
    content = VolumeSnapshotContent.get(get, snap.bound_content) if snap.bound_content else None
    if content is None or content.ref.uid != snap.uid or not content.ref.matches(snap):
        raise _why(VS.name, name, not_bound)
    if content.driver != driver:
        raise _why(VS.name, name, f"{not_bound} (its VolumeSnapshotContent {content.name} is driver {content.driver}'s, the claim's class provisions with {driver})")
    if not snap.ready:
        raise _why(VS.name, name, f"snapshot {name} is not Ready")
    handle = content.snapshot_handle
    if not handle:
        raise _why(VS.name, name, f"snapshot handle {name} is not available")
    size = snap.status.get("restoreSize")
    if size is not None and claim.request < quantity(size):
        raise _why(VS.name, name, f"requested volume size {claim.request} is less than the size {quantity(size)} for the source snapshot {name}")
    mode = content.spec.get("sourceVolumeMode")
    if mode and mode != claim.volume_mode and content.annotations.get(ANN_ALLOW_VOLUME_MODE_CHANGE) != "true":
        # external-provisioner's prevent-volume-mode-conversion (on by default): a block
        # volume's bytes read as a filesystem, or the reverse, only where an admin says so.
        raise _why(VS.name, name, f"requested volume {claim.key} modifies the mode of the source volume but does not have permission to do so. "
                                  f"{ANN_ALLOW_VOLUME_MODE_CHANGE} annotation is not present on snapshotcontent {content.name}")
    return handle


def _claim(get: Getter, claim: PersistentVolumeClaim, name: str, driver: str) -> str:
    """getPVCSource."""
    kind = PVC.name
    source = PersistentVolumeClaim.get(get, namespaced_key(claim.namespace, name))
    if source is None:
        raise _why(kind, name, f'error getting PVC {name} (namespace "{claim.namespace}") from api server: persistentvolumeclaims "{name}" not found')
    if source.phase != "Bound":
        raise _why(kind, name, f"the PVC DataSource {name} must have a status of Bound.  Got {source.phase or 'Pending'}")
    if source.deleting:
        raise _why(kind, name, f"the PVC DataSource {name} is currently being deleted")
    if not source.storage_class:
        raise _why(kind, name, f"the source PVC ({name}) storageclass cannot be empty")
    if not claim.storage_class:
        raise _why(kind, name, f"the requested PVC ({claim.name}) storageclass cannot be empty")
    if claim.request < source.request:
        raise _why(kind, name, "error, new PVC request must be greater than or equal in size to the specified PVC data source, "
                               f"requested {claim.request} but source is {source.request}")
    if not source.volume_name:
        raise _why(kind, name, f"volume name is empty in source PVC {name}")
    pv = PersistentVolume.get(get, source.volume_name)
    invalid = _why(kind, name, "claim in dataSource not bound or invalid")
    if pv is None or pv.csi is None or pv.phase != "Bound":
        raise invalid
    ref = pv.claim_ref
    if ref is None or ref.uid != source.uid or ref.name != source.name or ref.namespace != source.namespace:
        raise invalid
    if pv.csi_driver != driver:
        raise _why(kind, name, f"claim in dataSource not bound or invalid (its volume {pv.name} is driver {pv.csi_driver}'s, the claim's class provisions with {driver})")
    if pv.volume_mode != claim.volume_mode:
        raise _why(kind, name, f"the source PVC and destination PVCs must have the same volume mode for cloning.  Source is {pv.volume_mode}, "
                               f"but new PVC requested {claim.volume_mode}")
    return str(pv.csi["volumeHandle"])
