"""A volume's I/O limits on this node: written for the loop device it is staged on, in the
node's I/O cgroup (``adapters/iolimits.py``), whenever the device or the limits change.

    limiter = IoLimiter(volumes, IoCgroup.detect(cfg.io_cgroup), provisioner_limits(bus))
    await limiter.set_limits(SetIoLimits(volume_id=vid, limits={"writeIOPS": 100}))   # ControllerModifyVolume, carried here
    state = await limiter.ensure(state)       # NodeStage, under the volume's lock: the limits the provisioner has now
    limiter.clear(state)                      # NodeUnstage, before the device is detached
    await limiter.reapply(backing)            # on start: every staged volume's recorded limits again

Where the limits come from. The provisioner's volume aggregate holds them (ControllerModifyVolume
records them there before it asks the nodes): a stage asks for them, a modify brings them. So a
node that stages a volume after a modify applies the new limits, and a modify that races a stage
is serialised with it by the volume's lock — whichever comes second writes the newer limits.

What the node records (VolumeIoLimitsApplied): the limits and the device they were written for,
so that on start the rules are written again without asking anyone (the kernel keeps them across
a restart of this process, not across a reboot or a re-attach, which changes the device number).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from volplane.aggregate import Repository
from volplane.commands import IoLimitsApplied, SetIoLimits
from volplane.errors import FailedPrecondition, Internal, Unavailable
from volplane.ids import is_volume_id
from volplane.volumes import io_limits

from ..adapters.iolimits import IoCgroup, IoLimitError, LimitsOf
from ..domain.events import NodeVolumeEvent, VolumeIoLimitsApplied
from ..domain.volume import NodeVolumeState

log = logging.getLogger(__name__)


class IoLimiter:
    def __init__(self, volumes: Repository[NodeVolumeState, NodeVolumeEvent], cgroup: IoCgroup | None, limits_of: LimitsOf | None) -> None:
        """``cgroup`` None: this host has no block I/O controller, and a volume with limits is
        refused (FAILED_PRECONDITION) rather than served unlimited. ``limits_of`` None: stages
        keep what this node recorded (a node without a provisioner, under test)."""
        self._volumes = volumes
        self._cgroup = cgroup
        self._limits_of = limits_of

    @property
    def cgroup(self) -> IoCgroup | None:
        return self._cgroup

    async def set_limits(self, cmd: SetIoLimits) -> IoLimitsApplied:
        """The provisioner's new limits for a volume: written if it is staged here."""
        limits = {k: v for k, v in io_limits({k: str(v) for k, v in cmd.limits.items()}, "limits").items() if v}
        if not is_volume_id(cmd.volume_id):
            return IoLimitsApplied(staged=False)
        async with self._volumes.locks.hold(cmd.volume_id):
            state = await self._volumes.load(cmd.volume_id)
            if state is None or state.stage_phase != "staged" or not state.device:
                # Not staged here (or a stage is unfinished): the stage asks for the limits itself.
                return IoLimitsApplied(staged=False)
            await self._write(state, limits)
            return IoLimitsApplied(staged=True)

    async def ensure(self, state: NodeVolumeState) -> NodeVolumeState:
        """After a stage (the caller holds the volume's lock): the provisioner's current limits on the staged device."""
        if state.stage_phase != "staged" or not state.device:
            return state
        limits = state.io_limits
        if self._limits_of is not None:
            try:
                limits = await self._limits_of(state.volume_id) or {}
            except Unavailable as exc:
                # No provisioner answers (restarting, or a node run alone): the stage goes on
                # with the limits recorded here; a ControllerModifyVolume later reaches this
                # node again, since it is staged now.
                log.warning("volume %s: no answer on its I/O limits (%s); the limits recorded here stay", state.volume_id, exc.message)
        return await self._write(state, limits)

    def clear(self, state: NodeVolumeState) -> None:
        """Before a device is detached: its number goes to the next image attached, without our rules."""
        if self._cgroup is None or not state.device:
            return
        try:
            self._cgroup.clear(state.device)
        except IoLimitError as exc:
            log.warning("could not take the I/O limits of volume %s off %s: %s", state.volume_id, state.device, exc)

    async def reapply(self, backing: Mapping[str, str]) -> int:
        """On start: the recorded limits of every volume staged here on the device that backs it
        now (``backing``: loop device → backing file); returns how many volumes have limits."""
        count = 0
        for device, image in sorted(backing.items()):
            vid = Path(image).name.removesuffix(".img")
            state = await self._volumes.load(vid) if is_volume_id(vid) else None
            if state is None or state.stage_phase != "staged" or state.device != device or not state.io_limits:
                continue
            async with self._volumes.locks.hold(vid):
                state = await self._volumes.load(vid)
                if state is not None and state.device == device:
                    await self._write(state, state.io_limits)
                    count += 1
        return count

    async def _write(self, state: NodeVolumeState, limits: dict[str, int]) -> NodeVolumeState:
        if self._cgroup is None:
            if limits:
                raise FailedPrecondition(f"volume {state.volume_id} has I/O limits and this node has no block I/O controller to enforce them")
            return state
        try:
            self._cgroup.apply(state.device, limits)
        except (IoLimitError, OSError) as exc:
            raise Internal(f"cannot set the I/O limits of volume {state.volume_id} on {state.device}: {exc}") from exc
        if limits == state.io_limits and (state.device == state.io_device or not limits):
            return state  # Recorded already (no limits need no record: every stage writes them).
        log.info("I/O limits of volume %s on %s: %s", state.volume_id, state.device, limits or "none")
        return await self._volumes.append(state.volume_id, state, VolumeIoLimitsApplied(volume_id=state.volume_id, device=state.device, limits=limits))
