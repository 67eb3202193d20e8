"""``python -m services.attacher``: the attach/detach controller.

It joins the system now so that `make run` starts the whole topology and health
checks cover it; ControllerPublish/Unpublish and the AD controller's loops arrive
with issues #3 and #4.
"""

from __future__ import annotations

from volplane.service import Runtime, run_service


async def setup(rt: Runtime) -> None:
    return None


def main() -> None:
    run_service("attacher", setup)


if __name__ == "__main__":
    main()
