"""volctl as a user runs it: a real process against the running stack, judged by what it
prints and how it exits.

Objects get names (and classes) of their own per test, so that the PV controller —
which may or may not be running — binds nothing of another test's; tests that need a
bound claim skip, saying so, when nothing binds it within 20 seconds.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, phase, unique

pytestmark = needs_root
Obj = dict[str, Any]
SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"
PV_HEADER = ["NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "REASON", "AGE"]
PVC_HEADER = ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"]


def volctl(cp: Stack, *args: str, input: str | None = None, endpoint: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**cp.env, "VOLPLANE_API_ENDPOINT": endpoint or cp.api_endpoint}
    return subprocess.run([sys.executable, "-m", "volctl", *args], input=input, env=env, capture_output=True, text=True, timeout=timeout)


def start_volctl(cp: Stack, *args: str) -> subprocess.Popen[str]:
    env = {**cp.env, "VOLPLANE_API_ENDPOINT": cp.api_endpoint}
    return subprocess.Popen([sys.executable, "-m", "volctl", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pv(name: str, cls: str, size: str = "2Gi", **meta: Any) -> Obj:
    return {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, **meta},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"], "persistentVolumeReclaimPolicy": "Retain",
                 "storageClassName": cls, "hostPath": {"path": f"/tmp/{name}"}},
    }


def pvc(name: str, cls: str, size: str = "1Gi", **meta: Any) -> Obj:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, **meta},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": cls},
    }


def docs(*objs: Obj) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def parse_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows by column) of one kubectl-style table: cells start where their header does."""
    lines = text.rstrip("\n").split("\n")
    header = re.split(r" {3,}", lines[0].strip())
    starts, at = [], 0
    for name in header:
        at = lines[0].index(name, at)
        starts.append(at)
        at += len(name)
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return header, [{h: line[s:e].strip() for h, (s, e) in zip(header, bounds, strict=True)} for line in lines[1:]]


def test_apply_creates_the_seeds_static_pv_and_reapplying_it_is_unchanged(cp: Stack, api: Api) -> None:
    if api.get("pv", "nfs-pv") is not None:  # left by an earlier test of the session
        api.delete("pv", "nfs-pv")
        api.wait("pv", "nfs-pv", lambda o: o is None, timeout=20)
    first = volctl(cp, "apply", "-f", str(SEED / "static-pv.yaml"))
    assert (first.returncode, first.stdout, first.stderr) == (0, "persistentvolume/nfs-pv created\n", "")
    again = volctl(cp, "apply", "-f", str(SEED / "static-pv.yaml"))
    assert (again.returncode, again.stdout) == (0, "persistentvolume/nfs-pv unchanged\n")


def test_apply_of_a_multi_document_file_prints_a_line_per_object_and_configured_on_change(cp: Stack, tmp_path: Path) -> None:
    name = unique("multi")
    path = tmp_path / "objects.yaml"
    path.write_text(docs(pv(name, name), pvc(name, name)) + "---\n")  # a trailing empty document is skipped
    out = volctl(cp, "apply", "-f", str(path))
    assert (out.returncode, out.stdout.splitlines()) == (0, [f"persistentvolume/{name} created", f"persistentvolumeclaim/{name} created"])
    path.write_text(docs(pv(name, name, labels={"tier": "gold"}), pvc(name, name)))
    out = volctl(cp, "apply", "-f", str(path))
    assert out.stdout.splitlines() == [f"persistentvolume/{name} configured", f"persistentvolumeclaim/{name} unchanged"]


def test_apply_of_a_directory_takes_its_manifests_in_name_order_and_stdin_works_too(cp: Stack, tmp_path: Path) -> None:
    a, b, c, d = (unique(x) for x in "abcd")
    (tmp_path / "2-claim.yml").write_text(docs(pvc(b, a)))
    (tmp_path / "1-volume.yaml").write_text(docs(pv(a, a)))
    (tmp_path / "3-claim.json").write_text(json.dumps(pvc(c, a)))
    (tmp_path / "notes.txt").write_text("not a manifest: [")
    out = volctl(cp, "apply", "-f", str(tmp_path))
    assert (out.returncode, out.stdout.splitlines()) == (0, [f"persistentvolume/{a} created", f"persistentvolumeclaim/{b} created", f"persistentvolumeclaim/{c} created"])
    piped = volctl(cp, "apply", "-f", "-", input=docs(pvc(d, a)))
    assert (piped.returncode, piped.stdout) == (0, f"persistentvolumeclaim/{d} created\n")


def test_get_pv_and_pvc_print_kubectls_columns_and_the_objects_fields(cp: Stack, api: Api) -> None:
    name = unique("cols")
    api.apply(pv(name, name, size="3Gi"))
    api.apply(pvc(name, name))
    out = volctl(cp, "get", "pv", name)
    header, rows = parse_table(out.stdout)
    assert (out.returncode, header) == (0, PV_HEADER)
    assert [(r["NAME"], r["CAPACITY"], r["ACCESS MODES"], r["RECLAIM POLICY"], r["VOLUMEATTRIBUTESCLASS"]) for r in rows] == [(name, "3Gi", "RWO,RWX", "Retain", "<unset>")]
    assert re.fullmatch(r"\d+s", rows[0]["AGE"])
    # Each column is as wide as its widest cell and three spaces more.
    assert out.stdout.startswith(f"NAME{' ' * (len(name) - 1)}CAPACITY   ACCESS MODES   RECLAIM POLICY   ")
    out = volctl(cp, "get", "pvc", name)
    header, rows = parse_table(out.stdout)
    assert (out.returncode, header) == (0, PVC_HEADER)
    assert [(r["NAME"], r["STORAGECLASS"], r["VOLUMEATTRIBUTESCLASS"]) for r in rows] == [(name, name, "<unset>")]


def test_get_of_two_kinds_prints_a_table_each_with_kind_prefixed_names(cp: Stack, api: Api) -> None:
    name, label = unique("two"), unique("set")
    api.apply(pv(name, name, labels={"set": label}))
    api.apply(pvc(name, name, labels={"set": label}))
    out = volctl(cp, "get", "pv,pvc", "-l", f"set={label}")
    first, second = out.stdout.rstrip("\n").split("\n\n")
    assert out.returncode == 0
    assert parse_table(first)[0] == PV_HEADER and parse_table(second)[0] == PVC_HEADER
    assert [r["NAME"] for r in parse_table(first)[1]] == [f"persistentvolume/{name}"]
    assert [r["NAME"] for r in parse_table(second)[1]] == [f"persistentvolumeclaim/{name}"]


def test_get_of_a_bound_claim_shows_its_volume_capacity_and_modes(cp: Stack, api: Api) -> None:
    name = unique("bound")
    api.apply(pv(name, name, size="2Gi"))
    api.apply(pvc(name, name))
    try:
        api.wait("pvc", name, lambda o: phase(o) == "Bound", timeout=20)
    except AssertionError:
        pytest.skip("no PV controller bound the claim within 20 s (is it running in this stack?)")
    _, [row] = parse_table(volctl(cp, "get", "pvc", name).stdout)
    assert (row["STATUS"], row["VOLUME"], row["CAPACITY"], row["ACCESS MODES"]) == ("Bound", name, "2Gi", "RWO,RWX")
    _, [row] = parse_table(volctl(cp, "get", "pv", name).stdout)
    assert (row["STATUS"], row["CLAIM"]) == ("Bound", f"default/{name}")


def test_get_of_a_missing_name_says_not_found_and_exits_1(cp: Stack) -> None:
    out = volctl(cp, "get", "pvc", "no-such-claim")
    assert (out.returncode, out.stdout, out.stderr) == (1, "", 'Error from server (NotFound): persistentvolumeclaims "no-such-claim" not found\n')


def test_get_of_an_empty_namespace_says_no_resources_found(cp: Stack) -> None:
    ns = unique("empty")
    out = volctl(cp, "get", "pvc", "-n", ns)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", f"No resources found in {ns} namespace.\n")


def test_output_yaml_json_and_name_round_trip(cp: Stack, api: Api) -> None:
    name = unique("round")
    api.apply(pvc(name, name, annotations={"note": "kept"}))
    as_yaml = volctl(cp, "get", "pvc", name, "-o", "yaml")
    as_json = volctl(cp, "get", "pvc", name, "-o", "json")
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout) == api.get("pvc", name)
    assert volctl(cp, "apply", "-f", "-", input=as_yaml.stdout).stdout == f"persistentvolumeclaim/{name} unchanged\n"
    assert volctl(cp, "get", "pvc", name, "-o", "name").stdout == f"persistentvolumeclaim/{name}\n"
    listed = json.loads(volctl(cp, "get", "pvc", "-o", "json").stdout)
    assert listed["kind"] == "List" and name in [o["metadata"]["name"] for o in listed["items"]]


def test_describe_shows_annotations_the_claims_users_and_a_timeline_of_patches(cp: Stack, api: Api) -> None:
    name = unique("desc")
    api.apply(pvc(name, name, annotations={"team": "storage"}))
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}]}})
    volctl(cp, "apply", "-f", "-", input=docs(pvc(name, name, annotations={"team": "storage"}, labels={"stage": "two"})))
    out = volctl(cp, "describe", "pvc", name)
    lines = out.stdout.splitlines()
    assert out.returncode == 0
    assert lines[:2] == [f"Name:          {name}", "Namespace:     default"]
    # Controllers may add annotations of their own; ours is listed among them.
    assert any(re.fullmatch(r"(Annotations:)? +team: storage", line) for line in lines)
    assert "Labels:        stage=two" in lines
    assert f"Used By:       {name}" in lines
    timeline = lines[lines.index("Timeline:") + 1 :]
    assert timeline[0].split() == ["Seq", "Age", "Type", "Manager", "Reason", "Change"]
    assert any("ObjectCreated" in t and "created" in t for t in timeline)
    assert any(t.split()[2:] == ["ObjectChanged", "volctl", "apply", '{"metadata":{"labels":{"stage":"two"}}}'] for t in timeline)
    api.delete("pod", name)


def test_delete_prints_deleted_then_a_second_delete_is_not_found(cp: Stack, api: Api) -> None:
    name = unique("del")
    api.apply(pvc(name, name))
    out = volctl(cp, "delete", "pvc", name)
    assert (out.returncode, out.stdout) == (0, f'persistentvolumeclaim "{name}" deleted\n')
    api.wait("pvc", name, lambda o: o is None, timeout=20)
    again = volctl(cp, "delete", "pvc", name)
    assert (again.returncode, again.stderr) == (1, f'Error from server (NotFound): persistentvolumeclaims "{name}" not found\n')
    assert volctl(cp, "delete", "pvc", name, "--ignore-not-found").returncode == 0


def test_delete_by_file_removes_what_the_file_names(cp: Stack, tmp_path: Path) -> None:
    name = unique("delf")
    path = tmp_path / "claim.yaml"
    path.write_text(docs(pvc(name, name)))
    volctl(cp, "apply", "-f", str(path))
    out = volctl(cp, "delete", "-f", str(path))
    assert (out.returncode, out.stdout) == (0, f'persistentvolumeclaim "{name}" deleted\n')


def test_an_invalid_object_is_one_line_naming_the_field_and_the_others_still_apply(cp: Stack) -> None:
    bad, good = unique("bad"), unique("good")
    invalid = pvc(bad, bad, size="10GB")
    out = volctl(cp, "apply", "-f", "-", input=docs(invalid, pvc(good, good)))
    assert out.returncode == 1
    assert out.stdout == f"persistentvolumeclaim/{good} created\n"
    [line] = out.stderr.splitlines()
    assert line.startswith("Error from server (Invalid): ") and "spec.resources.requests" in line and "10GB" in line


def test_a_file_that_does_not_parse_is_one_line_naming_it(cp: Stack, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: PersistentVolume\nmetadata: [\n")
    out = volctl(cp, "apply", "-f", str(path))
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith(f"error: error parsing {path}: ")


def test_wait_for_a_phase_that_never_comes_times_out_with_kubectls_error(cp: Stack, api: Api) -> None:
    name = unique("never")
    api.apply(pvc(name, name))
    started = time.monotonic()
    out = volctl(cp, "wait", f"pvc/{name}", "--for=phase=Lost", "--timeout=1s")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"error: timed out waiting for the condition on persistentvolumeclaims/{name}\n"
    assert time.monotonic() - started < 30


def test_wait_for_delete_returns_once_the_object_is_gone(cp: Stack, api: Api) -> None:
    name = unique("gone")
    api.apply(pvc(name, name))
    waiter = start_volctl(cp, "wait", f"pvc/{name}", "--for=delete", "--timeout=60s")
    time.sleep(1.0)  # let it start watching; a delete before that is met by its first read
    api.delete("pvc", name)
    stdout, stderr = waiter.communicate(timeout=90)
    assert (waiter.returncode, stdout, stderr) == (0, f"persistentvolumeclaim/{name} condition met\n", "")


def test_wait_for_a_phase_returns_when_the_object_reaches_it(cp: Stack, api: Api) -> None:
    # A pod's phase is the one status a user may set (no runtime runs its containers).
    name = unique("done")
    pod: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    api.apply(pod)
    waiter = start_volctl(cp, "wait", "pod", name, "--for=phase=Succeeded", "--timeout=60s")
    time.sleep(1.0)
    api.apply({**pod, "status": {"phase": "Succeeded"}})
    stdout, stderr = waiter.communicate(timeout=90)
    assert (waiter.returncode, stdout, stderr) == (0, f"pod/{name} condition met\n", "")


def test_wait_for_a_jsonpath_value_is_met_by_a_later_apply(cp: Stack, api: Api) -> None:
    name = unique("jp")
    api.apply(pvc(name, name))
    waiter = start_volctl(cp, "wait", f"pvc/{name}", "--for=jsonpath={.metadata.labels.stage}=ready", "--timeout=60s")
    time.sleep(1.0)
    api.apply(pvc(name, name, labels={"stage": "ready"}))
    stdout, _ = waiter.communicate(timeout=90)
    assert (waiter.returncode, stdout) == (0, f"persistentvolumeclaim/{name} condition met\n")


def test_history_prints_a_line_per_event_with_time_manager_and_patch(cp: Stack, api: Api) -> None:
    name = unique("hist")
    volctl(cp, "apply", "-f", "-", input=docs(pvc(name, name)))
    volctl(cp, "apply", "-f", "-", input=docs(pvc(name, name, labels={"v": "2"})))
    out = volctl(cp, "history", f"pvc/{name}")
    header, rows = parse_table(out.stdout)
    assert (out.returncode, header) == (0, ["SEQ", "TIME", "TYPE", "BY", "DETAIL"])
    mine = [r for r in rows if r["BY"] == "volctl"]
    assert [(r["TYPE"], r["DETAIL"]) for r in mine] == [("ObjectCreated", "created"), ("ObjectChanged", 'apply {"metadata":{"labels":{"v":"2"}}}')]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["TIME"]) for r in rows)
    assert [int(r["SEQ"]) for r in rows] == sorted(int(r["SEQ"]) for r in rows)
    entries = json.loads(volctl(cp, "history", "pvc", name, "-o", "json").stdout)
    assert entries[0]["type"] == "ObjectCreated" and entries[0]["object"]["metadata"]["name"] == name


def test_an_unreachable_server_is_one_readable_line_and_exit_1(cp: Stack, tmp_path: Path) -> None:
    target = f"unix://{tmp_path / 'api.sock'}"
    out = volctl(cp, "get", "pv", endpoint=target)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"volctl: cannot reach volplane at {target} (is `make run` running? set VOLPLANE_API_ENDPOINT)\n"


def test_an_unknown_kind_is_one_error_line(cp: Stack) -> None:
    out = volctl(cp, "get", "widgets")
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith('error: the server doesn\'t have a resource type "widgets"')


def test_a_namespace_that_is_not_a_string_is_one_invalid_line(cp: Stack) -> None:
    # Found by `make fuzz`: `namespace: 5` made Apply answer UNKNOWN with a TypeError.
    name = unique("ns")
    out = volctl(cp, "apply", "-f", "-", input=f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: 5\nspec:\n  containers: []\n")
    assert (out.returncode, out.stdout) == (1, "")
    [line] = out.stderr.splitlines()
    assert line.startswith("Error from server (Invalid): ") and "namespace" in line, line


# --- get -w, -o jsonpath / custom-columns, --sort-by, --no-headers -------------------------------


class Lines:
    """A running volctl's stdout, read line by line as it is written: a thread feeds a
    queue, so a test waits for each line (with a deadline) instead of sleeping."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        except (ValueError, OSError):
            pass  # the test is over and closed the pipe under this thread
        self._queue.put(None)

    def next(self, timeout: float = 30) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no new line within {timeout}s; so far: {self.seen}") from None
        if line is None:
            raise AssertionError(f"volctl ended (status {self.proc.wait()}) after: {self.seen}")
        self.seen.append(line)
        return line

    def until(self, wanted: Any, timeout: float = 30) -> str:
        """The first next line for which ``wanted(line)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            if wanted(line):
                return line


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """The volctl processes a test starts, killed at its end whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_get_watch_prints_the_table_then_a_line_per_change(cp: Stack, api: Api, running: list[subprocess.Popen[str]]) -> None:
    name = unique("watch")
    api.apply(pvc(name, name))
    proc = start_volctl(cp, "get", "pvc", name, "-w")
    running.append(proc)
    out = Lines(proc)
    header = out.next()
    assert header.split()[:3] == ["NAME", "STATUS", "VOLUME"]
    assert out.next().split()[:2] == [name, "Pending"]
    # The watch follows on from where the table was read: a change made now is never lost.
    api.apply(pvc(name, name, labels={"stage": "two"}))
    changed = out.next()
    assert changed.split()[0] == name
    assert changed.index("Pending") == header.index("STATUS")  # in line with the header, as kubectl's remembered widths keep it
    api.delete("pvc", name)
    out.until(lambda line: line.split()[:2] in ([name, "Terminating"], [name, "Pending"]))
    assert proc.poll() is None  # a watch goes on until Ctrl-C or --request-timeout


def test_get_watch_with_custom_columns_shows_the_changed_field(cp: Stack, api: Api, running: list[subprocess.Popen[str]]) -> None:
    name, label = unique("wcol"), unique("set")
    api.apply(pvc(name, name, labels={"set": label, "stage": "one"}))
    proc = start_volctl(cp, "get", "pvc", "-l", f"set={label}", "-w", "--output-watch-events",
                        "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name,STAGE:.object.metadata.labels.stage")
    running.append(proc)
    out = Lines(proc)
    assert out.next().split() == ["EVENT", "NAME", "STAGE"]
    assert out.next().split() == ["ADDED", name, "one"]
    api.apply(pvc(name, name, labels={"set": label, "stage": "two"}))
    assert out.until(lambda line: "two" in line).split() == ["MODIFIED", name, "two"]
    other = unique("wnew")
    api.apply(pvc(other, other, labels={"set": label, "stage": "new"}))
    assert out.until(lambda line: other in line).split() == ["ADDED", other, "new"]
    api.delete("pvc", other)
    assert out.until(lambda line: line.startswith("DELETED")).split()[:2] == ["DELETED", other]


def test_get_watch_only_prints_nothing_until_a_change_then_the_header_with_it(cp: Stack, api: Api, running: list[subprocess.Popen[str]]) -> None:
    name = unique("wonly")
    api.apply(pvc(name, name))
    proc = start_volctl(cp, "get", "pvc", name, "--watch-only", "-o", "custom-columns=NAME:.metadata.name,STAGE:.metadata.labels.stage")
    running.append(proc)
    out = Lines(proc)
    # Nothing shows when volctl has read the claim and started watching, so change it
    # until a line comes: a change made before that read is part of what it read, and
    # --watch-only prints none of that.
    for attempt in range(60):
        api.apply(pvc(name, name, labels={"stage": f"s{attempt}"}))
        try:
            header = out.next(timeout=1)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no change was printed in 60 tries")
    assert header.split() == ["NAME", "STAGE"]
    first = out.next().split()
    assert first[0] == name and first[1].startswith("s")  # a change, never the claim as it was (no stage)


def test_get_watch_ends_quietly_at_the_request_timeout_and_on_ctrl_c(cp: Stack, api: Api, running: list[subprocess.Popen[str]]) -> None:
    name = unique("wend")
    api.apply(pvc(name, name))
    timed = start_volctl(cp, "get", "pvc", name, "-w", "--request-timeout=2s", "-o", "name")
    running.append(timed)
    stdout, stderr = timed.communicate(timeout=60)
    # A controller may touch the claim meanwhile; with -o name every line names it.
    assert (timed.returncode, stderr) == (0, "")
    assert stdout.startswith(f"persistentvolumeclaim/{name}\n") and set(stdout.splitlines()) == {f"persistentvolumeclaim/{name}"}
    interrupted = start_volctl(cp, "get", "pvc", name, "-w")
    running.append(interrupted)
    out = Lines(interrupted)
    out.next()
    out.next()  # the table is out: the watch is running
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=30) == 1  # kubectl's status after Ctrl-C
    assert interrupted.stderr is not None and interrupted.stderr.read() == ""  # no traceback


def test_get_watch_of_two_kinds_is_kubectls_error(cp: Stack) -> None:
    out = volctl(cp, "get", "pv,pvc", "-w")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == "error: watch is only supported on individual resources and resource collections - more than 1 resource was found\n"


def test_jsonpath_prints_the_templates_values_without_a_trailing_newline(cp: Stack, api: Api) -> None:
    label = unique("set")
    a, b = unique("jpa"), unique("jpb")
    api.apply(pvc(a, a, labels={"set": label}))
    api.apply(pvc(b, b, size="2Gi", labels={"set": label}))
    first, second = sorted((a, b))
    out = volctl(cp, "get", "pvc", "-l", f"set={label}", "-o", "jsonpath={.items[*].metadata.name}")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{first} {second}", "")
    out = volctl(cp, "get", "pvc", "-l", f"set={label}", "-o",
                 'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.spec.resources.requests.storage}{"\\n"}{end}')
    assert out.stdout.splitlines() == sorted([f"{a}\t1Gi", f"{b}\t2Gi"])
    out = volctl(cp, "get", "pvc", b, "-o", 'jsonpath={.spec.resources.requests.storage}')
    assert out.stdout == "2Gi"  # one object named: the template sees the object itself
    out = volctl(cp, "get", "pvc", "-l", f"set={label}", "-o", 'jsonpath={.items[?(@.spec.resources.requests.storage=="2Gi")].metadata.name}')
    assert out.stdout == b


def test_custom_columns_sorted_by_a_quantity_with_and_without_headers(cp: Stack, api: Api) -> None:
    label = unique("set")
    names = {size: unique("cc") for size in ("10Gi", "512Mi", "2Gi")}
    for size, name in names.items():
        api.apply(pv(name, name, size=size, labels={"set": label}))
    columns = "custom-columns=NAME:.metadata.name,SIZE:.spec.capacity.storage,CLAIM:.spec.claimRef.name"
    out = volctl(cp, "get", "pv", "-l", f"set={label}", "--sort-by=.spec.capacity.storage", "-o", columns)
    header, rows = parse_table(out.stdout)
    assert (out.returncode, header) == (0, ["NAME", "SIZE", "CLAIM"])
    assert [(r["NAME"], r["SIZE"], r["CLAIM"]) for r in rows] == [(names[s], s, "<none>") for s in ("512Mi", "2Gi", "10Gi")]
    out = volctl(cp, "get", "pv", "-l", f"set={label}", "--sort-by={.spec.capacity.storage}", "--no-headers", "-o", columns)
    assert [line.split()[1] for line in out.stdout.splitlines()] == ["512Mi", "2Gi", "10Gi"]
    # The table sorts too, and --no-headers leaves only the rows.
    out = volctl(cp, "get", "pv", "-l", f"set={label}", "--sort-by=.spec.capacity.storage", "--no-headers")
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [[names[s], s] for s in ("512Mi", "2Gi", "10Gi")]


def test_sort_by_a_field_no_object_has_is_kubectls_error(cp: Stack, api: Api) -> None:
    name = unique("nosort")
    api.apply(pvc(name, name))
    out = volctl(cp, "get", "pvc", name, "--sort-by=.spec.nothing")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == 'error: couldn\'t find any field with path "{.spec.nothing}" in the list of objects\n'


def test_unsupported_jsonpath_is_one_error_line_and_exit_1_at_once(cp: Stack, api: Api) -> None:
    out = volctl(cp, "get", "pvc", "-o", "jsonpath={.items[?(@.a>)]}")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == 'error: error parsing jsonpath {.items[?(@.a>)]}, invalid filter expression "@.a>": a comparison needs a value on each side\n'
    out = volctl(cp, "get", "pvc", "-o", "custom-columns=NAME:.metadata.name | upper")
    assert out.returncode == 1 and out.stderr.startswith("error: error parsing jsonpath {.metadata.name | upper}, unrecognized character in action: U+007C '|'")
    # wait does not wait out its timeout on a path it cannot read.
    name = unique("nowait")
    api.apply(pvc(name, name))
    started = time.monotonic()
    out = volctl(cp, "wait", f"pvc/{name}", '--for=jsonpath={.status.conditions[?(@.type=~"Res.*")].status}=True', "--timeout=60s")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.startswith('error: error parsing jsonpath {.status.conditions[?(@.type=~"Res.*")].status}, unsupported filter')
    assert time.monotonic() - started < 30


def test_completion_offers_kinds_and_the_names_of_objects(cp: Stack, api: Api) -> None:
    name = unique("compl")
    api.apply(pvc(name, name))
    env = {**cp.env, "VOLPLANE_API_ENDPOINT": cp.api_endpoint, "_VOLCTL_COMPLETE": "complete_bash"}

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        run = subprocess.run([sys.executable, "-m", "volctl"], env={**env, "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)},
                             capture_output=True, text=True, timeout=60)
        return run.stdout.split()

    assert "persistentvolumeclaims" in complete("volctl get persistentvolumec")
    assert name in complete(f"volctl get pvc {name[:-3]}")
    assert f"pvc/{name}" in complete(f"volctl describe pvc/{name[:-3]}")
