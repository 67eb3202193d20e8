"""``make bench-qos``: a volume's I/O limit as the kernel enforces it (root).

Starts its own stack, creates a block volume with ``writeIOPS=N`` (CreateVolume's mutable
parameters), stages it, and measures 4 KiB direct writes (``dd oflag=direct``) to its loop
device from inside the node's I/O cgroup; then ControllerModifyVolume to 2N, and to no limit,
measuring again after each. Prints the median of ``--runs`` runs of each case.

    make bench-qos
    make bench-qos BENCH_ARGS="--iops 100 --runs 5 --seconds 4"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from devstack.launcher import Stack
from services.nodeagent.adapters.iolimits import IoCgroup
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

Mode = csi.VolumeCapability.AccessMode
BLOCK = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
CGROUP = "volplane-bench"


def direct_writes(cgroup: IoCgroup, device: str, writes: int) -> float:
    """4 KiB direct writes per second of one ``dd`` run inside ``cgroup``."""
    script = f'echo $$ > {cgroup.procs()} && exec dd if=/dev/zero of="$1" bs=4k count={writes} oflag=direct conv=notrunc status=none'
    started = time.monotonic()
    subprocess.run(["sh", "-c", script, "dd", device], check=True)
    return writes / (time.monotonic() - started)


def median_iops(cgroup: IoCgroup, device: str, limit: int, runs: int, seconds: float) -> tuple[float, list[float]]:
    # Enough writes for ``seconds`` at the limit; unlimited, a fixed 4000 (a fraction of a second here).
    writes = int(limit * seconds) if limit else 4000
    results = [direct_writes(cgroup, device, writes) for _ in range(runs)]
    return statistics.median(results), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iops", type=int, default=50, help="N: the write IOPS the volume is created with")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run at the limit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-qos needs root: loop devices and cgroups")
    with tempfile.TemporaryDirectory(prefix="volplane-qos-bench-") as tmp:
        stack = Stack(Path(tmp), env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_LOG_LEVEL": "WARNING", "VOLPLANE_IO_CGROUP": CGROUP})
        stack.start()
        channel = grpc.insecure_channel(stack.csi_endpoint)
        controller, node = rpc.ControllerStub(channel), rpc.NodeStub(channel)
        staging = Path(tmp) / "staging"
        vid = ""
        try:
            n = args.iops
            req = csi.CreateVolumeRequest(
                name=f"qos-bench-{uuid.uuid4().hex[:8]}", capacity_range=csi.CapacityRange(required_bytes=256 * 2**20),
                volume_capabilities=[BLOCK], mutable_parameters={"writeIOPS": str(n)},
            )
            vid = controller.CreateVolume(req).volume.volume_id
            controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=stack.node_id, volume_capability=BLOCK))
            node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=str(staging), volume_capability=BLOCK))
            image = next(Path(tmp).rglob(f"{vid}.img"))
            device = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout.split(":", 1)[0]
            cgroup = IoCgroup.detect(CGROUP)
            print(f"volume {vid} on {device}; rules in {cgroup.path} (cgroup v{cgroup.version}); 4 KiB dd oflag=direct, median of {args.runs} runs\n")
            rows: list[tuple[str, int, float, list[float]]] = []
            for label, limit in ((f"created with writeIOPS={n}", n), (f"modified to writeIOPS={2 * n}", 2 * n), ("modified to writeIOPS=0 (no limit)", 0)):
                if limit != n:
                    controller.ControllerModifyVolume(csi.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters={"writeIOPS": str(limit)}))
                median, runs = median_iops(cgroup, device, limit, args.runs, args.seconds)
                rows.append((label, limit, median, runs))
                print(f"  {label:<36} measured {median:8.1f} IOPS  (runs: {', '.join(f'{r:.1f}' for r in runs)})")
            print()
            for label, limit, median, _ in rows:
                if limit:
                    print(f"  {label}: {median / limit:.2f} of the limit")
        finally:
            if vid:
                node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)))
                controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=stack.node_id))
                controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
            channel.close()
            stack.stop()
            with contextlib.suppress(OSError):  # our empty cgroup; kept if something still runs in it
                (IoCgroup.detect(CGROUP).path).rmdir()


if __name__ == "__main__":
    main()
