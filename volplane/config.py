"""One Config for every process, read from the environment and checked before anything starts.

    cfg = Config.from_env()                                   # raises ConfigError (a ValueError)
    cfg = Config.from_env_or_exit("volplane-provisioner")     # a service's start: one line, exit 2

The launcher (`devstack.launcher`) fills these variables for the processes it starts;
a deployment sets them itself. pydantic-settings reads them (an empty value counts as
unset) and every one is validated up front: sizes are Kubernetes quantities (``100Gi``),
the node id a DNS-1123 name, URLs and endpoints have a scheme and a host, the log level
and apigw mode come from a fixed list, paths are paths. A bad value is reported by the
variable's name and its value (credentials in a URL shown as ``***``)::

    volplane-provisioner: VOLPLANE_POOL_CAPACITY='ten' is not a quantity (expected e.g. 500Mi, 10Gi)
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["NODE_ID_RE", "SENTINEL_SCHEMES", "Config", "ConfigError", "RedisSentinel", "parse_quantity"]

_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_QUANTITY = re.compile(r"^([0-9]+)(|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)$")
# DNS-1123 subdomain, as Kubernetes requires of node names.
NODE_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
APIGW_MODES = ("all", "controller", "node")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_quantity(text: str) -> int:
    """``parse_quantity("10Gi") == 10 * 2**30``; whole numbers with a binary or decimal suffix."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"not a quantity: {text!r} (expected e.g. 500Mi, 10Gi, 1T)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _default_node() -> str:
    name = socket.gethostname().lower()
    return name if NODE_ID_RE.match(name) and len(name) <= 128 else "node-1"


class ConfigError(ValueError):
    """A variable whose value the process cannot use; ``str()`` is the line to show."""

    def __init__(self, variable: str, value: str, problem: str) -> None:
        self.variable, self.value, self.problem = variable, value, problem
        super().__init__(f"{variable}={_redact(value)!r} {problem}")


# --- one checker per kind of variable -----------------------------------------------------
# Each takes the raw text and returns the parsed value, or raises PydanticCustomError with
# the problem in words; ``from_env`` puts the variable's name and value in front of it.


def _problem(kind: str, text: str) -> PydanticCustomError:
    return PydanticCustomError(kind, text)


def _quantity(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _QUANTITY.match(value.strip()):
        return parse_quantity(value)
    raise _problem("quantity", "is not a quantity (expected e.g. 500Mi, 10Gi)")


def _count(value: Any) -> int:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _problem("count", "is not a whole number of 0 or more")


def _node_id(value: Any) -> str:
    if isinstance(value, str) and NODE_ID_RE.match(value) and len(value) <= 128:
        return value
    raise _problem("node_id", "is not a DNS-1123 name of at most 128 bytes (lower-case letters, digits, '-' and '.')")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _problem("flag", "is not a boolean (expected 1 or 0, true or false)")


def _apigw_mode(value: Any) -> str:
    if value in APIGW_MODES:
        return str(value)
    raise _problem("apigw_mode", "is not an apigw mode (expected all, controller or node)")


def _log_level(value: Any) -> str:
    text = str(value).strip().upper()
    text = "WARNING" if text == "WARN" else text
    if text in LOG_LEVELS:
        return text
    raise _problem("log_level", "is not a log level (expected DEBUG, INFO, WARNING, ERROR or CRITICAL)")


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return Path(value)
    raise _problem("path", "is not a path")


def _file(value: Any) -> Path:
    """A file that is there to read when the process starts (a certificate, a key)."""
    path = _path(value)
    if not path.is_file():
        raise _problem("file", "is not a file (a PEM certificate or key is expected there)")
    return path


def _path_roots(value: Any) -> tuple[Path, ...]:
    if isinstance(value, tuple):
        return value
    roots = tuple(Path(p) for p in str(value).split(":") if p)
    if roots and all(r.is_absolute() and "\0" not in str(r) for r in roots):
        return roots
    raise _problem("path_roots", "is not a list of absolute paths separated by ':' (e.g. /var/lib/kubelet:/srv)")


def _api_admins(value: Any) -> tuple[str, ...]:
    """Users (names or uids) and ``group:<name>`` entries, comma-separated; each must exist here."""
    if isinstance(value, tuple):
        return value
    entries = tuple(e.strip() for e in str(value).split(",") if e.strip())
    for entry in entries:
        kind, _, name = entry.rpartition(":")
        try:
            if kind == "group":
                grp.getgrnam(name)
            elif kind == "" and not name.isdigit():
                pwd.getpwnam(name)
            elif kind != "":
                raise KeyError(entry)
        except KeyError:
            raise _problem("api_admins", f"{entry!r} is not a user, uid or group:<name> on this host") from None
    return entries


def _api_others(value: Any) -> str:
    if value in ("view", "none"):
        return str(value)
    raise _problem("api_others", "is not a role for other users (expected view or none)")


def _io_cgroup(value: Any) -> str:
    text = str(value).strip("/")
    if not text or ".." in text.split("/"):
        raise _problem("io_cgroup", "is not a cgroup below the root (e.g. volplane or kubepods/burstable)")
    return text


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and port.isdigit() and 0 < int(port) < 65536 and "/" not in host and " " not in host


def _listen_addr(value: Any) -> str:
    """``host:port`` (``:port`` or ``0.0.0.0:port`` for every interface), or "" for none."""
    text = str(value).strip()
    if text == "" or _host_port(text):
        return text
    raise _problem("address", "is not host:port (e.g. 0.0.0.0:9090)")


def _endpoint(value: Any) -> str:
    """A gRPC target: ``unix:///abs/path``, ``unix:path``, ``host:port`` or ``dns:///host:port``."""
    text = str(value).strip()
    for prefix in ("unix://", "unix:"):
        if text.startswith(prefix) and text[len(prefix) :].strip("/") and "\0" not in text:
            return text
    target = text.split("///", 1)[1] if text.startswith(("dns:///", "ipv4:///", "ipv6:///")) else text
    if _host_port(target):
        return text
    raise _problem("endpoint", "is not a gRPC endpoint (expected unix:///path/to.sock or host:port)")


def _url(name: str, schemes: tuple[str, ...], example: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip()
        # NATS takes several servers separated by commas (a cluster's seeds).
        parts = text.split(",") if "nats" in schemes else [text]
        for part in parts:
            try:
                url = urlsplit(part.strip())
                ok = url.scheme in schemes and ((url.scheme == "unix" and bool(url.path)) or bool(url.hostname))
                _ = url.port  # raises ValueError on a port that is not a number
            except ValueError:
                ok = False
            if not ok:
                raise _problem("url", f"is not a {name} URL (expected e.g. {example})")
        return text

    return check


def _nats_urls(value: Any) -> str:
    """One NATS server's URL, or a cluster's members separated by commas, all of one scheme
    (nats-py dials each in turn and will not mix plaintext, TLS and websocket members)."""
    text = str(value).strip()
    single = _url("NATS", ("nats", "tls", "ws", "wss"), "nats://127.0.0.1:4222")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        return single(text)
    schemes: list[str] = []
    for n, part in enumerate(parts, 1):
        if not part:
            raise _problem("url", f"has an empty member {n} (expected nats://host1:4222,nats://host2:4222,...)")
        try:
            single(part)
        except PydanticCustomError:
            raise _problem("url", f"has member {n} {_redact(part)!r} that is not a NATS URL (expected e.g. nats://127.0.0.1:4222)") from None
        schemes.append(urlsplit(part).scheme)
    if len(set(schemes)) > 1:
        raise _problem("url", f"mixes schemes ({', '.join(sorted(set(schemes)))}): every member of a cluster is dialled the same way")
    return ",".join(parts)


def _replicas(value: Any) -> int:
    """A stream's replica count: 1 (one server) up to 5, JetStream's limit."""
    text = str(value).strip()
    if text.isdigit() and 1 <= int(text) <= 5:
        return int(text)
    raise _problem("replicas", "is not a replica count from 1 to 5 (1 for one nats-server, 3 for a cluster of three)")


def _group(value: Any) -> str:
    text = str(value).strip()
    if text == "":
        return text
    try:
        grp.getgrnam(text)
    except KeyError:
        raise _problem("group", "is not a group on this host") from None
    return text


# --- Redis behind Sentinel ---------------------------------------------------------------
# REDIS_URL may name Sentinels instead of one server; the client asks them for the master
# (volplane.clients.connect_redis) and follows a failover.

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisSentinel:
    """A ``REDIS_URL`` that names Sentinels, parsed::

        redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/<db>][?sentinel_username=u&sentinel_password=p]
        rediss+sentinel://...     # TLS to the Sentinels and to the master

    ``user``/``password`` log in to the master (the service's own Redis user); the
    Sentinels take ``sentinel_username``/``sentinel_password`` when they require one.
    A host without a port is port 26379."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, text: str) -> RedisSentinel:
        """``RedisSentinel.parse("redis+sentinel://s1:26379,s2/vp/0")``; ValueError says what is wrong."""
        scheme, sep, rest = text.strip().partition("://")
        if not sep or scheme not in SENTINEL_SCHEMES:
            raise ValueError(f"the scheme is not one of {', '.join(SENTINEL_SCHEMES)}")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, pw = userinfo.partition(":")
            username, password = (unquote(user) or None), (unquote(pw) if colon else None)
        sentinels: list[tuple[str, int]] = []
        for part in hosts.split(","):
            host, colon, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
            if colon and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"sentinel {part.strip()!r} has no valid port")
            if not host or "/" in host or " " in host:
                raise ValueError("it names no sentinel host (expected host:26379[,host:26379...])")
            sentinels.append((host.strip("[]"), int(port) if colon else _SENTINEL_PORT))
        segments = [unquote(s) for s in path.split("/")] if path else []
        if not segments or not segments[0] or len(segments) > 2:
            raise ValueError("it names no master (expected .../<master-name> or .../<master-name>/<db>)")
        db = segments[1] if len(segments) == 2 else "0"
        if not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        options = dict(parse_qsl(query, keep_blank_values=True))
        unknown = set(options) - {"sentinel_username", "sentinel_password"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (known: sentinel_username, sentinel_password)")
        return cls(tuple(sentinels), segments[0], int(db), username, password, scheme.startswith("rediss"),
                   options.get("sentinel_username") or None, options.get("sentinel_password") or None)


def _redis_url(value: Any) -> str:
    """A Redis server's URL (``redis://``, ``rediss://``, ``unix://``) or its Sentinels' (``RedisSentinel``)."""
    text = str(value).strip()
    if text.partition("://")[0] in SENTINEL_SCHEMES:
        try:
            RedisSentinel.parse(text)
        except ValueError as exc:
            raise _problem("url", f"is not a Redis Sentinel URL: {exc}; e.g. redis+sentinel://host1:26379,host2:26379/volplane/0") from None
        return text
    return _url("Redis", ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0 or redis+sentinel://host1:26379,host2:26379/volplane/0")(text)


Quantity = Annotated[int, BeforeValidator(_quantity)]
OptionalPath = Annotated[Path | None, BeforeValidator(lambda v: None if v is None else _path(v))]
OptionalFile = Annotated[Path | None, BeforeValidator(lambda v: None if v is None else _file(v))]


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` or a
    test's dict), so that ``from_env(env)`` sees exactly the variables it is handed."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._env.items() if v != ""}


class _Settings(BaseSettings):
    """The variables as read, one field each; ``Config.from_env`` derives the defaults that
    depend on others (the node's pool and kubelet directories, the sockets under run/)."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True, validate_default=False)

    nats_url: Annotated[str, BeforeValidator(_nats_urls)] = Field("nats://127.0.0.1:4222", validation_alias="NATS_URL")
    # Read by whoever creates the event log's stream (the launcher, the install job).
    stream_replicas: Annotated[int, BeforeValidator(_replicas)] = Field(1, validation_alias="VOLPLANE_STREAM_REPLICAS")
    redis_url: Annotated[str, BeforeValidator(_redis_url)] = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    run_dir: Annotated[Path, BeforeValidator(_path)] = Field(Path("run"), validation_alias="VOLPLANE_RUN_DIR")
    node_id: Annotated[str | None, BeforeValidator(_node_id)] = Field(None, validation_alias="VOLPLANE_NODE_ID")
    pool_dir: OptionalPath = Field(None, validation_alias="VOLPLANE_POOL_DIR")
    pool_capacity: Quantity = Field(2**40, validation_alias="VOLPLANE_POOL_CAPACITY")
    shared_pool_dir: OptionalPath = Field(None, validation_alias="VOLPLANE_SHARED_POOL_DIR")
    shared_pool_capacity: Quantity = Field(2**40, validation_alias="VOLPLANE_SHARED_POOL_CAPACITY")
    max_volumes_per_node: Annotated[int, BeforeValidator(_count)] = Field(0, validation_alias="VOLPLANE_MAX_VOLUMES_PER_NODE")
    apigw_mode: Annotated[str, BeforeValidator(_apigw_mode)] = Field("all", validation_alias="VOLPLANE_APIGW_MODE")
    require_attachment: Annotated[bool, BeforeValidator(_flag)] = Field(True, validation_alias="VOLPLANE_REQUIRE_ATTACHMENT")
    csi_endpoint: Annotated[str | None, BeforeValidator(_endpoint)] = Field(None, validation_alias="VOLPLANE_CSI_ENDPOINT")
    csi_tcp: Annotated[str, BeforeValidator(_listen_addr)] = Field("", validation_alias="VOLPLANE_CSI_TCP")
    kubelet_dir: OptionalPath = Field(None, validation_alias="VOLPLANE_KUBELET_DIR")
    hostpath_dir: OptionalPath = Field(None, validation_alias="VOLPLANE_HOSTPATH_DIR")
    api_endpoint: Annotated[str | None, BeforeValidator(_endpoint)] = Field(None, validation_alias="VOLPLANE_API_ENDPOINT")
    csi_socket_group: Annotated[str, BeforeValidator(_group)] = Field("", validation_alias="VOLPLANE_CSI_SOCKET_GROUP")
    api_admins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_api_admins)] = Field((), validation_alias="VOLPLANE_API_ADMINS")
    api_others: Annotated[str, BeforeValidator(_api_others)] = Field("view", validation_alias="VOLPLANE_API_OTHERS")
    log_level: Annotated[str, BeforeValidator(_log_level)] = Field("INFO", validation_alias="VOLPLANE_LOG_LEVEL")
    path_roots: Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_path_roots)] = Field((Path("/"),), validation_alias="VOLPLANE_PATH_ROOTS")
    # Read by volplane.telemetry (the /metrics endpoint); checked here with the rest.
    metrics_addr: Annotated[str, BeforeValidator(_listen_addr)] = Field("", validation_alias="VOLPLANE_METRICS_ADDR")
    io_cgroup: Annotated[str, BeforeValidator(_io_cgroup)] = Field("volplane", validation_alias="VOLPLANE_IO_CGROUP")
    tls_ca: OptionalFile = Field(None, validation_alias="VOLPLANE_TLS_CA")
    tls_cert: OptionalFile = Field(None, validation_alias="VOLPLANE_TLS_CERT")
    tls_key: OptionalFile = Field(None, validation_alias="VOLPLANE_TLS_KEY")
    # Read by the launcher only (devstack.launcher): its own servers with TLS or without.
    embedded_tls: Annotated[bool, BeforeValidator(_flag)] = Field(True, validation_alias="VOLPLANE_TLS")
    embedded_redis_server: OptionalFile = Field(None, validation_alias="VOLPLANE_REDIS_SERVER")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what from_env hands over (read through _Environment): no implicit os.environ.
        return (init_settings,)

    @classmethod
    def read(cls, env: Mapping[str, str]) -> _Settings:
        values = _Environment(cls, env)()
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            variable = str(err["loc"][0]) if err["loc"] else "environment"
            raise ConfigError(variable, str(env.get(variable, err.get("input", ""))), err["msg"]) from None


@dataclass(frozen=True)
class Config:
    # One nats-server, or a cluster's members separated by commas (every client is given all).
    nats_url: str = "nats://127.0.0.1:4222"
    # The event log's stream replicas when it is created (1; 3 on a cluster of three).
    stream_replicas: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    run_dir: Path = Path("run")
    node_id: str = field(default_factory=_default_node)
    # This node's local pool (named after the node); volumes in it are pinned to the node.
    pool_dir: Path = Path("run/pools/node-1")
    pool_capacity: int = 2**40
    # The pool every node can reach (a shared filesystem in a real cluster); "" for none.
    shared_pool_dir: Path | None = None
    shared_pool_capacity: int = 2**40
    max_volumes_per_node: int = 0
    # apigw: "node" serves only Identity and Node (a node plugin, no Redis); "all" (or its
    # synonym "controller") also the Controller service and the resource API.
    apigw_mode: str = "all"
    # A nodeagent stages only volumes the attacher has published to its node; 0 turns the
    # check off for a node without an attacher (a bare node plugin under test).
    require_attachment: bool = True
    csi_endpoint: str = "unix://run/csi.sock"
    csi_tcp: str = ""
    # The volume manager's root on this node (Kubernetes: /var/lib/kubelet).
    kubelet_dir: Path = Path("run/kubelet/node-1")
    # Where the in-tree kubernetes.io/host-path provisioner makes volumes (and the only
    # place its deleter and recycler touch).
    hostpath_dir: Path = Path("run/hostpath")
    # The resource API (volctl's server), served by apigw in "all" mode.
    api_endpoint: str = "unix://run/api.sock"
    csi_socket_group: str = ""  # group allowed on the CSI socket (0660); empty: root only (0600)
    # Who may write through the resource API besides root and apigw's own user (user
    # names, uids, group:<name>), and what every other local user may do: "view" (get,
    # list, watch, history) or "none" (services.apigw.access).
    api_admins: tuple[str, ...] = ()
    api_others: str = "view"
    log_level: str = "INFO"
    # Staging and target paths must lie below one of these (Kubernetes: /var/lib/kubelet).
    path_roots: tuple[Path, ...] = (Path("/"),)
    # host:port of the Prometheus /metrics endpoint; "" for none.
    metrics_addr: str = ""
    # The cgroup (below the root of the block I/O hierarchy) a node writes volumes' I/O limits
    # into; the processes using volumes run in it or below it (services.nodeagent.adapters.iolimits).
    io_cgroup: str = "volplane"
    # TLS to NATS (tls://) and Redis (rediss://): the CA bundle the servers' certificates
    # are checked against (None: the system's), and the client certificate and key to
    # present to servers that require one (volplane.clients; docs/security.md).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The launcher's own servers (make run) with TLS; off only to compare (bench).
    embedded_tls: bool = True
    # A redis-server built with TLS for the launcher to run (on loopback, TLS only) instead
    # of the pip package's, which has no TLS and listens on a unix socket only.
    embedded_redis_server: Path | None = None

    @property
    def nats_servers(self) -> list[str]:
        """Every member of ``nats_url``, in order: ``["nats://a:4222", "nats://b:4222"]``."""
        return [part.strip() for part in self.nats_url.split(",") if part.strip()]

    @property
    def apigw_controller(self) -> bool:
        """Whether apigw serves the Controller service and the resource API (``apigw_mode`` is not "node")."""
        return self.apigw_mode != "node"

    @property
    def pool_name(self) -> str:
        """The local pool is named after its node."""
        return self.node_id

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """The Config of ``env`` (default: this process's environment); ConfigError (a
        ValueError) names the first variable whose value is unusable."""
        s = _Settings.read(os.environ if env is None else env)
        if (s.tls_cert is None) != (s.tls_key is None):
            given, missing = ("VOLPLANE_TLS_CERT", "VOLPLANE_TLS_KEY") if s.tls_key is None else ("VOLPLANE_TLS_KEY", "VOLPLANE_TLS_CERT")
            raise ConfigError(given, str(s.tls_cert or s.tls_key), f"is set without {missing}: a client certificate needs its key, and the key its certificate")
        run_dir = s.run_dir.absolute()
        node_id = s.node_id or _default_node()
        return cls(
            nats_url=s.nats_url,
            stream_replicas=s.stream_replicas,
            redis_url=s.redis_url,
            run_dir=run_dir,
            node_id=node_id,
            pool_dir=(s.pool_dir or run_dir / "pools" / node_id).absolute(),
            pool_capacity=s.pool_capacity,
            shared_pool_dir=s.shared_pool_dir.absolute() if s.shared_pool_dir else None,
            shared_pool_capacity=s.shared_pool_capacity,
            max_volumes_per_node=s.max_volumes_per_node,
            apigw_mode=s.apigw_mode,
            require_attachment=s.require_attachment,
            csi_endpoint=s.csi_endpoint or f"unix://{run_dir / 'csi.sock'}",
            csi_tcp=s.csi_tcp,
            kubelet_dir=(s.kubelet_dir or run_dir / "kubelet" / node_id).absolute(),
            hostpath_dir=(s.hostpath_dir or run_dir / "hostpath").absolute(),
            api_endpoint=s.api_endpoint or f"unix://{run_dir / 'api.sock'}",
            csi_socket_group=s.csi_socket_group,
            api_admins=s.api_admins,
            api_others=s.api_others,
            log_level=s.log_level,
            path_roots=s.path_roots,
            metrics_addr=s.metrics_addr,
            io_cgroup=s.io_cgroup,
            tls_ca=s.tls_ca.absolute() if s.tls_ca else None,
            tls_cert=s.tls_cert.absolute() if s.tls_cert else None,
            tls_key=s.tls_key.absolute() if s.tls_key else None,
            embedded_tls=s.embedded_tls,
            embedded_redis_server=s.embedded_redis_server.absolute() if s.embedded_redis_server else None,
        )

    @classmethod
    def from_env_or_exit(cls, program: str, env: Mapping[str, str] | None = None) -> Config:
        """``from_env``, or — on a bad value — one line on stderr and exit status 2, before
        logging is set up (its level is one of the variables) and without a traceback."""
        try:
            return cls.from_env(env)
        except ConfigError as exc:
            _exit(f"{program}: {exc}")


def _exit(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    sys.exit(2)


def _redact(value: str) -> str:
    """Credentials in a URL never reach a message (the same rule as clients.redact)."""
    return re.sub(r"(sentinel_password=)[^&]*", r"\1***", re.sub(r"(://)[^/@,]*@", r"\1***@", value))
