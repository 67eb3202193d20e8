"""``make bench``: issue 15's figures in one table — a quick version of every benchmark.

Runs, one after the other, each with a stack of its own:

- ``bench.csi_bench`` in this process: controller CreateVolume+DeleteVolume pairs (1 and 16
  clients, empty and with 10,000 volumes, CPU µs per pair by process, resident memory at
  10,000 volumes), node stage/publish/unpublish/unstage cycles (root) and snapshot pairs;
  then (root; issue 12) the controller pairs on three simulated hosts (``make run HOSTS=3``),
  each volume in host 2's local pool through the controller on host 1, 1 and 16 clients,
  beside the single machine's pairs with no volumes (the issue aims at ≥ 0.7× of them);
- ``bench.controlplane_bench`` (root): N claims and N pods until every volume is mounted;
- ``bench.restart_bench``: each service's restart on an empty log and on a long one;

echoes what each prints, then prints the table with the machine's core count. The quick
version uses smaller N (control plane 100 and 400 pods, restarts at 100,000 events, 300
pairs a run, the HOSTS case 200 pairs in one run per client count); ``--full`` gives each
bench its own defaults (1,000 pods, 1,000,000 events, HOSTS 3 × 600 pairs: about half an
hour here). Every bench still runs alone (``python -m bench.csi_bench``, ``make
bench-controlplane``, ``make bench-restart``).

    make bench                                   # quick, ~5 minutes on 2 cores
    make bench BENCH_ARGS="--full"
    make bench BENCH_ARGS="--only csi"           # csi_bench alone, its figures in the table
    make bench BENCH_ARGS="--suite controller --existing 0"   # other arguments go to csi_bench (and mean --only csi)
    make bench BENCH_ARGS="--hosts 0"            # without the HOSTS case
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field

from bench import csi_bench

BENCHES = ("csi", "controlplane", "restart")


@dataclass
class Figures:
    csi: csi_bench.Results | None = None
    pods: list[tuple[int, float, float]] = field(default_factory=list)  # (N, pods/s, seconds to mount all)
    controlplane_rss: list[str] = field(default_factory=list)  # the bench's own RSS lines
    restarts: list[tuple[str, float, float, float]] = field(default_factory=list)  # (service, empty s, long s, ratio)
    restart_events: str = ""
    failed: list[str] = field(default_factory=list)


def _echo_run(argv: list[str]) -> tuple[int, str]:
    """Run a bench module as its own process, echoing its output as it comes."""
    proc = subprocess.Popen([sys.executable, "-u", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


_PODS = re.compile(r"N=\s*([\d,]+).*?all mounted in\s+([\d.]+)s\s+([\d.]+) pods/s")
_RESTART = re.compile(r"^\s+(\S+)\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)×", re.M)
_EVENTS = re.compile(r"appended ([\d,]+) object events")


def controlplane(figures: Figures, claims: list[int]) -> None:
    code, out = _echo_run(["-m", "bench.controlplane_bench", "--claims", *map(str, claims)])
    figures.pods = [(int(n.replace(",", "")), float(rate), float(secs)) for n, secs, rate in _PODS.findall(out)]
    figures.controlplane_rss = [line.strip() for line in out.splitlines() if "RSS" in line]
    if code or not figures.pods:
        figures.failed.append(f"controlplane_bench (exit {code})")


def restarts(figures: Figures, events: int, repeat: int) -> None:
    code, out = _echo_run(["-m", "bench.restart_bench", "--events", str(events), "--repeat", str(repeat)])
    figures.restarts = [(name, float(a), float(b), float(r)) for name, a, b, r in _RESTART.findall(out)]
    found = _EVENTS.search(out)
    figures.restart_events = found.group(1) if found else f"{events:,}"
    if code or not figures.restarts:
        figures.failed.append(f"restart_bench (exit {code})")


def _hosts_rows(csi: csi_bench.Results) -> list[tuple[str, str, str, str]]:
    """Issue 12's rows: pairs/s on HOSTS=N with volumes in host 2's pool, and the ratio to the
    single machine's with no volumes (same client count)."""
    if not csi.hosts:
        return []
    label = f"HOSTS={csi.hosts}, host-{csi_bench.HOST} pool"
    if csi.hosts_skipped or csi.hosts_failed:
        state = f"skipped: {csi.hosts_skipped}" if csi.hosts_skipped else "failed (see its output above)"
        return [("12", f"controller pairs/s, {label}", "≥ 0.7× one machine", state)]
    rows = []
    retried = sum(csi.hosts_retries.values())
    for case in csi.hosts_controller:
        single = csi.single_rate(case.clients)
        ratio = f" ({case.rate / single:.2f}× of {single:,.0f})" if single else ""
        cpu = f", {case.cpu_total:,.0f} CPU µs/pair" if case.cpu else ""
        rows.append(("12", f"controller pairs/s, {label}, {case.clients} client{'s' if case.clients > 1 else ''}", "≥ 0.7× one machine", f"{case.rate:,.0f}{ratio}{cpu}"))
    if retried:
        again = ", ".join(f"{n} {k}" for k, n in sorted(csi.hosts_retries.items()))
        rows.append(("12", f"calls retried on {label}", "", f"{again} (made again as a CO does)"))
    return rows


def table(figures: Figures, full: bool) -> str:
    rows: list[tuple[str, str, str, str]] = []
    if figures.csi is not None:
        for case in figures.csi.controller:
            target = "≥ 650" if case.clients == 1 else "≥ 1,200" if case.clients == 16 else ""
            rows.append(("1", f"controller pairs/s, {case.existing:,} volumes, {case.clients} client{'s' if case.clients > 1 else ''}", target, f"{case.rate:,.0f}"))
        rows += _hosts_rows(figures.csi)
        for case in figures.csi.controller:
            top = sorted(case.cpu_by_process.items(), key=lambda kv: -kv[1])[:4]
            split = ", ".join(f"{n} {v:,.0f}" for n, v in top)
            target = "≤ 1,670" if case.clients == 16 else ""
            rows.append(("1", f"CPU µs/pair, all processes, {case.existing:,} volumes, {case.clients} client{'s' if case.clients > 1 else ''}", target, f"{case.cpu_total:,.0f} ({split})"))
    pods = {n: (rate, secs) for n, rate, secs in figures.pods}
    for n, (rate, secs) in sorted(pods.items()):
        rows.append(("2", f"control plane, N={n:,} pods with their own volumes: pods/s (all mounted in)", "1,000 in ≤ 60 s" if n == 1000 else "", f"{rate:.1f} ({secs:.0f} s)"))
    if len(pods) >= 2:
        small, large = min(pods), max(pods)
        rows.append(("2", f"pods/s at N={large:,} ÷ pods/s at N={small:,}", "≥ 0.8", f"{pods[large][0] / pods[small][0]:.2f}"))
    for name, empty, long, ratio in figures.restarts:
        rows.append(("3", f"restart of {name} until healthy: empty log → {figures.restart_events} events", "≤ 1.3×", f"{empty:.2f} → {long:.2f} s ({ratio:.2f}×)"))
    if figures.csi is not None:
        for kind, clients, rate, cpu_ms in figures.csi.node:
            target = "≥ 52 (2× 26)" if kind == "filesystem" and clients == 1 else ""
            rows.append(("4", f"node {kind} cycles/s, {clients} client{'s' if clients > 1 else ''} (agent CPU ms/cycle)", target, f"{rate:.0f} ({cpu_ms:.1f})"))
        if figures.csi.rss_at_existing:
            rss = ", ".join(f"{n} {v:.0f}" for n, v in sorted(figures.csi.rss_at_existing.items()))
            existing = max((c.existing for c in figures.csi.controller), default=0)
            rows.append(("5", f"RSS MiB per process at {existing:,} volumes", "reported", rss))
        for clients, rate in figures.csi.snapshots:
            rows.append(("", f"snapshot create+delete pairs/s, {clients} client{'s' if clients > 1 else ''}", "", f"{rate:.0f}"))
    for line in figures.controlplane_rss:
        rows.append(("5", "control plane: " + line.split(":", 1)[0], "reported", line.split(":", 1)[-1].strip()))
    cores = os.cpu_count()
    tls = "off" if os.environ.get("VOLPLANE_TLS", "").lower() in ("off", "0", "false", "no") else "on"
    head = (f"volplane, issue 15 — {'full' if full else 'quick'} run, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
            f"{cores} cores ({platform.machine()}, Linux {platform.release()}), load average {os.getloadavg()[0]:.1f}, NATS TLS {tls}")
    w1 = max((len(r[1]) for r in rows), default=10)
    w2 = max((len(r[2]) for r in rows), default=6)
    lines = [head, f"{'goal':<5} {'measure':<{w1}} {'target':<{w2}} measured"]
    lines += [f"{g:<5} {m:<{w1}} {t:<{w2}} {v}" for g, m, t, v in rows]
    if figures.failed:
        lines.append("FAILED: " + ", ".join(figures.failed) + " (see its output above)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each bench's own defaults instead of the quick version")
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="these benches only (default: all; only csi when csi_bench arguments are given)")
    args, csi_args = parser.parse_known_args()
    if args.only is None:
        args.only = ["csi"] if csi_args else list(BENCHES)
    figures = Figures()
    if "csi" in args.only:
        quick = ["--hosts", "3"] + ([] if args.full else ["--pairs", "300", "--cycles", "100", "--snapshots", "100", "--hosts-pairs", "200", "--hosts-repeat", "1"])
        figures.csi = csi_bench.run(csi_bench.parse_args(quick + csi_args))
        if figures.csi.hosts_failed:
            figures.failed.append(f"csi_bench HOSTS={figures.csi.hosts} case ({figures.csi.hosts_failed})")
    if "controlplane" in args.only:
        if os.geteuid() == 0:
            controlplane(figures, [100, 1000] if args.full else [100, 400])
        else:
            print("control-plane bench skipped: needs root for loop devices and mounts")
    if "restart" in args.only:
        restarts(figures, 1_000_000 if args.full else 100_000, 3 if args.full else 2)
    print("\n" + table(figures, args.full))
    if figures.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
