"""Config from the environment: each kind of variable parsed when good, and named with its
value in one line when bad; a service given a bad value stops with that line and exit 2."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from volplane.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def bad(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    return str(caught.value)


def test_nothing_set_gives_the_documented_defaults_under_run() -> None:
    cfg = Config.from_env({"VOLPLANE_NODE_ID": "node-1"})
    run = Path("run").absolute()
    assert cfg.nats_url == "nats://127.0.0.1:4222" and cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.run_dir == run and cfg.pool_dir == run / "pools" / "node-1" and cfg.kubelet_dir == run / "kubelet" / "node-1"
    assert cfg.hostpath_dir == run / "hostpath" and cfg.shared_pool_dir is None
    assert cfg.csi_endpoint == f"unix://{run / 'csi.sock'}" and cfg.api_endpoint == f"unix://{run / 'api.sock'}"
    assert cfg.pool_capacity == cfg.shared_pool_capacity == 2**40
    assert (cfg.max_volumes_per_node, cfg.apigw_mode, cfg.require_attachment, cfg.csi_tcp) == (0, "all", True, "")
    assert (cfg.log_level, cfg.path_roots, cfg.csi_socket_group, cfg.metrics_addr) == ("INFO", (Path("/"),), "", "")


def test_an_empty_value_counts_as_unset() -> None:
    cfg = Config.from_env({"VOLPLANE_NODE_ID": "", "VOLPLANE_SHARED_POOL_DIR": "", "VOLPLANE_METRICS_ADDR": "", "VOLPLANE_POOL_CAPACITY": ""})
    assert cfg.node_id and cfg.shared_pool_dir is None and cfg.metrics_addr == "" and cfg.pool_capacity == 2**40


def test_derived_paths_follow_the_run_dir_and_node() -> None:
    cfg = Config.from_env({"VOLPLANE_RUN_DIR": "/srv/vp", "VOLPLANE_NODE_ID": "worker-3.rack-1"})
    assert cfg.pool_dir == Path("/srv/vp/pools/worker-3.rack-1") and cfg.pool_name == "worker-3.rack-1"
    assert cfg.csi_endpoint == "unix:///srv/vp/csi.sock" and cfg.kubelet_dir == Path("/srv/vp/kubelet/worker-3.rack-1")


@pytest.mark.parametrize(("text", "size"), [("10Gi", 10 * 2**30), ("500Mi", 500 * 2**20), ("1T", 10**12), ("4096", 4096)])
def test_quantities_are_parsed(text: str, size: int) -> None:
    cfg = Config.from_env({"VOLPLANE_POOL_CAPACITY": text, "VOLPLANE_SHARED_POOL_CAPACITY": text})
    assert cfg.pool_capacity == cfg.shared_pool_capacity == size


def test_a_bad_quantity_is_named_with_its_value() -> None:
    assert bad({"VOLPLANE_POOL_CAPACITY": "ten"}) == "VOLPLANE_POOL_CAPACITY='ten' is not a quantity (expected e.g. 500Mi, 10Gi)"
    assert bad({"VOLPLANE_SHARED_POOL_CAPACITY": "1.5Gi"}) == "VOLPLANE_SHARED_POOL_CAPACITY='1.5Gi' is not a quantity (expected e.g. 500Mi, 10Gi)"


def test_node_id_must_be_a_dns_1123_name() -> None:
    assert Config.from_env({"VOLPLANE_NODE_ID": "ip-10-0-0-1.ec2.internal"}).node_id == "ip-10-0-0-1.ec2.internal"
    assert bad({"VOLPLANE_NODE_ID": "Node_1"}).startswith("VOLPLANE_NODE_ID='Node_1' is not a DNS-1123 name of at most 128 bytes")
    assert bad({"VOLPLANE_NODE_ID": "a" * 129}).startswith("VOLPLANE_NODE_ID='aaaa")


def test_urls_need_their_scheme_and_a_host_and_hide_credentials() -> None:
    cfg = Config.from_env({"NATS_URL": "nats://svc:pw@nats-0:4222,nats://nats-1:4222", "REDIS_URL": "rediss://:pw@redis:6380/2"})
    assert cfg.nats_url == "nats://svc:pw@nats-0:4222,nats://nats-1:4222" and cfg.redis_url == "rediss://:pw@redis:6380/2"
    assert bad({"NATS_URL": "http://nats:4222"}) == "NATS_URL='http://nats:4222' is not a NATS URL (expected e.g. nats://127.0.0.1:4222)"
    assert bad({"NATS_URL": "nats://svc:secret@:4222"}) == "NATS_URL='nats://***@:4222' is not a NATS URL (expected e.g. nats://127.0.0.1:4222)"
    assert bad({"REDIS_URL": "redis://redis:port/0"}) == "REDIS_URL='redis://redis:port/0' is not a Redis URL (expected e.g. redis://127.0.0.1:6379/0 or redis+sentinel://host1:26379,host2:26379/volplane/0)"


def test_a_nats_cluster_is_every_members_url_of_one_scheme() -> None:
    cfg = Config.from_env({"NATS_URL": "nats://svc:pw@nats-0:4222, nats://svc:pw@nats-1:4222,nats://svc:pw@nats-2:4222"})
    assert cfg.nats_servers == ["nats://svc:pw@nats-0:4222", "nats://svc:pw@nats-1:4222", "nats://svc:pw@nats-2:4222"]
    assert Config.from_env({}).nats_servers == ["nats://127.0.0.1:4222"]
    assert bad({"NATS_URL": "tls://a:4222,nats://b:4222"}) == "NATS_URL='tls://a:4222,nats://b:4222' mixes schemes (nats, tls): every member of a cluster is dialled the same way"
    assert bad({"NATS_URL": "nats://a:4222,,nats://c:4222"}) == "NATS_URL='nats://a:4222,,nats://c:4222' has an empty member 2 (expected nats://host1:4222,nats://host2:4222,...)"
    assert bad({"NATS_URL": "nats://u:secret@a:4222,nats://u:secret@b:port"}) == (
        "NATS_URL='nats://***@a:4222,nats://***@b:port' has member 2 'nats://***@b:port' that is not a NATS URL (expected e.g. nats://127.0.0.1:4222)")


def test_stream_replicas_are_one_to_five() -> None:
    assert Config.from_env({}).stream_replicas == 1
    assert Config.from_env({"VOLPLANE_STREAM_REPLICAS": "3"}).stream_replicas == 3
    for value in ("0", "6", "three", "-1"):
        assert bad({"VOLPLANE_STREAM_REPLICAS": value}) == (
            f"VOLPLANE_STREAM_REPLICAS={value!r} is not a replica count from 1 to 5 (1 for one nats-server, 3 for a cluster of three)")


def test_endpoints_and_addresses() -> None:
    cfg = Config.from_env({"VOLPLANE_CSI_ENDPOINT": "unix:///csi/csi.sock", "VOLPLANE_API_ENDPOINT": "127.0.0.1:7000", "VOLPLANE_CSI_TCP": "0.0.0.0:10000", "VOLPLANE_METRICS_ADDR": ":9090"})
    assert (cfg.csi_endpoint, cfg.api_endpoint, cfg.csi_tcp, cfg.metrics_addr) == ("unix:///csi/csi.sock", "127.0.0.1:7000", "0.0.0.0:10000", ":9090")
    assert bad({"VOLPLANE_CSI_ENDPOINT": "/csi/csi.sock"}) == "VOLPLANE_CSI_ENDPOINT='/csi/csi.sock' is not a gRPC endpoint (expected unix:///path/to.sock or host:port)"
    assert bad({"VOLPLANE_CSI_TCP": "10000"}) == "VOLPLANE_CSI_TCP='10000' is not host:port (e.g. 0.0.0.0:9090)"
    assert bad({"VOLPLANE_METRICS_ADDR": "0.0.0.0:99999"}) == "VOLPLANE_METRICS_ADDR='0.0.0.0:99999' is not host:port (e.g. 0.0.0.0:9090)"


@pytest.mark.parametrize("mode", ["all", "controller", "node"])
def test_apigw_modes(mode: str) -> None:
    cfg = Config.from_env({"VOLPLANE_APIGW_MODE": mode})
    assert cfg.apigw_mode == mode and cfg.apigw_controller == (mode != "node")


def test_an_unknown_apigw_mode_is_refused() -> None:
    assert bad({"VOLPLANE_APIGW_MODE": "both"}) == "VOLPLANE_APIGW_MODE='both' is not an apigw mode (expected all, controller or node)"


def test_log_levels_in_any_case() -> None:
    assert Config.from_env({"VOLPLANE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert Config.from_env({"VOLPLANE_LOG_LEVEL": "warn"}).log_level == "WARNING"
    assert bad({"VOLPLANE_LOG_LEVEL": "loud"}) == "VOLPLANE_LOG_LEVEL='loud' is not a log level (expected DEBUG, INFO, WARNING, ERROR or CRITICAL)"


def test_flags_and_counts() -> None:
    assert Config.from_env({"VOLPLANE_REQUIRE_ATTACHMENT": "0"}).require_attachment is False
    assert Config.from_env({"VOLPLANE_REQUIRE_ATTACHMENT": "true"}).require_attachment is True
    assert Config.from_env({"VOLPLANE_MAX_VOLUMES_PER_NODE": "64"}).max_volumes_per_node == 64
    assert bad({"VOLPLANE_REQUIRE_ATTACHMENT": "maybe"}) == "VOLPLANE_REQUIRE_ATTACHMENT='maybe' is not a boolean (expected 1 or 0, true or false)"
    assert bad({"VOLPLANE_MAX_VOLUMES_PER_NODE": "-1"}) == "VOLPLANE_MAX_VOLUMES_PER_NODE='-1' is not a whole number of 0 or more"


def test_paths() -> None:
    cfg = Config.from_env({"VOLPLANE_PATH_ROOTS": "/var/lib/kubelet:/srv", "VOLPLANE_SHARED_POOL_DIR": "pools/shared", "VOLPLANE_HOSTPATH_DIR": "/tmp/hp"})
    assert cfg.path_roots == (Path("/var/lib/kubelet"), Path("/srv"))
    assert cfg.shared_pool_dir == Path("pools/shared").absolute() and cfg.hostpath_dir == Path("/tmp/hp")
    assert bad({"VOLPLANE_PATH_ROOTS": "var/lib/kubelet"}) == "VOLPLANE_PATH_ROOTS='var/lib/kubelet' is not a list of absolute paths separated by ':' (e.g. /var/lib/kubelet:/srv)"
    assert bad({"VOLPLANE_POOL_DIR": "a\0b"}) == "VOLPLANE_POOL_DIR='a\\x00b' is not a path"


def test_the_socket_group_must_exist() -> None:
    existing = grp.getgrgid(os.getgid()).gr_name
    assert Config.from_env({"VOLPLANE_CSI_SOCKET_GROUP": existing}).csi_socket_group == existing
    assert bad({"VOLPLANE_CSI_SOCKET_GROUP": "no-such-group-here"}) == "VOLPLANE_CSI_SOCKET_GROUP='no-such-group-here' is not a group on this host"


def test_a_config_error_is_a_value_error_naming_the_variable() -> None:
    with pytest.raises(ValueError) as caught:
        Config.from_env({"VOLPLANE_POOL_CAPACITY": "ten"})
    assert isinstance(caught.value, ConfigError) and (caught.value.variable, caught.value.value) == ("VOLPLANE_POOL_CAPACITY", "ten")


def test_a_service_with_a_bad_variable_stops_with_one_line_and_status_2() -> None:
    env = {**os.environ, "VOLPLANE_POOL_CAPACITY": "ten", "NATS_URL": "nats://127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "services.provisioner"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr == "volplane-provisioner: VOLPLANE_POOL_CAPACITY='ten' is not a quantity (expected e.g. 500Mi, 10Gi)\n"
    assert out.stdout == ""
