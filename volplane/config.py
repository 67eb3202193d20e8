"""One Config for every process, read from the environment.

    cfg = Config.from_env()

The launcher (`devstack.launcher`) fills these variables for the processes it starts;
a deployment sets them itself. Sizes accept Kubernetes quantities (``100Gi``).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NODE_ID_RE", "Config", "parse_quantity"]

_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_QUANTITY = re.compile(r"^([0-9]+)(|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)$")
# DNS-1123 subdomain, as Kubernetes requires of node names.
NODE_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_quantity(text: str) -> int:
    """``parse_quantity("10Gi") == 10 * 2**30``; whole numbers with a binary or decimal suffix."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"not a quantity: {text!r} (expected e.g. 500Mi, 10Gi, 1T)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _default_node() -> str:
    name = socket.gethostname().lower()
    return name if NODE_ID_RE.match(name) and len(name) <= 128 else "node-1"


@dataclass(frozen=True)
class Config:
    nats_url: str = "nats://127.0.0.1:4222"
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
    # apigw: "node" serves only Identity and Node (a node plugin, no Redis); "all" (and any
    # other value, such as "controller") also the Controller service and the resource API.
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
    log_level: str = "INFO"
    # Staging and target paths must lie below one of these (Kubernetes: /var/lib/kubelet).
    path_roots: tuple[Path, ...] = (Path("/"),)

    @property
    def apigw_controller(self) -> bool:
        """Whether apigw serves the Controller service and the resource API (``apigw_mode`` is not "node")."""
        return self.apigw_mode != "node"

    @property
    def pool_name(self) -> str:
        """The local pool is named after its node."""
        return self.node_id

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        e = os.environ if env is None else env
        run_dir = Path(e.get("VOLPLANE_RUN_DIR", "run")).absolute()
        node_id = e.get("VOLPLANE_NODE_ID") or _default_node()
        if not NODE_ID_RE.match(node_id) or len(node_id) > 128:
            raise ValueError(f"VOLPLANE_NODE_ID={node_id!r} is not a DNS-1123 name of at most 128 bytes")
        return cls(
            nats_url=e.get("NATS_URL", cls.nats_url),
            redis_url=e.get("REDIS_URL", cls.redis_url),
            run_dir=run_dir,
            node_id=node_id,
            pool_dir=Path(e.get("VOLPLANE_POOL_DIR", str(run_dir / "pools" / node_id))).absolute(),
            pool_capacity=parse_quantity(e.get("VOLPLANE_POOL_CAPACITY", "1Ti")),
            shared_pool_dir=Path(e["VOLPLANE_SHARED_POOL_DIR"]).absolute() if e.get("VOLPLANE_SHARED_POOL_DIR") else None,
            shared_pool_capacity=parse_quantity(e.get("VOLPLANE_SHARED_POOL_CAPACITY", "1Ti")),
            max_volumes_per_node=int(e.get("VOLPLANE_MAX_VOLUMES_PER_NODE", "0")),
            apigw_mode=e.get("VOLPLANE_APIGW_MODE", "all"),
            require_attachment=e.get("VOLPLANE_REQUIRE_ATTACHMENT", "1") != "0",
            csi_endpoint=e.get("VOLPLANE_CSI_ENDPOINT", f"unix://{run_dir / 'csi.sock'}"),
            csi_tcp=e.get("VOLPLANE_CSI_TCP", ""),
            kubelet_dir=Path(e.get("VOLPLANE_KUBELET_DIR", str(run_dir / "kubelet" / node_id))).absolute(),
            hostpath_dir=Path(e.get("VOLPLANE_HOSTPATH_DIR", str(run_dir / "hostpath"))).absolute(),
            api_endpoint=e.get("VOLPLANE_API_ENDPOINT", f"unix://{run_dir / 'api.sock'}"),
            csi_socket_group=e.get("VOLPLANE_CSI_SOCKET_GROUP", ""),
            log_level=e.get("VOLPLANE_LOG_LEVEL", "INFO"),
            path_roots=tuple(Path(p) for p in e.get("VOLPLANE_PATH_ROOTS", "/").split(":") if p),
        )
