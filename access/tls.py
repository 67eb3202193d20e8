"""Certificates of the embedded default: a private CA of its own, one certificate for its
servers (nats-server's client and route connections, a TLS-capable redis-server) and one
for its clients (every service presents it: the servers require one signed by the CA),
made once under ``run/tls`` (directory 0700, every file 0600) and reused by later runs
while they are valid.

    certs = Certificates.load_or_create(Path("run/tls"))
    certs.ca, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key   # paths

Reuse and rotation: the CA lives ten years, the two leaves a year. A run finds them as the
last one left them and keeps them unless a leaf is missing, unreadable, not signed by
the CA, for other hosts, or within ``RENEW_BEFORE`` of its end — then that leaf is issued
anew (the CA stays, so nothing else changes); a CA that is missing, unreadable or near
its end is made anew with both leaves. Deleting ``run/tls`` and restarting rotates
everything. Servers read their files when they start: a rotation takes a restart.

A deployment brings its own certificates (Kubernetes: Secrets or cert-manager;
docs/security.md); this module is only the embedded default's CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_HOSTS", "RENEW_BEFORE", "Certificates", "ServerTls"]

# Where the embedded servers listen: every name a client may dial them by.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
CLIENT_NAME = "volplane-client"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) in one step: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack speaks it, and handshakes are cheaper than with RSA.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class Certificates:
    """The files of one directory; ``load_or_create`` makes them."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def files(self) -> list[Path]:
        return [self.ca, self.ca_key, self.server_cert, self.server_key, self.client_cert, self.client_key]

    def server(self) -> ServerTls:
        """The servers' side: their certificate, and clients must present one of this CA's."""
        return ServerTls(self.server_cert, self.server_key, self.ca)

    def client_env(self) -> dict[str, str]:
        """The variables that make a process connect with TLS as this CA's client
        (``volplane.config``: VOLPLANE_TLS_CA, VOLPLANE_TLS_CERT, VOLPLANE_TLS_KEY)."""
        return {"VOLPLANE_TLS_CA": str(self.ca), "VOLPLANE_TLS_CERT": str(self.client_cert), "VOLPLANE_TLS_KEY": str(self.client_key)}

    @classmethod
    def load_or_create(cls, directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, now: dt.datetime | None = None) -> Certificates:
        """The certificates in ``directory``, made or renewed as the module says; the
        server's certificate names exactly ``hosts`` (DNS names and IP addresses)."""
        certs = cls(directory)
        now = now or _now()
        directory.mkdir(parents=True, exist_ok=True)
        # Only when needed: root without CAP_FOWNER (compose's init) may not chmod what it
        # handed to another user on an earlier run.
        if stat.S_IMODE(directory.stat().st_mode) != 0o700:
            directory.chmod(0o700)
        ca = certs._load_ca(now)
        if ca is None:
            ca = certs._make_ca(now)
            for leaf in (certs.server_cert, certs.client_cert):
                leaf.unlink(missing_ok=True)
        ca_cert, ca_key = ca
        if not certs._leaf_ok(certs.server_cert, certs.server_key, ca_cert, now, hosts):
            certs._issue(ca_cert, ca_key, certs.server_cert, certs.server_key, now, "volplane-server", hosts, server=True)
        if not certs._leaf_ok(certs.client_cert, certs.client_key, ca_cert, now, None):
            certs._issue(ca_cert, ca_key, certs.client_cert, certs.client_key, now, CLIENT_NAME, (), server=False)
        return certs

    # --- the CA ---------------------------------------------------------------------------

    def _load_ca(self, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        try:
            cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        except (OSError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            return None
        if cert.not_valid_after_utc - RENEW_BEFORE < now:
            return None
        return cert, key

    def _make_ca(self, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "volplane embedded CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(self.ca_key, _key_pem(key))
        _write(self.ca, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    # --- the leaves -------------------------------------------------------------------------

    def _leaf_ok(self, cert_path: Path, key_path: Path, ca: x509.Certificate, now: dt.datetime, hosts: Sequence[str] | None) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        if key.public_key() != cert.public_key() or cert.not_valid_after_utc - RENEW_BEFORE < now:
            return False
        if hosts is not None:
            try:
                have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return False
            if have != _san(hosts):
                return False
        return True

    def _issue(self, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path,
               now: dt.datetime, name: str, hosts: Sequence[str], *, server: bool) -> None:
        key = _key()
        # A server's certificate serves for both ends of a route between two nats-servers.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + LEAF_LIFETIME, ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(key_path, _key_pem(key))
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class ServerTls:
    """A server's side of TLS: its certificate and key, and the CA its clients' (and route
    peers') certificates must chain to when ``verify`` asks them for one."""

    cert: Path
    key: Path
    ca: Path
    verify: bool = True

    def nats_block(self, timeout: float = 2.0) -> str:
        """nats-server's ``tls { ... }`` block, for client connections or inside ``cluster``."""
        return (
            f"tls {{ cert_file: {json.dumps(str(self.cert))}, key_file: {json.dumps(str(self.key))}, "
            f"ca_file: {json.dumps(str(self.ca))}, verify: {str(self.verify).lower()}, timeout: {timeout} }}"
        )

    def redis_args(self, port: int) -> list[str]:
        """redis-server's arguments for TLS only on ``port`` (no plaintext port)."""
        return [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "yes" if self.verify else "no",
        ]
