"""``make run HOSTS=3``: several machines simulated on one, each a network namespace and a
mount namespace of its own (docs/architecture.md, "Several hosts"). Root only.

    stack = HostsStack(Path("run"), hosts=3); stack.start()
    stack.endpoint_of("host-2")                 # unix:///…/run/host-2/csi.sock (its node plugin)
    stack.exec_in(2, ["ls", stack.pool_dir("host-2")])   # what host 2 sees
    stack.freeze(3); stack.thaw(3)              # SIGSTOP every process of host 3, then SIGCONT
    stack.link_down(3); stack.link_up(3)        # cut host 3 off the network, and back
    stack.kill_host(3); stack.start_host(3)     # every process of host 3 dies, then comes back
    stack.kill_host(3, reboot=True)             # … and its mounts and loop devices go too
    stack.stop()                                # nothing left: namespaces, links, mounts, loop devices

Host *k* (``host-k``):

- a network namespace ``volplane-host-k`` with one address, 10.213.0.k/24, on a veth pair
  whose other end is on the bridge ``vp-br0`` (10.213.0.254, in the root namespace, so that
  the launcher and tests reach every host). Traffic goes nowhere else: no route out.
- a mount namespace kept alive by a holder process (``sleep``, run by ``ip netns exec`` and
  ``unshare --mount --propagation private``), in which ``run/hosts/host-k/pool`` is mounted
  on ``run/pools/host-k`` (its local pool) and ``run/hosts/host-k/kubelet`` on
  ``run/kubelet/host-k`` (its volume manager's root), and every other host's
  ``run/hosts/host-j`` is covered by an empty read-only tmpfs. The root namespace covers every
  ``run/hosts/host-k`` so: a host's images, its JetStream store and the mounts its node agent
  makes are seen by that host only. Everything else under ``run/`` (sockets, logs, the shared
  pool ``run/hosts/shared``, Redis's socket) is one directory seen by all, so the CSI sockets
  serve clients in the root namespace (a unix socket is found by its path, whatever the
  network namespace).
- every process of the host runs as ``nsenter --net=/run/netns/volplane-host-k
  --mount=/proc/<holder>/ns/mnt``: a nats-server cluster member on 10.213.0.k:4222 (routes on
  :6222 to every other member, TLS both ways; JetStream store in ``run/hosts/host-k/nats``),
  the host's nodeagent and its node plugin (apigw, node mode) on ``run/host-k/csi.sock``.
  Host 1 also runs the controller services (provisioner, attacher, apigw in controller mode
  on ``run/csi.sock``) and the one redis-server (``run/hosts/redis/redis.sock``, a unix
  socket every host reaches through the shared directory: a shortcut of the simulation, where
  a real deployment has Redis on the network with Sentinel); host 2 a second replica of each
  controller service (apigw's on ``run/csi-2.sock``, which the replicas' sidecar roles on
  host 2 call: they carry on when host 1 dies).

Every client is given all members' URLs (``NATS_URL``, comma-separated); the event log's
stream is made with ``VOLPLANE_STREAM_REPLICAS`` replicas (default 3 with three hosts or
more, else 1). Data under ``run/hosts`` persists: the next run finds its volumes.

Another instance (``instance=i``: namespaces ``volplane<i>-host-k``, bridge ``vp-br<i>``,
10.213.i.0/24) lets tests run beside a ``make run HOSTS=…``; each instance is held under
an flock, and whatever a killed launcher of the same instance left (namespaces, links,
covering mounts, loop devices of its run directory) is removed before it starts again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from access.credentials import ADMIN, REBUILD, Credentials, NatsCluster, user_of
from access.tls import DEFAULT_HOSTS, Certificates
from devstack.embedded import EmbeddedServer, free_port, with_parent
from devstack.launcher import Stack, ensure_event_log
from services.catalog import CATALOG
from volplane.clients import answers, connect_once

__all__ = ["HostsError", "HostsStack", "require_hosts_support"]

NATS_PORT = 4222
ROUTE_PORT = 6222
CLUSTER = "volplane"
# Where a controller service's replicas run: the first on host 1, the second on host 2.
CONTROLLERS = ("provisioner", "attacher", "apigw")
_LOCK_DIR = Path("/run/lock")
_NETNS_DIR = Path("/run/netns")
_HIDDEN = "volplane-hidden"  # the covering tmpfs' source name, to tell ours in mountinfo


class HostsError(RuntimeError):
    """What the machine lacks for ``make run HOSTS=N``, or a step of it that failed."""


def require_hosts_support() -> None:
    """Raise HostsError unless this process may make namespaces, links and mounts (root)
    and the tools are there (iproute2's ``ip``, util-linux's ``nsenter``, ``unshare``,
    ``mount``, ``losetup``)."""
    if os.geteuid() != 0:
        raise HostsError("make run HOSTS=N needs root: it makes network namespaces, a bridge, veth pairs and mounts")
    missing = [tool for tool in ("ip", "nsenter", "unshare", "mount", "umount", "mountpoint", "losetup") if shutil.which(tool) is None]
    if missing:
        raise HostsError(f"make run HOSTS=N needs {', '.join(missing)} (iproute2, util-linux)")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise HostsError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip() or f'exit {out.returncode}'}")
    return out


def _mountinfo(pid: int | str = "self") -> list[tuple[str, str, str]]:
    """(mount point, file system type, source) of each mount ``pid`` sees, in mount order."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            # Octal escapes (\040 for a space) as the kernel writes them.
            point = fields[4].encode().decode("unicode_escape")
            out.append((point, tail[0], tail[1] if len(tail) > 1 else ""))
    return out


def _below(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + "/")


# The holder of host k's mount namespace, run in a namespace copied from the root's (made
# private, so that no mount crosses either way). First it leaves the copy for a root of its
# own without the file systems on loop devices — the root namespace's users' volumes: a
# copy of one here would keep its loop device busy after its owner unmounts it, and
# unmounting hundreds of copies one by one takes seconds — nor namespace files (a copy of
# /run/netns/x would keep that network namespace alive after ``ip netns del``), by binding the root file system
# and every other mount but those (each without its submounts) under a new root, moving
# there (pivot_root) and dropping the old tree in one lazy unmount. Then it lifts the
# root's covering of its own directory, mounts its pool and kubelet directories, covers
# every other host's, says so and waits to be killed.
# $1: the run directory, $2: this host, $3: an empty directory to build the new root on,
# then every other host.
_HOLDER = r"""
set -e
run=$1; me=$2; new=$3; shift 3
mount --bind / "$new"
awk '{ split($0, halves, " - "); split(halves[2], tail, " "); point = $5
       if (point == "/") next
       if (tail[2] ~ /^\/dev\/loop/ || tail[1] == "nsfs") { skip[point] = 1; next }
       for (s in skip) if (index(point, s "/") == 1) next
       print point }' /proc/self/mountinfo |
while IFS= read -r point; do
    point=$(printf '%b' "$point")
    [ -e "$new$point" ] && mount --bind "$point" "$new$point" 2>/dev/null || true
done
cd "$new"
pivot_root . .
umount -l .
cd /
while mountpoint -q "$run/hosts/$me"; do umount "$run/hosts/$me"; done
mount --bind "$run/hosts/$me/pool" "$run/pools/$me"
mount --bind "$run/hosts/$me/kubelet" "$run/kubelet/$me"
for other in "$@"; do
    mount -t tmpfs -o ro,size=4k,mode=0555 volplane-hidden "$run/hosts/$other"
done
echo ready
exec sleep infinity
"""


@dataclass
class HostsStack(Stack):
    """``Stack`` on ``hosts`` simulated machines (see the module's docstring). Process names:
    ``provisioner``, ``attacher``, ``apigw`` (host 1; apigw the controller on ``run/csi.sock``),
    ``provisioner#2``, ``attacher#2``, ``apigw#2`` (host 2), ``nodeagent-host-k`` and
    ``apigw-host-k`` (host k's node plugin); the servers ``nats-host-k`` and ``redis``
    (host 1) are in ``servers``."""

    hosts: int = 2
    instance: int | None = 0  # None: the first free one (tests)
    servers: dict[str, EmbeddedServer] = field(default_factory=dict)
    holders: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    replicas: int = 1  # the event log's stream, from VOLPLANE_STREAM_REPLICAS
    _lock: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.hosts < 2:
            raise ValueError(f"hosts={self.hosts}: simulate 2 hosts or more (one machine is Stack's)")
        if self.nodes != 1:
            raise ValueError("hosts and nodes do not mix: every host is a node")
        run = self.run_dir.absolute()
        self.env = dict(self.env)
        self.env.setdefault("VOLPLANE_SHARED_POOL_DIR", str(run / "hosts" / "shared"))
        self.env["VOLPLANE_NODE_ID"] = "host-1"
        super().__post_init__()
        self.env["VOLPLANE_NODE_ID"] = "host-1"  # not the caller's environment's: host 1 is the first node
        self.node_ids = [f"host-{k}" for k in range(1, self.hosts + 1)]
        self.services = [*CONTROLLERS, *(f"{name}#2" for name in CONTROLLERS)]
        for node in self.node_ids:
            self.services += [f"{d.name}-{node}" for d in CATALOG if d.per_node]
        text = self.env.get("VOLPLANE_STREAM_REPLICAS", "3" if self.hosts >= 3 else "1")
        if not text.isdigit() or not 1 <= int(text) <= min(self.hosts, 5):
            raise ValueError(f"VOLPLANE_STREAM_REPLICAS={text!r} is not a number of replicas from 1 to {min(self.hosts, 5)} (the hosts, at most 5)")
        self.replicas = int(text)

    # --- names and addresses ----------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return "volplane" if not self.instance else f"volplane{self.instance}"

    def netns(self, host: int) -> str:
        return f"{self.prefix}-host-{host}"

    @property
    def bridge(self) -> str:
        return f"vp-br{self.instance or 0}"

    def veth(self, host: int) -> str:
        """The root namespace's end of host ``host``'s link (the bridge's port)."""
        return f"vp{self.instance or 0}-h{host}"

    def address(self, host: int) -> str:
        return f"10.213.{self.instance or 0}.{host}"

    @staticmethod
    def host_number(host: int | str) -> int:
        """``2``, ``"2"`` and ``"host-2"`` are host 2."""
        return int(str(host).removeprefix("host-"))

    def host_of(self, name: str) -> int:
        """The host a process runs on: ``apigw-host-3`` → 3, ``provisioner#2`` → 2, ``attacher`` → 1."""
        if "#" in name:
            return int(name.partition("#")[2])
        _, _, node = name.partition("-")
        return self.host_number(node) if node.startswith("host-") else 1

    def endpoint_of(self, node: str | int) -> str:
        """Host ``node``'s node plugin (CSI Identity and Node): ``run/host-k/csi.sock``."""
        return f"unix://{self.run_dir / f'host-{self.host_number(node)}' / 'csi.sock'}"

    def pool_dir(self, pool: str) -> Path:
        """Where a pool's images live, as the host that owns it sees them."""
        return Path(self.env["VOLPLANE_SHARED_POOL_DIR"]) if pool == "shared" else self.run_dir / "pools" / pool

    def host_dir(self, host: int | str) -> Path:
        """Host ``host``'s own data (its pool, kubelet directory, JetStream store): seen from
        inside that host only."""
        return self.run_dir / "hosts" / f"host-{self.host_number(host)}"

    def _socket_of(self, name: str) -> str:
        if name == "apigw":
            return self.csi_endpoint
        if name.startswith("apigw#"):
            return self.replica_endpoint(name)
        return self.endpoint_of(self.host_of(name))

    def nats_servers(self, user: str = ADMIN, first: int = 1) -> list[str]:
        """``user``'s URL of every member, host ``first``'s first."""
        assert self.creds is not None
        order = [first, *(k for k in range(1, self.hosts + 1) if k != first)]
        return [self.creds.nats_url(user, NATS_PORT, tls=self.certs is not None, host=self.address(k)) for k in order]

    def nats_url_of(self, user: str = ADMIN, first: int = 1) -> str:
        """``user``'s NATS_URL: every member, comma-separated (host ``first``'s first)."""
        return ",".join(self.nats_servers(user, first))

    def member_url(self, host: int | str, user: str = ADMIN) -> str:
        """``user``'s URL of host ``host``'s member alone (for a one-server client)."""
        return self.nats_servers(user, self.host_number(host))[0]

    def redis_url_of(self, user: str) -> str:
        assert self.creds is not None
        return self.servers["redis"].url_of(self.creds, user)

    @property
    def tool_redis_url(self) -> str:
        return self.redis_url_of(REBUILD)

    def describe(self) -> list[str]:
        """The lines ``make run HOSTS=N`` prints about its hosts."""
        lines = [f"  controller:   {self.replica_endpoint('apigw#2')} (its second replica, on host-2)"]
        for k in range(1, self.hosts + 1):
            on = ", ".join(n for n in self.names_on(k) if not n.endswith(f"-host-{k}")) or "-"
            lines.append(f"  host-{k}:       {self.address(k)} (netns {self.netns(k)}), node plugin {self.endpoint_of(k)}; also {on}")
        lines.append(f"  NATS cluster: {self.hosts} members, the event log at R{self.replicas} (VOLPLANE_STREAM_REPLICAS); Redis on host-1")
        return lines

    # --- entering a host --------------------------------------------------------------------

    def enter(self, host: int | str) -> list[str]:
        """The argv prefix that runs a command on host ``host`` (its network and mount namespaces)."""
        k = self.host_number(host)
        holder = self.holders.get(k)
        if holder is None or holder.poll() is not None:
            raise HostsError(f"host-{k} is not up (its namespace holder is gone)")
        return ["nsenter", f"--net={_NETNS_DIR / self.netns(k)}", f"--mount=/proc/{holder.pid}/ns/mnt", f"--wd={os.getcwd()}", "--"]

    def exec_in(self, host: int | str, argv: list[str], check: bool = False, timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on host ``host`` and return what it did (stdout, stderr as text)."""
        return subprocess.run(self.enter(host) + [str(a) for a in argv], capture_output=True, text=True, check=check, timeout=timeout, input=input)

    def pids_of(self, host: int | str) -> list[int]:
        """Every process on host ``host`` (in its network namespace), its holder included:
        SIGSTOP them all to freeze the host."""
        try:
            want = os.stat(_NETNS_DIR / self.netns(self.host_number(host))).st_ino
        except FileNotFoundError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                        pids.append(int(entry))
                except OSError:
                    continue  # gone meanwhile
        return pids

    def freeze(self, host: int | str) -> None:
        """SIGSTOP every process of host ``host``: a machine that hangs (``thaw`` resumes it)."""
        for pid in self.pids_of(host):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass

    def thaw(self, host: int | str) -> None:
        for pid in self.pids_of(host):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def link_down(self, host: int | str) -> None:
        """Cut host ``host`` off the others (its bridge port down): its processes go on,
        talking to its own nats-server only — a minority partition."""
        _run("ip", "link", "set", self.veth(self.host_number(host)), "down")

    def link_up(self, host: int | str, timeout: float = 10.0) -> None:
        """Join host ``host`` to the others again; returns once its link carries traffic."""
        veth = self.veth(self.host_number(host))
        _run("ip", "link", "set", veth, "up")
        deadline = time.monotonic() + timeout
        while Path(f"/sys/class/net/{veth}/operstate").read_text().strip() != "up":
            if time.monotonic() > deadline:
                raise HostsError(f"{veth} is not up after {timeout}s")
            time.sleep(0.05)

    def names_on(self, host: int | str) -> list[str]:
        """The services that run on host ``host`` (its servers not included)."""
        k = self.host_number(host)
        return [name for name in self.services if self.host_of(name) == k]

    def kill_host(self, host: int | str, reboot: bool = False) -> None:
        """SIGKILL every process of host ``host`` at once — its services, its nats-server
        member, Redis on host 1 — as a machine that loses power. Its disk (``run/hosts/host-k``)
        keeps its data; without ``reboot`` its mount namespace stays too, mounts and loop
        devices included (as after a crash of the processes alone); with ``reboot`` they go
        (unmounted, detached) and the host gets a fresh mount namespace, as a machine that
        boots again. ``start_host`` brings its processes back."""
        k = self.host_number(host)
        holder = self.holders.get(k)
        for pid in self.pids_of(k):
            if holder is None or pid != holder.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in [*(self.procs[n] for n in self.names_on(k) if n in self.procs), *(s.proc for n, s in self.servers.items() if self._server_host(n) == k and s.proc)]:
            proc.wait(10)
        for name in self.names_on(k):
            self.procs.pop(name, None)
        if reboot and holder is not None:
            for device in self._unmount_inside(k):
                _run("losetup", "-d", device, check=False)
            _detach_loops(self.run_dir / "pools" / f"host-{k}")
            self._end_holder(k)
            self._start_holder(k)

    def start_host(self, host: int | str, timeout: float = 60.0) -> None:
        """Start host ``host``'s servers and services again (after ``kill_host``) and wait
        until they are healthy."""
        k = self.host_number(host)
        for name, server in list(self.servers.items()):
            if self._server_host(name) == k and (server.proc is None or server.proc.poll() is not None):
                # Made anew: its argv enters the host's current mount namespace.
                fresh = self._member(k) if name.startswith("nats-") else self._redis()
                self.servers[name] = fresh
                fresh.start()
        names = self.names_on(k)
        for name in names:
            if name not in self.procs or self.procs[name].poll() is not None:
                self.start_service(name)
        self.wait_healthy(names, timeout)

    @staticmethod
    def _server_host(name: str) -> int:
        return 1 if name == "redis" else int(name.rsplit("-", 1)[1])

    # --- start ------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        try:
            self.start_servers()
            for name in self.services:
                self.start_service(name)
            self.wait_healthy(self.services, timeout)
        except BaseException:
            self.stop()
            raise

    def start_servers(self) -> None:
        require_hosts_support()
        if "NATS_URL" in self.env or "REDIS_URL" in self.env:
            raise HostsError("make run HOSTS=N runs its own NATS cluster and Redis: unset NATS_URL and REDIS_URL")
        self._take_instance()
        self._remove_leftovers()
        run = self.run_dir
        for sub in ("logs", "hosts/nats", "hosts/shared"):
            (run / sub).mkdir(parents=True, exist_ok=True)
        for k in range(1, self.hosts + 1):
            for sub in (f"hosts/host-{k}/pool", f"hosts/host-{k}/kubelet", f"hosts/host-{k}/nats", f"pools/host-{k}", f"kubelet/host-{k}", f"host-{k}"):
                (run / sub).mkdir(parents=True, exist_ok=True)
        self.creds = Credentials.load_or_create(run, nodes=self.node_ids)
        if self.tls_wanted:
            self.certs = Certificates.load_or_create(run / "tls", hosts=(*DEFAULT_HOSTS, *(self.address(k) for k in range(1, self.hosts + 1))))
            self.env.update(self.certs.client_env())
        self._write_nats_configs()
        self._make_network()
        # All at once: each lets go of its copies of the root's loop mounts, which takes a
        # moment on a machine with many.
        for k in range(1, self.hosts + 1):
            self._spawn_holder(k)
        for k in range(1, self.hosts + 1):
            self._holder_ready(k)
        self._cover_in_root()
        for k in range(1, self.hosts + 1):
            self.servers[f"nats-host-{k}"] = self._member(k)
        redis = self.servers["redis"] = self._redis()
        for server in self.servers.values():
            server.start()
        self.env["NATS_URL"] = self.nats_url_of(ADMIN)
        self.env["REDIS_URL"] = redis.url

    def _take_instance(self) -> None:
        """Hold the instance's lock for the stack's life: one launcher per set of names."""
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        candidates = [self.instance] if self.instance is not None else list(range(1, 250))
        for i in candidates:
            f = open(_LOCK_DIR / f"volplane-hosts-{i}.lock", "w")  # noqa: SIM115 - held until stop()
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self.instance, self._lock = i, f
            return
        raise HostsError(f"another volplane with HOSTS runs here (instance {candidates[0]}: {self.bridge} and {self.prefix}-host-*): stop it first")

    def _write_nats_configs(self) -> None:
        assert self.creds is not None
        for k in range(1, self.hosts + 1):
            routes = tuple(f"nats-route://{self.address(j)}:{ROUTE_PORT}" for j in range(1, self.hosts + 1) if j != k)
            cluster = NatsCluster(CLUSTER, ROUTE_PORT, routes, server_name=f"host-{k}", host=self.address(k))
            text = self.creds.nats_config(NATS_PORT, self.host_dir(k) / "nats", tls=self.certs.server() if self.certs else None, cluster=cluster, host=self.address(k))
            conf = self.run_dir / "hosts" / "nats" / f"host-{k}.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    def _member(self, k: int) -> EmbeddedServer:
        assert self.creds is not None
        conf = self.run_dir / "hosts" / "nats" / f"host-{k}.conf"
        server = EmbeddedServer.nats_with_config(conf, NATS_PORT, self.member_url(k))
        server.argv = self.enter(k) + server.argv
        server.log_path = self.run_dir / "logs" / f"nats-host-{k}.log"
        server.host = self.address(k)
        return server

    def _redis(self) -> EmbeddedServer:
        """The one redis-server, on host 1, on a unix socket every host reaches by its path."""
        redis = EmbeddedServer.redis(self.run_dir / "hosts" / "redis", creds=self.creds, unix=True)
        redis.argv = self.enter(1) + redis.argv
        return redis

    def _make_network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.address(254)}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for k in range(1, self.hosts + 1):
            ns = self.netns(k)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", self.veth(k), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", self.veth(k), "master", self.bridge, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(k)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _start_holder(self, k: int) -> None:
        self._spawn_holder(k)
        self._holder_ready(k)

    def _spawn_holder(self, k: int) -> None:
        others = [f"host-{j}" for j in range(1, self.hosts + 1) if j != k]
        argv = ["ip", "netns", "exec", self.netns(k), "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _HOLDER, "holder", str(self.run_dir), f"host-{k}", str(self._new_root(k)), *others]
        # Its own session (Ctrl-C reaches only the launcher); SIGTERM when the launcher dies,
        # so that a killed launcher leaves no namespace alive but the pinned netns file.
        proc = subprocess.Popen(with_parent(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.holders[k] = proc

    def _new_root(self, k: int) -> Path:
        """The empty directory host ``k``'s holder builds its root on (a mount point in its
        namespace only)."""
        path = self.run_dir / "hosts" / f".root-host-{k}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _holder_ready(self, k: int) -> None:
        proc = self.holders[k]
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.wait(5)
            raise HostsError(f"host-{k}'s mount namespace: {proc.stderr.read().decode().strip() or 'its holder exited'}")

    def _cover_in_root(self) -> None:
        """Cover every host's own directory in the root namespace: none of its data shows here."""
        for k in range(1, self.hosts + 1):
            _run("mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0555", _HIDDEN, str(self.host_dir(k)))

    def ensure_event_log(self) -> None:
        """The stream, at ``replicas``, once the cluster has a JetStream leader (the members
        elect one a moment after they start): made as the administrator, retried until then."""
        if self.event_log_ready:
            return
        deadline = time.monotonic() + 60
        asyncio.run(self._wait_for_jetstream(deadline))
        while True:
            try:
                asyncio.run(ensure_event_log(self.member_url(1), replicas=self.replicas, tls=self.client_tls()))
                break
            except Exception as exc:  # no JetStream leader yet: "unavailable", a timeout, no responders
                if time.monotonic() > deadline:
                    raise HostsError(f"the event log's stream (R{self.replicas}) could not be made: {type(exc).__name__}: {exc}") from exc
                time.sleep(0.25)
        self.event_log_ready = True

    async def _wait_for_jetstream(self, deadline: float) -> None:
        """Until the members have elected JetStream's leader: ``$JS.API.INFO`` answers without
        an error (before, "JetStream system temporarily unavailable" or no answer at all)."""
        while time.monotonic() < deadline:
            try:
                nc = await connect_once(self.member_url(1), timeout=2, tls=self.client_tls())
            except Exception:  # noqa: BLE001 - the member is still starting
                await asyncio.sleep(0.1)
                continue
            try:
                while time.monotonic() < deadline:
                    try:
                        reply = await nc.request("$JS.API.INFO", b"", timeout=1)
                        if b'"error"' not in reply.data:
                            return
                    except Exception:  # noqa: BLE001 - no responder or no answer yet
                        pass
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()

    def start_service(self, name: str) -> None:
        self.ensure_event_log()
        assert self.creds is not None
        service, node = self._process(name)
        k = self.host_of(name)
        self.metrics.setdefault(name, f"{self.address(k)}:{free_port()}")
        env = dict(self.env, VOLPLANE_NODE_ID=node, VOLPLANE_METRICS_ADDR=self.metrics[name])
        plugin = service.per_node and "-host-" in name
        if service.name == "apigw":
            # The controller (and host 1's node plugin, which has no user of its own: the
            # credentials give the first node's apigw both parts) is "apigw"; another host's
            # plugin its own user with its own node's subjects only.
            user = "apigw" if not plugin or k == 1 else user_of("apigw", node, self.node_id)
            env["VOLPLANE_CSI_ENDPOINT"] = self._socket_of(name)
            env["VOLPLANE_APIGW_MODE"] = "node" if plugin else "controller"
            if "#" in name:
                env["VOLPLANE_API_ENDPOINT"] = self.replica_endpoint(name, api=True)
        else:
            user = user_of(service.name, node, self.node_id)
            if "#" in name:
                # A replica's sidecar roles (external provisioner, attacher, resizer,
                # snapshotter) call the CSI controller of their own host, as sidecars call
                # the driver in their own pod: not host 1's, which may be the host that died.
                env["VOLPLANE_CSI_ENDPOINT"] = self.replica_endpoint(f"apigw#{k}")
        env["NATS_URL"] = self.nats_url_of(user, first=k)
        redis = self.servers["redis"]
        env["REDIS_URL"] = self.redis_url_of(user) if user in self.creds.redis else _without_user(redis.url)
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                with_parent(self.enter(k) + service.argv()), env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def _healthy(self, name: str) -> bool:
        service, node = self._process(name)
        if service.health == "grpc":
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            try:
                with grpc.insecure_channel(self._socket_of(name)) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False
        # Asked through the service's own host's member: it answers there when it is up.
        return asyncio.run(answers(self.member_url(self.host_of(name)), service.health_subject(node), tls=self.client_tls()))

    async def cluster_info(self, host: int | str = 1) -> dict[str, object]:
        """What host ``host``'s member says of the event log, and which members answer:
        ``{"members": ["10.213.0.1:4222", …], "replicas": 3, "stream_peers": ["host-1", …],
        "current": True, "messages": n}`` — the members every member that accepts a client
        (members advertise no client URLs: access.credentials.ROUTE_OPTIONS), the peers the
        members holding the stream, ``current`` whether every replica has caught up with
        its leader (their routes are up)."""
        from volplane import subjects

        nc = await connect_once(self.member_url(host), tls=self.client_tls())
        try:
            info = await nc.jetstream(timeout=10).stream_info(subjects.STREAM)
        finally:
            await nc.close()
        replicas = [] if info.cluster is None else (info.cluster.replicas or [])
        peers = [] if info.cluster is None else [info.cluster.leader, *(r.name for r in replicas)]
        members = []
        for k in range(1, self.hosts + 1):
            try:
                other = await connect_once(self.member_url(k), timeout=2.0, tls=self.client_tls())
            except Exception:  # noqa: BLE001 - that member is down or cut off: not listed
                continue
            members.append(f"{self.address(k)}:{NATS_PORT}")
            await other.close()
        return {"members": sorted(members), "replicas": info.config.num_replicas, "stream_peers": sorted(p for p in peers if p),
                "current": all(r.current for r in replicas), "messages": info.state.messages}

    # --- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process, then remove everything this stack made: the mounts in each
        host's namespace, the loop devices of its run directory, the holders, the
        namespaces, the links, the bridge and the covering mounts."""
        # The gateways first, then the rest: each tier at once (a service takes a second or
        # two to drain; one after the other, twelve of them would take half a minute).
        gateways = [n for n in self.services if n.startswith("apigw")]
        for tier in (gateways, [n for n in self.services if n not in gateways]):
            self._stop_all(tier)
        for name in reversed(list(self.servers)):
            self.servers[name].stop()
        for k in sorted(self.holders):
            self._unmount_inside(k)
        _detach_loops(self.run_dir)
        for k in list(self.holders):
            self._end_holder(k)
        if self.instance is not None and self._lock is not None:
            self._remove_leftovers()
            self._lock.close()
            self._lock = None

    def _stop_all(self, names: list[str]) -> None:
        procs = [p for p in (self.procs.pop(n, None) for n in names) if p is not None and p.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _end_holder(self, k: int) -> None:
        holder = self.holders.pop(k)
        if holder.poll() is None:
            holder.terminate()
            try:
                holder.wait(10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    def _unmount_inside(self, k: int) -> set[str]:
        """Unmount what host ``k``'s node agent mounted (loop devices' file systems, bind
        mounts of pods' volumes), deepest first, inside its namespace: the loop devices are
        then free to detach. Returns the loop devices those mounts were of."""
        holder = self.holders[k]
        if holder.poll() is not None:
            return set()
        keep = (str(self.run_dir / "pools" / f"host-{k}"), str(self.run_dir / "kubelet" / f"host-{k}"))
        mounts = _mountinfo(holder.pid)
        ours = [point for point, _, source in mounts
                if (_below(point, self.run_dir) or source.startswith("/dev/loop")) and source != _HIDDEN and point not in keep]
        devices = {source for point, _, source in mounts if point in ours and source.startswith("/dev/loop")}
        if ours:
            ours.sort(key=lambda p: p.count("/"), reverse=True)
            # One call for all (deepest first); what is still busy goes lazily.
            if _run(*self.enter(k), "umount", *ours, check=False).returncode != 0:
                left = {point for point, _, _ in _mountinfo(holder.pid)} & set(ours)
                if left:
                    _run(*self.enter(k), "umount", "--lazy", *sorted(left, key=lambda p: p.count("/"), reverse=True), check=False)
        return devices

    def _remove_leftovers(self) -> None:
        """Remove whatever this instance's names hold: what a killed launcher left, or what
        ``stop`` made. Covering mounts only over this run directory's host directories."""
        for k in range(1, 250):
            ns = self.netns(k)
            if (_NETNS_DIR / ns).exists():
                _run("ip", "netns", "del", ns, check=False)
            if Path(f"/sys/class/net/{self.veth(k)}").exists():
                _run("ip", "link", "del", self.veth(k), check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run("ip", "link", "del", self.bridge, check=False)
        hosts = self.run_dir / "hosts"
        for point, _, source in reversed(_mountinfo()):
            if source == _HIDDEN and _below(point, hosts):
                _run("umount", point, check=False)
        _detach_loops(self.run_dir)

    def dead(self) -> list[str]:
        gone = super().dead()
        gone += [name for name, s in self.servers.items() if s.proc is not None and s.proc.poll() is not None]
        gone += [f"host-{k} (its namespace holder)" for k, h in self.holders.items() if h.poll() is not None]
        return gone


def _detach_loops(run_dir: Path) -> None:
    """Detach every loop device whose file lies below ``run_dir`` (as its host named it: the
    paths are the same in every namespace here). One still mounted somewhere is detached by
    the kernel when that mount goes (LOOP_CLR_FD on a busy device sets autoclear)."""
    sys_block = Path("/sys/block")
    for dev in sys_block.glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # unbound
        if _below(backing.removesuffix(" (deleted)"), run_dir):
            _run("losetup", "-d", f"/dev/{dev.name}", check=False)


def _without_user(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('@', 1)[1]}" if "@" in rest else url
