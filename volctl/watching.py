"""``volctl get -w``: print what is there, then a line per change, as ``kubectl get -w``.

    watch(client, query, output_format(""), namespace="default", write=sys.stdout.write)
    # NAME     STATUS    VOLUME   CAPACITY   ...        <- the list, as get prints it
    # data     Pending                       ...
    # data     Bound     pv-1     1Gi        ...        <- a line per change, same columns

The list (or the one object named) is read first, and the watch starts from the stream
position it was read at, so no change in between is lost and none is shown twice.
``watch_only`` skips the first print (``--watch-only``). The watch runs until Ctrl-C
(KeyboardInterrupt: the caller exits 1, as kubectl does) or, with ``timeout``
(``--request-timeout``), until that many seconds have passed — then it ends quietly
with status 0, as kubectl's does when the server closes the watch.
"""

from __future__ import annotations

from collections.abc import Callable

from volctl.client import Client, TimedOut, VolctlError
from volctl.getting import Query
from volctl.printing import Format, Stream

__all__ = ["watch"]


def watch(client: Client, query: Query, fmt: Format, *, namespace: str, all_namespaces: bool = False, selector: str = "",
          watch_only: bool = False, events: bool = False, timeout: float | None = None, write: Callable[[str], object]) -> None:
    """Print the objects of ``query`` and then their changes through ``write``, which
    should flush: each change is shown as it happens."""
    if len(query.names) > 1:
        raise VolctlError(f"error: watch is only supported on individual resources and resource collections, but {len(query.names)} resources were found")
    stream = Stream(fmt, query.kind, all_namespaces=all_namespaces, events=events)
    name = query.names[0] if query.names else ""
    if name:
        obj = client.get(query.spelling, name, namespace)
        objs, after = [obj], int(obj["metadata"].get("resourceVersion") or 0)
    else:
        objs, after = client.list_at(query.spelling, namespace, all_namespaces, selector)
    if not watch_only:
        write(stream.write([("ADDED", o) for o in objs]))
    try:
        for event, obj in client.watch(query.spelling, namespace, after, timeout, name=name, all_namespaces=all_namespaces, selector=selector):
            write(stream.write([(event, obj)]))
    except TimedOut:
        return
