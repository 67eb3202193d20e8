"""The kubernetes-csi sidecars' command-line flags, per image and version: what the
manifests may pass them. The images cannot run here (no registry), so the container-start
tests check their arguments against this table instead.

    check_args("csi-provisioner", "v6.3.0", ["--csi-address=/csi/csi.sock", "--v=2"])  # [] : all known

Each set is the sidecar's flags in the release line named (its ``--help``, from the
sidecar's cmd/ sources): flags registered by the sidecar itself, csi-lib-utils'
standard flags (leader election, metrics, timeouts) and klog's/component-base's logging
flags. A version not in the table fails the check: add the new release's flags with it.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN_FLAGS", "check_args", "parse_image"]

# klog via component-base's logs API (every sidecar registers it).
_LOGGING = {"v", "vmodule", "logging-format", "log-flush-frequency", "log-json-info-buffer-size", "log-json-split-stream", "log-text-info-buffer-size", "log-text-split-stream"}
# csi-lib-utils standardflags and the leader-election flags shared by the controller sidecars.
_CONTROLLER = _LOGGING | {
    "csi-address", "kubeconfig", "timeout", "version", "worker-threads", "kube-api-qps", "kube-api-burst",
    "leader-election", "leader-election-namespace", "leader-election-lease-duration", "leader-election-renew-deadline",
    "leader-election-retry-period", "leader-election-labels",
    "http-endpoint", "metrics-address", "metrics-path", "retry-interval-start", "retry-interval-max", "feature-gates",
    "automaxprocs", "enable-pprof",
}

KNOWN_FLAGS: dict[str, dict[str, set[str]]] = {
    "csi-provisioner": {
        "v6": _CONTROLLER | {
            "volume-name-prefix", "volume-name-uuid-length", "default-fstype", "extra-create-metadata", "strict-topology",
            "immediate-topology", "node-deployment", "node-deployment-immediate-binding", "node-deployment-base-delay",
            "node-deployment-max-delay", "enable-capacity", "capacity-ownerref-level", "capacity-poll-interval",
            "capacity-for-immediate-binding", "capacity-threads", "cloning-protection-threads", "controller-publish-readonly",
            "prevent-volume-mode-conversion", "finalizer-threads", "operation-timeout", "max-entries",
        },
    },
    "csi-attacher": {
        "v4": _CONTROLLER | {"max-entries", "reconcile-sync", "max-grpc-log-length", "default-fstype"},
    },
    "csi-resizer": {
        "v2": _CONTROLLER | {"handle-volume-inuse-error", "extra-modify-metadata", "max-grpc-log-length"},
    },
    "csi-snapshotter": {
        "v8": _CONTROLLER | {
            "snapshot-name-prefix", "snapshot-name-uuid-length", "extra-create-metadata", "resync-period",
            "enable-volume-group-snapshots", "groupsnapshot-name-prefix", "groupsnapshot-name-uuid-length",
            "node-deployment", "max-grpc-log-length",
        },
    },
    "csi-node-driver-registrar": {
        "v2": _LOGGING | {
            "csi-address", "kubelet-registration-path", "plugin-registration-path", "http-endpoint", "health-port",
            "timeout", "mode", "version", "enable-pprof", "connection-timeout",
        },
    },
    "livenessprobe": {
        "v2": _LOGGING | {"csi-address", "probe-timeout", "health-port", "http-endpoint", "metrics-address", "metrics-path"},
    },
}

_IMAGE = re.compile(r"^registry\.k8s\.io/sig-storage/(?P<name>[a-z-]+):(?P<version>v\d+\.\d+\.\d+)$")


def parse_image(image: str) -> tuple[str, str] | None:
    """``("csi-attacher", "v4.13.0")`` for a kubernetes-csi sidecar image, else None."""
    m = _IMAGE.match(image)
    return (m["name"], m["version"]) if m else None


def check_args(name: str, version: str, args: list[str]) -> list[str]:
    """The problems with ``args`` for sidecar ``name`` at ``version`` (empty: all accepted)."""
    lines = KNOWN_FLAGS.get(name)
    if lines is None:
        return [f"no flag table for sidecar {name}"]
    major = version.split(".")[0]
    known = lines.get(major)
    if known is None:
        return [f"no flag table for {name} {major}.x (known: {', '.join(lines)})"]
    problems = []
    for arg in args:
        m = re.match(r"^--?([a-z0-9-]+)(=.*)?$", arg)
        if not m:
            problems.append(f"{name}: {arg!r} is not a flag (the sidecars take no positional arguments)")
        elif m[1] not in known:
            problems.append(f"{name} {version}: unknown flag --{m[1]}")
    flags = [re.sub(r"=.*", "", a).lstrip("-") for a in args]
    if name == "livenessprobe" and "http-endpoint" in flags and ("health-port" in flags or "metrics-address" in flags):
        problems.append("livenessprobe: --http-endpoint excludes --health-port and --metrics-address (it exits 1)")
    if name == "csi-node-driver-registrar":
        if "kubelet-registration-path" not in flags:
            problems.append("csi-node-driver-registrar: --kubelet-registration-path is required (it exits 1)")
        if "http-endpoint" in flags and "health-port" in flags:
            problems.append("csi-node-driver-registrar: only one of --health-port and --http-endpoint (it exits 1)")
    return problems
