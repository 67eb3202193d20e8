"""The compose stack's three-member NATS override (deploy/compose/cluster.yaml), read as
compose merges it over docker-compose.yaml: three members on one cluster configuration
with names of their own, every volplane process given all three as its own user, the
event log made at R3, the members' data owned by the unprivileged user, the servers'
certificate naming every member. No containers run here (``make e2e`` runs the
override with podman: tests/deploy/test_compose_cluster_e2e.py).

    python -m pytest -q tests/deploy/test_compose_cluster.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"
MEMBERS = ("nats", "nats-2", "nats-3")
VOLPLANE = ("provisioner", "attacher", "nodeagent", "apigw")


def _merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override file: mappings key by key, sequences appended (volumes
    by target), scalars and command lines replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = v if k in ("command", "test") else _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list):
        return base + [v for v in over if v not in base]
    return over


def merged() -> dict[str, Any]:
    return dict(_merge(yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text()), yaml.safe_load((COMPOSE / "cluster.yaml").read_text())))


def test_three_members_share_one_cluster_configuration_under_names_of_their_own() -> None:
    services = merged()["services"]
    names = []
    for m in MEMBERS:
        command = services[m]["command"]
        assert command[:2] == ["-c", "/config/nats-cluster.conf"] and "-js" in command, (m, command)
        names.append(command[command.index("-n") + 1])
        assert services[m]["read_only"] and services[m]["cap_drop"] == ["ALL"] and services[m]["user"] == "65532:65532", m
        assert any(str(v).startswith("nats-config:/config") for v in services[m]["volumes"]), m
    assert len(set(names)) == 3
    data = {next(v for v in services[m]["volumes"] if isinstance(v, str) and v.endswith(":/data")) for m in MEMBERS}
    assert len(data) == 3, "each member keeps its own copy of the log"


def test_every_volplane_process_is_given_every_member_as_its_own_user() -> None:
    base = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]
    services = merged()["services"]
    for s in (*VOLPLANE, "setup"):
        single = base[s]["environment"]["NATS_URL"]
        urls = services[s]["environment"]["NATS_URL"].split(",")
        user = re.match(r"tls://([^:]+):", single)
        assert user and [re.sub(r"^tls://[^:]+:\$\{[A-Z_]+:\?[^}]*\}@|:4222$", "", u) for u in urls] == list(MEMBERS), (s, urls)
        assert all(u.startswith(f"tls://{user[1]}:") for u in urls), s
        if s != "setup":
            assert len(services[s]["environment"]["NATS_PROBE_URL"].split(",")) == 3, s
            assert set(services[s]["depends_on"]) >= set(MEMBERS), s
    assert services["setup"]["environment"]["VOLPLANE_STREAM_REPLICAS"] == "3"
    assert "replicas=int(os.environ.get(\"VOLPLANE_STREAM_REPLICAS\"" in services["setup"]["command"][2]


def test_init_writes_the_cluster_configuration_owns_every_members_data_and_names_every_member() -> None:
    services = merged()["services"]
    init = services["init"]
    script = init["command"][2]
    assert 'write("/config/nats-cluster.conf", nats_conf(cluster))' in script
    assert 'members = ("nats", "nats-2", "nats-3")' in script
    assert re.search(r'hosts=\("nats", "nats-2", "nats-3", "redis"', script)
    assert 'pathlib.Path("/data").iterdir()' in script
    compile(script, "init", "exec")
    compile(services["setup"]["command"][2], "setup", "exec")
    targets = {v.split(":")[1] for v in init["volumes"] if isinstance(v, str)}
    assert {"/data/nats", "/data/nats-2", "/data/nats-3", "/data/redis"} <= targets
    assert {"nats-2-data", "nats-3-data"} <= set(merged()["volumes"])


def test_the_override_matches_the_compose_specification() -> None:
    check = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run([str(check), "--builtin-schema", "vendor.compose-spec", str(COMPOSE / "cluster.yaml")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_init_writes_a_cluster_configuration_nats_server_accepts(tmp_path: Path) -> None:
    """init's own script, run here with its directories moved under tmp_path (as root: it
    hands files to uid 65532), writes nats-cluster.conf; nats-server checks it (-t) as each
    member would read it, with -n naming the member."""
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("init hands its files to uid 65532: needs root")
    init = merged()["services"]["init"]
    script = init["command"][2]
    dirs = {"/var/lib/volplane": "vl", "/redis-config": "rc", "/config": "config", "/data": "data", "/tls": "tls"}
    for path, local in dirs.items():
        script = script.replace(f'"{path}', f'"{tmp_path / local}')
    for sub in ("nats", "nats-2", "nats-3", "redis"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    (tmp_path / "config").mkdir()
    (tmp_path / "rc").mkdir()
    env = {k: f"pw{i}" for i, k in enumerate(init["environment"])}
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    conf = tmp_path / "config" / "nats-cluster.conf"
    text = conf.read_text()
    assert re.findall(r'"nats-route://([\w-]+):6222"', text) == list(MEMBERS) and "no_advertise: true" in text
    assert "probe" in text and "listen: 0.0.0.0:4222" in text and str(tmp_path / "tls") in text
    check = subprocess.run([str(Path(sys.executable).parent / "nats-server"), "-c", str(conf), "-js", "-sd", str(tmp_path / "data" / "nats"), "-n", "nats-1", "-t"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "is valid" in check.stdout + check.stderr, check.stdout + check.stderr
