"""The embedded default's certificates (access.tls), the TLS settings (volplane.config,
volplane.clients) and the nats-server configuration with TLS on clients and routes."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from access.credentials import Credentials, NatsCluster
from access.tls import LEAF_LIFETIME, RENEW_BEFORE, Certificates
from volplane import discovery
from volplane.clients import nats_tls, redis_tls
from volplane.config import Config, ConfigError


def _pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_are_made_for_root_only(tmp_path: Path) -> None:
    certs = Certificates.load_or_create(tmp_path / "tls")
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for path in certs.files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == sorted(p.name for p in certs.files())


def test_the_leaves_chain_to_the_ca_and_name_the_loopback_hosts(tmp_path: Path) -> None:
    certs = Certificates.load_or_create(tmp_path)
    ca = _pem(certs.ca)
    for leaf in (certs.server_cert, certs.client_cert):
        _pem(leaf).verify_directly_issued_by(ca)
    san = _pem(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    # Python's own TLS stack takes them as they are: the CA to verify, the client pair to present.
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))


def test_a_second_run_reuses_valid_certificates(tmp_path: Path) -> None:
    certs = Certificates.load_or_create(tmp_path)
    before = {p: p.read_bytes() for p in certs.files()}
    Certificates.load_or_create(tmp_path)
    assert {p: p.read_bytes() for p in certs.files()} == before


def test_a_leaf_near_its_end_is_issued_anew_under_the_same_ca(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    certs = Certificates.load_or_create(tmp_path, now=now)
    ca, client = certs.ca.read_bytes(), certs.client_cert.read_bytes()
    later = now + LEAF_LIFETIME - RENEW_BEFORE + dt.timedelta(days=1)
    Certificates.load_or_create(tmp_path, now=later)
    assert certs.ca.read_bytes() == ca
    assert certs.client_cert.read_bytes() != client
    assert _pem(certs.client_cert).not_valid_after_utc > later + RENEW_BEFORE


def test_other_hosts_or_a_broken_file_get_new_certificates(tmp_path: Path) -> None:
    certs = Certificates.load_or_create(tmp_path)
    ca, server = certs.ca.read_bytes(), certs.server_cert.read_bytes()
    Certificates.load_or_create(tmp_path, hosts=("nats-0.nats", "127.0.0.1"))
    assert certs.server_cert.read_bytes() != server and certs.ca.read_bytes() == ca
    certs.ca.write_text("not a certificate")
    Certificates.load_or_create(tmp_path)
    assert certs.ca.read_bytes() != ca
    for leaf in (certs.server_cert, certs.client_cert):
        _pem(leaf).verify_directly_issued_by(_pem(certs.ca))


def test_a_leaf_of_another_ca_is_replaced(tmp_path: Path) -> None:
    ours, theirs = Certificates.load_or_create(tmp_path / "ours"), Certificates.load_or_create(tmp_path / "theirs")
    ours.client_cert.write_bytes(theirs.client_cert.read_bytes())
    ours.client_key.write_bytes(theirs.client_key.read_bytes())
    Certificates.load_or_create(tmp_path / "ours")
    _pem(ours.client_cert).verify_directly_issued_by(_pem(ours.ca))


def test_the_nats_configuration_asks_clients_and_routes_for_tls(tmp_path: Path) -> None:
    certs = Certificates.load_or_create(tmp_path / "tls")
    creds = Credentials.load_or_create(tmp_path)
    text = creds.nats_config(4222, tmp_path / "js", tls=certs.server(), cluster=NatsCluster("vp", 6222, ("nats-route://127.0.0.1:6223",), server_name="a"))
    tls = f'tls {{ cert_file: "{certs.server_cert}", key_file: "{certs.server_key}", ca_file: "{certs.ca}", verify: true, timeout: 2.0 }}'
    head, _, cluster = text.partition("cluster {")
    assert tls in head  # client connections
    assert tls in cluster.split("}\n")[0] + "}"  # routes
    assert 'routes: ["nats-route://127.0.0.1:6223"]' in cluster and 'server_name: "a"' in head
    plain = creds.nats_config(4222, tmp_path / "js")
    assert "tls {" not in plain and "cluster {" not in plain


def _files(tmp_path: Path) -> dict[str, str]:
    certs = Certificates.load_or_create(tmp_path)
    return certs.client_env()


def test_tls_settings_are_read_and_checked(tmp_path: Path) -> None:
    env = _files(tmp_path)
    cfg = Config.from_env({**env, "NATS_URL": "tls://a:b@127.0.0.1:4222", "REDIS_URL": "rediss://a:b@127.0.0.1:6380/0"})
    assert cfg.tls_ca == Path(env["VOLPLANE_TLS_CA"]) and cfg.tls_key == Path(env["VOLPLANE_TLS_KEY"])
    ctx = nats_tls(cfg)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert redis_tls(cfg) == {
        "ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_ca_certs": env["VOLPLANE_TLS_CA"], "ssl_certfile": env["VOLPLANE_TLS_CERT"], "ssl_keyfile": env["VOLPLANE_TLS_KEY"],
    }
    # The scheme decides: plaintext URLs without TLS files stay plaintext; a unix socket never takes TLS.
    plain = Config.from_env({"NATS_URL": "nats://127.0.0.1:4222", "REDIS_URL": f"unix://{tmp_path}/r.sock?db=0"})
    assert nats_tls(plain) is None and redis_tls(plain) == {}
    assert redis_tls(Config.from_env({**env, "REDIS_URL": f"unix://{tmp_path}/r.sock?db=0"})) == {}
    # tls:// without a CA: the system's CAs.
    assert nats_tls(Config.from_env({"NATS_URL": "tls://nats.example:4222"})) is not None


@pytest.mark.parametrize(("env", "message"), [
    ({"VOLPLANE_TLS_CA": "/nonexistent/ca.pem"}, "VOLPLANE_TLS_CA='/nonexistent/ca.pem' is not a file (a PEM certificate or key is expected there)"),
    ({"VOLPLANE_TLS": "maybe"}, "VOLPLANE_TLS='maybe' is not a boolean (expected 1 or 0, true or false)"),
])
def test_bad_tls_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert str(info.value) == message


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    env = _files(tmp_path)
    with pytest.raises(ConfigError, match=r"VOLPLANE_TLS_CERT=.* is set without VOLPLANE_TLS_KEY"):
        Config.from_env({"VOLPLANE_TLS_CERT": env["VOLPLANE_TLS_CERT"]})
    with pytest.raises(ConfigError, match=r"VOLPLANE_TLS_KEY=.* is set without VOLPLANE_TLS_CERT"):
        Config.from_env({"VOLPLANE_TLS_KEY": env["VOLPLANE_TLS_KEY"]})


def test_tls_is_on_by_default_and_off_on_request() -> None:
    assert Config.from_env({}).embedded_tls is True
    assert Config.from_env({"VOLPLANE_TLS": "off"}).embedded_tls is False


def test_a_tool_beside_the_stack_gets_its_tls_files(tmp_path: Path) -> None:
    tls = _files(tmp_path / "tls")
    discovery.publish(tmp_path, discovery.RunningStack(nats_url="tls://admin:x@127.0.0.1:4001", redis_url="unix://rebuild:y@/r.sock?db=0", pid=os.getpid(), tls=tls))
    env = discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path)})
    assert {k: env[k] for k in tls} == tls and env["NATS_URL"].startswith("tls://")
    # Servers of your own keep your settings.
    own = discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path), "NATS_URL": "tls://nats:4222", "VOLPLANE_TLS_CA": "/mine.pem"})
    assert own["VOLPLANE_TLS_CA"] == "/mine.pem"
