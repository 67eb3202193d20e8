"""CPU time and resident memory of a bench stack's processes, read from ``/proc``.

    before = cpu_seconds(stack)                  # {"apigw": 1.2, "nats-server": 0.4, ...}
    print(rss_line(stack))                       # "RSS MiB: apigw 71, attacher 80, ..."

Every process the stack started is included: the services (one nodeagent per node) and
the nats-server and redis-server it runs itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from devstack.launcher import Stack

__all__ = ["cpu_seconds", "pids", "rss_line", "rss_mib"]


def pids(stack: Stack) -> dict[str, int]:
    """Name → pid of every running process of the stack."""
    procs = {**stack.procs, **{s.name: s.proc for s in (stack.nats, stack.redis) if s is not None and s.proc is not None}}
    # A HostsStack's servers (a nats-server per host, one redis-server) are its ``servers``.
    procs.update({name: s.proc for name, s in getattr(stack, "servers", {}).items() if s.proc is not None})
    return {name: proc.pid for name, proc in procs.items() if proc.poll() is None}


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time (user + system) each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids(stack).items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_mib(stack: Stack) -> dict[str, float]:
    """Resident memory (VmRSS) of each process now, in MiB."""
    out: dict[str, float] = {}
    for name, pid in pids(stack).items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out[name] = int(line.split()[1]) / 1024
                break
    return out


def rss_line(stack: Stack, label: str = "RSS MiB") -> str:
    return f"{label}: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss_mib(stack).items()))
