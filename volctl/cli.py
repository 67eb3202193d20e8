"""volctl's commands: kubectl's apply, get, describe, delete and wait, plus history.

    volctl apply -f examples/seed/
    volctl get pv,pvc
    volctl wait pvc/nfs --for=phase=Bound --timeout=60s
    volctl history pvc/nfs

Each command prints what kubectl would print; errors are one line on stderr each, the
command carries on with the other objects, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from volctl import getting, manifests
from volctl.client import Client, ServerError, VolctlError, endpoint
from volctl.describe import describe as describe_text
from volctl.history import history_json, history_table
from volctl.refs import kind_named, kind_of, namespace_of, qualified, targets, type_name
from volctl.waiting import condition, duration, wait_for

__all__ = ["app"]

app = typer.Typer(
    name="volctl",
    help="The command line of volplane's standalone control plane (kubectl's verbs, volplane's objects).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Server = Annotated[str | None, typer.Option("--server", help="The resource API (default: $VOLPLANE_API_ENDPOINT, else $VOLPLANE_RUN_DIR/api.sock, else ./run/api.sock).")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="The namespace of namespaced objects (default: default).")]
Files = Annotated[list[str], typer.Option("--filename", "-f", help="A file, a directory of *.yaml/*.yml/*.json, or - for stdin; repeatable.")]
Recursive = Annotated[bool, typer.Option("--recursive", "-R", help="Read directories given with -f recursively.")]
Args = Annotated[list[str] | None, typer.Argument(help="KIND[,KIND...] [NAME...] or KIND/NAME...", show_default=False)]


def _err(line: str) -> None:
    print(line, file=sys.stderr)


@contextmanager
def _client(server: str | None) -> Iterator[Client]:
    client = Client.connect(endpoint(server))
    try:
        yield client
    finally:
        client.close()


def _done(failed: bool) -> None:
    if failed:
        raise typer.Exit(1)


@app.command()
def apply(files: Files = [],  # noqa: B006 - typer reads the default, never mutates it
           namespace: Namespace = None, recursive: Recursive = False, server: Server = None) -> None:
    """Create or update objects from files: prints `persistentvolume/nfs-pv created|configured|unchanged`."""
    if not files:
        raise VolctlError("error: must specify one of -f and -k")
    failed = False
    with _client(server) as client:
        for doc in manifests.documents(files, sys.stdin, recursive):
            if isinstance(doc, VolctlError):
                _err(doc.line)
                failed = True
                continue
            _default_namespace(doc, namespace)
            try:
                obj, action = client.apply(doc)
            except ServerError as exc:
                _err(exc.line)
                failed = True
                continue
            print(f"{qualified(obj)} {action}", flush=True)
    _done(failed)


def _default_namespace(doc: dict, namespace: str | None) -> None:
    """``-n`` fills in the namespace of namespaced objects that name none, as kubectl's does."""
    if not namespace or not isinstance(doc.get("metadata"), dict) or doc["metadata"].get("namespace"):
        return
    try:
        namespaced = kind_named(str(doc.get("kind", ""))).namespaced
    except VolctlError:
        return  # the server names the bad kind
    if namespaced:
        doc["metadata"]["namespace"] = namespace


@app.command()
def get(
    args: Args = None,
    namespace: Namespace = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="List namespaced objects of every namespace.")] = False,
    selector: Annotated[str, typer.Option("--selector", "-l", help="Label selector: app=web,tier!=db,env in (a,b),!legacy")] = "",
    output: Annotated[str, typer.Option("--output", "-o", help="wide, yaml, json or name.")] = "",
    show_kind: Annotated[bool, typer.Option("--show-kind", help="Prefix names with their kind even for one kind.")] = False,
    server: Server = None,
) -> None:
    """List objects as kubectl's tables (`get pv,pvc`), or print them (-o yaml|json|name)."""
    if output not in getting.OUTPUTS:
        raise VolctlError(f'error: unable to match a printer suitable for the output format "{output}", allowed formats are: json,name,wide,yaml')
    queries = getting.parse_get(args or [])
    if selector and any(q.names for q in queries):
        raise VolctlError("error: name cannot be provided when a selector is specified")
    ns = namespace or "default"
    with _client(server) as client:
        got = getting.fetch(client, queries, namespace=ns, all_namespaces=all_namespaces, selector=selector)
    text = getting.render(got, output=output, with_kind=show_kind or len(queries) > 1, all_namespaces=all_namespaces)
    if text:
        print(text, flush=True)
    elif not got.failed and output != "name":
        _err(getting.nothing_found(got, ns, all_namespaces))
    for line in got.errors:
        _err(line)
    _done(got.failed)


@app.command()
def describe(args: Args = None, namespace: Namespace = None, server: Server = None) -> None:
    """Show an object's fields, its Events and its Timeline (every change, with its patch)."""
    args = args or []
    ns = namespace or "default"
    failed = False
    with _client(server) as client:
        if len(args) == 1 and "/" not in args[0]:
            kind = kind_named(args[0])
            objs = client.list(args[0], ns)
            if not objs:
                _err(f"No resources found in {ns} namespace." if kind.namespaced else "No resources found")
        else:
            objs = []
            for spelling, name in targets(args):
                try:
                    objs.append(client.get(spelling, name, ns))
                except ServerError as exc:
                    _err(exc.line)
                    failed = True
        texts = []
        for obj in objs:
            kind = kind_of(obj)
            entries = client.history(kind.plural, obj["metadata"]["name"], namespace_of(obj))
            pods = client.list("pods", namespace_of(obj)) if kind.name == "PersistentVolumeClaim" else []
            texts.append(describe_text(obj, entries, pods))
    if texts:
        print("\n\n\n".join(texts))
    _done(failed)


@app.command()
def delete(
    args: Args = None,
    files: Files = [],  # noqa: B006 - typer reads the default, never mutates it
    namespace: Namespace = None,
    recursive: Recursive = False,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found", help="A missing object is not an error.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until objects with finalizers are really gone.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits (30s, 2m, 1h or seconds).")] = "60s",
    server: Server = None,
) -> None:
    """Delete objects by KIND NAME... or -f: prints `persistentvolumeclaim "x" deleted`."""
    failed = False
    wanted: list[tuple[str, str, str]] = []  # (kind, name, namespace)
    if files:
        if args:
            raise VolctlError("error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form")
        for doc in manifests.documents(files, sys.stdin, recursive):
            if isinstance(doc, VolctlError):
                _err(doc.line)
                failed = True
                continue
            raw_meta = doc.get("metadata")
            meta = raw_meta if isinstance(raw_meta, dict) else {}
            wanted.append((str(doc.get("kind", "")), str(meta.get("name", "")), meta.get("namespace") or namespace or "default"))
    else:
        wanted = [(kind, name, namespace or "default") for kind, name in targets(args or [])]
    deadline = time.monotonic() + duration(timeout)
    with _client(server) as client:
        for kind, name, ns in wanted:
            try:
                obj = client.delete(kind, name, ns)
            except ServerError as exc:
                if not (ignore_not_found and exc.reason == "NotFound"):
                    _err(exc.line)
                    failed = True
                continue
            print(f'{type_name(kind_of(obj))} "{name}" deleted', flush=True)
            if wait and obj["metadata"].get("finalizers") and not wait_for(client, kind, name, ns, condition("delete"), deadline):
                _err(f"error: timed out waiting for the condition on {kind_of(obj).plural}/{name}")
                failed = True
    _done(failed)


@app.command("wait")
def wait_command(
    args: Args = None,
    for_: Annotated[str, typer.Option("--for", help="delete, phase=<phase>, condition=<type>[=<status>] or jsonpath='{.status.phase}'=<value>.")] = "",
    timeout: Annotated[str, typer.Option("--timeout", help="30s, 2m, 1h or seconds; 0 checks once.")] = "30s",
    namespace: Namespace = None,
    server: Server = None,
) -> None:
    """Wait until objects meet a condition: prints `persistentvolumeclaim/x condition met`."""
    if not for_:
        raise VolctlError("error: --for must be specified: delete, phase=<phase>, condition=<type> or jsonpath='{...}'=<value>")
    cond = condition(for_)
    deadline = time.monotonic() + duration(timeout)
    failed = False
    with _client(server) as client:
        for spelling, name in targets(args or []):
            kind = kind_named(spelling)
            try:
                met = wait_for(client, spelling, name, namespace or "default", cond, deadline)
            except ServerError as exc:
                _err(exc.line)
                failed = True
                continue
            if met:
                print(f"{type_name(kind)}/{name} condition met", flush=True)
            else:
                _err(f"error: timed out waiting for the condition on {kind.plural}/{name}")
                failed = True
    _done(failed)


@app.command()
def history(
    args: Args = None,
    namespace: Namespace = None,
    output: Annotated[str, typer.Option("--output", "-o", help="json for the entries as JSON.")] = "",
    server: Server = None,
) -> None:
    """The raw event log of one object: every change (with its patch) and recorded event."""
    pairs = targets(args or [])
    if len(pairs) != 1:
        raise VolctlError("error: history shows one object: KIND/NAME or KIND NAME")
    if output not in ("", "json"):
        raise VolctlError(f'error: unable to match a printer suitable for the output format "{output}", allowed formats are: json')
    spelling, name = pairs[0]
    kind_named(spelling)
    with _client(server) as client:
        entries = client.history(spelling, name, namespace or "default")
    if output == "json":
        print(history_json(entries))
    elif entries:
        print(history_table(entries))
    else:
        # No event at all: the object never existed (a deleted one still has its history).
        raise VolctlError(f'Error from server (NotFound): {kind_named(spelling).plural} "{name}" not found')
