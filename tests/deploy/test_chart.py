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
import re
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
CRD_KINDS = {"VolumeSnapshotClass", "ServiceMonitor", "Certificate", "Issuer"}
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
        "tls": {"source": "existing", "existingSecrets": {"server": "my-nats-redis-tls", "client": "my-volplane-tls"}},
        "metrics": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "snapshotClass": {"enabled": False},
        "namespace": {"create": True},
    },
    "cert-manager": {"tls": {"source": "certManager"}, "nats": {"replicas": 3}},
    # One NATS server, Redis behind five Sentinels, no TLS.
    "plaintext": {"tls": {"enabled": False}, "nats": {"replicas": 1}, "redis": {"sentinel": {"enabled": True, "replicas": 5, "quorum": 3}}},
    "sentinel": {"redis": {"sentinel": {"enabled": True}}},
}
# Who may be privileged, and who may run as root (without any capability): the node
# plugin's host work, and the writers of host directories that root owns.
PRIVILEGED = {"volplane-node/nodeagent"}
ROOT_NO_CAPS = {"volplane-node/apigw", "volplane-node/node-driver-registrar", "volplane-node/livenessprobe"}


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
    # And the node plugins' user (apigw in node mode): node commands, nothing of the controller's.
    assert set(shipped) == set(expected) == {d.name for d in CATALOG} | {"apigw-node"}
    assert shipped["apigw-node"]["publish"] == ["_INBOX.>", "vp.cmd.node.*.>"]
    for user, (publish, subscribe) in expected.items():
        assert (shipped[user]["publish"], shipped[user]["subscribe"]) == (publish, subscribe), user
    # The node agents' user reaches node subjects through a wildcard, never another service's.
    assert "vp.cmd.node.*.>" in shipped["nodeagent"]["subscribe"] and not any(p.startswith("vp.ev.volume") for p in shipped["nodeagent"]["publish"])
    config = find(render({}), "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    for user in [*expected, "admin", "probe"]:
        assert f"user: {user}, password: $NATS_PASSWORD_{user.upper().replace('-', '_')}" in config, user


def redis_users(docs: list[dict[str, Any]], statefulset: str = "volplane-redis") -> dict[str, list[str]]:
    """The users the Redis StatefulSet's command creates: user → its rules after the name."""
    command = find(docs, "StatefulSet", statefulset)["spec"]["template"]["spec"]["containers"][0]["command"]
    users: dict[str, list[str]] = {}
    for i, arg in enumerate(command):
        if arg == "--user":
            rest = command[i + 1 :]
            end = next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))
            users[rest[0]] = rest[1:end]
    return users


def test_redis_acl_is_the_catalogs() -> None:
    """One Redis user per service that keeps read models, with the key patterns and command
    rules `make run` gives it; the node agents share one whose keys are every node's (as
    their NATS user); the rebuild tool has its own; nobody may configure, flush or debug."""
    from access.credentials import REBUILD, redis_rules, shared_node_identities
    from services.catalog import CATALOG

    expected = redis_rules(shared_node_identities())
    shipped = json.loads((CHART / "files" / "redis-acl.json").read_text())["users"]
    assert shipped == expected
    assert set(shipped) == {d.name for d in CATALOG if d.redis_keys} | {REBUILD} == {"apigw", "attacher", "nodeagent", "provisioner", "rebuild"}
    assert "~vp:node:*:*" in shipped["nodeagent"] and not any(r.startswith("~vp:vol") for r in shipped["nodeagent"])
    for user, rules in shipped.items():
        assert "~vp:*" not in rules or user == REBUILD, user
        assert rules[:1] == ["resetchannels"] and "-@all" in rules and rules.index("-@dangerous") > max(i for i, r in enumerate(rules) if r.startswith("+")), user
        assert not [r for r in rules if r.lstrip("+").lower() in ("@all", "config", "debug", "flushall", "flushdb", "module", "shutdown", "save", "keys", "@admin", "@dangerous")], user
    for case in VALUES.values():
        users = redis_users(render(case))
        if case.get("redis", {}).get("sentinel", {}).get("enabled"):
            assert users.pop("replication")[2:] == ["-@all", "+psync", "+replconf", "+ping"]
            assert "+slaveof" in users.pop("sentinel")
        assert users.pop("default") == ["off"]
        assert users.pop("probe") == ["on", ">$(REDIS_PASSWORD_PROBE)", "resetchannels", "-@all", "+ping"]
        assert users == {u: ["on", f">$(REDIS_PASSWORD_{u.upper()})", *rules] for u, rules in expected.items()}


def test_every_pod_is_its_own_redis_user() -> None:
    """Each service's REDIS_URL names its own user, with its own password key; the Redis
    server reads each password from the key of the same name, and the probes ask as probe."""
    for case in VALUES.values():
        docs = render(case)
        secret = (case.get("credentials") or {}).get("existingSecret") or "volplane-credentials"
        seen: dict[str, str] = {}
        for where, c in containers(docs).items():
            e = env(c)
            if "REDIS_URL" not in e:
                continue
            service = c["command"][-1].removeprefix("services.")
            m = re.fullmatch(r"rediss?(?:\+sentinel)?://([a-z]+):\$\(REDIS_PASSWORD\)@(?:volplane-redis:6379|(?:volplane-redis-\d\.volplane-redis-headless:26379,?)+/volplane)/0", e["REDIS_URL"])
            assert m and m[1] == service, (where, e["REDIS_URL"])
            assert e["REDIS_PASSWORD"] == {"secretKeyRef": {"name": secret, "key": f"redis-{service}"}}, where
            assert seen.setdefault(service, where.split("/")[0]) == where.split("/")[0], f"{service} in two pods: {seen[service]}, {where}"
        assert set(seen) == {"apigw", "attacher", "nodeagent", "provisioner"}
        assert "REDIS_URL" not in env(containers(docs)["volplane-node/apigw"]), "a node plugin keeps no read models"
        redis = containers(docs)["volplane-redis/redis"]
        passwords = {k: v["secretKeyRef"]["key"] for k, v in env(redis).items() if k.startswith("REDIS_PASSWORD_")}
        assert passwords == {f"REDIS_PASSWORD_{u.upper()}": f"redis-{u}" for u in redis_users(docs) if u != "default"}
        for probe in ("readinessProbe", "livenessProbe"):
            assert "--user probe --pass \"$REDIS_PASSWORD_PROBE\"" in redis[probe]["exec"]["command"][2], probe


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


def test_the_secret_keys_are_the_ones_docs_deploy_lists() -> None:
    """The keys a Secret of your own (or a hand-written credentials.env) must hold."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    loop = re.search(r"^for k in (.*?); do$", text, re.M | re.S)
    assert loop, "docs/deploy.md: the credentials.env loop"
    assert loop[1].replace("\\\n", " ").split() == generate.secret_keys()
    listed = re.search(r"Secret `volplane-credentials` \(keys (.*?)\)\.", text, re.S)
    assert listed and re.findall(r"`([a-z-]+)`", listed[1]) == generate.secret_keys()


def test_an_older_credentials_env_keeps_its_passwords_and_gains_the_keys_it_lacks() -> None:
    """`generate.py --credentials` on a credentials.env of a release with one Redis user."""
    old = "# mine\nnats-admin=keepme\nredis-password=stale"
    new = generate.credentials_env(keep=old)
    assert new.startswith(old + "\n")
    pairs = dict(line.split("=", 1) for line in new.splitlines() if "=" in line)
    assert set(pairs) == {*generate.secret_keys(), "redis-password"} and pairs["nats-admin"] == "keepme"
    assert generate.credentials_env(keep=new) == new


def test_every_secret_reference_names_a_key_the_secret_has() -> None:
    for case in VALUES.values():
        # Redis behind Sentinel adds the Sentinels' and the replicas' users (docs/deploy.md).
        sentinel = case.get("redis", {}).get("sentinel", {}).get("enabled")
        keys = set(generate.secret_keys()) | ({"redis-replication", "redis-sentinel"} if sentinel else set())
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
    assert "cluster {" not in find(render(VALUES["plaintext"]), "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    assert env(cs["volplane-controller/provisioner"])["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://volplane-jaeger:4317"
    assert find(docs, "Deployment", "volplane-jaeger")["spec"]["template"]["spec"]["containers"][0]["image"].startswith("jaegertracing/jaeger:2.")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env(containers(render({}))["volplane-controller/provisioner"])
    # A release of another name names everything after it.
    other = render({}, name="storage")
    assert {d["metadata"]["name"] for d in other if d["kind"] == "StatefulSet"} == {"storage-volplane-nats", "storage-volplane-redis"}
    assert env(containers(other)["storage-volplane-controller/attacher"])["REDIS_URL"] == "rediss://attacher:$(REDIS_PASSWORD)@storage-volplane-redis:6379/0"


def _service_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every volplane container that connects to NATS (the services, the install job): its env."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if "NATS_URL" in env(c):
                    out[f"{d['metadata']['name']}/{c['name']}"] = env(c)
    return out


@pytest.mark.parametrize("replicas", [3, 5])
def test_a_nats_cluster_routes_every_member_and_every_client_is_given_all_of_them(replicas: int) -> None:
    from volplane.config import Config

    docs = render({"nats": {"replicas": replicas}})
    members = [f"volplane-nats-{i}.volplane-nats-headless" for i in range(replicas)]
    conf = find(docs, "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    cluster = conf[conf.index("cluster {") :]
    assert "name: volplane" in cluster and "no_advertise: true" in cluster and "verify: true" in cluster
    assert re.findall(r"nats://([\w.-]+):6222", cluster) == members
    assert "jetstream {" in conf and "server_name: $POD_NAME" in conf
    assert find(docs, "StatefulSet", "volplane-nats")["spec"]["replicas"] == replicas
    assert find(docs, "Service", "volplane-nats-headless")["spec"]["clusterIP"] == "None"
    assert find(docs, "PodDisruptionBudget", "volplane-nats")["spec"]["maxUnavailable"] == 1
    clients = _service_env(docs)
    assert {"volplane-controller/apigw", "volplane-node/nodeagent", "volplane-install-1/install"} <= set(clients)
    for name, e in clients.items():
        for var in ("NATS_URL", "NATS_PROBE_URL") if "NATS_PROBE_URL" in e else ("NATS_URL",):
            urls = e[var].split(",")
            assert [re.sub(r"^tls://[^@]+@|:4222$", "", u) for u in urls] == members, (name, var)
            Config.from_env({"NATS_URL": e[var].replace("$(", "").replace(")", "")})  # a list the services accept
    job = find(docs, "Job", "volplane-install-1")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["--replicas", "3"], "the event stream at R3 on any cluster"
    single = find(render(VALUES["plaintext"]), "Job", "volplane-install-1")["spec"]["template"]["spec"]["containers"][0]
    assert single["args"] == ["--replicas", "1"]
    assert "volplane-nats:4222" in _service_env(render(VALUES["plaintext"]))["volplane-controller/provisioner"]["NATS_URL"]


def test_the_default_is_a_three_member_nats_cluster() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nats"]["replicas"] == 3 and values["redis"]["sentinel"]["enabled"] is False


def test_redis_sentinel_gives_every_service_the_sentinels() -> None:
    from volplane.config import Config, RedisSentinel

    docs = render(VALUES["sentinel"])
    redis = find(docs, "StatefulSet", "volplane-redis")["spec"]
    assert redis["replicas"] == 3 and redis["serviceName"] == "volplane-redis-headless"
    pod = redis["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["redis", "sentinel"]
    server, sentinel = pod["containers"]
    argv = server["command"]
    assert argv[:2] == ["sh", "-c"] and argv[3] == "redis-server" and "--tls-replication" in argv
    # The Sentinels' and the replicas' users, least privilege; passwords from the Secret.
    users = {argv[i + 1]: argv[i + 2 : next((j for j in range(i + 1, len(argv)) if argv[j].startswith("--")), len(argv))] for i, a in enumerate(argv) if a == "--user"}
    assert users["replication"] == ["on", ">$(REDIS_PASSWORD_REPLICATION)", "-@all", "+psync", "+replconf", "+ping"]
    assert "+slaveof" in users["sentinel"] and "+@all" not in users["sentinel"] and "-@all" in users["sentinel"]
    script = sentinel["command"][2]
    for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes", "sentinel monitor volplane $master 6379 2",
                 "sentinel down-after-milliseconds volplane 5000", "tls-auth-clients yes", "sentinel auth-user volplane sentinel"):
        assert line in script, line
    secret = find(docs, "Secret", "volplane-credentials")["data"]
    assert {"redis-sentinel", "redis-replication"} <= set(secret)
    assert "redis-sentinel" not in find(render({}), "Secret", "volplane-credentials")["data"]
    sentinels = [(f"volplane-redis-{i}.volplane-redis-headless", 26379) for i in range(3)]
    for name, e in _service_env(docs).items():
        if "REDIS_URL" not in e:
            continue
        url = e["REDIS_URL"].replace("$(REDIS_PASSWORD)", "pw")
        parsed = RedisSentinel.parse(url)
        assert parsed.sentinels == tuple(sentinels) and parsed.master == "volplane" and parsed.tls and parsed.password == "pw", name
        Config.from_env({"REDIS_URL": url})
    ports = {p["port"] for rule in find(docs, "NetworkPolicy", "volplane-redis")["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {6379, 26379}
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(_secret_files(docs, "volplane-tls-server")["tls.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "*.volplane-redis-headless" in names, "the servers' certificate names each Redis server and Sentinel"
    assert find(docs, "PodDisruptionBudget", "volplane-redis")["spec"]["maxUnavailable"] == 1


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
    [{"nats": {"replicas": 2}}, {"nat": {"replicas": 3}}, {"pools": {"localCapacity": "10 GB"}}, {"storageClasses": [{"name": "x", "pool": "elsewhere"}]},
     {"redis": {"sentinel": {"enabled": True, "replicas": 2}}}, {"redis": {"sentinel": {"enable": True}}}, {"nats": {"streamReplicas": 7}}],
    ids=["two-nats-servers", "misspelt-key", "bad-quantity", "unknown-pool", "two-sentinels", "misspelt-sentinel-key", "stream-beyond-jetstream"],
)
def test_values_schema_rejects_what_would_deploy_wrong(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as loaded:
        loaded.validate_schema({})
        with pytest.raises(helm.HelmValuesError):
            loaded.validate_schema(values)


# --- TLS --------------------------------------------------------------------------------


def _secret_files(docs: list[dict[str, Any]], name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in find(docs, "Secret", name)["data"].items()}


def _mounted_secret(docs: list[dict[str, Any]], workload: str, container: str, path: str) -> str:
    """The Secret mounted at ``path`` in ``workload``'s ``container``."""
    d = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job") and d["metadata"]["name"].startswith(workload))
    spec = d["spec"]["template"]["spec"]
    c = next(c for c in spec["containers"] if c["name"] == container)
    volume = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == path)
    return str(next(v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == volume))


def test_tls_is_on_by_default_for_every_client_route_and_redis() -> None:
    from cryptography import x509

    docs = render({"nats": {"replicas": 3}})
    config = find(docs, "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    head, _, cluster = config.partition("cluster {")
    for part in (head, cluster.split("authorization")[0]):  # client connections, then routes
        assert "tls {" in part and "verify: true" in part and "ca_file: /etc/nats-tls/ca.crt" in part
    redis_args = find(docs, "StatefulSet", "volplane-redis")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert redis_args[redis_args.index("--port") + 1] == "0" and redis_args[redis_args.index("--tls-port") + 1] == "6379"
    assert redis_args[redis_args.index("--tls-auth-clients") + 1] == "yes"
    assert _mounted_secret(docs, "volplane-nats", "nats", "/etc/nats-tls") == _mounted_secret(docs, "volplane-redis", "redis", "/etc/redis-tls") == "volplane-tls-server"
    for where, c in containers(docs).items():
        e = env(c)
        if "NATS_URL" in e:
            assert e["NATS_URL"].startswith("tls://") and e["NATS_PROBE_URL"].startswith("tls://"), where
            assert e["VOLPLANE_TLS_CA"] == "/etc/volplane/tls/ca.crt" and e["VOLPLANE_TLS_KEY"] == "/etc/volplane/tls/tls.key", where
            assert _mounted_secret(docs, where.split("/")[0], c["name"], "/etc/volplane/tls") == "volplane-tls-client", where
        if "REDIS_URL" in e:
            assert e["REDIS_URL"].startswith("rediss://"), where
    install = next(d for d in docs if d["kind"] == "Job")
    assert install["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"].startswith("tls://")
    # The generated certificates: the servers' names every client and route dials, one CA.
    server, client = _secret_files(docs, "volplane-tls-server"), _secret_files(docs, "volplane-tls-client")
    assert server["ca.crt"] == client["ca.crt"]
    ca = x509.load_pem_x509_certificate(server["ca.crt"])
    cert = x509.load_pem_x509_certificate(server["tls.crt"])
    cert.verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate(client["tls.crt"]).verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"volplane-nats", "volplane-nats.volplane.svc", "volplane-redis", "*.volplane-nats-headless", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert "volplane-nats-0.volplane-nats-headless:6222" in config


def test_cert_manager_certificates_back_the_mounted_secrets() -> None:
    docs = render(VALUES["cert-manager"])
    certs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    assert {c["secretName"] for c in certs.values()} >= {"volplane-tls-server", "volplane-tls-client"}
    assert certs["volplane-tls-server"]["issuerRef"] == {"name": "volplane-ca", "kind": "Issuer"}
    assert "*.volplane-nats-headless" in certs["volplane-tls-server"]["dnsNames"] and "server auth" in certs["volplane-tls-server"]["usages"]
    assert certs["volplane-ca"]["isCA"] is True
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("volplane-tls")]
    assert _mounted_secret(docs, "volplane-controller", "provisioner", "/etc/volplane/tls") == "volplane-tls-client"
    given = render({"tls": {"source": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}})
    assert {d["kind"] for d in given if d["kind"] in ("Issuer", "Certificate")} == {"Certificate"}


def test_tls_can_be_turned_off() -> None:
    docs = render(VALUES["plaintext"])
    assert "tls {" not in find(docs, "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    for where, c in containers(docs).items():
        e = env(c)
        assert "VOLPLANE_TLS_CA" not in e and not str(e.get("NATS_URL", "nats://")).startswith("tls://"), where
    assert not [d for d in docs if d["kind"] == "Secret" and "tls" in d["metadata"]["name"]]



def _handshake(server: dict[str, bytes], hostname: str, tmp: Path) -> None:
    """A TLS handshake in memory: the servers' certificate against a client that checks
    it as the services do (the chart's CA, the host name it dialled)."""
    import ssl

    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp / name).write_bytes(server[name])
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    dialling = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = dialling.wrap_bio(c_in, c_out, server_hostname=hostname)
    end = serving.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", end)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"no handshake with {hostname}")


@pytest.mark.parametrize("values", [{}, {"nats": {"replicas": 3}, "redis": {"sentinel": {"enabled": True}}}], ids=["defaults", "sentinel"])
def test_every_server_name_a_client_or_route_dials_passes_the_certificate_check(values: dict[str, Any], tmp_path: Path) -> None:
    """Each host name in a NATS_URL, a REDIS_URL or a route verifies against the servers'
    certificate as a client checks it (OpenSSL matches no wildcard that leaves a single
    label, so "*.volplane-nats-headless" alone does not cover the pods' names)."""
    docs = render(values)
    dialled: set[str] = set()
    for c in containers(docs).values():
        e = env(c)
        for key in ("NATS_URL", "REDIS_URL"):
            if isinstance(e.get(key), str) and "://" in e[key]:
                rest = e[key].partition("://")[2]
                # One URL per member ("tls://…@a:4222,tls://…@b:4222"), or a Sentinels' list ("…@s1:26379,s2:26379/master").
                for member in rest.split(","):
                    host = member.split("://")[-1].split("/", 1)[0].rpartition("@")[2].rsplit(":", 1)[0]
                    if host and not host.startswith("$"):
                        dialled.add(host)
    config = find(docs, "ConfigMap", "volplane-nats-config")["data"]["nats.conf"]
    dialled |= set(re.findall(r"nats://([\w.-]+):6222", config))
    assert any(h.startswith("volplane-nats-0.") for h in dialled), dialled
    server = _secret_files(docs, "volplane-tls-server")
    for host in sorted(dialled):
        _handshake(server, host, tmp_path)
