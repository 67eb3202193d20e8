"""``make rebuild`` beside running services (issue 13, item 10): it finds the stack through
``run/stack.json``, rebuilds what the services hold, and leaves them serving — also while
they write; without a stack it says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap
from volplane import discovery
from volplane.csi import csi_pb2 as csi
from volplane.projection import canonical_dump

CAP = mount_cap()


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[Stack, Csi]]:
    """A whole stack whose servers are announced in run/stack.json, as ``make run`` does."""
    s = Stack(tmp_path / "run", env={"VOLPLANE_POOL_CAPACITY": "16Gi"})
    s.start()
    discovery.publish(s.run_dir, s.running_stack())
    c = Csi(s.csi_endpoint)
    try:
        yield s, c
    finally:
        c.close()
        s.stop()


def _tool_env(run_dir: Path) -> dict[str, str]:
    """A shell's: the run directory, and neither NATS_URL nor REDIS_URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL") and not k.startswith("VOLPLANE_")}
    return dict(env, VOLPLANE_RUN_DIR=str(run_dir))


def _rebuild(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.rebuild", *args], env=_tool_env(run_dir), capture_output=True, text=True, timeout=120)


def _dump(url: str) -> dict[str, object]:
    import asyncio

    import redis.asyncio as aioredis

    async def go() -> dict[str, object]:
        r = aioredis.Redis.from_url(url)
        try:
            return await canonical_dump(r)
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_rebuild_finds_the_running_stack_and_leaves_it_serving(published: tuple[Stack, Csi]) -> None:
    s, c = published
    ids = [c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"keep-{i}", volume_capabilities=[CAP]), timeout=30).volume.volume_id for i in range(3)]
    out = _rebuild(s.run_dir, "--check")
    assert out.returncode == 0, out.stderr
    assert "identical" in out.stdout, out.stdout
    # The services need no restart: they read the rebuilt models and write on top of them.
    more = c.controller.CreateVolume(csi.CreateVolumeRequest(name="after", volume_capabilities=[CAP]), timeout=30).volume.volume_id
    listed = {e.volume.volume_id for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}
    assert listed == {*ids, more}


def test_rebuild_while_the_services_write_ends_as_a_replay_of_the_log(published: tuple[Stack, Csi]) -> None:
    s, c = published
    stop = threading.Event()
    made: list[str] = []

    def write() -> None:
        while not stop.is_set():
            made.append(c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"busy-{len(made)}", volume_capabilities=[CAP]), timeout=30).volume.volume_id)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = _rebuild(s.run_dir)
    finally:
        stop.set()
        writer.join(60)
    assert out.returncode == 0, out.stderr
    listed = {e.volume.volume_id for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}
    assert listed == set(made)
    settled = _dump(s.env["REDIS_URL"])
    # What the services hold now is what a replay of the log gives.
    again = _rebuild(s.run_dir)
    assert again.returncode == 0, again.stderr
    assert _dump(s.env["REDIS_URL"]) == settled


def test_without_a_stack_rebuild_says_so_in_one_line(tmp_path: Path) -> None:
    out = _rebuild(tmp_path / "run")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no running volplane stack" in out.stderr and "make run" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_rebuild_says_in_one_line_when_the_log_is_missing(tmp_path: Path) -> None:
    s = Stack(tmp_path / "run")
    s.start_servers()  # servers, no services: nothing has made the stream yet
    try:
        discovery.publish(s.run_dir, s.running_stack())
        out = _rebuild(s.run_dir)
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.count("\n") == 1 and "no event log" in out.stderr, out.stderr
        assert redis.Redis.from_url(s.env["REDIS_URL"]).ping()
    finally:
        s.stop()
