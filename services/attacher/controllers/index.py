"""Lookups over the informer's objects that the attach loops need on every sync.

    index = Index(informer)              # before informer.start(): it sees the replay
    index.pods_using("default/data")     # {"default/web"}: pods naming that claim
    index.pods_on("node-1"); index.vas_of("pvc-1"); index.vas_on("node-1")

Kept current by the informer's change handler, so a sync reads a set instead of
scanning every pod or attachment. It holds keys only; objects are read from the
informer, which is always at least as new.
"""

from __future__ import annotations

from collections import defaultdict

from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind
from volplane.resources.objects import Obj, Pod, VolumeAttachment

__all__ = ["CSIDRIVER", "NODE", "POD", "PV", "PVC", "VA", "Index"]

POD = BY_NAME["Pod"]
PVC = BY_NAME["PersistentVolumeClaim"]
PV = BY_NAME["PersistentVolume"]
NODE = BY_NAME["Node"]
VA = BY_NAME["VolumeAttachment"]
CSIDRIVER = BY_NAME["CSIDriver"]

class Index:
    def __init__(self, informer: Informer) -> None:
        self._claim_users: defaultdict[str, set[str]] = defaultdict(set)  # claim key → pod keys
        self._node_pods: defaultdict[str, set[str]] = defaultdict(set)  # node → pod keys
        self._pv_vas: defaultdict[str, set[str]] = defaultdict(set)  # pv name → VA names
        self._node_vas: defaultdict[str, set[str]] = defaultdict(set)  # node → VA names
        informer.on_change(self._on_change)

    def pods_using(self, claim_key: str) -> set[str]:
        return set(self._claim_users.get(claim_key, ()))

    def pods_on(self, node: str) -> set[str]:
        return set(self._node_pods.get(node, ()))

    def vas_of(self, pv_name: str) -> set[str]:
        return set(self._pv_vas.get(pv_name, ()))

    def vas_on(self, node: str) -> set[str]:
        return set(self._node_vas.get(node, ()))

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        if kind is POD:
            for obj, add in ((old, False), (new, True)):
                if obj is not None:
                    pod = Pod(obj)
                    for claim in pod.claim_keys:
                        _move(self._claim_users, claim, pod.key, add)
                    _move(self._node_pods, pod.node_name, pod.key, add)
        elif kind is VA:
            for obj, add in ((old, False), (new, True)):
                if obj is not None:
                    va = VolumeAttachment(obj)
                    _move(self._pv_vas, va.pv_name, va.name, add)
                    _move(self._node_vas, va.node_name, va.name, add)


def _move(index: defaultdict[str, set[str]], bucket: str, key: str, add: bool) -> None:
    if not bucket:
        return
    if add:
        index[bucket].add(key)
        return
    keys = index.get(bucket)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[bucket]
