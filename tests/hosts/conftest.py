"""Fixtures of the several-hosts tests: one ``HostsStack`` of three simulated machines per
module (``make run HOSTS=3``, devstack/hosts.py), on an instance of its own so that it runs
beside anyone's ``make run HOSTS=…``.

Root only: the stack makes network namespaces, a bridge, veth pairs, mounts and loop devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.hosts import HostsStack

MISSING = [tool for tool in ("ip", "nsenter", "unshare", "mount", "losetup") if shutil.which(tool) is None]
if os.geteuid() != 0:
    REASON = "needs root: HostsStack makes network namespaces, a bridge, veth pairs, mounts and loop devices"
elif MISSING:
    REASON = f"needs {', '.join(MISSING)} (iproute2, util-linux) to simulate hosts"
elif not Path("/dev/loop-control").exists():
    REASON = "needs /dev/loop-control for loop devices"
else:
    REASON = ""
needs_hosts = pytest.mark.skipif(bool(REASON), reason=REASON or "-")

ENV = {"VOLPLANE_POOL_CAPACITY": "8Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi", "VOLPLANE_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsStack]:
    if REASON:
        pytest.skip(REASON)
    s = HostsStack(tmp_path_factory.mktemp("hosts") / "run", env=dict(ENV), hosts=3, instance=None)
    s.start()
    yield s
    s.stop()


def left_behind(stack: HostsStack) -> list[str]:
    """What of ``stack`` is still there after ``stop()``: namespaces, links, mounts below its
    run directory, loop devices of its files."""
    out = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {line.split()[0]}" for line in names.splitlines() if line.startswith(f"{stack.prefix}-host-")]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    ours = {stack.bridge, *(stack.veth(k) for k in range(1, stack.hosts + 1))}
    out += [f"link {line.split()[0]}" for line in links.splitlines() if line.split()[0].split("@")[0] in ours]
    with open("/proc/self/mountinfo") as f:
        out += [f"mount {line.split()[4]}" for line in f if line.split()[4].startswith(str(stack.run_dir) + "/")]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    out += [f"loop {line}" for line in loops.splitlines() if f"({stack.run_dir}/" in line]
    return out
