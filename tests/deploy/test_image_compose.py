"""The image and the compose stack, for real: ``make image`` builds the Dockerfile with podman,
podman-compose runs deploy/compose/docker-compose.yaml, every service becomes healthy and
serves /metrics, and one CSI volume lives its whole life through the stack's CSI socket —
create, controller publish, stage, publish, a file written on the host through the mount,
unpublish, unstage, controller unpublish, delete — leaving no loop device, mount, image file
or container behind. Then again with the optional tracing profile: the services export their
spans to the Jaeger stand-in.

    make e2e          # VOLPLANE_E2E=1 pytest -s tests/deploy/test_image_compose.py (root)

Skipped unless VOLPLANE_E2E=1 (``make test`` does not build images), and when the host cannot
run it: not root, no /dev/loop-control, no podman and no apt-get to install it. No container
registry is reachable from CI: the base image, NATS and Redis are stand-ins made from Debian
packages (tests/deploy/standins.py), cached on the machine by a tag of their content; Jaeger's
is an OTLP receiver (otlp_sink.py) on the image under test. podman-compose comes from PyPI (the dev extra): Debian's 1.0.3
mangles health checks. Debian's podman 4.3 runs no health-check timers without systemd and
podman-compose does not wait on ``service_healthy`` with it, so the test runs each container's
health check itself (``podman healthcheck run``) until all pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from tests.deploy import standins
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent
IMAGE = "localhost/volplane:e2e"
# What the compose file runs, health-checked; `init` is a one-shot that must exit 0.
SERVICES = ("nats", "redis", "provisioner", "attacher", "nodeagent", "apigw")
VOLPLANE_SERVICES = ("provisioner", "attacher", "nodeagent", "apigw")
IN_CONTAINER = "/var/lib/volplane"  # the shared directory, as the services see it
HEALTH_DEADLINE = 240.0
TIMEOUT = 60
MiB = 2**20

pytestmark = [
    pytest.mark.skipif(os.environ.get("VOLPLANE_E2E") != "1", reason="builds images and runs the compose stack: `make e2e` (VOLPLANE_E2E=1)"),
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(), reason="needs root and /dev/loop-control (loop devices, mounts, podman)"),
    pytest.mark.timeout(1800),
]


class Timer:
    """Wall-clock time of each phase, printed at the end (make e2e runs pytest -s)."""

    def __init__(self, title: str = "image + compose e2e") -> None:
        self.title = title
        self.phases: list[tuple[str, float]] = []
        self.start = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - t0))

    def report(self) -> str:
        lines = [f"  {name:<28} {seconds:7.1f} s" for name, seconds in self.phases]
        return "\n".join([f"{self.title} timings:", *lines, f"  {'total':<28} {time.monotonic() - self.start:7.1f} s"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def mountinfo() -> list[tuple[str, str]]:
    """(mount point, optional fields) of every mount on the host."""
    with open("/proc/self/mountinfo") as f:
        rows = [line.split(" ") for line in f]
    return [(r[4], " ".join(r[6 : r.index("-")])) for r in rows]


def mounts_below(directory: Path) -> list[str]:
    return [point for point, _ in mountinfo() if point.startswith(f"{directory}/")]


def loop_devices(shared: Path) -> set[str]:
    """The loop devices backed by the stack's pools (``losetup -a`` lines; the kernel keeps the
    backing file's path as the nodeagent named it, inside its container). Other tests on the
    machine may hold loop devices of their own: never count or touch those."""
    return {line for line in run(["losetup", "-a"]).stdout.splitlines() if f"{IN_CONTAINER}/pools/" in line or f"{shared}/" in line}


def share(directory: Path) -> None:
    """The nodeagent's mounts must propagate to the host: make the directory a shared mount of its own
    (the host's / may be private, and then an rshared bind mount of it propagates nothing)."""
    run(["mount", "--bind", str(directory), str(directory)])
    run(["mount", "--make-rshared", str(directory)])
    assert any(point == str(directory) and "shared:" in fields for point, fields in mountinfo())


def unshare(directory: Path) -> None:
    """Undo ``share``: whatever is still mounted below the directory (deepest first), then the bind itself."""
    for point in sorted(mounts_below(directory), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
    while any(point == str(directory) for point, _ in mountinfo()):
        run(["umount", str(directory)])


class Compose:
    """podman-compose on a copy of deploy/compose in a directory of its own, as a project of its own;
    ``files``: the compose files, in order (an override after the base, as ``-f a -f b``)."""

    def __init__(self, workdir: Path, images: dict[str, str], files: tuple[str, ...] = ("docker-compose.yaml",)) -> None:
        self.dir = workdir / "compose"
        self.dir.mkdir()
        self.files = files
        for name in (*files, "init-env.sh"):
            shutil.copy(COMPOSE_DIR / name, self.dir)
        self.shared = self.dir / "run" / "volplane"
        self.project = f"volplane-e2e-{uuid.uuid4().hex[:8]}"
        self.healthy_after: dict[str, float] = {}  # service → seconds its last wait_healthy took for it
        self.failures: dict[str, list[str]] = {}  # service → its failed health checks, for the report
        self.shared_set = False  # whether ``share`` made the shared directory a mount (undone by ``teardown``)
        self.env = {
            **standins.podman_env(),
            "VOLPLANE_IMAGE": IMAGE,
            "NATS_IMAGE": images["nats"],
            "REDIS_IMAGE": images["redis"],
            "CSI_TCP_PORT": str(free_port()),
            "JAEGER_UI_PORT": str(free_port()),
            "OTLP_PORT": str(free_port()),
        }

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for name in self.files for arg in ("-f", str(self.dir / name))]
        cmd = [str(BIN / "podman-compose"), "-p", self.project, *files, *args]
        return run(cmd, env=self.env, timeout=timeout, check=check, cwd=self.dir)

    def up(self, *profile: str) -> None:
        """``up -d``, once more if a start failed: podman 4.3 now and then fails one for no reason of
        the stack's ("failed to connect to syslog"); a second ``up`` keeps what runs, starts the rest."""
        first = self(*profile, "up", "-d", timeout=600, check=False)
        if first.returncode != 0:
            print(f"\nup -d exited {first.returncode}, once more: {first.stderr[-500:]}")
            self(*profile, "up", "-d", timeout=600)

    def start(self, timer: Timer, services: tuple[str, ...] = SERVICES, label: str = "") -> tuple[dict[str, str], dict[str, str]]:
        """As a user starts it: ``init-env.sh`` (fresh passwords), the shared directory made a
        shared mount, ``up -d``, each of ``services`` healthy by its own check, and the one-shot
        containers (the data directories and NATS' users; the event log) exited 0. Returns the
        ``.env``'s passwords and service → container name."""
        run([str(self.dir / "init-env.sh")])
        passwords = dict(line.split("=", 1) for line in (self.dir / ".env").read_text().splitlines() if "=" in line)
        self.shared.mkdir(parents=True)
        share(self.shared)
        self.shared_set = True
        with timer.phase(f"compose up{label}"):
            self.up()
        with timer.phase("every service healthy"):
            self.wait_healthy(services)
        print("\nhealthy after (s):", {s: round(v, 1) for s, v in sorted(self.healthy_after.items())}, self.failures)
        self.failures.clear()
        names = self.containers()
        assert set(services) <= set(names), names
        for one_shot in ("init", "setup"):
            code = standins.podman("inspect", "--format", "{{.State.ExitCode}}", names[one_shot]).stdout.strip()
            assert code == "0", f"{one_shot} exited {code}\n{self.logs()}"
        return passwords, names

    def containers(self) -> dict[str, str]:
        """service → container name, of every container of the project (running or not)."""
        out = standins.podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}", "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}'
        ).stdout
        return {service: name for name, service in (line.split() for line in out.splitlines() if line.strip())}

    def logs(self) -> str:
        parts = []
        for service, name in sorted(self.containers().items()):
            out = standins.podman("logs", "--tail", "40", name, check=False)
            state = standins.podman("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}}", name, check=False).stdout.strip()
            parts.append(f"--- {service} ({state}) ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def wait_healthy(self, services: tuple[str, ...] = SERVICES) -> None:
        """Run each service's own health check until it passes, every service in a thread of its own."""
        start = time.monotonic()
        deadline = start + HEALTH_DEADLINE

        def until_healthy(service: str) -> bool:
            while time.monotonic() < deadline:
                name = self.containers().get(service)
                t0 = time.monotonic()
                try:
                    # Podman 4.3 may take ~45 s to return from a check that timed out (10 s): give up sooner.
                    out = standins.podman("healthcheck", "run", name, check=False, timeout=15) if name else None
                    if out and out.returncode == 0:
                        self.healthy_after[service] = time.monotonic() - start
                        return True
                    self.failures.setdefault(service, []).append(f"{time.monotonic() - start:.1f}s rc={out and out.returncode} took {time.monotonic() - t0:.1f}s {out and (out.stdout + out.stderr)[-300:]!r}")
                except subprocess.TimeoutExpired:
                    self.failures.setdefault(service, []).append(f"{time.monotonic() - start:.1f}s timed out")
                time.sleep(1)
            return False

        with ThreadPoolExecutor(len(services)) as pool:
            results = dict(zip(services, pool.map(until_healthy, services), strict=True))
        pending = sorted(s for s, ok in results.items() if not ok)
        assert not pending, f"not healthy after {HEALTH_DEADLINE:.0f} s: {pending}\n{self.logs()}"

    def leftovers(self) -> dict[str, list[str]]:
        """What of the project still exists: containers, pods, volumes, networks."""
        label = f"label=io.podman.compose.project={self.project}"
        found = {
            "container": list(self.containers().values()),
            "pod": standins.podman("pod", "ps", "-q", "--filter", f"name=^pod_{self.project}$", check=False).stdout.split(),
            "volume": standins.podman("volume", "ls", "-q", "--filter", label, check=False).stdout.split(),
            "network": standins.podman("network", "ls", "-q", "--filter", label, check=False).stdout.split(),
        }
        return {kind: names for kind, names in found.items() if names}

    def down(self) -> dict[str, list[str]]:
        """``down -v``; what it left behind, removed by force (a failed ``up`` leaves odd states)."""
        self("--profile", "tracing", "down", "-v", "-t", "10", timeout=300, check=False)
        left = self.leftovers()
        for kind, names in left.items():
            standins.podman(*(["rm"] if kind == "container" else [kind, "rm"]), "-f", *names, check=False)
        return left


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200, url
        return str(resp.read().decode())


def mount_cap() -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def volume_life(channel: grpc.Channel, shared: Path) -> None:
    """One volume from creation to deletion, the way a CO drives the CSI calls."""
    controller, node = rpc.ControllerStub(channel), rpc.NodeStub(channel)
    info = node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT)
    cap = mount_cap()
    # Paths as the nodeagent sees them (under VOLPLANE_PATH_ROOTS), and as the host does.
    staging, target = f"{IN_CONTAINER}/e2e/staging", f"{IN_CONTAINER}/e2e/pod/vol"
    host_staging, host_target = shared / "e2e" / "staging", shared / "e2e" / "pod" / "vol"
    host_staging.mkdir(parents=True)
    host_target.parent.mkdir(parents=True)
    loops_before = loop_devices(shared)

    vol = controller.CreateVolume(
        csi.CreateVolumeRequest(
            name=f"e2e-{uuid.uuid4().hex}",
            capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
            volume_capabilities=[cap],
            accessibility_requirements=csi.TopologyRequirement(requisite=[info.accessible_topology]),
        ),
        timeout=TIMEOUT,
    ).volume
    vid = vol.volume_id
    images = [p for p in (shared / "pools").rglob("*") if p.is_file() and vid in p.name]
    assert len(images) == 1, f"the volume's image file in the shared pools: {images}"
    ctx = controller.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=info.node_id, volume_capability=cap, volume_context=vol.volume_context), timeout=TIMEOUT
    ).publish_context
    node.NodeStageVolume(
        csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging, volume_capability=cap, publish_context=ctx, volume_context=vol.volume_context),
        timeout=TIMEOUT,
    )
    node.NodePublishVolume(
        csi.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap, publish_context=ctx, volume_context=vol.volume_context),
        timeout=TIMEOUT,
    )
    # The mounts the nodeagent made in its container show on the host (rshared), on a new loop device.
    points = [p for p, _ in mountinfo()]
    assert str(host_staging) in points and str(host_target) in points, mounts_below(shared)
    assert len(loop_devices(shared) - loops_before) == 1, loop_devices(shared) - loops_before
    (host_target / "hello").write_text("world")
    assert (host_target / "hello").read_text() == "world"
    assert (host_staging / "hello").read_text() == "world"  # the same filesystem, staged once

    node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target), timeout=TIMEOUT)
    node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging), timeout=TIMEOUT)
    controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=info.node_id), timeout=TIMEOUT)
    assert mounts_below(shared) == []
    assert loop_devices(shared) - loops_before == set()
    controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    assert not images[0].exists()


def build_images(timer: Timer) -> dict[str, str]:
    """podman (installed if missing; the test is skipped when it cannot be), the stand-in images and
    ``make image``: the images the stack runs, by role (base, nats, redis)."""
    try:
        with timer.phase("podman (apt, if missing)"):
            standins.ensure_podman()
    except standins.Unavailable as e:
        pytest.skip(str(e))
    assert (BIN / "podman-compose").exists(), f"podman-compose is missing from {BIN}: run `make install` (dev extras)"
    with timer.phase("stand-in images"):
        images = standins.standin_images()
    with timer.phase("make image"):
        ca = "/etc/ssl/certs/ca-certificates.crt"
        run(
            ["make", "--no-print-directory", "image", "ENGINE=podman", f"IMAGE={IMAGE}", f"BASE_IMAGE={images['base']}", f"CA_CERTIFICATES={ca if Path(ca).exists() else ''}"],
            env=standins.podman_env(), cwd=ROOT, timeout=1200,
        )
    return images


def teardown(compose: Compose, workdir: Path, loops_before: set[str], timer: Timer) -> Callable[[], None]:
    """``down -v`` and the host put back as it was: the shared mount undone, the stack's leaked loop
    devices detached, the work directory gone. Returns the check to run once the test's own
    ``finally`` is over (nothing of the project, no mount, no loop device left behind), so that a
    failure of the test itself is the one reported."""
    with timer.phase("compose down"):
        left = compose.down()
    if compose.shared_set:
        leaked_mounts = mounts_below(compose.shared)
        unshare(compose.shared)
    else:
        leaked_mounts = []
    leaked_loops = loop_devices(compose.shared) - loops_before
    for line in leaked_loops:
        run(["losetup", "-d", line.split(":")[0]], check=False)
    shutil.rmtree(workdir, ignore_errors=True)
    # Each change of the code leaves the previous build's images dangling: drop this project's
    # older than a day (newer ones are the layer cache that keeps the next build short).
    standins.podman("image", "prune", "-f", "--filter", "label=org.opencontainers.image.title=volplane", "--filter", "until=24h", check=False)
    print("\n" + timer.report())

    def nothing_left() -> None:
        assert leaked_mounts == [], leaked_mounts
        assert leaked_loops == set(), leaked_loops
        assert left == {}, left
        assert compose.leftovers() == {}
        assert not workdir.exists()

    return nothing_left


def test_image_builds_and_the_compose_stack_serves_a_volume_life() -> None:
    timer = Timer()
    images = build_images(timer)

    workdir = Path(tempfile.mkdtemp(prefix="vp-e2e-", dir="/tmp"))  # short: the CSI socket's path has a 107-byte limit
    compose = Compose(workdir, images)
    loops_before = loop_devices(compose.shared)
    try:
        passwords, names = compose.start(timer)
        # First run: init-env.sh wrote .env with fresh passwords, readable by root only.
        assert (compose.dir / ".env").stat().st_mode & 0o077 == 0
        assert {"REDIS_PASSWORD_PROVISIONER", "REDIS_PASSWORD_REBUILD", "REDIS_PASSWORD_PROBE", "NATS_PASSWORD_PROVISIONER", "NATS_PASSWORD_PROBE"} <= set(passwords)
        assert len(set(passwords.values())) == len(passwords) and all(len(v) >= 32 for v in passwords.values())
        assert "jaeger" not in names, "Jaeger is an optional profile"

        # Unprivileged where no privilege is needed: a user of its own, a read-only root filesystem.
        for service in SERVICES:
            user, read_only = standins.podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", names[service]).stdout.split()
            if service == "nodeagent":
                assert user.split(":")[0] in ("0", "root"), user
            else:
                assert user == "65532:65532" and read_only == "true", (service, user, read_only)

        # NATS wants a user: a client without one is refused, even with the stack's CA and client certificate.
        anonymous = standins.podman(
            "exec", names["attacher"], "python", "-c",
            "import asyncio, nats; from volplane.clients import client_tls; "
            "asyncio.run(nats.connect('tls://nats:4222', tls=client_tls('/tls/ca.pem', '/tls/client.pem', '/tls/client.key'), "
            "connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0))",
            check=False,
        )
        assert anonymous.returncode != 0 and "authorization" in anonymous.stderr.lower(), anonymous.stderr[-2000:]
        # And TLS only, against the stack's CA: a client that does not know the CA does not get in.
        stranger = standins.podman(
            "exec", names["attacher"], "python", "-c",
            "import asyncio, nats; asyncio.run(nats.connect('tls://nats:4222', connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0))",
            check=False,
        )
        assert stranger.returncode != 0 and "certificate verify failed" in stranger.stderr.lower(), stranger.stderr[-2000:]
        # Redis: each service is a user of its own (init's ACL file); the attacher's may read its own
        # keys, and is refused server commands and the provisioner's keys.
        tried = standins.podman(
            "exec", names["attacher"], "python", "-c",
            "import os, redis\n"
            "r = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True, ssl_ca_certs='/tls/ca.pem', ssl_certfile='/tls/client.pem', ssl_keyfile='/tls/client.key')\n"
            "print(os.environ['REDIS_URL'].split('//')[1].split(':')[0], r.exists('vp:nodes') in (0, 1))\n"
            "for args in (('CONFIG', 'SET', 'dir', '/tmp'), ('FLUSHALL',), ('KEYS', '*'), ('GET', 'vp:vol:x'), ('SET', 'vp:vol:x', 'x')):\n"
            "    try:\n"
            "        r.execute_command(*args)\n"
            "        print('allowed', args[0])\n"
            "    except redis.exceptions.NoPermissionError:\n"
            "        print('refused', args[0])\n",
            check=False,
        )
        expected = ["attacher True", "refused CONFIG", "refused FLUSHALL", "refused KEYS", "refused GET", "refused SET"]
        assert tried.returncode == 0 and tried.stdout.splitlines() == expected, tried.stdout + tried.stderr[-2000:]

        with timer.phase("/metrics of every service"):
            for service in VOLPLANE_SERVICES:
                address = standins.podman("port", names[service], "9090/tcp").stdout.split()[0]
                assert "python_info" in fetch(f"http://{address}/metrics"), service

        with timer.phase("one volume's whole life"):
            socket_path = compose.shared / "csi.sock"
            with grpc.insecure_channel(f"unix://{socket_path}") as channel:
                try:
                    volume_life(channel, compose.shared)
                except (grpc.RpcError, AssertionError) as e:
                    raise AssertionError(f"{e}\n{compose.logs()}") from e

        # Again with the optional Jaeger (a stand-in OTLP receiver): the services trace to it.
        with timer.phase("tracing: down, stand-in"):
            compose("down", "-t", "10", timeout=300)
            compose.env.update(JAEGER_IMAGE=standins.jaeger_standin(IMAGE), OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4317")
        with timer.phase("tracing: up, healthy"):
            compose.up("--profile", "tracing")
            compose.wait_healthy((*SERVICES, "jaeger"))
        print("\nhealthy after (s), tracing:", {s: round(v, 1) for s, v in sorted(compose.healthy_after.items())}, compose.failures)
        with timer.phase("tracing: spans exported"):
            with grpc.insecure_channel(f"unix://{compose.shared / 'csi.sock'}") as channel:
                controller = rpc.ControllerStub(channel)
                vol = controller.CreateVolume(
                    csi.CreateVolumeRequest(name=f"e2e-{uuid.uuid4().hex}", capacity_range=csi.CapacityRange(required_bytes=16 * MiB), volume_capabilities=[mount_cap()]),
                    timeout=TIMEOUT,
                ).volume
                controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
            # The batch span processor exports every few seconds.
            deadline, senders = time.monotonic() + 30, set[str]()
            while time.monotonic() < deadline and not {"volplane-apigw", "volplane-provisioner"} <= senders:
                time.sleep(1)
                logs = standins.podman("logs", compose.containers()["jaeger"]).stdout
                senders = {line.split()[1] for line in logs.splitlines() if line.startswith("spans ")}
            assert {"volplane-apigw", "volplane-provisioner"} <= senders, f"{senders}\n{compose.logs()}"
    finally:
        nothing_left = teardown(compose, workdir, loops_before, timer)
    nothing_left()
