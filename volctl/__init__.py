"""volctl: the command line of volplane's standalone control plane.

    $ volctl apply -f examples/seed/static-pv.yaml
    persistentvolume/nfs-pv created
    $ volctl get pv,pvc

kubectl's verbs and output over volplane's resource API (proto/resources.proto), which
apigw serves on ``run/api.sock``. The entry point is ``volctl.__main__:main``.
"""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """``main(["get", "pv"])``; imported late so that ``python -m volctl`` runs
    ``__main__`` only once."""
    from volctl.__main__ import main as run

    run(argv)
