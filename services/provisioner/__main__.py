"""``python -m services.provisioner``: the PV controller side — volumes and their images."""

from __future__ import annotations

from volplane import subjects
from volplane.commands import CreateVolume, DeleteVolume, GetCapacity, GetVolume, ListVolumes
from volplane.projection import ProjectionRunner
from volplane.service import Runtime, run_service

from .adapters.pool import ImagePool
from .adapters.projection import VolumesProjection
from .app import ProvisionerApp


async def setup(rt: Runtime) -> None:
    runner = ProjectionRunner(rt.redis, rt.store, VolumesProjection())
    await runner.start()
    rt.closers.append(runner.stop)
    pool = ImagePool(rt.cfg.pool_dir, rt.cfg.pool_name, rt.cfg.pool_capacity)
    app = ProvisionerApp(rt.store, runner, pool)
    await app.recover()
    q = subjects.queue("provisioner")
    await rt.bus.serve(subjects.CREATE_VOLUME, q, CreateVolume, app.create_volume)
    await rt.bus.serve(subjects.DELETE_VOLUME, q, DeleteVolume, app.delete_volume)
    await rt.bus.serve(subjects.GET_VOLUME, q, GetVolume, app.get_volume)
    await rt.bus.serve(subjects.LIST_VOLUMES, q, ListVolumes, app.list_volumes)
    await rt.bus.serve(subjects.GET_CAPACITY, q, GetCapacity, app.get_capacity)


def main() -> None:
    run_service("provisioner", setup)


if __name__ == "__main__":
    main()
