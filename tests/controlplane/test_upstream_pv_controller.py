"""Kubernetes' own PV-controller tables (pkg/controller/volume/persistentvolume:
binder_test.go, provision_test.go, recycle_test.go, delete_test.go), replayed end to end.

    pytest tests/controlplane/test_upstream_pv_controller.py -k "6-12"

Each row keeps its upstream name as its test id. Its initial volumes and claims are
written while the provisioner process is stopped (``upstream.Staged``); then the
controller starts, and each row waits for upstream's expected objects and events.
Where upstream checks one syncClaim/syncVolume call and the end to end result goes
further (the next sync finishes what the first began), the row checks the end state
and says so. Rows that cannot be expressed against a running stack are in NOT_PORTED,
with why.

Names of upstream helpers, for reading the rows side by side with the Go tables:
``pv(name, size, claim=, uid=, ...)`` is newVolume(name, size, boundToClaimUID,
boundToClaimName, ...); ``claim(name, size, volume=...)`` is newClaim(name, uid, size,
boundToVolume, ...); ``B`` is AnnBoundByController, ``C`` AnnBindCompleted.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, annotations, phase
from tests.controlplane.upstream import (
    BETA_STORAGE_PROVISIONER,
    BIND_COMPLETED,
    BOUND_BY,
    FINALIZER,
    LABELS,
    MIGRATED_TO,
    PROVISIONED_BY,
    SELECTED_NODE,
    STORAGE_PROVISIONER,
    Staged,
    claim_is,
    ref_of,
    uid_of,
    volume_is,
)

pytestmark = needs_root
Obj = dict[str, Any]
Check = Callable[[], None]
B, C = BOUND_BY, BIND_COMPLETED
GCE_DRIVER = "pd.csi.storage.gke.io"
EXTERNAL = "vendor.com/my-volume"

ROWS: dict[str, Callable[[Staged], Check]] = {}

NOT_PORTED = {
    "1-17 - skip non-available PV if it's not pre-bind": "one syncClaim call only: a PV's phase is the controller's to write, and an unbound PV in Pending, Failed, Released or no phase is Available after its own first sync, before any claim can look at it",
    "4-5 - volume bound by controller to unbound claim": "one syncVolume call only (it leaves the pair half bound); end to end the claim's sync finishes the bind, which rows 1-8 and 1-9 check",
    "4-5 - volume bound by user to bound claim": "one syncVolume call only; end to end the claim's sync finishes the bind, which rows 1-6 and 2-5 check",
    "6-6 - volume is deleted before recycling": "injects a deletion between the sync and the recycle operation (wrapTestWithInjectedOperation): a race inside one sync",
    "6-7 - volume is deleted before recycling": "injects a finished recycle between the sync and the recycle operation: a race inside one sync",
    "6-8 - prebound volume is deleted before recycling": "injects a finished recycle between the sync and the recycle operation: a race inside one sync",
    "8-5 - delete returns error": "a mock deleter's error: the in-tree host-path deleter, once it exists, removes what it can and never fails",
    "8-6 - volume is deleted before deleting": "injects a deletion between the sync and the delete operation: a race inside one sync",
    "8-7 - volume is bound before deleting": "injects a claim resurrected between the sync and the delete operation: a race inside one sync",
    "9-1 - delete returns error": "a mock deleter that fails once and then succeeds: the host-path deleter cannot be made to fail (see 8-5)",
    "11-3 - newProvisioner failure": "a mock plugin whose provisioner cannot be created; no in-tree plugin here fails that way",
    "11-7 - claim is bound before provisioning": "injects a volume made by a parallel controller while the provision operation runs: a race inside one sync",
    "11-8 - cannot save provisioned volume": "injected errors of the API server's PV create (reactor errors)",
    "11-9 - cannot save provisioned volume, delete succeeds": "injected errors of the API server's PV create (reactor errors)",
    "11-10 - cannot save provisioned volume, no delete plugin found": "injected errors of the API server's PV create (reactor errors)",
    "11-11 - cannot save provisioned volume, deleter fails": "injected errors of the API server's PV create, and of a mock deleter",
    "11-12 - cannot save provisioned volume, delete succeeds 2nd time": "injected errors of the API server's PV create, and of a mock deleter",
    "11-19 - provisioned volume saved but API server crashed": "injected errors of the API server's PV create (one error, then AlreadyExists)",
    "11-21 - external provisioner for CSI migration": "CSI migration of an in-tree plugin: there are no in-tree cloud plugins here to migrate",
    "11-23 - skip finding PV and provision for PVC annotated with AnnSelectedNode": "a divergence by design (BRIEF §2, the seed's DelayBinding): with a selected node the controller itself matches PVs — it stands in for the scheduler's volume binder, which upstream pre-binds them — so an Available PV of the class is bound rather than skipped",
    "11-24 - skip finding PV and wait external provisioner for PVC annotated with AnnSelectedNode": "the same divergence by design as 11-23",
}


def row(name: str) -> Callable[[Callable[[Staged], Check]], Callable[[Staged], Check]]:
    """Register an upstream row: the function stages its objects and returns its check."""

    def register(fn: Callable[[Staged], Check]) -> Callable[[Staged], Check]:
        assert name not in ROWS and name not in NOT_PORTED, name
        ROWS[name] = fn
        return fn

    return register


def capacity(pvc: Obj) -> str:
    return str(((pvc.get("status") or {}).get("capacity") or {}).get("storage", ""))


def gone(obj: Obj | None) -> bool:
    return obj is None


# ======================================================================================
# binder_test.go — TestSync: [Unit test set 1] the user did not care which PV they get
# ======================================================================================


@row("1-1 - successful bind")
def _1_1(c: Staged) -> Check:
    v, cl = c.pv("volume1-1", "1Gi"), c.n("claim1-1")
    c.claim("claim1-1", "1Gi")

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


def _no_match(c: Staged, number: str, *, claim_phase: str = "", labelled: bool = False, selector: bool = False) -> Check:
    v, cl = c.pv(f"volume{number}", "1Gi", labels=None if not labelled else LABELS), c.n(f"claim{number}")
    c.claim(f"claim{number}", "1Gi" if selector else "10Gi", phase=claim_phase, selector=LABELS if selector else None)

    def check() -> None:
        c.wait_event("pvc", cl, "Normal FailedBinding")
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
        c.wait("pv", v, lambda o: volume_is(o, "Available"))

    return check


@row("1-2 - noop")
def _1_2(c: Staged) -> Check:
    return _no_match(c, "1-2")


@row("1-3 - reset to Pending")
def _1_3(c: Staged) -> Check:
    return _no_match(c, "1-3", claim_phase="Bound")


@row("1-4 - smallest volume")
def _1_4(c: Staged) -> Check:
    big, small, cl = c.pv("volume1-4_1", "10Gi"), c.pv("volume1-4_2", "1Gi"), c.n("claim1-4")
    c.claim("claim1-4", "1Gi")

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", small, (B, C)))
        c.wait("pv", small, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))
        assert volume_is(c.get("pv", big), "Available")

    return check


def _prebound_wins(c: Staged, number: str, *, by_uid: bool) -> Check:
    cl = c.n(f"claim{number}")
    created = c.claim(f"claim{number}", "1Gi") if by_uid else None
    big = c.pv(f"volume{number}_1", "10Gi", claim=cl, uid=uid_of(created) if created else "")
    small = c.pv(f"volume{number}_2", "1Gi")
    if not by_uid:
        c.claim(f"claim{number}", "1Gi")

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", big, (B, C)))
        assert capacity(pvc) == "10Gi"  # withExpectedCapacity
        c.wait("pv", big, lambda o: volume_is(o, "Bound", cl, uid_of(pvc)))  # the user's binding: no annotation
        assert volume_is(c.get("pv", small), "Available")

    return check


@row("1-5 - prebound volume by name - success")
def _1_5(c: Staged) -> Check:
    return _prebound_wins(c, "1-5", by_uid=False)


@row("1-6 - prebound volume by UID - success")
def _1_6(c: Staged) -> Check:
    return _prebound_wins(c, "1-6", by_uid=True)


@row("1-7 - prebound volume to different claim")
def _1_7(c: Staged) -> Check:
    cl = c.n("claim1-7")
    v = c.pv("volume1-7", "10Gi", claim=cl, uid="uid1-777")
    c.claim("claim1-7", "1Gi")

    def check() -> None:
        c.wait_event("pvc", cl, "Normal FailedBinding")
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
        # Upstream's single syncClaim leaves the volume alone; end to end its own sync
        # finds the claim of that name with another uid, so it is Released (Retain).
        c.wait("pv", v, lambda o: volume_is(o, "Released", cl, "uid1-777"))

    return check


def _finish_after_crash(c: Staged, number: str, pv_phase: str) -> Check:
    cl, v = c.n(f"claim{number}"), c.n(f"volume{number}")
    created = c.claim(f"claim{number}", "1Gi")
    c.pv(f"volume{number}", "1Gi", claim=cl, uid=uid_of(created), ann=(B,), phase=pv_phase)

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created), (B,)))

    return check


@row("1-8 - complete bind after crash - PV bound")
def _1_8(c: Staged) -> Check:
    return _finish_after_crash(c, "1-8", "Available")


@row("1-9 - complete bind after crash - PV status saved")
def _1_9(c: Staged) -> Check:
    return _finish_after_crash(c, "1-9", "Bound")


@row("1-10 - complete bind after crash - PVC bound")
def _1_10(c: Staged) -> Check:
    cl, v = c.n("claim1-10"), c.n("volume1-10")
    created = c.claim("claim1-10", "1Gi", volume=v, ann=(B, C), phase="Pending")
    c.pv("volume1-10", "1Gi", claim=cl, uid=uid_of(created), ann=(B,), phase="Bound")

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created), (B,)))

    return check


@row("1-11 - bind when selector matches")
def _1_11(c: Staged) -> Check:
    v, cl = c.pv("volume1-11", "1Gi", labels=LABELS), c.n("claim1-11")
    c.claim("claim1-11", "1Gi", selector=LABELS)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


@row("1-12 - do not bind when selector does not match")
def _1_12(c: Staged) -> Check:
    return _no_match(c, "1-12", selector=True)


@row("1-13 - delayed binding")
def _1_13(c: Staged) -> Check:
    wait = c.sc("wait", volumeBindingMode="WaitForFirstConsumer")
    v, cl = c.pv("volume1-13", "1Gi", cls=wait), c.n("claim1-13")
    c.claim("claim1-13", "1Gi", cls=wait)

    def check() -> None:
        c.wait_event("pvc", cl, "Normal WaitForFirstConsumer")
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
        assert volume_is(c.get("pv", v), "Available")

    return check


@row("1-14 - successful prebound PV")
def _1_14(c: Staged) -> Check:
    wait = c.sc("wait", volumeBindingMode="WaitForFirstConsumer")
    cl = c.n("claim1-14")
    v = c.pv("volume1-14", "1Gi", claim=cl, cls=wait)
    c.claim("claim1-14", "1Gi", cls=wait)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc)))

    return check


@row("1-15 - successful prebound PVC")
def _1_15(c: Staged) -> Check:
    big, small, cl = c.pv("volume1-15_1", "10Gi"), c.pv("volume1-15_2", "1Gi"), c.n("claim1-15")
    c.claim("claim1-15", "1Gi", volume=big)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", big, (C,)))
        assert capacity(pvc) == "10Gi"
        c.wait("pv", big, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))
        assert volume_is(c.get("pv", small), "Available")

    return check


@row("1-16 - successful prebound PVC")  # upstream's name; the row checks a refusal
def _1_16(c: Staged) -> Check:
    v, cl = c.pv("volume1-16", "1Gi"), c.n("claim1-16")
    c.claim("claim1-16", "1Gi", volume=v, modes=("ReadWriteMany",))

    def check() -> None:
        c.wait_event("pvc", cl, "Warning VolumeMismatch")
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending", v))
        assert volume_is(c.get("pv", v), "Available")
        assert any("incompatible accessMode" in m for m in c.messages("pvc", cl, "VolumeMismatch"))

    return check


@row("1-18 - successful pre-bound PV to PVC provisioning")
def _1_18(c: Staged) -> Check:
    wait = c.sc("wait", volumeBindingMode="WaitForFirstConsumer")
    cl, v = c.n("claim1-18"), c.n("volume1-18")
    created = c.claim("claim1-18", "1Gi", cls=wait, ann={SELECTED_NODE: "node1"})
    c.pv("volume1-18", "1Gi", claim=cl, uid=uid_of(created), cls=wait)

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created)))

    return check


# ======================================================================================
# [Unit test set 2] the user asked for a specific PV
# ======================================================================================


def _missing_volume(c: Staged, number: str, claim_phase: str) -> Check:
    cl = c.n(f"claim{number}")
    c.claim(f"claim{number}", "10Gi", volume=c.n(f"volume{number}"), phase=claim_phase)

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending", c.n(f"volume{number}")))
        assert not [e for e in c.events("pvc", cl) if e.startswith("Warning")]  # noevents

    return check


@row("2-1 - claim prebound to non-existing volume - noop")
def _2_1(c: Staged) -> Check:
    return _missing_volume(c, "2-1", "")


@row("2-2 - claim prebound to non-existing volume - reset status")
def _2_2(c: Staged) -> Check:
    return _missing_volume(c, "2-2", "Bound")


@row("2-3 - claim prebound to unbound volume")
def _2_3(c: Staged) -> Check:
    v, cl = c.pv("volume2-3", "1Gi"), c.n("claim2-3")
    c.claim("claim2-3", "1Gi", volume=v)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (C,)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


@row("2-4 - claim prebound to prebound volume by name")
def _2_4(c: Staged) -> Check:
    cl = c.n("claim2-4")
    v = c.pv("volume2-4", "1Gi", claim=cl)
    c.claim("claim2-4", "1Gi", volume=v)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (C,)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc)))

    return check


@row("2-5 - claim prebound to prebound volume by UID")
def _2_5(c: Staged) -> Check:
    cl, v = c.n("claim2-5"), c.n("volume2-5")
    created = c.claim("claim2-5", "1Gi", volume=v)
    c.pv("volume2-5", "1Gi", claim=cl, uid=uid_of(created))

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (C,)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created)))

    return check


@row("2-6 - claim prebound to already bound volume")
def _2_6(c: Staged) -> Check:
    cl, other, v = c.n("claim2-6"), c.n("claim2-6_1"), c.n("volume2-6")
    c.claim("claim2-6", "1Gi", volume=v, phase="Bound")
    c.pv("volume2-6", "1Gi", claim=other, uid="uid2-6_1", phase="Bound")

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending", v))
        c.wait_event("pvc", cl, "Warning FailedBinding")
        assert ref_of(c.get("pv", v)) == (other, "uid2-6_1")

    return check


@row("2-7 - claim bound by controller to already bound volume")
def _2_7(c: Staged) -> Check:
    cl, other, v = c.n("claim2-7"), c.n("claim2-7_1"), c.n("volume2-7")
    c.claim("claim2-7", "1Gi", volume=v, ann=(B,), phase="Bound")
    c.pv("volume2-7", "1Gi", claim=other, uid="uid2-7_1", phase="Bound")

    def check() -> None:
        # Upstream's syncClaim returns an error and changes nothing ("should never happen").
        c.wait_event("pvc", cl, "Warning FailedBinding")
        c.stays("pvc", cl, lambda o: claim_is(o, "Bound", v, (B,)), seconds=0.5)
        assert ref_of(c.get("pv", v)) == (other, "uid2-7_1")

    return check


@row("2-8 - claim prebound to unbound volume that does not match the selector")
def _2_8(c: Staged) -> Check:
    v, cl = c.pv("volume2-8", "1Gi"), c.n("claim2-8")
    c.claim("claim2-8", "1Gi", volume=v, selector=LABELS)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (C,)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


def _mismatch(c: Staged, number: str, *, size: str = "1Gi", pv_cls: str = "") -> Check:
    v, cl = c.pv(f"volume{number}", "1Gi", cls=pv_cls), c.n(f"claim{number}")
    c.claim(f"claim{number}", size, volume=v, phase="Bound")

    def check() -> None:
        c.wait_event("pvc", cl, "Warning VolumeMismatch")
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending", v))
        assert volume_is(c.get("pv", v), "Available")

    return check


@row("2-9 - claim prebound to unbound volume that size is smaller than requested")
def _2_9(c: Staged) -> Check:
    return _mismatch(c, "2-9", size="2Gi")


@row("2-10 - claim prebound to unbound volume that class is different")
def _2_10(c: Staged) -> Check:
    return _mismatch(c, "2-10", pv_cls="gold")


# ======================================================================================
# [Unit test set 3] syncing a bound claim
# ======================================================================================


@row("3-1 - bound claim with missing VolumeName")
def _3_1(c: Staged) -> Check:
    cl = c.n("claim3-1")
    c.claim("claim3-1", "10Gi", ann=(B, C), phase="Bound")

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Lost", "", (B, C)))
        c.wait_event("pvc", cl, "Warning ClaimLost")

    return check


@row("3-2 - bound claim with missing volume")
def _3_2(c: Staged) -> Check:
    cl, v = c.n("claim3-2"), c.n("volume3-2")
    c.claim("claim3-2", "10Gi", volume=v, ann=(B, C), phase="Bound")

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Lost", v, (B, C)))
        c.wait_event("pvc", cl, "Warning ClaimLost")

    return check


def _bound_claim_unbound_volume(c: Staged, number: str, selector: dict[str, str] | None = None) -> Check:
    v, cl = c.pv(f"volume{number}", "10Gi"), c.n(f"claim{number}")
    c.claim(f"claim{number}", "10Gi", volume=v, ann=(B, C), phase="Pending", selector=selector)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


@row("3-3 - bound claim with unbound volume")
def _3_3(c: Staged) -> Check:
    return _bound_claim_unbound_volume(c, "3-3")


def _misbound(c: Staged, number: str, owner: str, owner_uid: str, ann: tuple[str, ...]) -> Check:
    cl, v = c.n(f"claim{number}"), c.n(f"volume{number}")
    c.pv(f"volume{number}", "10Gi", claim=owner, uid=owner_uid)
    c.claim(f"claim{number}", "10Gi", volume=v, ann=ann, phase="Pending")

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Lost", v, ann))
        c.wait_event("pvc", cl, "Warning ClaimMisbound")
        assert ref_of(c.get("pv", v)) == (owner, owner_uid)

    return check


@row("3-4 - bound claim with prebound volume")
def _3_4(c: Staged) -> Check:
    return _misbound(c, "3-4", c.n("claim3-4"), "claim3-4-x", (B, C))


@row("3-5 - bound claim with bound volume")
def _3_5(c: Staged) -> Check:
    cl, v = c.n("claim3-5"), c.n("volume3-5")
    created = c.claim("claim3-5", "10Gi", volume=v, ann=(C,), phase="Pending")
    c.pv("volume3-5", "10Gi", claim=cl, uid=uid_of(created))

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (C,)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created)))

    return check


@row("3-6 - bound claim with bound volume")
def _3_6(c: Staged) -> Check:
    return _misbound(c, "3-6", c.n("claim3-6-x"), "uid3-6-x", (C,))


@row("3-7 - bound claim with unbound volume where selector doesn't match")
def _3_7(c: Staged) -> Check:
    return _bound_claim_unbound_volume(c, "3-7", selector=LABELS)


# ======================================================================================
# [Unit test set 4] syncVolume
# ======================================================================================


@row("4-1 - pending volume")
def _4_1(c: Staged) -> Check:
    v = c.pv("volume4-1", "10Gi")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Available"))

    return check


@row("4-2 - pending prebound volume")
def _4_2(c: Staged) -> Check:
    cl = c.n("claim4-2")
    v = c.pv("volume4-2", "10Gi", claim=cl)

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Available", cl))

    return check


@row("4-3 - bound volume with missing claim")
def _4_3(c: Staged) -> Check:
    cl = c.n("claim4-3")
    v = c.pv("volume4-3", "10Gi", claim=cl, uid="uid4-3", phase="Bound")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Released", cl, "uid4-3"))

    return check


@row("4-4 - volume bound to claim with different UID")
def _4_4(c: Staged) -> Check:
    cl, v = c.n("claim4-4"), c.n("volume4-4")
    c.claim("claim4-4", "10Gi", volume=v, ann=(C,), phase="Bound")
    c.pv("volume4-4", "10Gi", claim=cl, uid="uid4-4", phase="Bound")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Released", cl, "uid4-4"))

    return check


@row("4-6 - volume bound by to bound claim")
def _4_6(c: Staged) -> Check:
    cl, v = c.n("claim4-6"), c.n("volume4-6")
    created = c.claim("claim4-6", "10Gi", volume=v, phase="Bound")
    c.pv("volume4-6", "10Gi", claim=cl, uid=uid_of(created))

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created)))
        c.wait("pvc", cl, lambda o: phase(o) == "Bound")

    return check


def _bound_elsewhere(c: Staged, number: str, ann: tuple[str, ...]) -> Check:
    cl, v = c.n(f"claim{number}"), c.n(f"volume{number}")
    created = c.claim(f"claim{number}", "10Gi", volume=c.n(f"volume{number}-x"), phase="Bound")
    c.pv(f"volume{number}", "10Gi", claim=cl, uid=uid_of(created), ann=ann, phase="Bound")

    def check() -> None:
        if ann:  # bound by the controller: rolled back entirely
            c.wait("pv", v, lambda o: volume_is(o, "Available"))
            assert BOUND_BY not in annotations(c.get("pv", v) or {})
        else:  # bound by the user: the uid goes, the user's name stays
            c.wait("pv", v, lambda o: volume_is(o, "Available", cl))

    return check


@row("4-7 - volume bound by controller to claim bound somewhere else")
def _4_7(c: Staged) -> Check:
    return _bound_elsewhere(c, "4-7", (B,))


@row("4-8 - volume bound by user to claim bound somewhere else")
def _4_8(c: Staged) -> Check:
    return _bound_elsewhere(c, "4-8", ())


# ======================================================================================
# PVC with class (13-x)
# ======================================================================================


def _class_pick(c: Staged, number: str, small_cls: str, big_cls: str, claim_cls: str | None) -> Check:
    small = c.pv(f"volume{number}-1", "1Gi", cls=small_cls)
    big = c.pv(f"volume{number}-2", "10Gi", cls=big_cls)
    cl = c.n(f"claim{number}")
    c.claim(f"claim{number}", "1Gi", cls=claim_cls)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", big, (B, C)))
        assert capacity(pvc) == "10Gi"
        c.wait("pv", big, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))
        assert volume_is(c.get("pv", small), "Available")

    return check


@row("13-1 - binding to class")
def _13_1(c: Staged) -> Check:
    return _class_pick(c, "13-1", "", "gold", "gold")


@row("13-2 - binding without a class")
def _13_2(c: Staged) -> Check:
    return _class_pick(c, "13-2", "gold", "", None)


@row("13-3 - binding to specific a class")
def _13_3(c: Staged) -> Check:
    return _class_pick(c, "13-3", "silver", "gold", "gold")


def _empty_class(c: Staged, number: str, claim_cls: str | None) -> Check:
    v, cl = c.pv(f"volume{number}", "1Gi"), c.n(f"claim{number}")
    c.claim(f"claim{number}", "1Gi", cls=claim_cls)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


@row("13-4 - empty class")
def _13_4(c: Staged) -> Check:
    return _empty_class(c, "13-4", "")


@row("13-5 - nil class")
def _13_5(c: Staged) -> Check:
    return _empty_class(c, "13-5", None)


# ======================================================================================
# TestSyncBlockVolume (14-x)
# ======================================================================================


def _modes_bind(c: Staged, number: str, mode: str, *, prebound: str = "") -> Check:
    cl = c.n(f"claim{number}")
    v = c.pv(f"volume{number}", "10Gi", mode=mode, claim=cl if prebound == "pv" else "")
    c.claim(f"claim{number}", "10Gi", mode=mode, volume=v if prebound == "pvc" else "")

    def check() -> None:
        want_claim = (C,) if prebound == "pvc" else (B, C)
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, want_claim))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), () if prebound == "pv" else (B,)))
        assert (c.get("pv", v) or {})["spec"].get("volumeMode", "Filesystem") == mode

    return check


@row("14-1 - binding to volumeMode block")
def _14_1(c: Staged) -> Check:
    return _modes_bind(c, "14-1", "Block")


@row("14-2 - binding to volumeMode filesystem")
def _14_2(c: Staged) -> Check:
    return _modes_bind(c, "14-2", "Filesystem")


def _modes_refused(c: Staged, number: str, pv_mode: str, claim_mode: str, event: str, *, cls: str = "", claim_cls: str | None = None, prebound: str = "") -> Check:
    cl = c.n(f"claim{number}")
    v = c.pv(f"volume{number}", "10Gi", mode=pv_mode, cls=cls, claim=cl if prebound == "pv" else "")
    c.claim(f"claim{number}", "10Gi", mode=claim_mode, cls=claim_cls, volume=v if prebound == "pvc" else "")

    def check() -> None:
        c.wait_event("pvc", cl, event)
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending", v if prebound == "pvc" else ""))
        assert volume_is(c.get("pv", v), "Available", cl if prebound == "pv" else "")

    return check


@row("14-3 - do not bind pv volumeMode filesystem and pvc volumeMode block")
def _14_3(c: Staged) -> Check:
    return _modes_refused(c, "14-3", "Filesystem", "Block", "Normal FailedBinding")


@row("14-4 - do not bind pv volumeMode block and pvc volumeMode filesystem")
def _14_4(c: Staged) -> Check:
    return _modes_refused(c, "14-4", "Block", "Filesystem", "Normal FailedBinding")


@row("14-5 - do not bind when matching class but not volumeMode")
def _14_5(c: Staged) -> Check:
    return _modes_refused(c, "14-5", "Filesystem", "Block", "Warning ProvisioningFailed", cls="gold", claim_cls="gold")


@row("14-5-1 - do not bind when matching volumeModes but class does not match")
def _14_5_1(c: Staged) -> Check:
    return _modes_refused(c, "14-5-1", "Filesystem", "Filesystem", "Warning ProvisioningFailed", cls="gold", claim_cls="silver")


@row("14-5-2 - do not bind when pvc is prebound to pv with matching volumeModes but class does not match")
def _14_5_2(c: Staged) -> Check:
    return _modes_refused(c, "14-5-2", "Filesystem", "Filesystem", "Warning VolumeMismatch", cls="gold", claim_cls="silver", prebound="pvc")


@row("14-7 - bind when pv volume is prebound and volumeModes match")
def _14_7(c: Staged) -> Check:
    return _modes_bind(c, "14-7", "Block", prebound="pv")


@row("14-8 - do not bind when pvc is prebound to pv with mismatching volumeModes")
def _14_8(c: Staged) -> Check:
    return _modes_refused(c, "14-8", "Block", "Filesystem", "Warning VolumeMismatch", prebound="pvc")


@row("14-8-1 - do not bind when pvc is prebound to pv with mismatching volumeModes")
def _14_8_1(c: Staged) -> Check:
    return _modes_refused(c, "14-8-1", "Block", "Filesystem", "Normal FailedBinding", prebound="pv")


@row("14-9 - bind when pvc is prebound to pv with matching volumeModes block")
def _14_9(c: Staged) -> Check:
    return _modes_bind(c, "14-9", "Block", prebound="pvc")


@row("14-10 - bind when pv is prebound to pvc with matching volumeModes block")
def _14_10(c: Staged) -> Check:
    return _modes_bind(c, "14-10", "Block", prebound="pv")


@row("14-11 - bind when pvc is prebound to pv with matching volumeModes filesystem")
def _14_11(c: Staged) -> Check:
    return _modes_bind(c, "14-11", "Filesystem", prebound="pvc")


@row("14-12 - bind when pv is prebound to pvc with matching volumeModes filesystem")
def _14_12(c: Staged) -> Check:
    return _modes_bind(c, "14-12", "Filesystem", prebound="pv")


def _volume_side(c: Staged, number: str, pv_mode: str, claim_mode: str) -> Check:
    cl, v = c.n(f"claim{number}"), c.n(f"volume{number}")
    created = c.claim(f"claim{number}", "10Gi", mode=claim_mode)
    c.pv(f"volume{number}", "10Gi", mode=pv_mode, claim=cl, uid=uid_of(created), ann=(B,), phase="Available")

    def check() -> None:
        if pv_mode != claim_mode:
            c.wait_event("pv", v, "Warning VolumeMismatch")
            c.wait_event("pvc", cl, "Warning VolumeMismatch")
            c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
            assert volume_is(c.get("pv", v), "Available", cl, uid_of(created), (B,))
        else:
            # Upstream's syncVolume waits for syncClaim, without a warning; end to end
            # that sync binds the pair.
            c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
            c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created), (B,)))
            assert "Warning VolumeMismatch" not in c.events("pv", v) + c.events("pvc", cl)

    return check


@row("14-13 - output warning when pv is prebound to pvc with different volumeModes")
def _14_13(c: Staged) -> Check:
    return _volume_side(c, "14-13", "Filesystem", "Block")


@row("14-13-1 - output warning when pv is prebound to pvc with different volumeModes")
def _14_13_1(c: Staged) -> Check:
    return _volume_side(c, "14-13-1", "Block", "Filesystem")


@row("14-14 - wait for synClaim without warning when pv is prebound to pvc with matching volumeModes block")
def _14_14(c: Staged) -> Check:
    return _volume_side(c, "14-14", "Block", "Block")


@row("14-14-1 - wait for synClaim without warning when pv is prebound to pvc with matching volumeModes file")
def _14_14_1(c: Staged) -> Check:
    return _volume_side(c, "14-14-1", "Filesystem", "Filesystem")


# ======================================================================================
# TestMultiSync (10-x)
# ======================================================================================


@row("10-1 - successful bind")
def _10_1(c: Staged) -> Check:
    v, cl = c.pv("volume10-1", "1Gi", phase="Pending"), c.n("claim10-1")
    c.claim("claim10-1", "1Gi")

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))

    return check


@row("10-2 - bind PV race")
def _10_2(c: Staged) -> Check:
    cl, winner, loser = c.n("claim10-2"), c.n("volume10-2-1"), c.n("volume10-2-2")
    created = c.claim("claim10-2", "1Gi", volume=winner, ann=(B, C), phase="Bound")
    for upstream in ("volume10-2-1", "volume10-2-2"):
        c.pv(upstream, "1Gi", claim=cl, uid=uid_of(created), ann=(B,), phase="Bound")

    def check() -> None:
        c.wait("pv", loser, lambda o: volume_is(o, "Available"))
        assert volume_is(c.get("pv", winner), "Bound", cl, uid_of(created), (B,))
        assert claim_is(c.get("pvc", cl), "Bound", winner, (B, C))

    return check


# ======================================================================================
# provision_test.go (11-x, 12-x): the in-tree plugin is host-path
# ======================================================================================


def _provisioned(c: Staged, number: str, class_name: str) -> Check:
    gold = c.sc(class_name, "kubernetes.io/host-path", reclaimPolicy="Delete")
    cl = c.n(f"claim{number}")
    created = c.claim(f"claim{number}", "1Gi", cls=gold, isolate=False)
    v = f"pvc-{uid_of(created)}"

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        assert annotations(pvc)[STORAGE_PROVISIONER] == annotations(pvc)[BETA_STORAGE_PROVISIONER] == "kubernetes.io/host-path"
        assert "Normal ProvisioningSucceeded" in c.events("pvc", cl)
        pv = c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created), (B,)))
        assert annotations(pv)[PROVISIONED_BY] == "kubernetes.io/host-path"
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" and pv["spec"]["storageClassName"] == gold
        assert pv["metadata"]["finalizers"] == [FINALIZER]  # HonorPVReclaimPolicy
        assert Path(pv["spec"]["hostPath"]["path"]).is_dir()

    return check


@row("11-1 - successful provision with storage class 1")
def _11_1(c: Staged) -> Check:
    return _provisioned(c, "11-1", "gold")


@row("11-13 - successful provision with storage class 2")
def _11_13(c: Staged) -> Check:
    return _provisioned(c, "11-13", "silver")


@row("12-1 - successful provision")
def _12_1(c: Staged) -> Check:
    return _provisioned(c, "12-1", "gold")


def _provision_refused(c: Staged, number: str, provisioner: str, *, annotated: bool = True, mode: str | None = None, message: str = "", **fields: Any) -> Check:
    sc_fields = {k: v for k, v in fields.items() if k in ("mountOptions",)}
    claim_fields = {k: v for k, v in fields.items() if k not in sc_fields}
    gold = c.sc("gold", provisioner, **sc_fields)
    cl = c.n(f"claim{number}")
    c.claim(f"claim{number}", "1Gi", cls=gold, mode=mode, isolate=False, **claim_fields)

    def check() -> None:
        c.wait_event("pvc", cl, "Warning ProvisioningFailed")
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
        if annotated:  # the plugin exists: the claim is its
            assert annotations(pvc)[STORAGE_PROVISIONER] == annotations(pvc)[BETA_STORAGE_PROVISIONER] == provisioner
        else:  # no plugin of that name: the claim is nobody's
            assert not {STORAGE_PROVISIONER, BETA_STORAGE_PROVISIONER} & set(annotations(pvc))
        if message:
            assert any(m.startswith(message) for m in c.messages("pvc", cl, "ProvisioningFailed")), c.messages("pvc", cl, "ProvisioningFailed")
        assert not [v for v in c.api.list("pv") if ref_of(v)[0] == cl]

    return check


@row("11-2 - plugin not found")
def _11_2(c: Staged) -> Check:
    return _provision_refused(c, "11-2", "kubernetes.io/mock-plugin", annotated=False)


@row("11-4 - provision failure")
def _11_4(c: Staged) -> Check:
    # A real failure of the in-tree plugin in place of the mock's: host-path cannot make a block volume.
    return _provision_refused(c, "11-4", "kubernetes.io/host-path", mode="Block")


@row("11-6 - provisioning when there is a volume available")
def _11_6(c: Staged) -> Check:
    gold = c.sc("gold", "kubernetes.io/host-path", reclaimPolicy="Delete")
    v, cl = c.pv("volume11-6", "1Gi", cls=gold, phase="Pending"), c.n("claim11-6")
    c.claim("claim11-6", "1Gi", cls=gold)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))
        assert "Normal ProvisioningSucceeded" not in c.events("pvc", cl)

    return check


def _never_provisioned(c: Staged, number: str, cls: str | None) -> Check:
    cl = c.n(f"claim{number}")
    c.claim(f"claim{number}", "1Gi", cls=cls)

    def check() -> None:
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
        c.stays("pvc", cl, lambda o: claim_is(o, "Pending"), seconds=0.5)
        assert not [v for v in c.api.list("pv") if ref_of(v)[0] == cl]
        assert STORAGE_PROVISIONER not in annotations(c.get("pvc", cl) or {})

    return check


@row("11-14 - fail due to non-existing class")
def _11_14(c: Staged) -> Check:
    return _never_provisioned(c, "11-14", c.n("non-existing"))


@row("11-15 - no provisioning with class=''")
def _11_15(c: Staged) -> Check:
    return _never_provisioned(c, "11-15", "")


@row("11-16 - no provisioning with class=nil")
def _11_16(c: Staged) -> Check:
    return _never_provisioned(c, "11-16", None)


def _external(c: Staged, number: str, provisioner: str = EXTERNAL, **claim_fields: Any) -> tuple[str, str, Obj]:
    external = c.sc("external", provisioner)
    cl = c.n(f"claim{number}")
    created = c.claim(f"claim{number}", "1Gi", cls=external, isolate=False, **claim_fields)
    return external, cl, created


def _waits_for_external(c: Staged, cl: str, provisioner: str = EXTERNAL) -> Obj:
    c.wait_event("pvc", cl, "Normal ExternalProvisioning")
    pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))
    assert annotations(pvc)[STORAGE_PROVISIONER] == annotations(pvc)[BETA_STORAGE_PROVISIONER] == provisioner
    return pvc


@row("11-17 - external provisioner")
def _11_17(c: Staged) -> Check:
    _, cl, _ = _external(c, "11-17")

    def check() -> None:
        _waits_for_external(c, cl)

    return check


@row("12-3 - external provisioner with volume to be provisioned")
def _12_3(c: Staged) -> Check:
    _, cl, _ = _external(c, "12-3")

    def check() -> None:
        _waits_for_external(c, cl)
        assert not [v for v in c.api.list("pv") if ref_of(v)[0] == cl]

    return check


@row("11-18 - unknown internal provisioner")
def _11_18(c: Staged) -> Check:
    return _provision_refused(c, "11-18", "kubernetes.io/unknown-internal", annotated=False, message="no volume plugin matched")


@row("11-20 - unsupported storageClass.mountOptions")
def _11_20(c: Staged) -> Check:
    return _provision_refused(c, "11-20", "kubernetes.io/host-path", message="Mount options", mountOptions=["foo"])


@row("11-22 - external provisioner with volume available")
def _11_22(c: Staged) -> Check:
    external = c.sc("external", EXTERNAL)
    v, cl = c.pv("volume11-22", "1Gi", cls=external), c.n("claim11-22")
    c.claim("claim11-22", "1Gi", cls=external)

    def check() -> None:
        pvc = c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(pvc), (B,)))
        assert "Normal ExternalProvisioning" not in c.events("pvc", cl)

    return check


SNAPSHOT_SOURCE = {"name": "test-snap", "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io"}


@row("11-25 - failed in-tree provision with data source")
def _11_25(c: Staged) -> Check:
    return _provision_refused(c, "11-25", "kubernetes.io/host-path", message="plugin kubernetes.io/host-path does not support data source", dataSource=SNAPSHOT_SOURCE)


@row("11-26 - csi with data source")
def _11_26(c: Staged) -> Check:
    _, cl, _ = _external(c, "11-26", "mydriver.csi.k8s.io", dataSource=SNAPSHOT_SOURCE)

    def check() -> None:
        _waits_for_external(c, cl, "mydriver.csi.k8s.io")

    return check


def _external_then_volume(c: Staged, number: str, *, bound: bool) -> Check:
    external, cl, created = _external(c, number)

    def check() -> None:
        _waits_for_external(c, cl)
        # The test stands in for the external provisioner: its volume appears.
        v = c.pv(f"pvc-uid{number}", "1Gi", cls=external, claim=cl if bound else "", uid=uid_of(created) if bound else "", ann=(B,) if bound else ())
        c.wait("pvc", cl, lambda o: claim_is(o, "Bound", v, (B, C)))
        c.wait("pv", v, lambda o: volume_is(o, "Bound", cl, uid_of(created), (B,)))

    return check


@row("12-2 - external provisioner with volume provisioned success")
def _12_2(c: Staged) -> Check:
    return _external_then_volume(c, "12-2", bound=False)


@row("12-4 - external provisioner with volume provisioned/bound success")
def _12_4(c: Staged) -> Check:
    return _external_then_volume(c, "12-4", bound=True)


# ======================================================================================
# recycle_test.go (6-x, 7-x): the recycler is the in-tree host-path plugin's
# ======================================================================================


def _dir_with_data(c: Staged, upstream: str) -> Path:
    path = c.path(upstream)
    (path / "sub").mkdir(parents=True)
    (path / "data").write_text("the old claim's data")
    return path


def _recycled(c: Staged, number: str, *, ann: tuple[str, ...]) -> Check:
    cl = c.n(f"claim{number}")
    path = _dir_with_data(c, f"volume{number}")
    v = c.pv(f"volume{number}", "1Gi", claim=cl, uid=f"uid{number}", policy="Recycle", ann=ann, phase="Bound", source={"hostPath": {"path": str(path)}})

    def check() -> None:
        # Bound by the controller: the claimRef goes. Pre-bound by a user: only its uid.
        c.wait("pv", v, lambda o: volume_is(o, "Available", "" if ann else cl))
        assert path.is_dir() and list(path.iterdir()) == []
        assert "Normal VolumeRecycled" in c.events("pv", v)

    return check


@row("6-1 - successful recycle")
def _6_1(c: Staged) -> Check:
    return _recycled(c, "6-1", ann=(B,))


@row("6-2 - successful recycle with prebound volume")
def _6_2(c: Staged) -> Check:
    return _recycled(c, "6-2", ann=())


def _reclaim_failed(c: Staged, number: str, policy: str, source: Obj, reason: str, message: str) -> Check:
    cl = c.n(f"claim{number}")
    v = c.pv(f"volume{number}", "1Gi", claim=cl, uid=f"uid{number}", policy=policy, phase="Bound", source=source)

    def check() -> None:
        failed = c.wait("pv", v, lambda o: volume_is(o, "Failed", cl, f"uid{number}"))
        assert failed["status"]["reason"] == reason and failed["status"]["message"].startswith(message), failed["status"]
        c.wait_event("pv", v, f"Warning {reason}")

    return check


NFS = {"nfs": {"server": "192.0.2.1", "path": "/export"}}


@row("6-3 - plugin not found")
def _6_3(c: Staged) -> Check:
    return _reclaim_failed(c, "6-3", "Recycle", NFS, "VolumeFailedRecycle", "No recycler plugin found for the volume!")


@row("6-4 - newRecycler returns error")
def _6_4(c: Staged) -> Check:
    # The host-path recycler refuses to be made for a path outside its root, as upstream's
    # refuses anything outside /tmp: a real newRecycler error in place of the mock's.
    return _reclaim_failed(c, "6-4", "Recycle", {"hostPath": {"path": f"/tmp/{c.n('outside')}"}}, "VolumeFailedRecycle", "Recycle failed: ")


def _file_in_root(c: Staged, upstream: str) -> Path:
    path = c.path(upstream)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory")
    return path


@row("6-5 - recycle returns error")
def _6_5(c: Staged) -> Check:
    path = _file_in_root(c, "volume6-5")
    return _reclaim_failed(c, "6-5", "Recycle", {"hostPath": {"path": str(path)}}, "VolumeFailedRecycle", "Recycle failed: ")


@row("6-9 - prebound volume is recycled while the claim exists")
def _6_9(c: Staged) -> Check:
    cl = c.n("claim6-9")
    path = _dir_with_data(c, "volume6-9")
    v = c.pv("volume6-9", "1Gi", claim=cl, uid="uid6-9", policy="Recycle", phase="Bound", source={"hostPath": {"path": str(path)}})
    c.claim("claim6-9", "10Gi", phase="Pending")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Available", cl))
        assert list(path.iterdir()) == []
        c.stays("pvc", cl, lambda o: claim_is(o, "Pending"), seconds=0.3)  # the volume is too small for it

    return check


@row("6-10 - unknown reclaim policy")
def _6_10(c: Staged) -> Check:
    return _reclaim_failed(c, "6-10", "Unknown", {}, "VolumeUnknownReclaimPolicy", "Volume has unrecognized PersistentVolumeReclaimPolicy")


def _used_by_pod(c: Staged, number: str, claim_name: str, pod_name: str, pod_phase: str) -> Check:
    cl = c.n(claim_name)
    path = _dir_with_data(c, f"volume{number}")
    v = c.pv(f"volume{number}", "1Gi", claim=cl, uid=f"uid{number}", policy="Recycle", ann=(B,), phase="Bound", source={"hostPath": {"path": str(path)}})
    pod = c.pod(pod_name, cl, pod_phase)

    def check() -> None:
        c.wait_event("pv", v, "Normal VolumeFailedRecycle")
        assert c.messages("pv", v, "VolumeFailedRecycle") == [f"Volume is used by pods: default/{pod}"]
        c.stays("pv", v, lambda o: volume_is(o, "Released", cl, f"uid{number}", (B,)), seconds=0.5)
        assert (path / "data").read_text() == "the old claim's data"  # not scrubbed under the pod
        # Beyond upstream's row: once the pod is gone, the recycle goes ahead.
        c.api.delete("pod", pod, "default")
        c.wait("pv", v, lambda o: volume_is(o, "Available"))
        assert list(path.iterdir()) == []

    return check


@row("6-11 - used by running pod")
def _6_11(c: Staged) -> Check:
    return _used_by_pod(c, "6-11", "runningClaim", "runningPod", "Running")


@row("6-12 - used by pending pod")
def _6_12(c: Staged) -> Check:
    return _used_by_pod(c, "6-12", "pendingClaim", "pendingPod", "")


@row("6-13 - used by completed pod")
def _6_13(c: Staged) -> Check:
    cl = c.n("completedClaim")
    path = _dir_with_data(c, "volume6-13")
    v = c.pv("volume6-13", "1Gi", claim=cl, uid="uid6-13", policy="Recycle", ann=(B,), phase="Bound", source={"hostPath": {"path": str(path)}})
    c.pod("completedPod", cl, "Succeeded")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Available"))
        assert list(path.iterdir()) == []

    return check


@row("6-14 - seemingly used by running pod")
def _6_14(c: Staged) -> Check:
    cl = c.n("completedClaim")
    path = _dir_with_data(c, "volume6-14")
    v = c.pv("volume6-14", "1Gi", claim=cl, uid="uid6-14", policy="Recycle", ann=(B,), phase="Bound", source={"hostPath": {"path": str(path)}})
    c.claim("completedClaim", "10Gi", phase="Bound")  # another claim of that name: the pod's is on another volume
    c.pod("runningPod", cl, "Running")

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Available"))
        assert list(path.iterdir()) == []
        c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))

    return check


@row("7-1 - recycle returns error")
def _7_1(c: Staged) -> Check:
    cl = c.n("claim7-1")
    path = _file_in_root(c, "volume7-1")
    v = c.pv("volume7-1", "1Gi", claim=cl, uid="uid7-1", policy="Recycle", phase="Bound", source={"hostPath": {"path": str(path)}})

    def check() -> None:
        c.wait("pv", v, lambda o: phase(o) == "Failed")
        c.wait_event("pv", v, "Warning VolumeFailedRecycle")
        # What made the recycler fail is mended; the controller's next sync of the volume
        # (here brought on by a label) recycles it.
        path.unlink()
        path.mkdir()
        (path / "data").write_text("x")
        c.api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": v, "labels": {"mended": "yes"}}})
        done = c.wait("pv", v, lambda o: volume_is(o, "Available", cl))
        assert not done["status"].get("reason") and list(path.iterdir()) == []

    return check


# ======================================================================================
# delete_test.go (8-x)
# ======================================================================================


def _deleted(c: Staged, number: str, *, ann: tuple[str, ...], other_claim: bool = False) -> Check:
    cl = c.n(f"claim{number}")
    path = _dir_with_data(c, f"volume{number}")
    v = c.pv(f"volume{number}", "1Gi", claim=cl, uid=f"uid{number}", policy="Delete", ann=ann, phase="Bound", source={"hostPath": {"path": str(path)}})
    if other_claim:
        c.claim(f"claim{number}", "10Gi", phase="Pending")

    def check() -> None:
        c.wait("pv", v, gone)
        assert not path.exists()
        if other_claim:
            c.wait("pvc", cl, lambda o: claim_is(o, "Pending"))

    return check


@row("8-1 - successful delete")
def _8_1(c: Staged) -> Check:
    return _deleted(c, "8-1", ann=(B,))


@row("8-2 - successful delete with prebound volume")
def _8_2(c: Staged) -> Check:
    return _deleted(c, "8-2", ann=())


@row("8-3 - plugin not found")
def _8_3(c: Staged) -> Check:
    return _reclaim_failed(c, "8-3", "Delete", NFS, "VolumeFailedDelete", f'error getting deleter volume plugin for volume "{c.n("volume8-3")}": no volume plugin matched')


@row("8-4 - newDeleter returns error")
def _8_4(c: Staged) -> Check:
    outside = f"/tmp/{c.n('outside')}"
    return _reclaim_failed(c, "8-4", "Delete", {"hostPath": {"path": outside}}, "VolumeFailedDelete", f'failed to create deleter for volume "{c.n("volume8-4")}": ')


@row("8-9 - prebound volume is deleted while the claim exists")
def _8_9(c: Staged) -> Check:
    return _deleted(c, "8-9", ann=(), other_claim=True)


def _external_deleter(c: Staged, number: str, ann: dict[str, str], source: Obj | None = None) -> Check:
    cl = c.n(f"claim{number}")
    csi = {"csi": {"driver": GCE_DRIVER, "volumeHandle": c.n("handle")}}
    v = c.pv(f"volume{number}", "1Gi", claim=cl, uid=f"uid{number}", policy="Delete", ann={B: "yes", **ann}, phase="Bound", source=source or csi)

    def check() -> None:
        c.wait("pv", v, lambda o: volume_is(o, "Released", cl, f"uid{number}", (B,)))
        # Released for its external deleter: never Failed, never deleted here.
        c.stays("pv", v, lambda o: volume_is(o, "Released", cl, f"uid{number}", (B,)), seconds=1.0)
        assert not [e for e in c.events("pv", v) if e.startswith("Warning")]

    return check


@row("8-10-1 - external deleter when volume is dynamic provisioning")
def _8_10_1(c: Staged) -> Check:
    return _external_deleter(c, "8-10-1", {PROVISIONED_BY: "external.io/test"})


@row("8-10-2 - external deleter when volume is static provisioning")
def _8_10_2(c: Staged) -> Check:
    return _external_deleter(c, "8-10-2", {})


@row("8-10-3 - external deleter when volume is migrated")
def _8_10_3(c: Staged) -> Check:
    path = _dir_with_data(c, "volume8-10-3")
    check = _external_deleter(c, "8-10-3", {MIGRATED_TO: GCE_DRIVER, PROVISIONED_BY: "kubernetes.io/gce-pd"}, {"hostPath": {"path": str(path)}})

    def and_the_data_stays() -> None:
        check()
        assert (path / "data").exists()

    return and_the_data_stays


@row("8-11 - two PVs provisioned for a single claim")
def _8_11(c: Staged) -> Check:
    cl, loser, winner = c.n("claim8-11"), c.n("volume8-11-1"), c.n("volume8-11-2")
    created = c.claim("claim8-11", "10Gi", volume=winner, phase="Bound")
    paths = {}
    for upstream in ("volume8-11-1", "volume8-11-2"):
        paths[upstream] = _dir_with_data(c, upstream)
        c.pv(upstream, "1Gi", claim=cl, uid=uid_of(created), policy="Delete", ann={PROVISIONED_BY: "kubernetes.io/host-path"}, phase="Bound", source={"hostPath": {"path": str(paths[upstream])}})

    def check() -> None:
        c.wait("pv", loser, gone)
        assert not paths["volume8-11-1"].exists() and paths["volume8-11-2"].is_dir()
        assert volume_is(c.get("pv", winner), "Bound", cl, uid_of(created))

    return check


@row("8-12 - two PVs externally provisioned for a single claim")
def _8_12(c: Staged) -> Check:
    cl, loser, winner = c.n("claim8-12"), c.n("volume8-12-1"), c.n("volume8-12-2")
    created = c.claim("claim8-12", "10Gi", volume=winner, phase="Bound")
    for upstream, by in (("volume8-12-1", "external.io/test"), ("volume8-12-2", GCE_DRIVER)):
        csi = {"csi": {"driver": GCE_DRIVER, "volumeHandle": c.n(upstream)}}
        c.pv(upstream, "1Gi", claim=cl, uid=uid_of(created), policy="Delete", ann={PROVISIONED_BY: by}, phase="Bound", source=csi)

    def check() -> None:
        c.wait("pv", loser, lambda o: volume_is(o, "Released", cl, uid_of(created)))
        c.stays("pv", loser, lambda o: phase(o) == "Released", seconds=0.5)
        assert volume_is(c.get("pv", winner), "Bound", cl, uid_of(created))

    return check


@row("8-13 - volume has deletion timestamp and processed")
def _8_13(c: Staged) -> Check:
    cl = c.n("claim8-13")
    path = _dir_with_data(c, "volume8-13")
    v = c.pv("volume8-13", "1Gi", claim=cl, uid="uid8-13", policy="Delete", ann=(B,), phase="Bound", source={"hostPath": {"path": str(path)}}, finalizers=[FINALIZER])
    marked = c.api.delete("pv", v)  # the finalizer holds it: only a deletionTimestamp
    assert marked is not None and marked["metadata"].get("deletionTimestamp")

    def check() -> None:
        c.wait("pv", v, gone)
        assert not path.exists()

    return check


# ======================================================================================
# The stack and the rows
# ======================================================================================


def test_every_upstream_row_is_ported_or_said_why_not() -> None:
    assert not set(ROWS) & set(NOT_PORTED)
    assert all(len(why) > 20 for why in NOT_PORTED.values())


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Check]]:
    """One stack for every row: the rows' objects are written while the provisioner
    process (the PV controller) is stopped, as upstream loads its fake API server before
    calling the controller; then the controller starts on all of them at once."""
    stack = Stack(tmp_path_factory.mktemp("upstream"))
    stack.start()
    api = Api(stack.api_endpoint)
    checks: dict[str, Check] = {}
    try:
        stack.stop_service("provisioner")
        try:
            for name, stage in ROWS.items():
                try:
                    checks[name] = stage(Staged(stack, api, name))
                except Exception as exc:  # noqa: BLE001 - a row that cannot be staged fails alone, in its own test
                    checks[name] = _raise(exc)
        finally:
            stack.start_service("provisioner")
            stack.wait_healthy(["provisioner"])
        yield checks
    finally:
        api.close()
        stack.stop()
        shutil.rmtree(stack.run_dir / "hostpath", ignore_errors=True)


def _raise(exc: Exception) -> Check:
    def check() -> None:
        raise exc

    return check


@pytest.mark.parametrize("name", list(ROWS))
def test_upstream_row(staged: dict[str, Check], name: str) -> None:
    staged[name]()

