# One image for every volplane service; the command picks which one runs:
#   make image                                   # podman or docker, whichever is present
#   docker build -t volplane:0.1.0 .
#   docker run volplane:0.1.0 python -m services.provisioner
# (apigw, provisioner, attacher or nodeagent). No configuration or secret is baked in:
# NATS_URL, REDIS_URL and the VOLPLANE_* variables (volplane/config.py) come from the
# deployment (deploy/compose, deploy/kubernetes).
#
# Build arguments and secrets, all optional:
#   BASE_IMAGE          the Python 3.11+ Debian image both stages start from (default python:3.11-slim);
#                       it needs python3 with venv. The e2e test uses a stand-in made from Debian packages.
#   secret "ca-certificates"
#                       a PEM bundle that pip and apt trust instead of their own, for networks whose
#                       HTTPS proxy re-signs traffic (a secret: it never lands in a layer). `make image`
#                       passes the host's /etc/ssl/certs/ca-certificates.crt:
#                         docker build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt .
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#                       where pip finds packages (pip reads them from the environment): a private index or
#                       mirror, or a wheelhouse mounted into the build (podman build -v DIR:/wheelhouse:ro
#                       --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse), made by `pip wheel`
#                       under the base image's own Python.
# The choice: pip downloads inside the build, trusting the given CA bundle, rather than installing
# wheels built on the host, whose Python would have to match the base image's marker for marker
# (redis needs async-timeout below Python 3.11.3 only, say). The dependencies get a layer of their
# own, so only a change of pyproject.toml downloads them again; building the wheel needs no
# network. apt runs only on a base that lacks the nodeagent's tools; the e2e test's stand-in has them.
#
# Users: the image runs as root by default, because the node plugin (nodeagent: loop devices,
# mkfs, mount; apigw in node mode: a socket in the kubelet's root-owned directory) needs it.
# Every other service runs as the unprivileged user `volplane` (uid/gid 65532) that the image
# creates: deploy/compose and the manifests set it, with a read-only root filesystem.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a wheel of the project (its build hook generates the CSI stubs), installed into a venv ---
FROM ${BASE_IMAGE} AS build
# On every stage, so that a tool can tell this build's images (and cached layers) from others'.
LABEL org.opencontainers.image.title="volplane"

ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Everything pip downloads, first, in a layer that only a change of pyproject.toml rebuilds:
# the build requirements ([build-system] requires: setuptools, the pinned grpcio-tools) into a
# venv of their own that stays in this stage, the dependencies into the service venv. (A venv,
# not the system pip: a Debian base's refuses to install, PEP 668.)
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["build-system"]["requires"]))' > /tmp/build-requirements.txt \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"].get("dependencies", [])))' > /tmp/requirements.txt \
 && python3 -m venv /opt/tools \
 && /opt/tools/bin/pip install -r /tmp/build-requirements.txt wheel \
 && python3 -m venv /opt/volplane \
 && /opt/volplane/bin/pip install -r /tmp/requirements.txt

# What the wheel is built from (MANIFEST.in's list): the packages, the .proto sources and the
# build hook that turns them into volplane/csi (build_hooks/protostubs.py runs
# grpc_tools.protoc on both protos: the stubs are generated, never committed or copied in).
COPY README.md LICENSE CHANGELOG.md MANIFEST.in ./
COPY build_hooks/ build_hooks/
COPY proto/ proto/
COPY volplane/ volplane/
COPY services/ services/
COPY volctl/ volctl/
COPY devstack/ devstack/
COPY access/ access/
# No network from here on: the wheel builds with the tools venv (--no-build-isolation) and installs
# without dependencies, which the layer above holds; pip check proves they are the right ones, and
# the import proves every package the services use is in.
RUN /opt/tools/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /tmp/dist . \
 && /opt/volplane/bin/pip install --no-deps /tmp/dist/volplane-*.whl \
 && /opt/volplane/bin/pip check \
 && cd / \
 && /opt/volplane/bin/python -c "import volplane.csi.csi_pb2_grpc, volplane.csi.resources_pb2_grpc, services.apigw.server, services.provisioner.__main__, services.attacher.__main__, services.nodeagent.adapters.storage, volctl.__main__, devstack.launcher, access.credentials"

# --- runtime ---
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="volplane" \
      org.opencontainers.image.description="volplane: a storage control plane behind a CSI driver; the command picks the service" \
      org.opencontainers.image.licenses="Apache-2.0"

# losetup and mount (mount), blkid (util-linux), mkfs.ext4/e2fsck/resize2fs (e2fsprogs),
# mkfs.xfs/xfs_growfs (xfsprogs): what the nodeagent runs on the host's loop devices. A base
# that already has them (the tests' stand-in) skips apt, so that build needs no network.
RUN --mount=type=secret,id=ca-certificates \
    for tool in losetup mount blkid mkfs.ext4 mkfs.xfs; do command -v $tool >/dev/null || missing=1; done \
 && if [ -z "${missing:-}" ]; then exit 0; fi \
 && if [ -s /run/secrets/ca-certificates ]; then echo 'Acquire::https::CAInfo "/run/secrets/ca-certificates";' > /etc/apt/apt.conf.d/99ca; fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends util-linux mount e2fsprogs xfsprogs \
 && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99ca

# The unprivileged user of every service but the node plugin (see the header).
RUN groupadd --gid 65532 volplane \
 && useradd --uid 65532 --gid 65532 --home-dir /var/lib/volplane --no-create-home --shell /usr/sbin/nologin volplane

COPY --from=build /opt/volplane /opt/volplane
ENV PATH=/opt/volplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VOLPLANE_RUN_DIR=/var/lib/volplane

# Nothing else is copied: the installed package is all a service needs.
WORKDIR /var/lib/volplane
CMD ["python", "-m", "services.apigw"]
