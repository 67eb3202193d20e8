"""The Helm chart (charts/volplane), rendered and linted by Helm's own engine through
helm-python-sdk (no helm binary, no cluster), validated strictly against the Kubernetes
schemas, and held to what it promises: passwords drawn at install and never committed,
privileges only where needed, NetworkPolicies around NATS and Redis, /metrics on a named
port of every service, the kustomize base equal to the chart's default render.

    python -m pytest -q tests/deploy/test_chart.py
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHART = ROOT / "charts" / "volplane"
sys.path.insert(0, str(ROOT / "deploy" / "kubernetes"))
import generate  # noqa: E402

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency (make install)")

K8S_VERSIONS = ("1.31.0", "1.37.0")
# Kinds kubernetes-validate has no schema for (CRDs); checked by a schema of ours or by hand.
CRD_KINDS = {"VolumeSnapshotClass", "ServiceMonitor"}
SNAPSHOT_CLASS_SCHEMA = Path(__file__).parent / "volumesnapshotclass.schema.json"
VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha-observed": {
        "nats": {"replicas": 3, "storage": {"storageClassName": "fast"}},
        "controller": {"replicas": 2, "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}, "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "tracing": {"jaeger": {"enabled": True}},
        "image": {"repository": "registry.example/volplane", "tag": "0.1.1"},
    },
    "existing-secret": {
        "credentials": {"create": False, "existingSecret": "my-volplane-credentials"},
        "metrics": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "snapshotClass": {"enabled": False},
        "namespace": {"create": True},
    },
}
# Who may be privileged, and who may run as root (without any capability): the node
# plugin's host work, and the writers of host directories that root owns.
PRIVILEGED = {"volplane-node/nodeagent"}
ROOT_NO_CAPS = {"volplane-controller/provisioner", "volplane-node/apigw", "volplane-node/node-driver-registrar", "volplane-node/livenessprobe"}


def render(values: dict[str, Any], name: str = "volplane") -> list[dict[str, Any]]:
    return [d for docs in generate.render(values, name=name).values() for d in docs]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            spec = d["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                out[f"{d['metadata']['name']}/{c['name']}"] = c
    return out


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


@pytest.mark.parametrize("case", sorted(VALUES))
def test_chart_lints_without_a_warning(case: str) -> None:
    for version in K8S_VERSIONS:
        report = helm.lint(CHART, VALUES[case], strict=True, namespace="volplane", kube_version=f"v{version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, problems


@pytest.mark.parametrize("case", sorted(VALUES))
def test_rendered_chart_validates_strictly(case: str, tmp_path: Path) -> None:
    docs = render(VALUES[case])
    plain = [d for d in docs if d["kind"] not in CRD_KINDS]
    stream = tmp_path / "rendered.yaml"
    stream.write_text(yaml.safe_dump_all(plain))
    for version in K8S_VERSIONS:
        out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(stream)], capture_output=True, text=True, timeout=120)
        report = out.stdout + out.stderr
        assert out.returncode == 0 and "WARN" not in report and "ERROR" not in report, report
        assert report.count(" passed for resource ") == len(plain), report
    classes = [d for d in docs if d["kind"] == "VolumeSnapshotClass"]
    if classes:
        path = tmp_path / "snapshotclass.yaml"
        path.write_text(yaml.safe_dump_all(classes))
        out = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(SNAPSHOT_CLASS_SCHEMA), str(path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_kustomize_base_is_the_chart_rendered_with_its_defaults() -> None:
    stale = generate.stale()
    assert not stale, f"run `python deploy/kubernetes/generate.py`: stale {stale}"


def test_nats_permissions_are_the_catalogs() -> None:
    """One user per service with the subjects `make run` gives it; the node agents share one
    user whose node subjects are open to every node (a DaemonSet's pods share one Secret)."""
    from access.credentials import nats_permissions, shared_node_identities
    from services.catalog import CATALOG

    expected = nats_permissions(shared_node_identities())
    shipped = json.loads((CHART / "files" / "nats-permissions.json").read_text())["users"]
    assert set(shipped) == set(expected) == {d.name for d in CATALOG}
    for user, (publish, subscribe) in expected.items():
        assert (shipped[user]["publish"], shipped[user]["subscribe"]) == (publish, subscribe), user
    # The node agents' user reaches node subjects through a wildcard, never another service's.
    assert "vp.cmd.node.*.>" in shipped["nodeagent"]["subscribe"] and not any(p.startswith("vp.ev.volume") for p in shipped["nodeagent"]["publish"])
    config = find(render({}), "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    for user in [*expected, "admin", "probe"]:
        assert f"user: {user}, password: $NATS_PASSWORD_{user.upper()}" in config, user


def test_passwords_are_drawn_at_install_and_never_committed() -> None:
    first, second = (find(render({}), "Secret", "volplane-credentials") for _ in range(2))
    assert set(first["data"]) == set(generate.secret_keys())
    values = [base64.b64decode(v).decode() for v in first["data"].values()]
    assert all(len(v) == 32 and v.isalnum() for v in values)
    assert len(set(values)) == len(values)
    assert first["data"] != second["data"], "offline renders must draw fresh passwords"
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The committed base carries no Secret and no password: credentials.env is drawn locally.
    base = [d for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert not [d for d in base if d["kind"] == "Secret"]
    assert not (ROOT / "deploy" / "kubernetes" / "redis.env").exists()
    assert "credentials.env" in (ROOT / "deploy" / "kubernetes" / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "deploy/kubernetes", "charts"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert "deploy/kubernetes/credentials.env" not in tracked


def test_every_secret_reference_names_a_key_the_secret_has() -> None:
    keys = set(generate.secret_keys())
    for case in VALUES.values():
        docs = render(case)
        secret = (case.get("credentials") or {}).get("existingSecret") or "volplane-credentials"
        for where, c in containers(docs).items():
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret and ref["key"] in keys, (where, ref)


def test_containers_have_no_privilege_they_do_not_need() -> None:
    docs = render({})
    pod_level = {
        f"{d['metadata']['name']}/{c['name']}": d["spec"]["template"]["spec"].get("securityContext", {})
        for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
        for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"]["containers"]
    }
    for where, c in containers(docs).items():
        if where in PRIVILEGED:
            assert c["securityContext"] == {"privileged": True}, where
            continue
        # The container's settings over the pod's, as the kubelet applies them.
        sc = {k: v for k, v in pod_level[where].items() if k in ("runAsUser", "runAsNonRoot", "runAsGroup")} | c.get("securityContext", {})
        if where in PRIVILEGED:
            assert sc == {"privileged": True}, where
            continue
        assert "privileged" not in sc, where
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc["readOnlyRootFilesystem"] is True, where
        if where in ROOT_NO_CAPS:
            assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False, where
        else:
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, where
    # Writable places of a volplane service with a read-only root: its run dir and /tmp.
    for where, c in containers(docs).items():
        if c["image"].startswith("volplane:") and where not in PRIVILEGED and "wait-for-servers" not in where:
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/run/volplane", "/tmp"} <= mounts, where
            assert env(c)["VOLPLANE_RUN_DIR"] == "/run/volplane", where
    # The node's ServiceAccount carries no token: nothing on the node calls the API.
    node = find(docs, "DaemonSet", "volplane-node")["spec"]["template"]["spec"]
    assert node["automountServiceAccountToken"] is False


def test_network_policies_admit_only_volplane_to_nats_and_redis() -> None:
    docs = render({})
    for server, port in (("nats", 4222), ("redis", 6379)):
        policy = find(docs, "NetworkPolicy", f"volplane-{server}")["spec"]
        assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == server
        assert policy["policyTypes"] == ["Ingress"]
        clients = [r for r in policy["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"]]
        selectors = [f["podSelector"] for r in clients for f in r["from"]]
        for s in selectors:
            components = s.get("matchLabels", {}).get("app.kubernetes.io/component")
            expressions = {e["key"]: e["values"] for e in s.get("matchExpressions", [])}
            assert components == server or expressions.get("app.kubernetes.io/component") == ["controller", "node"], s
    assert not [d for d in render({"networkPolicy": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]


def test_every_service_serves_metrics_on_a_named_port_behind_a_service() -> None:
    docs = render(VALUES["ha-observed"])
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    for kind in ("controller", "node"):
        svc = services[f"volplane-{kind}-metrics"]["spec"]
        assert svc["clusterIP"] == "None"
        workload = next(d for d in docs if d["metadata"]["name"] == f"volplane-{kind}" and d["kind"] in ("Deployment", "DaemonSet"))
        for c in workload["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith("registry.example/volplane:"):
                continue
            addr = env(c)["VOLPLANE_METRICS_ADDR"]
            named = {p["containerPort"]: p["name"] for p in c["ports"]}
            name = named[int(addr.rsplit(":", 1)[1])]
            assert name.endswith("-metrics") and addr.startswith("0.0.0.0:"), (c["name"], addr)
            assert {"name": name, "port": int(addr.rsplit(":", 1)[1]), "targetPort": name} in svc["ports"]
            endpoints = monitors[f"volplane-{kind}"]["spec"]["endpoints"]
            assert any(e["port"] == name and e["path"] == "/metrics" for e in endpoints)
        assert monitors[f"volplane-{kind}"]["metadata"]["labels"]["release"] == "prometheus"
    off = render({"metrics": {"enabled": False}})
    assert not any("VOLPLANE_METRICS_ADDR" in env(c) for c in containers(off).values())
    assert not [d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]


def test_registrar_and_livenessprobe_have_their_usual_flags() -> None:
    docs = render({})
    cs = containers(docs)
    registrar = cs["volplane-node/node-driver-registrar"]
    assert env(registrar)["KUBE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert {"--v=2", "--csi-address=/csi/csi.sock", "--http-endpoint=:9810", "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.volplane.io/csi.sock"} <= set(registrar["args"])
    assert registrar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "registrar"}
    for pod, port in (("volplane-controller", 9808), ("volplane-node", 9809)):
        probe = cs[f"{pod}/livenessprobe"]
        assert {"--v=2", "--csi-address=/csi/csi.sock", f"--http-endpoint=:{port}"} <= set(probe["args"])
        apigw = cs[f"{pod}/apigw"]
        assert {"name": "healthz", "containerPort": port} in apigw["ports"]
        assert apigw["livenessProbe"]["httpGet"]["port"] == "healthz"
    for sidecar in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
        args = cs[f"volplane-controller/{sidecar}"]["args"]
        assert "--leader-election" in args and "--v=2" in args and any(a.startswith("--http-endpoint=:") for a in args), sidecar


def test_values_reach_the_objects() -> None:
    case = VALUES["ha-observed"]
    docs = render(case)
    cs = containers(docs)
    assert cs["volplane-controller/apigw"]["image"] == "registry.example/volplane:0.1.1"
    controller = find(docs, "Deployment", "volplane-controller")["spec"]
    assert controller["replicas"] == 2
    assert controller["template"]["spec"]["nodeSelector"] == case["controller"]["nodeSelector"]
    assert controller["template"]["spec"]["tolerations"] == case["controller"]["tolerations"]
    nats = find(docs, "StatefulSet", "volplane-nats")["spec"]
    assert nats["replicas"] == 3 and nats["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    config = find(docs, "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    assert config.count("nats://volplane-nats-") == 3 and "cluster {" in config
    assert "cluster {" not in find(render({}), "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    assert env(cs["volplane-controller/provisioner"])["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://volplane-jaeger:4317"
    assert find(docs, "Deployment", "volplane-jaeger")["spec"]["template"]["spec"]["containers"][0]["image"].startswith("jaegertracing/jaeger:2.")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env(containers(render({}))["volplane-controller/provisioner"])
    # A release of another name names everything after it.
    other = render({}, name="storage")
    assert {d["metadata"]["name"] for d in other if d["kind"] == "StatefulSet"} == {"storage-volplane-nats", "storage-volplane-redis"}
    assert env(containers(other)["storage-volplane-controller/attacher"])["REDIS_URL"] == "redis://volplane:$(REDIS_PASSWORD)@storage-volplane-redis:6379/0"


def test_chart_carries_the_compatibility_it_documents() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert meta["annotations"]["csi.volplane.io/csi-spec"] == "1.12.0" and "1.12" in docs
    assert meta["kubeVersion"].startswith(">=1.31")
    for sidecar in ("provisioner", "attacher", "resizer", "snapshotter", "registrar", "livenessprobe"):
        s = values["sidecars"][sidecar]
        assert f"{s['image']}:{s['tag']}" in docs or f"{s['image']} | {s['tag']}" in docs or s["tag"] in docs, sidecar


@pytest.mark.parametrize(
    "values",
    [{"nats": {"replicas": 2}}, {"nat": {"replicas": 3}}, {"pools": {"localCapacity": "10 GB"}}, {"storageClasses": [{"name": "x", "pool": "elsewhere"}]}],
    ids=["two-nats-servers", "misspelt-key", "bad-quantity", "unknown-pool"],
)
def test_values_schema_rejects_what_would_deploy_wrong(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as loaded:
        loaded.validate_schema({})
        with pytest.raises(helm.HelmValuesError):
            loaded.validate_schema(values)
