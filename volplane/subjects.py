"""Every NATS subject, stream and header name volplane uses, in one place.

Aggregates live on ``vp.ev.<kind>.<id…>``; commands on ``vp.cmd.<service>.<verb>``;
health probes on ``vp.health.<service>``. Ids put into subjects are validated
elsewhere to be single tokens (no '.', '*', '>' or whitespace).
"""

from __future__ import annotations

STREAM = "VOLPLANE"
EVENTS = "vp.ev.>"

# Headers JetStream interprets.
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# Our own header: the event's type, so a reader can skip events without decoding them.
EVENT_TYPE = "Vp-Event-Type"

# Provisioner: one aggregate per volume.
VOLUME_EVENTS = "vp.ev.volume.>"


def volume(volume_id: str) -> str:
    return f"vp.ev.volume.{volume_id}"


# Nodeagent: one aggregate per (node, volume).
def node_events(node: str) -> str:
    return f"vp.ev.node.{node_token(node)}.>"


def node_volume(node: str, volume_id: str) -> str:
    return f"vp.ev.node.{node_token(node)}.{volume_id}"


# Commands.
PROVISIONER = "vp.cmd.provisioner"
CREATE_VOLUME = f"{PROVISIONER}.create_volume"
DELETE_VOLUME = f"{PROVISIONER}.delete_volume"
GET_VOLUME = f"{PROVISIONER}.get_volume"
LIST_VOLUMES = f"{PROVISIONER}.list_volumes"
GET_CAPACITY = f"{PROVISIONER}.get_capacity"
EXPAND_VOLUME = f"{PROVISIONER}.expand_volume"
MODIFY_VOLUME = f"{PROVISIONER}.modify_volume"
CREATE_SNAPSHOT = f"{PROVISIONER}.create_snapshot"
DELETE_SNAPSHOT = f"{PROVISIONER}.delete_snapshot"
LIST_SNAPSHOTS = f"{PROVISIONER}.list_snapshots"
GET_SNAPSHOT = f"{PROVISIONER}.get_snapshot"
CREATE_GROUP_SNAPSHOT = f"{PROVISIONER}.create_group_snapshot"
DELETE_GROUP_SNAPSHOT = f"{PROVISIONER}.delete_group_snapshot"
GET_GROUP_SNAPSHOT = f"{PROVISIONER}.get_group_snapshot"

# Snapshots: one aggregate per snapshot.
SNAPSHOT_EVENTS = "vp.ev.snapshot.>"


def snapshot(snapshot_id: str) -> str:
    return f"vp.ev.snapshot.{snapshot_id}"


# Group snapshots: one aggregate per group, its members being ordinary snapshots.
GROUP_SNAPSHOT_EVENTS = "vp.ev.groupsnapshot.>"


def group_snapshot(group_snapshot_id: str) -> str:
    return f"vp.ev.groupsnapshot.{group_snapshot_id}"


# Attacher: one aggregate per volume, holding every node it is published to, so that the
# log's concurrency check keeps a single-node volume on one node across replicas.
ATTACHMENT_EVENTS = "vp.ev.attachment.>"


def attachment(volume_id: str) -> str:
    return f"vp.ev.attachment.{volume_id}"


ATTACHER = "vp.cmd.attacher"
CONTROLLER_PUBLISH = f"{ATTACHER}.publish"
CONTROLLER_UNPUBLISH = f"{ATTACHER}.unpublish"
GET_ATTACHMENTS = f"{ATTACHER}.attachments"

# Nodes announce themselves (id, topology, local pool) on start.
NODE_INFO_EVENTS = "vp.ev.nodeinfo.>"


def node_info(node: str) -> str:
    return f"vp.ev.nodeinfo.{node_token(node)}"



def node_command(node: str, verb: str) -> str:
    return f"vp.cmd.node.{node_token(node)}.{verb}"


NODE_STAGE = "stage"
NODE_UNSTAGE = "unstage"
NODE_PUBLISH = "publish"
NODE_UNPUBLISH = "unpublish"
NODE_EXPAND = "expand"
NODE_STATS = "stats"
# A group snapshot's consistent cut: freeze writes on the volumes staged here, then thaw.
NODE_FREEZE = "freeze"
NODE_THAW = "thaw"
# What the node can hold (NodeGetInfo's max_volumes_per_node), as its nodeagent decided.
NODE_LIMITS = "limits"
# A volume's I/O limits (ControllerModifyVolume), applied by the node it is staged on.
NODE_IO_LIMITS = "iolimits"
NODE_IO_LIMITS_ALL = f"vp.cmd.node.*.{NODE_IO_LIMITS}"
# Every node's freeze and thaw commands: whom the provisioner may ask for a cut.
NODE_FREEZE_ALL = f"vp.cmd.node.*.{NODE_FREEZE}"
NODE_THAW_ALL = f"vp.cmd.node.*.{NODE_THAW}"


# A pool's images: made, grown, copied and removed by the node that owns the pool
# (services/nodeagent/csi/pool.py), asked by the provisioner. A local pool's commands go to
# its node only; the shared pool's to a queue group of every node that has it, so that one
# of them performs each. Not under ``vp.cmd.node.<node>``: a node's CSI plugin (apigw in
# node mode) may send its node those, and must not reach its images.
POOL_COMMANDS = "vp.cmd.pool.>"
POOL_MAKE = "make"
POOL_GROW = "grow"
POOL_SNAPSHOT = "snapshot"
POOL_REMOVE = "remove"
POOL_STAT = "stat"
# Node to node: the target of a restore or clone asks the node that holds the source to send
# its image into the transfer store (services/nodeagent/adapters/transfer.py). Every node
# may ask every other node's (``NODE_POOL_SENDS``); each serves its own.
POOL_SEND = "send"
NODE_POOL_SENDS = f"vp.cmd.pool.node.*.{POOL_SEND}"
SHARED_POOL_QUEUE = "pool-shared"


def node_pool_command(node: str, verb: str) -> str:
    """A command to the local pool of ``node``: ``vp.cmd.pool.node.<node>.<verb>``."""
    return f"vp.cmd.pool.node.{node_token(node)}.{verb}"


def shared_pool_command(verb: str) -> str:
    """A command to the shared pool, taken by one of the nodes that have it."""
    return f"vp.cmd.pool.shared.{verb}"


SHARED_POOL_COMMANDS = "vp.cmd.pool.shared.>"


# Images between hosts (services/nodeagent/adapters/transfer.py): a stream of their own, not
# the event log. A transfer's key starts with its sender's node token, and a node may store
# under its own keys only (``node_transfers``); it reads and discards any transfer through
# the JetStream API of this stream (``TRANSFER_API``).
TRANSFER_STREAM = "VOLPLANE_TRANSFER"
TRANSFERS = "vp.xfer.>"
TRANSFER_API = (
    f"$JS.API.STREAM.INFO.{TRANSFER_STREAM}",
    f"$JS.API.DIRECT.GET.{TRANSFER_STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{TRANSFER_STREAM}",
    f"$JS.FC.{TRANSFER_STREAM}.>",
    f"$JS.API.STREAM.PURGE.{TRANSFER_STREAM}",
)


def node_transfers(node: str) -> str:
    """Every subject of the transfers ``node`` sends: chunks, parts and manifests."""
    return f"vp.xfer.*.{node_token(node)}.>"


# A node's object writes (its Node, its pods' status, their timelines): apigw checks each
# against NodeRestriction before it reaches the log, the node being the subject's token —
# a node's NATS user may publish to its own node's subject only.
OBJECT_WRITES = "vp.cmd.objects"
NODE_OBJECT_WRITES = f"{OBJECT_WRITES}.node.*.append"


def node_object_write(node: str) -> str:
    return f"{OBJECT_WRITES}.node.{node_token(node)}.append"


def node_of_object_write(subject: str) -> str:
    """The node a write came from: the inverse of ``node_object_write`` (its token)."""
    return subject.split(".")[4]


def health(service: str, node: str | None = None) -> str:
    return f"vp.health.{service}" if node is None else f"vp.health.{service}.{node_token(node)}"


def queue(service: str, node: str | None = None) -> str:
    return service if node is None else f"{service}.{node_token(node)}"


def node_token(node: str) -> str:
    """Node ids are DNS-like names; '.' cannot stand inside a subject token, '~' can."""
    return node.replace(".", "~")
