# One image for every volplane service; the command picks which one runs:
#   docker build -t volplane:0.1.0 .
#   docker run volplane:0.1.0 python -m services.provisioner
# (apigw, provisioner, attacher or nodeagent). No configuration or secret is baked in:
# NATS_URL, REDIS_URL and the VOLPLANE_* variables (volplane/config.py) come from the
# deployment (deploy/compose, deploy/kubernetes).

# --- build: generate the CSI stubs, install the project into a virtual environment ---
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# grpcio-tools only generates the stubs; it stays in this stage.
RUN pip install "grpcio-tools>=1.60" \
 && python -m venv /opt/volplane

WORKDIR /src
COPY pyproject.toml ./
COPY proto/ proto/
COPY volplane/ volplane/
COPY services/ services/
COPY volctl/ volctl/
COPY devstack/ devstack/
COPY access/ access/
# The same steps as the Makefile's stub rule (volplane/csi is generated, never committed).
RUN mkdir -p volplane/csi \
 && python -m grpc_tools.protoc -Iproto --python_out=volplane/csi --pyi_out=volplane/csi \
        --grpc_python_out=volplane/csi proto/csi.proto \
 && sed -i 's/^import csi_pb2 as csi__pb2/from . import csi_pb2 as csi__pb2/' volplane/csi/csi_pb2_grpc.py \
 && touch volplane/csi/__init__.py \
 && /opt/volplane/bin/pip install . \
 && /opt/volplane/bin/python -c "import volplane.csi.csi_pb2_grpc, services.apigw.server, services.nodeagent.adapters.storage"

# --- runtime ---
FROM python:3.11-slim

# losetup and mount (mount), blkid (util-linux), mkfs.ext4/e2fsck/resize2fs (e2fsprogs),
# mkfs.xfs/xfs_growfs (xfsprogs): what the nodeagent runs on the host's loop devices.
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux mount e2fsprogs xfsprogs \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/volplane /opt/volplane
ENV PATH=/opt/volplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VOLPLANE_RUN_DIR=/var/lib/volplane

# Nothing else is copied: the installed package is all a service needs.
WORKDIR /var/lib/volplane
CMD ["python", "-m", "services.apigw"]
