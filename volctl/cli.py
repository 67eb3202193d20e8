"""volctl's commands: kubectl's apply, get, describe, delete and wait, plus history.

    volctl apply -f examples/seed/
    volctl get pv,pvc
    volctl get pvc -w                                   # then a line per change
    volctl get pv -o jsonpath='{.items[*].metadata.name}'
    volctl get pv --sort-by=.spec.capacity.storage -o custom-columns=NAME:.metadata.name,SIZE:.spec.capacity.storage
    volctl wait pvc/nfs --for=phase=Bound --timeout=60s
    volctl history pvc/nfs

Each command prints what kubectl would print; errors are one line on stderr each, the
command carries on with the other objects, and the exit status is 1 if any failed.
``--help`` shows each command's examples; ``--install-completion`` completes commands,
kinds, object names and flags in bash (and zsh, fish).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from volctl import getting, manifests, quarantine
from volctl.client import Client, ServerError, VolctlError, endpoint
from volctl.describe import describe as describe_text
from volctl.history import history_json, history_table
from volctl.printing import output_format
from volctl.refs import kind_named, kind_of, namespace_of, qualified, targets, type_name
from volctl.sorting import sort_template
from volctl.waiting import condition, duration, wait_for
from volctl.watching import watch as watch_objects
from volplane.resources.kinds import KINDS

__all__ = ["app"]


def _write_examples(formatter: Any, text: str) -> None:
    with formatter.section("Examples"):
        for line in text.strip("\n").splitlines():
            formatter.write(f"{'':>{formatter.current_indent}}{line.strip()}\n" if line.strip() else "\n")


def _write_options(command: Any, ctx: Any, formatter: Any) -> None:
    # The arguments are in the usage line, as kubectl has them; a section would repeat it.
    options = [record for p in command.get_params(ctx) if p.param_type_name == "option" and (record := p.get_help_record(ctx))]
    with formatter.section("Options"):
        formatter.write_dl(options)


class _Command(TyperCommand):
    """A command whose epilog holds its examples, shown as kubectl shows them: after
    the description, before the options, lines kept as written."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        if self.epilog:
            _write_examples(formatter, self.epilog)
        _write_options(self, ctx, formatter)


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        _write_examples(formatter, _APP_EXAMPLES)
        self.format_options(ctx, formatter)


_APP_EXAMPLES = """
# Create what the seed's manifests describe, then watch the claims bind
volctl apply -f examples/seed/
volctl get pvc -w

# List volumes and claims, one table each
volctl get pv,pvc

# Install shell completion (bash, zsh or fish), then open a new shell
volctl --install-completion
"""

app = typer.Typer(
    name="volctl",
    cls=_Group,
    help="The command line of volplane's standalone control plane (kubectl's verbs, volplane's objects).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help whether or not rich is installed, examples as written
)

# --- completion -------------------------------------------------------------------------------
# Cheap answers only: kinds from the table volctl resolves them with; names from one List
# call with a short deadline, and nothing at all when the server does not answer.

_OUTPUTS = ("json", "yaml", "name", "wide", "jsonpath=", "jsonpath-as-json=", "jsonpath-file=", "custom-columns=", "custom-columns-file=")


def _kind_words() -> list[str]:
    return [word for kind in KINDS for word in (kind.plural, *kind.short)]


def _listed(ctx: typer.Context, kinds: list[str], namespace: str, everywhere: bool) -> list[dict[str, Any]]:
    """The objects of these kinds, or none if the server does not answer at once."""
    try:
        client = Client.connect(endpoint(ctx.params.get("server")), timeout=1.0)
    except Exception:  # noqa: BLE001 - completion offers nothing rather than an error
        return []
    client.request_timeout = 2.0
    try:
        return [o for kind in kinds for o in client.list(kind, namespace, everywhere)]
    except Exception:  # noqa: BLE001 - as above
        return []
    finally:
        client.close()


def _names(ctx: typer.Context, kind: str) -> list[str]:
    objs = _listed(ctx, [kind], ctx.params.get("namespace") or "default", bool(ctx.params.get("all_namespaces")))
    return sorted({o["metadata"]["name"] for o in objs})


def _complete_args(ctx: typer.Context, incomplete: str) -> list[str]:
    """KIND, then names of that KIND; or KIND/NAME."""
    given = [a for a in (ctx.params.get("args") or []) if a != incomplete]
    if "/" in incomplete or (given and "/" in given[0]):
        kind, sep, _ = incomplete.partition("/")
        if not sep:
            return [f"{w}/" for w in _kind_words() if w.startswith(incomplete)]
        return [f"{kind}/{n}" for n in _names(ctx, kind) if f"{kind}/{n}".startswith(incomplete)]
    if not given:
        head, _, last = incomplete.rpartition(",")
        return [f"{head},{w}" if head else w for w in _kind_words() if w.startswith(last)]
    if "," in given[0]:
        return []  # names go with one kind only
    return [n for n in _names(ctx, given[0]) if n.startswith(incomplete) and n not in given[1:]]


def _complete_output(incomplete: str) -> list[str]:
    return [o for o in _OUTPUTS if o.startswith(incomplete)]


def _complete_namespace(ctx: typer.Context, incomplete: str) -> list[str]:
    objs = _listed(ctx, [k.plural for k in KINDS if k.namespaced], "", True)
    return sorted(n for n in {namespace_of(o) for o in objs} | {"default"} if n.startswith(incomplete))


# --- shared options -----------------------------------------------------------------------------

Server = Annotated[str | None, typer.Option("--server", help="The resource API (default: $VOLPLANE_API_ENDPOINT, else $VOLPLANE_RUN_DIR/api.sock, else ./run/api.sock).")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="The namespace of namespaced objects (default: default).", autocompletion=_complete_namespace)]
Files = Annotated[list[str], typer.Option("--filename", "-f", help="A file, a directory of *.yaml/*.yml/*.json, or - for stdin; repeatable.")]
Recursive = Annotated[bool, typer.Option("--recursive", "-R", help="Read directories given with -f recursively.")]
Args = Annotated[list[str] | None, typer.Argument(metavar="(KIND [NAME...] | KIND/NAME...)",
                                                  show_default=False, autocompletion=_complete_args)]


def _err(line: str) -> None:
    print(line, file=sys.stderr)


@contextmanager
def _client(server: str | None, request_timeout: float | None = None) -> Iterator[Client]:
    client = Client.connect(endpoint(server))
    client.request_timeout = request_timeout
    try:
        yield client
    except KeyboardInterrupt:
        # Ctrl-C inside a grpc call can leave it half torn down, and closing the channel
        # would then wait for it for ever; the process is ending, which closes it anyway.
        raise
    except BaseException:
        client.close()
        raise
    else:
        client.close()


def _done(failed: bool) -> None:
    if failed:
        raise typer.Exit(1)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command(cls=_Command, short_help="Create or update objects from files", epilog="""
# Create the objects of one file, or of every manifest in a directory
volctl apply -f examples/seed/static-pv.yaml
volctl apply -f examples/seed/

# Apply what comes on stdin
cat claim.yaml | volctl apply -f -
""")
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


def _default_namespace(doc: dict[str, Any], namespace: str | None) -> None:
    """``-n`` fills in the namespace of namespaced objects that name none, as kubectl's does."""
    if not namespace or not isinstance(doc.get("metadata"), dict) or doc["metadata"].get("namespace"):
        return
    try:
        namespaced = kind_named(str(doc.get("kind", ""))).namespaced
    except VolctlError:
        return  # the server names the bad kind
    if namespaced:
        doc["metadata"]["namespace"] = namespace


@app.command(cls=_Command, short_help="Display one or many objects", epilog="""
# List claims, then volumes and claims (a table each); -o wide adds columns
volctl get pvc
volctl get pv,pvc -o wide

# One object as YAML, or JSON; every claim's name as kind/name
volctl get pvc data -o yaml
volctl get pvc -o name

# Watch claims: the table, then a line per change, until Ctrl-C
volctl get pvc -w
volctl get pvc data --watch-only --request-timeout=5m

# Names of every volume, one per line (kubectl's JSONPath)
volctl get pv -o jsonpath='{range .items[*]}{.metadata.name}{"\\n"}{end}'

# The volume of each bound claim
volctl get pvc -o jsonpath='{.items[?(@.status.phase=="Bound")].spec.volumeName}'

# Columns of your choice, largest volume last, without the header
volctl get pv -o custom-columns=NAME:.metadata.name,SIZE:.spec.capacity.storage --sort-by=.spec.capacity.storage --no-headers
""")
def get(
    args: Args = None,
    namespace: Namespace = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="List namespaced objects of every namespace.")] = False,
    selector: Annotated[str, typer.Option("--selector", "-l", help="Label selector: app=web,tier!=db,env in (a,b),!legacy")] = "",
    output: Annotated[str, typer.Option("--output", "-o", autocompletion=_complete_output,
                                        help="Output format: json, yaml, name, wide, jsonpath=TEMPLATE, jsonpath-as-json=TEMPLATE, jsonpath-file=FILE, "
                                             "custom-columns=HEADER:PATH,..., custom-columns-file=FILE.")] = "",
    template: Annotated[str, typer.Option("--template", help="The template of -o jsonpath (or custom-columns), instead of after its '='.")] = "",
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Print tables and custom columns without their header line.")] = False,
    sort_by: Annotated[str, typer.Option("--sort-by", help="Sort by the value at this JSONPath (e.g. .metadata.name, '{.spec.capacity.storage}'): "
                                                            "quantities by amount, numbers as numbers, other text in natural order.")] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="After listing or getting, print a line for every change, until Ctrl-C.")] = False,
    watch_only: Annotated[bool, typer.Option("--watch-only", help="Print the changes only, without listing first.")] = False,
    output_watch_events: Annotated[bool, typer.Option("--output-watch-events", help="With -w: say what each change was (ADDED, MODIFIED, DELETED).")] = False,
    request_timeout: Annotated[str, typer.Option("--request-timeout", help="How long to wait for the server (1s, 2m, 3h; 0: no limit). Ends a watch quietly.")] = "0",
    show_kind: Annotated[bool, typer.Option("--show-kind", help="Prefix names with their kind even for one kind.")] = False,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found", help="A missing object is not an error.")] = False,
    server: Server = None,
) -> None:
    """Display one or many objects: kubectl's tables, or the format of -o; with -w, then every change."""
    fmt = output_format(output, template, no_headers)
    if output_watch_events and not (watch or watch_only):
        raise VolctlError("error: --output-watch-events option can only be used with --watch or --watch-only")
    timeout = duration(request_timeout) or None
    if args and len(args) == 1 and args[0].lower() in quarantine.SPELLINGS:
        with _client(server, timeout) as client:
            text = quarantine.render(client.list("quarantinedevents"), fmt)
        if text:
            _write(text + "\n")
        elif fmt.human:
            _err("No resources found")
        return
    queries = getting.parse_get(args or [])
    if selector and any(q.names for q in queries):
        raise VolctlError("error: name cannot be provided when a selector is specified")
    ns = namespace or "default"
    if watch or watch_only:
        if sort_by:
            _err("warning: --watch or --watch-only requested, --sort-by will be ignored")
        if len(queries) > 1:
            raise VolctlError("error: watch is only supported on individual resources and resource collections - more than 1 resource was found")
        try:
            with _client(server, timeout) as client:
                watch_objects(client, queries[0], fmt, namespace=ns, all_namespaces=all_namespaces, selector=selector,
                              watch_only=watch_only, events=output_watch_events, timeout=timeout, write=_write)
        except KeyboardInterrupt:
            # Ctrl-C is how a watch ends: quietly, with kubectl's status (its interrupt handler exits 1).
            raise typer.Exit(1) from None
        return
    order = sort_template(sort_by) if sort_by else None
    with _client(server, timeout) as client:
        got = getting.fetch(client, queries, namespace=ns, all_namespaces=all_namespaces, selector=selector)
    if ignore_not_found:
        got.errors = [e for e in got.errors if not e.startswith("Error from server (NotFound)")]
    text = getting.render(got, fmt, with_kind=show_kind or len(queries) > 1, all_namespaces=all_namespaces, sort_by=order)
    if text:
        _write(text)
    elif fmt.human and not got.failed and not ignore_not_found:
        _err(getting.nothing_found(got, ns, all_namespaces))
    for line in got.errors:
        _err(line)
    _done(got.failed)


@app.command(cls=_Command, short_help="Show details of objects, with their events and timeline", epilog="""
# A claim: its fields, who uses it, its Events and its Timeline
volctl describe pvc data

# Every volume
volctl describe pv
""")
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


@app.command(cls=_Command, short_help="Delete objects by kind and name, or by file", epilog="""
# Delete a claim, and wait until its finalizers let it go
volctl delete pvc data --wait

# Delete what a file describes; a missing object is fine
volctl delete -f claim.yaml --ignore-not-found
""")
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


@app.command("wait", cls=_Command, short_help="Wait for a condition on objects", epilog="""
# Wait for a claim to be bound
volctl wait pvc/data --for=phase=Bound --timeout=60s

# Wait for a pod's volumes to be mounted
volctl wait pod/web --for=condition=VolumesReady

# Wait for a field to read a value (kubectl's JSONPath, filters included)
volctl wait pvc/data --for=jsonpath='{.status.phase}'=Bound
volctl wait pod/web --for=jsonpath='{.status.conditions[?(@.type=="VolumesReady")].status}'=True

# Wait for a claim to be gone
volctl wait pvc/data --for=delete --timeout=2m
""")
def wait_command(
    args: Args = None,
    for_: Annotated[str, typer.Option("--for", help="delete, phase=<phase>, condition=<type>[=<status>] or jsonpath='{.status.phase}'[=<value>].")] = "",
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


@app.command(cls=_Command, short_help="The raw event log of one object", epilog="""
# Every change of a claim, with the manager that made it and its patch
volctl history pvc/data

# The same entries as JSON
volctl history pvc data -o json
""")
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


@app.command("version", cls=_Command, short_help="Print the client version", epilog="""
volctl version
""")
def version_command() -> None:
    """Print the version of volctl: volplane's, written once in volplane/__init__.py."""
    from volplane import __version__

    print(f"Client Version: v{__version__}")
