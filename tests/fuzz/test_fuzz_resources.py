"""Hypothesis fuzzing of the resource API (Apply, Get, Delete, List, Watch) against a real
one-node stack of this module's own.

Manifests of every kind start valid and are mutated field by field (dropped, null, wrong
types, hostile strings and quantities, unknown enum values and fields, several volume
sources, duplicate pod volumes); an example applies one to three (a name twice is a merge
patch), or a chain whose objects meet (class → claim → pod, driver → volume → attachment…)
with one mutation, and may linger so that the controllers act. Raw payloads and reads
(random kind spellings, namespaces, label selectors) are fuzzed too. Every call answers
OK or INVALID_ARGUMENT (NOT_FOUND for Get/Delete, ABORTED for a lost race, DEADLINE_EXCEEDED
for a quiet Watch) with a one-line message under 500 characters; an applied object is
strict JSON, reads back the same, passes the server's own validation, and has DNS-label
pod volume names. After every example what it made is deleted, the processes are alive,
/etc and the top of /tmp have nothing new, no mount appeared outside the run dir; service
tracebacks are kept with the example before them and fail the last test, which prints a
(call, status) → count table. Safety: host paths are rewritten below this module's tmp
dir, pods name no node, and objects the stack made itself are never touched.

``VOLPLANE_FUZZ_EXAMPLES`` sets ``max_examples`` per test (default 300, derandomized unless
``VOLPLANE_FUZZ_RANDOM=1``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.launcher import Stack
from tests.conftest import IS_ROOT
from tests.controlplane.conftest import Api
from volplane.csi import resources_pb2 as pb
from volplane.errors import InvalidArgument
from volplane.resources.schema import validate

EXAMPLES = int(os.environ.get("VOLPLANE_FUZZ_EXAMPLES", "300"))
pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (the volume manager bind-mounts pod volumes) and /dev/loop-control"),
    pytest.mark.timeout(max(300, EXAMPLES)),
]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("VOLPLANE_FUZZ_RANDOM", "") != "1",
                database=None, suppress_health_check=list(HealthCheck), print_blob=True)
C = grpc.StatusCode
TIMEOUT = 30.0
ALLOWED = {"Apply": {C.OK, C.INVALID_ARGUMENT, C.ABORTED}, "Get": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
           "Delete": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ABORTED}, "List": {C.OK, C.INVALID_ARGUMENT},
           "Watch": {C.OK, C.INVALID_ARGUMENT, C.DEADLINE_EXCEEDED}}
COUNTS: Counter[tuple[str, str]] = Counter()  # (call, status) → count, generated calls only
TRACEBACKS: list[str] = []  # service log lines with a traceback, with the example before them
NOTES: list[str] = []
# /tmp entries other processes on this machine make all the time (other suites' runs, mktemp, tools).
FOREIGN_TMP = re.compile(r"^(tmp[a-zA-Z0-9_.]{6,}|pytest-of-.*|pip-.*|vpfz-.*|volplane-chaos-.*|chaos.*|bash_tool_.*|\.[^v].*)$")
OURS = re.compile(r"vpfz\d{5}")  # a name drawn here has an example's tag
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
ORDER = ("Pod", "VolumeAttachment", "PersistentVolumeClaim", "PersistentVolume", "StorageClass", "CSIDriver", "Node")  # deletion order
SHORT = dict(zip(ORDER, ("pod", "va", "pvc", "pv", "sc", "drv", "node"), strict=True))
# (kind, variant) chains: CSI provisioning for a pod, static hostPath and local volumes,
# the host-path provisioner, a pre-bound volume, a foreign driver's volume and attachment.
SC, PV, PVC, POD = "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "Pod"
CHAINS = [[(SC, 0), (PVC, 0), (POD, 1)], [(SC, 2), (PVC, 0), (POD, 0)], [(SC, 5), (PV, 1), (PVC, 0), (POD, 0)],
          [(SC, 1), (PV, 2), (PVC, 0), (POD, 1)], [(PV, 4), (PVC, 1), (POD, 3)], [("CSIDriver", 0), (PV, 3), ("VolumeAttachment", 2)]]
Made = dict[tuple[str, str, str], None]  # (kind, namespace, name) of what an example made, in order

# -- values ----------------------------------------------------------------------------

S = st.sampled_from
HOSTILE = ["", " ", "x" * 10_240, "a\x00b", "../..", "/", "*", ">", "~", ".", "..", "UPPER", "é", "😀", " lead", "trail ",
           "a b", "a\nb", "line\n", "\t", "\u202eevil", "-start", "end-", "a_b", "a..b", "a" * 254, "%s", "${HOME}"]
NON_STR = [0, 5, -1, 1.5, True, False, [], ["x"], {}, {"x": "y"}, [{"a": None}], 2**64, -(2**63) - 1]
QUANTITIES = ["10Gi", "0", "-1", "1e3", "10GB", "1.5Gi", "Gi", "99999999999999999999Pi", 5, None, "64Mi", "1Ki", " 1Gi",
              "1Gi\n", "0x10", "١٠Gi", "1E", 1.5, True, [], {}, "", 2**70]
ENUMS = {  # an unknown persistentVolumeReclaimPolicy is accepted on purpose (the PV goes Failed, the seed's rule)
    "accessModes": [["ReadWriteOnce"], ["ReadWriteMany", "ReadOnlyMany"], [], ["ReadWriteOncePod"], ["readwriteonce"], ["RWO"],
                    ["ReadWriteOnce", "ReadWriteOnce"], "ReadWriteOnce", [5], [None], [["ReadWriteOnce"]]],
    "volumeMode": ["Filesystem", "Block", "block", "Raw", ""], "reclaimPolicy": ["Retain", "Delete", "Recycle", "Keep", ""],
    "persistentVolumeReclaimPolicy": ["Retain", "Delete", "Recycle", "Keep", "delete", ""],
    "volumeBindingMode": ["Immediate", "WaitForFirstConsumer", "Later", "immediate", ""], "phase": ["Succeeded", "Failed", "Running", "Bogus", ""],
    "operator": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "in", "Equals", "==", "", "!"],
    "type": ["", "Directory", "DirectoryOrCreate", "File", "Socket", "CharDevice", "Bogus"],
    "apiVersion": ["v1", "storage.k8s.io/v1", "storage.k8s.io/v1beta1", "v2", "apps/v1", "", "V1"],
    "kind": [*ORDER, "pvc", "Secret", "persistentvolumeclaim", "", "Pods"], "driver": ["csi.volplane.io", "a/b", "x" * 64, "drv.", "Drv-1"],
    "provisioner": ["csi.volplane.io", "kubernetes.io/no-provisioner", "kubernetes.io/host-path", "example.com/nfs", "nobody/x"],
}
BOOLS = ("readOnly", "attachRequired", "podInfoOnMount", "unschedulable", "allowVolumeExpansion")  # the loops test them for truth
ENUMS.update({b: [True, False, "false", "true", "no", 0, 1] for b in BOOLS})
DICT_FIELDS = {"labels", "annotations", "matchLabels", "parameters", "volumeAttributes", "capacity", "requests", "limits"}
LIST_FIELDS = {"finalizers", "values", "mountOptions", "volumeLifecycleModes"}
KEYS = ["fz", "a/b", "kubernetes.io/hostname", "", "x" * 300, "UP", "volplane.io/controller-endpoint", "volplane.io/node-endpoint",
        "csi.volume.kubernetes.io/nodeid", "volume.beta.kubernetes.io/storage-class", "storage"]
UNKNOWN_KEYS = ["unknownField", "status", "metadata", "spec", "x-y", "", "nfs", "csi", "hostPath", "local", "nodeName", "uid"]
NAME_KEYS = {"name", "claimName", "persistentVolumeName", "nodeName", "volumeName", "storageClassName", "volumeHandle", "attacher"}
KIND_TEXTS = ["pv", "PersistentVolumes", "persistentvolume", "PV", "pvc.v1", "sc", "storageclasses.storage.k8s.io", "csidrivers",
              "po", "no", "va", " pod ", "csidriver", "node", "", "*", ">", "x" * 10_240, "pods\x00", "Pöd", "..", "pod\n", "events"]
NAMESPACES = ["", "default", "kube-system", "*", ">", "a.b", "UPPER", "x" * 64, "\n", "ns\n", "é", " default", "_"]
SELECTORS = ["", "a=b", "a!=b", "a in (x,y)", "a notin (x)", "a", "!a", "a in (b", "a==", "=b", "!!a", "a,,b", "a in b", "x" * 10_240,
             "a=(b)", "!a in (b)", "a\nb", "*", "a=b,c in (", "()", ")(", "a in ()", "kubernetes.io/hostname=node-1", "é=é"]


DEEP = [f"\x01deep{n}\x01" for n in (30, 900, 5000)]  # ``encode`` makes them n nested JSON lists (json.dumps would recurse)
anything = st.one_of(S(HOSTILE), S(NON_STR), st.just(None), S(DEEP))


def encode(doc: Any) -> bytes:
    return re.sub(r'"\\u0001deep(\d+)\\u0001"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), json.dumps(doc)).encode()


def names(tag: str) -> st.SearchStrategy[Any]:
    return st.one_of(S(HOSTILE), S(NON_STR), st.just(None), S([f"{tag}.with.dots", (f"{tag}-" + "a" * 300)[:253],
                     (f"{tag}-" + "a" * 300)[:254], tag.upper(), f"{tag}-é", f"{tag}_x", f"{tag}\n", "node-1", f"{tag}-pvc0"]))


def value_for(key: Any, tag: str, host: Path) -> st.SearchStrategy[Any]:
    """What may replace the value of a field named ``key``."""
    if key == "path":
        paths = [host / tag / "x", host / tag / ".." / ".." / "etc", host.parent / "run" / "hostpath" / tag, "/etc", "relative", "/", ""]
        return st.one_of(S([str(p) for p in paths]), anything)
    if key in DICT_FIELDS:
        return st.one_of(st.dictionaries(S(KEYS), st.one_of(S(HOSTILE[:12]), S(NON_STR[:4]), st.none()), max_size=3), anything)
    if key in LIST_FIELDS:
        return st.one_of(st.lists(S(["x", "external-attacher/csi.volplane.io", "Persistent", "ro", *HOSTILE[:12]]), max_size=3), anything)
    if key in ENUMS:
        return st.one_of(S(ENUMS[key]), anything)
    return {"storage": S(QUANTITIES), "namespace": st.one_of(S(NAMESPACES), anything)}.get(key, names(tag) if key in NAME_KEYS else anything)


def valid(kind: str, i: int, variant: int, tag: str, host: Path) -> dict[str, Any]:
    """A valid object of ``kind`` named after the example's ``tag``; ``variant`` picks its shape."""
    name = f"{tag}-{SHORT[kind]}{i}"
    meta: dict[str, Any] = {"name": name, "labels": {"fz": tag}, "annotations": {"fz": "1"}}
    sc0, pvc0, pv0, drv0 = f"{tag}-sc0", f"{tag}-pvc0", f"{tag}-pv0", f"{tag}-drv0"
    storage = {"apiVersion": "storage.k8s.io/v1", "kind": kind, "metadata": meta}
    if kind == "StorageClass":
        term = {"matchExpressions": [{"key": "topology.csi.volplane.io/node", "operator": "In", "values": ["node-1"]}]}
        return {**storage, "provisioner": ENUMS["provisioner"][variant % 4], "parameters": {"pool": "shared"}, "reclaimPolicy": "Delete",
                "volumeBindingMode": ["Immediate", "WaitForFirstConsumer"][variant % 2], "allowVolumeExpansion": True, "allowedTopologies": [term]}
    if kind == "PersistentVolume":
        affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}]}}
        source = [{"nfs": {"server": "nfs.invalid", "path": "/exports/x"}},
                  {"hostPath": {"path": str(host / tag / "pv"), "type": "DirectoryOrCreate"}},
                  {"local": {"path": str(host / tag / "local"), "fsType": "ext4"}, "nodeAffinity": affinity},
                  {"csi": {"driver": [drv0, "csi.volplane.io"][variant // 4], "volumeHandle": f"{tag}-handle", "fsType": "ext4",
                           "volumeAttributes": {"pool": "shared"}}}][variant % 4]
        spec = {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": sc0, "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": ["Retain", "Delete", "Recycle"][variant % 3], "mountOptions": ["ro"], **source}
        if variant >= 4:
            spec["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": "default", "name": pvc0}
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "PersistentVolumeClaim":
        spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}, "limits": {"storage": "1Gi"}},
                "volumeMode": "Filesystem", "storageClassName": [sc0, "", sc0][variant % 3]}
        if variant % 3 == 2:
            spec["selector"] = {"matchLabels": {"fz": tag}, "matchExpressions": [{"key": "fz", "operator": "In", "values": [tag]}]}
        return {"apiVersion": "v1", "kind": kind, "metadata": {**meta, "namespace": "default"}, "spec": spec}
    if kind == "Pod":
        vols = [{"name": "data", "persistentVolumeClaim": {"claimName": pvc0, "readOnly": False}},
                {"name": "scratch", "hostPath": {"path": str(host / tag / "pod"), "type": "DirectoryOrCreate"}},
                {"name": "share", "nfs": {"server": "nfs.invalid", "path": "/x"}}]
        spec = {"containers": [{"name": "c", "image": "busybox"}], "volumes": vols[: 1 + variant % 3]}
        pod = {"apiVersion": "v1", "kind": kind, "metadata": {**meta, "namespace": "default"}, "spec": spec}
        return {**pod, "status": {"phase": "Succeeded"}} if variant >= 3 else pod
    if kind == "Node":
        ann = {"csi.volume.kubernetes.io/nodeid": json.dumps({"csi.volplane.io": f"{tag}-node0"})}
        return {"apiVersion": "v1", "kind": kind, "metadata": {**meta, "annotations": ann}, "spec": {"unschedulable": bool(variant % 2)}}
    if kind == "VolumeAttachment":
        return {**storage, "spec": {"attacher": ["csi.volplane.io", drv0][variant // 2 % 2], "nodeName": ["node-1", f"{tag}-node0"][variant % 2],
                                    "source": {"persistentVolumeName": pv0}}}
    ann = {"volplane.io/controller-endpoint": f"unix://{host}/{tag}.sock", "volplane.io/node-endpoint": f"unix://{host}/{tag}-{{node}}.sock",
           "volplane.io/provisioner-names": f"{tag}/prov"}
    return {**storage, "metadata": {**meta, "annotations": ann},
            "spec": {"attachRequired": bool(variant % 2), "podInfoOnMount": False, "volumeLifecycleModes": ["Persistent"]}}


def _fields(obj: Any) -> Iterator[tuple[str, Any]]:
    for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ():
        yield from [(k, v)] if isinstance(k, str) else []
        yield from _fields(v)


def _places(obj: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ():
        yield from _places(v, (*at, k))


def _at(obj: Any, place: tuple[Any, ...]) -> Any:
    for k in place:
        obj = obj[k]
    return obj


@st.composite
def manifest(draw: Callable[..., Any], tag: str, host: Path, kind: str = "", variant: int = -1, most: int = 3) -> dict[str, Any]:
    """A valid object (of ``kind`` and ``variant`` if given) with up to ``most`` mutations."""
    kind = kind or draw(S(ORDER))
    doc = valid(kind, draw(st.integers(0, 1)) if variant < 0 else 0, draw(st.integers(0, 5)) if variant < 0 else variant, tag, host)
    if kind == "PersistentVolume" and draw(st.integers(0, 5)) == 0:  # several sources at once
        doc["spec"].update(draw(S([{"nfs": {"server": "s", "path": "/p"}}, {"csi": {"driver": "csi.volplane.io", "volumeHandle": "h"}}])))
    if kind == "Pod" and draw(st.integers(0, 5)) == 0:  # duplicate volume names
        doc["spec"]["volumes"].append(dict(doc["spec"]["volumes"][0]))
    for _ in range(draw(st.integers(0, most))):
        place = draw(S(list(_places(doc))))
        target = _at(doc, place)
        op = draw(S(["drop", "null", "replace", "replace", "unknown"])) if place else "unknown"
        if op == "unknown":
            if isinstance(target, dict):
                target[draw(S(UNKNOWN_KEYS))] = draw(anything)
            continue
        parent, key = _at(doc, place[:-1]), place[-1]
        if op == "drop":
            del parent[key]
        else:  # a list element is a value of its list's field
            field = key if isinstance(key, str) else (place[-2] if len(place) > 1 else None)
            parent[key] = None if op == "null" else draw(value_for(field, tag, host))
    return doc


# -- the world -------------------------------------------------------------------------


class World:
    """The stack, its client, and where this module may write. Not a dataclass: hypothesis
    prints a failing example's arguments, and the stack's fields hold its credentials."""

    def __init__(self, stack: Stack, api: Api, root: Path) -> None:
        self.stack, self.api, self.root = stack, api, root
        self.host = root / "host"  # every hostPath and local path lies below it
        self.protected: set[tuple[str, str]] = set()  # (kind, name) of objects the stack made itself
        self.seq = 0
        self.log_pos: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"World(run_dir={self.stack.run_dir})"

    def tag(self) -> str:
        self.seq += 1
        return f"vpfz{self.seq:05d}"  # OURS; one length, so that what is drawn from it does not vary

    def call(self, rpc: str, fn: Callable[[], Any], label: str = "") -> tuple[grpc.StatusCode, Any]:
        """One generated call: counted, its status and message checked."""
        try:
            code, details, value = C.OK, "", fn()
        except grpc.RpcError as exc:
            code, details, value = exc.code(), exc.details() or "", None
        COUNTS[(f"{rpc}/{label}" if label else rpc, code.name)] += 1
        assert code in ALLOWED[rpc], f"{rpc} {label} answered {code.name}: {details[:2000]}"
        if code not in (C.OK, C.DEADLINE_EXCEEDED):
            assert details.strip() and "\n" not in details and len(details) < 500, f"{rpc} {code.name}: bad message {details[:1000]!r}"
        return code, value

    def apply(self, payload: bytes, label: str, manager: str = "fuzz") -> dict[str, Any] | None:
        code, reply = self.call("Apply", lambda: self.api.stub.Apply(pb.ApplyRequest(json=payload, field_manager=manager), timeout=TIMEOUT), label)
        if code != C.OK:
            return None
        assert reply.action in ("created", "configured", "unchanged"), reply.action
        obj = json.loads(reply.json, parse_constant=_no_constant)
        try:
            validate(obj)
        except InvalidArgument as exc:
            raise AssertionError(f"the server stored what its own validation refuses: {exc.message}\n{json.dumps(obj)[:2000]}") from None
        bad = [v.get("name") for v in obj["spec"].get("volumes") or [] if not DNS_LABEL.fullmatch(str(v.get("name")))] if obj["kind"] == "Pod" else []
        assert not bad, f"a pod with volume names {bad!r} was accepted: the volume manager mounts inline volumes at …/<name>"
        odd = [(k, v) for k, v in _fields(obj) if k in BOOLS and not isinstance(v, bool)]
        assert not odd, f"stored {odd}: a loop reads a non-empty string or a non-zero number as true"
        self.check_reads_back(obj)
        return obj

    def check_reads_back(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        try:
            got = json.loads(self.api.stub.Get(pb.ObjectRef(kind=obj["kind"], namespace=ns, name=meta["name"]), timeout=TIMEOUT).json)
        except grpc.RpcError as exc:  # a controller may have deleted it (a volume reclaimed)
            assert exc.code() == C.NOT_FOUND, f"Get after Apply answered {exc.code().name}: {exc.details()}"
            last = [t for t, _ in self.api.history(obj["kind"], meta["name"], ns) if t != "EventRecorded"]
            assert last and last[-1] == "ObjectDeleted", f"applied {obj['kind']} {meta['name']} is gone without a deletion: {last}"
            return
        assert got["metadata"]["uid"] == meta["uid"], f"Get returned another object: {got['metadata']} vs {meta}"
        assert int(got["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])  # controllers may have written since
        if got["metadata"]["resourceVersion"] == meta["resourceVersion"]:
            assert got == obj, f"Get differs from Apply at the same resourceVersion:\n{json.dumps(got)[:1500]}\n{json.dumps(obj)[:1500]}"

    # -- the safety net --

    def safe(self, doc: Any, tag: str) -> Any:
        """``doc`` with every hostPath/local path below ``host`` (or the host-path provisioner's
        root), no pod nodeName, no inline source on a pod volume whose name is not a DNS
        label, and no name of an object the stack made itself."""
        if isinstance(doc, list):
            return [self.safe(d, tag) for d in doc]
        if not isinstance(doc, dict):
            return doc
        out = {k: self.safe(v, tag) for k, v in doc.items()}
        for src in (out.get("hostPath"), out.get("local")):
            if isinstance(src, dict) and isinstance(src.get("path"), str) and not self.safe_path(src["path"]):
                src["path"] = str(self.host / tag / (re.sub(r"[^A-Za-z0-9_-]", "_", src["path"])[:40] or "_"))
        kind, meta, spec = out.get("kind"), out.get("metadata"), out.get("spec")
        if kind == "Pod" and isinstance(spec, dict):
            spec.pop("nodeName", None)
            for vol in spec.get("volumes") if isinstance(spec.get("volumes"), list) else []:
                if isinstance(vol, dict) and not (isinstance(vol.get("name"), str) and DNS_LABEL.fullmatch(vol["name"])):
                    for src in ("hostPath", "nfs", "local"):
                        vol.pop(src, None)
        named = isinstance(kind, str) and isinstance(meta, dict) and isinstance(meta.get("name"), str)
        if named and ((kind, meta["name"].strip()) in self.protected or (kind == "CSIDriver" and "volplane" in meta["name"])):
            meta["name"] = f"{tag}-renamed"
        return out

    def safe_path(self, path: str) -> bool:
        inside = path.startswith((f"{self.host}/", f"{self.stack.run_dir}/hostpath/"))
        return "\x00" in path or path == "" or (inside and ".." not in path.split("/"))  # NUL and "" are refused or unusable

    def host_state(self) -> dict[str, Any]:
        with open("/proc/self/mountinfo") as f:  # (root within its filesystem, mount point) of every mount
            mounts = Counter(tuple(_unescape(x) for x in line.split(" ")[3:5]) for line in f)
        return {"etc": set(os.listdir("/etc")), "tmp": set(os.listdir("/tmp")), "mounts": mounts}

    def mine(self, root: str, point: str) -> bool:
        """A mount of our files, or in this module's dir (where only the stack's run dir may have them)."""
        return str(self.root) in root or point.startswith(f"{self.root}/") or bool(OURS.search(point))

    def allowed(self, root: str, point: str, tmp_before: set[str]) -> bool:
        """A mount in the stack's run dir, or another process's: below another /tmp entry
        (other suites run on this machine) and not of our files."""
        run = str(self.stack.run_dir)
        if point == run or point.startswith(f"{run}/"):
            return True
        top = point.split("/")[2] if point.startswith("/tmp/") else ""
        return bool(top) and (top in tmp_before or bool(FOREIGN_TMP.match(top))) and not self.mine(root, point)

    def check_host(self, before: dict[str, Any], what: str) -> None:
        after = self.host_state()
        problems = []
        if before["etc"] != after["etc"]:
            problems.append(f"/etc: new {sorted(after['etc'] - before['etc'])}, gone {sorted(before['etc'] - after['etc'])}")
        # The services never write to /tmp themselves: only a path drawn here could put
        # something there, under a name drawn here. Other new entries are other processes'.
        new_tmp = {n for n in after["tmp"] - before["tmp"] if not FOREIGN_TMP.match(n) or OURS.search(n)}
        drawn = {n for n in new_tmp if OURS.search(n) or any(n in str(v).split("/") for v in [*HOSTILE, "x", "etc", "relative"])}
        NOTES.extend(f"new in /tmp during an example, not ours by its name: {n}" for n in new_tmp - drawn)
        if drawn:
            problems.append(f"/tmp: new {sorted(drawn)}")
        added = [(root, m) for root, m in after["mounts"] - before["mounts"] if not self.allowed(root, m, before["tmp"])]
        for root, m in added:  # do not leave the host damaged, but never touch another process's mount
            if self.mine(root, m):
                subprocess.run(["umount", "-l", m], capture_output=True)
        if added:
            problems.append(f"mounts outside the run dir (root in its filesystem, mount point): {added}")
        if self.stack.dead():
            problems.append(f"dead processes: {self.stack.dead()}")
        assert not problems, f"after {what[:3000]}: " + "; ".join(problems)

    def collect_tracebacks(self, what: str) -> None:
        for log in sorted((self.stack.run_dir / "logs").glob("*.log")):
            with open(log, "rb") as f:
                f.seek(self.log_pos.get(log.name, 0))
                text = f.read().decode(errors="replace")
                self.log_pos[log.name] = f.tell()
            TRACEBACKS.extend(f"{log.name} after {what[:1500]}:\n{line[:4000]}" for line in text.splitlines() if "Traceback" in line)

    def cleanup(self, made: Made) -> None:
        """Delete what an example made, pods first. A finalizer a user set is removed at once;
        a controller's (the attacher's) is waited for a moment, then removed too."""
        for kind, ns, name in sorted(made, key=lambda r: ORDER.index(r[0])):
            obj, deadline = self.api.delete(kind, name, ns), time.monotonic() + 5
            while obj is not None and obj["metadata"].get("deletionTimestamp"):
                obj = self.api.get(kind, name, ns)
                users = obj is not None and not any(f.startswith("external-attacher/") for f in obj["metadata"].get("finalizers") or [])
                if obj is not None and (users or time.monotonic() > deadline):
                    meta = {"name": name, "finalizers": None, **({"namespace": ns} if ns else {})}
                    self.api.apply({"apiVersion": obj["apiVersion"], "kind": kind, "metadata": meta})
                    obj = self.api.get(kind, name, ns)
                time.sleep(0.05 if obj else 0)
            assert self.api.get(kind, name, ns) is None, f"{kind} {ns}/{name} survived its deletion"


def _unescape(field: str) -> str:  # of /proc/self/mountinfo
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _no_constant(text: str) -> Any:
    raise AssertionError(f"the API answered with {text}, which is not JSON")


def run_example(w: World, what: str, steps: Callable[[Made], None]) -> None:
    before = w.host_state()
    made: Made = {}
    try:
        steps(made)
    finally:
        w.cleanup(made)
        w.collect_tracebacks(what)
    w.check_host(before, what)


def remember(made: Made, obj: dict[str, Any] | None) -> None:
    if obj is not None:
        made[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("vpfz-res")
    stack = Stack(root / "run", nodes=1, env={"VOLPLANE_POOL_CAPACITY": "8Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi",
                                              "VOLPLANE_HOSTPATH_DIR": str(root / "run" / "hostpath")})
    stack.start()
    api = Api(stack.api_endpoint)
    w = World(stack, api, root)
    w.host.mkdir()
    time.sleep(1)  # the node registers itself
    w.protected = {(o["kind"], o["metadata"]["name"]) for kind in ORDER for o in api.list(kind)} | {("Node", n) for n in stack.node_ids}
    yield w
    api.close()
    stack.stop()
    with open("/proc/self/mountinfo") as f:
        left = [_unescape(line.split(" ")[4]) for line in f if f" {root}/" in line]
    for m in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


# -- the tests --------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_apply_mutated_manifests(world: World, data: st.DataObject) -> None:
    tag = world.tag()
    chain = data.draw(st.one_of(st.none(), S(range(len(CHAINS)))), label="chain")
    if chain is None:
        docs = data.draw(st.lists(manifest(tag, world.host), min_size=1, max_size=3), label="manifests")
    else:
        which = data.draw(S(range(len(CHAINS[chain]))), label="mutated")
        docs = [data.draw(manifest(tag, world.host, k, v, most=int(i == which)), label=k) for i, (k, v) in enumerate(CHAINS[chain])]
    manager = data.draw(st.one_of(st.just("fuzz"), S(HOSTILE)), label="field_manager")
    linger = data.draw(S([0.0, 0.0, 0.5, 3.0] if chain is not None else [0.0, 0.0, 0.0, 0.5]), label="linger")
    (world.host / tag / "local").mkdir(parents=True)  # the local volume's directory

    def steps(made: Made) -> None:
        for doc in docs:
            remember(made, world.apply(encode(world.safe(doc, tag)), str(doc.get("kind") if doc.get("kind") in ORDER else "other"), manager))
        time.sleep(linger)  # let the controllers act on them

    run_example(world, json.dumps(docs), steps)


RAW = [b"", b"{", b"}", b"[]", b"{}", b"null", b"true", b"0", b"-1.5e308", b'"Pod"', b"NaN", b"Infinity", b"\xff\xfe", b"\xef\xbb\xbf{}",
       b"{'kind': 'Pod'}", b'{"kind":"Pod"', b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"1" * 5000]
INJECT = [b"NaN", b"-Infinity", b"18446744073709551616", b"-9223372036854775809", b"1" * 400, b'"\\ud800"', b'"\\u0000"',
          b"[" * 900 + b"]" * 900, b"[" * 3000 + b"]" * 3000, b'{"a":' * 200 + b"1" + b"}" * 200, b"1e400"]


def raw_payload(how: tuple[str, Any], doc: bytes, docs: bytes) -> bytes:
    what, arg = how
    if what == "raw":
        return RAW[arg]
    if what == "inject":  # a hostile JSON value in the object and in its metadata
        return doc.replace(b"{", b'{"x": ' + INJECT[arg] + b", ", 2)
    if what == "truncated":
        return doc[: arg % (len(doc) + 1)]
    return arg if what == "binary" else docs if what == "list" else json.dumps(arg).encode()


@FUZZ
@given(data=st.data())
def test_apply_raw_payloads(world: World, data: st.DataObject) -> None:
    tag = world.tag()
    docs = data.draw(st.lists(manifest(tag, world.host), min_size=1, max_size=2), label="manifests")
    how = data.draw(st.one_of(  # drawn as a description, so that a failure prints small
        st.tuples(st.just("raw"), st.integers(0, len(RAW) - 1)), st.tuples(st.just("inject"), st.integers(0, len(INJECT) - 1)),
        st.tuples(st.just("truncated"), st.integers(0, 10_000)), st.tuples(st.just("binary"), st.binary(max_size=64)),
        st.tuples(st.just("list"), st.none()),
        st.tuples(st.just("json"), st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.booleans()))), label="payload")
    payload = raw_payload(how, encode(world.safe(docs[0], tag)), encode(world.safe(docs, tag)))
    run_example(world, repr(payload[:1500]), lambda made: remember(made, world.apply(payload, "raw")))


@FUZZ
@given(data=st.data())
def test_reads(world: World, data: st.DataObject) -> None:
    tag = world.tag()
    stub = world.api.stub
    kinds = data.draw(st.lists(S(ORDER), max_size=2), label="valid objects first")
    spelling, ns = st.one_of(S(KIND_TEXTS), S(ORDER)), st.one_of(S(NAMESPACES), S(["default", ""]))
    name = st.one_of(S([f"{tag}-{t}0" for t in SHORT.values()]), names(tag).filter(lambda n: isinstance(n, str)))
    ours = S(ORDER).map(lambda k: (k, "default" if k in ("Pod", "PersistentVolumeClaim") else "", f"{tag}-{SHORT[k]}0"))
    calls = data.draw(st.lists(st.one_of(
        st.tuples(S(["Get", "Delete"]), spelling, ns, name), st.builds(lambda rpc, ref: (rpc, *ref), S(["Get", "Delete"]), ours),
        st.tuples(st.just("List"), spelling, ns, st.booleans(), st.one_of(S(SELECTORS), st.just(f"fz={tag}"))),
        st.tuples(st.just("Watch"), spelling, ns, st.booleans(), S(SELECTORS), S([0, -1, 1, 2**62, 2**63 - 1, -(2**63)]))),
        min_size=1, max_size=4), label="calls")

    def watch_one(req: pb.WatchRequest) -> Any:
        stream = stub.Watch(req, timeout=0.5)
        try:
            return next(iter(stream), None)
        finally:
            stream.cancel()

    def steps(made: Made) -> None:
        for kind in kinds:  # something for the reads to find
            remember(made, world.apply(encode(world.safe(valid(kind, 0, 0, tag, world.host), tag)), kind))
        for rpc, kind_text, namespace, *rest in calls:
            if rpc in ("Get", "Delete"):
                if rpc == "Delete" and any((k, rest[0].strip()) in world.protected for k in ORDER):
                    continue  # never delete what the stack itself made
                ref = pb.ObjectRef(kind=kind_text, namespace=namespace, name=rest[0])
                world.call(rpc, lambda: getattr(stub, rpc)(ref, timeout=TIMEOUT))
            elif rpc == "List":
                req = pb.ListRequest(kind=kind_text, namespace=namespace, all_namespaces=rest[0], label_selector=rest[1])
                world.call(rpc, lambda: stub.List(req, timeout=TIMEOUT))
            else:
                watch = pb.WatchRequest(kind=kind_text, namespace=namespace, all_namespaces=rest[0], label_selector=rest[1], resource_version=rest[2])
                world.call(rpc, lambda: watch_one(watch))

    run_example(world, repr((kinds, calls))[:3000], steps)


def test_zz_stack_survived_and_report(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Every process alive, no traceback in a service's log, both outcomes seen; then the table."""
    assert world.stack.dead() == []
    time.sleep(3)  # let the controllers react to the last examples
    world.collect_tracebacks("the last examples")
    deadline = time.monotonic() + 30  # the dynamic volumes of deleted claims are being deleted
    while (left := [f"{o['kind']} {o['metadata']['name']} ({(o.get('status') or {}).get('phase')})" for k in ORDER for o in world.api.list(k)
                    if "vpfz" in json.dumps([o.get("metadata"), (o.get("spec") or {}).get("claimRef")])]) and time.monotonic() < deadline:
        time.sleep(1)
    NOTES.extend([f"objects left 30 s after every example was cleaned up: {left[:10]}"] if left else [])
    mounts = [m for _, m in world.host_state()["mounts"] if m.startswith(f"{world.stack.run_dir}/kubelet/")]
    NOTES.extend([f"pod volumes still mounted after the run: {mounts[:10]}"] if mounts else [])
    with capsys.disabled():
        print(f"\n\nvolplane resource API fuzz: {sum(COUNTS.values())} generated calls, max_examples={EXAMPLES} per test")
        print(f"{'call':<34}{'status':<22}{'count':>8}")
        for (call, code), n in sorted(COUNTS.items()):
            print(f"{call:<34}{code:<22}{n:>8}")
        for note in sorted(set(NOTES))[:20]:
            print(f"note: {note}")
    codes = Counter(code for (_, code), n in COUNTS.items() for _ in range(n))
    assert codes["OK"] and codes["INVALID_ARGUMENT"], f"one outcome never happened: {dict(codes)}"
    assert {c.split("/")[0] for c, _ in COUNTS} >= set(ALLOWED), "some RPC was never called"
    assert not TRACEBACKS, f"{len(TRACEBACKS)} tracebacks in the services' logs; the first:\n" + "\n\n".join(TRACEBACKS[:3])
