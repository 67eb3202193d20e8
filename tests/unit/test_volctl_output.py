"""volctl's output as kubectl users expect it, on object dicts (no server): the JSONPath
dialect, custom columns, --sort-by, --no-headers, -o parsing and get -w's lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from volctl.client import VolctlError
from volctl.jsonpath import JsonPathError, JsonPathExecError, go_json, go_sprint, go_text, parse, relaxed
from volctl.printing import Stream, output_format, render
from volctl.sorting import natural_less, parse_quantity, sort_objects, sort_template
from volctl.tables import Aligned
from volctl.waiting import condition
from volplane.resources.kinds import resolve

Obj = dict[str, Any]
CREATED = "2024-05-01T10:00:00Z"
NOW = 1714557600.0 + 4  # four seconds after CREATED


def pv(name: str, size: str, phase: str = "Available", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, "creationTimestamp": CREATED},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain", **spec},
        "status": {"phase": phase},
    }


def as_list(*objs: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "List", "items": list(objs), "metadata": {"resourceVersion": ""}}


VOLUMES = as_list(
    pv("pv-a", "1Gi", "Bound", claimRef={"namespace": "default", "name": "data"}, volumeMode=None),
    pv("pv-b", "10Gi", storageClassName="fast"),
)


# --- the JSONPath dialect -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "printed"),
    [
        ("{.items[*].metadata.name}", "pv-a pv-b"),                                    # several values: one space apart
        ('{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}', "pv-a\tBound\npv-b\tAvailable\n"),
        ('{.items[?(@.status.phase=="Bound")].metadata.name}', "pv-a"),
        ("{.items[?(@.spec.storageClassName)].metadata.name}", "pv-b"),               # existence filter
        ("{.items[?(@.spec.claimRef.name!='data')].metadata.name}", ""),              # no claimRef: nothing to compare, left out
        ("{.items[-1].metadata.name}", "pv-b"),
        ("{.items[0:2].spec.capacity.storage}", "1Gi 10Gi"),
        ("{.items[::2].metadata.name}", "pv-a"),
        ("{.items[0,1].status.phase}", "Bound Available"),
        ("{.items[0].metadata['name']}", "pv-a"),
        ("{..claimRef.name}", "data"),                                                # recursive descent
        ("{$.kind}/{@.apiVersion}", "List/v1"),                                       # text between actions is kept
        ("{.items[0].spec.capacity}", '{"storage":"1Gi"}'),                           # maps print as compact JSON
        ("{.items[0].spec.accessModes}", '["ReadWriteOnce"]'),
        ("{.items[*].metadata.missing}", ""),                                         # missing keys print nothing
        ("{.nothing[*]}", ""),
        ("{.items[0].spec.volumeMode}", ""),                                          # a null field prints nothing
    ],
)
def test_templates_print_what_kubectl_prints(template: str, printed: str) -> None:
    assert parse(template).execute(VOLUMES) == printed


def test_a_dot_in_a_key_is_escaped_with_a_backslash() -> None:
    obj = {"metadata": {"labels": {"app.kubernetes.io/name": "web", "app": "other"}}}
    assert parse("{.metadata.labels.app\\.kubernetes\\.io/name}").execute(obj) == "web"


def test_numbers_compare_as_numbers_in_filters() -> None:
    pods = {"items": [{"n": "a", "r": 3}, {"n": "b", "r": 12}, {"n": "c", "r": 1.5}]}
    assert parse("{.items[?(@.r>2)].n}").execute(pods) == "a b"
    assert parse("{.items[?(@.r<=3)].n}").execute(pods) == "a c"  # 1.5 and 3 compare as numbers (Go's template would refuse)
    assert parse("{.items[?(@.r==12.0)].n}").execute(pods) == "b"


def test_values_print_as_go_prints_them() -> None:
    assert [go_text(v) for v in (True, False, None, 3, 1.5, 1e21, 1e20, 0.00001)] == ["true", "false", "<nil>", "3", "1.5", "1e+21", "100000000000000000000", "1e-05"]
    assert go_json({"b": [1, 2.5], "a": "<x&y>"}) == '{"a":"\\u003cx\\u0026y\\u003e","b":[1,2.5]}'
    assert go_sprint({"b": [1, "x"], "a": None}) == "map[a:<nil> b:[1 x]]"


def test_jsonpath_as_json_prints_each_actions_values_as_an_indented_array() -> None:
    assert parse("{.items[*].metadata.name}").execute(VOLUMES, as_json=True) == '[\n    "pv-a",\n    "pv-b"\n]\n'


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{.items[?(@.a>)]}", 'invalid filter expression "@.a>": a comparison needs a value on each side'),
        ('{.items[?(@.a=~"^web")]}', "kubectl's JSONPath has no regular expressions (=~)"),
        ("{.items[*].metadata.name | sort}", "unrecognized character in action: U+007C '|'"),
        ("{.items[?(@.a && @.b)]}", "unrecognized character in action: U+0026 '&'"),
        ("{.items[*]", "unclosed action"),
        ("{.items[first]}", "invalid array index first"),
        ("{.items[0}", "unterminated array"),
        ('{"no end}', "unterminated quoted string"),
        ("{.items[?(@.a==1]}", "unterminated filter"),
        ("{.items[?(@.a==1)}", "unclosed array expect ]"),
        ("{length(.items)}", "unrecognized identifier length("),
        ("{first}", "unrecognized identifier first"),
        ("{end}", "not in range, nothing to end"),
    ],
)
def test_jsonpath_it_does_not_support_is_an_error_naming_the_reason(template: str, reason: str) -> None:
    with pytest.raises(JsonPathError) as err:
        parse(template)
    assert reason in str(err.value)


def test_an_index_past_the_end_is_an_execution_error_as_in_kubectl() -> None:
    with pytest.raises(JsonPathExecError, match="array index out of bounds: index 5, length 2"):
        parse("{.items[5]}").execute(VOLUMES)
    with pytest.raises(JsonPathExecError, match="is not array or slice"):
        parse("{.kind[0]}").execute(VOLUMES)


def test_comparing_text_with_a_number_is_an_error_not_a_silent_miss() -> None:
    with pytest.raises(JsonPathExecError, match="incompatible types for comparison"):
        parse("{.items[?(@.status.phase>3)]}").execute(VOLUMES)


@pytest.mark.parametrize(("given", "path"), [(".metadata.name", "{.metadata.name}"), ("metadata.name", "{.metadata.name}"),
                                             ("{.metadata.name}", "{.metadata.name}"), ("{metadata.name}", "{.metadata.name}")])
def test_relaxed_paths_are_kubectls_shorthand(given: str, path: str) -> None:
    assert relaxed(given) == path


# --- -o parsing -------------------------------------------------------------------------------


def test_an_unsupported_jsonpath_is_kubectls_parse_error_line() -> None:
    with pytest.raises(VolctlError) as err:
        output_format("jsonpath={.items[?(@.a>)]}")
    assert err.value.line == 'error: error parsing jsonpath {.items[?(@.a>)]}, invalid filter expression "@.a>": a comparison needs a value on each side'


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("jsonpath", "error: template format specified but no template given"),
        ("custom-columns=", "error: custom-columns format specified but no custom columns given"),
        ("custom-columns=NAME", "error: unexpected custom-columns spec: NAME, expected <header>:<json-path-expr>"),
        ("go-template={{.kind}}", 'error: unable to match a printer suitable for the output format "go-template={{.kind}}", allowed formats are: '
                                  "custom-columns,custom-columns-file,json,jsonpath,jsonpath-as-json,jsonpath-file,name,wide,yaml"),
    ],
)
def test_bad_output_formats_are_kubectls_errors(output: str, line: str) -> None:
    with pytest.raises(VolctlError) as err:
        output_format(output)
    assert err.value.line == line


def test_the_template_may_come_from_a_file_or_from_template(tmp_path: Path) -> None:
    path = tmp_path / "names.jsonpath"
    path.write_text("{.items[*].metadata.name}")
    by_file = output_format(f"jsonpath-file={path}")
    by_flag = output_format("jsonpath", template="{.items[*].metadata.name}")
    assert by_file.template is not None and by_flag.template is not None
    assert by_file.template.execute(VOLUMES) == by_flag.template.execute(VOLUMES) == "pv-a pv-b"
    assert output_format("=json").name == "json"  # -o=json


# --- custom columns, --no-headers, tables -----------------------------------------------------------

KIND = resolve("pv")


def test_custom_columns_print_a_header_and_none_for_missing_values() -> None:
    fmt = output_format("custom-columns=NAME:.metadata.name,CLAIM:.spec.claimRef.name,MODES:.spec.accessModes[*]")
    out = render([(KIND, VOLUMES["items"])], fmt, single=False)
    assert out.splitlines() == ["NAME   CLAIM    MODES", "pv-a   data     ReadWriteOnce", "pv-b   <none>   ReadWriteOnce"]


def test_custom_columns_of_several_values_are_comma_separated() -> None:
    obj = pv("x", "1Gi", accessModes=["ReadWriteOnce", "ReadOnlyMany"])
    out = render([(KIND, [obj])], output_format("custom-columns=M:.spec.accessModes[*],C:.spec.capacity"), single=True)
    assert out.splitlines()[1].split() == ["ReadWriteOnce,ReadOnlyMany", "map[storage:1Gi]"]


def test_custom_columns_file_is_a_line_of_headers_and_a_line_of_paths(tmp_path: Path) -> None:
    path = tmp_path / "cols"
    path.write_text("NAME      SIZE\n.metadata.name   {.spec.capacity.storage}\n")
    out = render([(KIND, VOLUMES["items"])], output_format(f"custom-columns-file={path}"), single=False)
    assert out.splitlines() == ["NAME   SIZE", "pv-a   1Gi", "pv-b   10Gi"]
    path.write_text("NAME SIZE\n.metadata.name\n")
    with pytest.raises(VolctlError, match=r"number of headers \(2\) and field specifications \(1\) don't match"):
        output_format(f"custom-columns-file={path}")


def test_no_headers_drops_the_header_of_tables_and_custom_columns() -> None:
    table = render([(KIND, VOLUMES["items"])], output_format("", no_headers=True), single=False, now=NOW)
    assert [line.split()[0] for line in table.splitlines()] == ["pv-a", "pv-b"]
    cols = render([(KIND, VOLUMES["items"])], output_format("custom-columns=N:.metadata.name", no_headers=True), single=False)
    assert cols == "pv-a\npv-b\n"


def test_no_headers_leaves_no_blank_line_between_kinds() -> None:
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "default"}, "spec": {}}
    out = render([(KIND, VOLUMES["items"][:1]), (resolve("pvc"), [claim])], output_format("", no_headers=True), single=False, with_kind=True, now=NOW)
    assert [line.split()[0] for line in out.splitlines()] == ["persistentvolume/pv-a", "persistentvolumeclaim/data"]


def test_jsonpath_output_adds_no_newline_and_a_named_object_is_given_bare() -> None:
    fmt = output_format("jsonpath={.metadata.name}")
    assert render([(KIND, VOLUMES["items"][:1])], fmt, single=True) == "pv-a"
    assert render([(KIND, VOLUMES["items"])], output_format("jsonpath={.kind}"), single=False) == "List"


def test_an_execution_error_says_which_template_failed() -> None:
    with pytest.raises(VolctlError) as err:
        render([(KIND, VOLUMES["items"])], output_format("jsonpath={.items[7]}"), single=False)
    assert err.value.line.startswith('error: error executing jsonpath "{.items[7]}": Error executing template: array index out of bounds: index 7, length 2.')


# --- --sort-by ----------------------------------------------------------------------------------


def names(objs: list[Obj]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_sort_by_a_quantity_compares_amounts_not_text() -> None:
    objs = [pv("ten", "10Gi"), pv("half", "512Mi"), pv("two", "2Gi"), pv("milli", "1500m")]
    assert names(sort_objects(objs, ".spec.capacity.storage")) == ["milli", "half", "two", "ten"]


def test_sort_by_text_is_natural_order() -> None:
    objs = [pv("pv-10", "1Gi"), pv("pv-9", "1Gi"), pv("pv-1", "1Gi"), pv("alpha", "1Gi")]
    assert names(sort_objects(objs, "{.metadata.name}")) == ["alpha", "pv-1", "pv-9", "pv-10"]
    assert natural_less("a2", "a10") and not natural_less("a10", "a2") and natural_less("a", "ab")


def test_sort_by_numbers_and_missing_fields_first() -> None:
    objs = [{"metadata": {"name": n}, "spec": s} for n, s in (("three", {"n": 3}), ("none", {}), ("twelve", {"n": 12}), ("one", {"n": 1}))]
    assert names(sort_objects(objs, ".spec.n")) == ["none", "one", "three", "twelve"]


def test_sort_is_stable_for_equal_values() -> None:
    objs = [pv("b", "1Gi"), pv("a", "1Gi"), pv("c", "1Gi")]
    assert names(sort_objects(objs, ".spec.capacity.storage")) == ["b", "a", "c"]


def test_a_field_no_object_has_is_kubectls_error() -> None:
    with pytest.raises(VolctlError) as err:
        sort_objects([pv("a", "1Gi")], ".spec.nope")
    assert err.value.line == "error: couldn't find any field with path \"{.spec.nope}\" in the list of objects"


def test_values_kubectl_cannot_order_are_an_error() -> None:
    with pytest.raises(VolctlError, match="unsortable type: map"):
        sort_objects([pv("a", "1Gi"), pv("b", "2Gi")], ".spec.capacity")
    with pytest.raises(VolctlError, match="unsortable"):
        sort_objects([{"v": 1}, {"v": "x"}], ".v")


def test_a_sort_path_that_does_not_parse_is_an_error() -> None:
    with pytest.raises(VolctlError, match="error: sorting error: invalid array index name"):
        sort_template(".metadata[name]")


def test_quantities_parse_exactly() -> None:
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1e3") == parse_quantity("1k") == 1000
    assert parse_quantity("10GB") is None and parse_quantity("") is None


def test_the_table_sorts_within_each_kind_and_other_formats_sort_the_whole_list() -> None:
    objs = [pv("b", "10Gi"), pv("a", "1Gi")]
    table = render([(KIND, objs)], output_format("", no_headers=True), single=False, sort_by=sort_template(".metadata.name"), now=NOW)
    assert [line.split()[0] for line in table.splitlines()] == ["a", "b"]
    assert render([(KIND, objs)], output_format("name"), single=False, sort_by=sort_template(".spec.capacity.storage")) == \
        "persistentvolume/a\npersistentvolume/b\n"


# --- get -w -----------------------------------------------------------------------------------------


def test_watch_prints_the_header_once_and_keeps_columns_aligned_across_changes() -> None:
    stream = Stream(output_format(""), KIND, clock=lambda: NOW)
    first = stream.write([("ADDED", pv("a", "1Gi"))]).splitlines()
    later = stream.write([("MODIFIED", pv("a", "1Gi", "Bound"))]).splitlines()
    assert first[0].startswith("NAME   CAPACITY") and len(first) == 2 and len(later) == 1
    assert later[0].index("Bound") == first[0].index("STATUS")  # the change lines up under the header


def test_watch_only_prints_the_header_with_the_first_change() -> None:
    stream = Stream(output_format("custom-columns=NAME:.metadata.name,PHASE:.status.phase"), KIND)
    assert stream.write([]) == ""
    assert stream.write([("MODIFIED", pv("a", "1Gi", "Bound"))]) == "NAME   PHASE\na      Bound\n"
    assert stream.write([("DELETED", pv("a", "1Gi", "Released"))]) == "a      Released\n"


def test_watch_events_add_an_event_column_or_wrap_the_object() -> None:
    table = Stream(output_format("", no_headers=True), KIND, events=True, clock=lambda: NOW)
    assert table.write([("DELETED", pv("a", "1Gi"))]).split()[:2] == ["DELETED", "a"]
    path = Stream(output_format('jsonpath={.type} {.object.metadata.name}{"\\n"}'), KIND, events=True)
    assert path.write([("ADDED", pv("a", "1Gi")), ("MODIFIED", pv("a", "1Gi"))]) == "ADDED a\nMODIFIED a\n"


def test_watch_as_yaml_separates_documents() -> None:
    stream = Stream(output_format("yaml"), KIND)
    text = stream.write([("ADDED", pv("a", "1Gi"))]) + stream.write([("MODIFIED", pv("a", "2Gi"))])
    assert text.count("---\n") == 1 and text.index("---") > text.index("name: a")


def test_remembered_widths_only_grow() -> None:
    out = Aligned()
    assert out.lines([["NAME", "STATUS"], ["a", "Bound"]]) == ["NAME   STATUS", "a      Bound"]
    assert out.lines([["a-longer-name", "Lost"]]) == ["a-longer-name   Lost"]
    assert out.lines([["b", "Bound"]]) == ["b               Bound"]


# --- wait --for=jsonpath ----------------------------------------------------------------------------


def test_wait_for_a_jsonpath_filter_value() -> None:
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "VolumesReady", "status": "False"}]}}
    cond = condition('jsonpath={.status.conditions[?(@.type=="VolumesReady")].status}=True')
    assert not cond.met(pod)
    pod["status"]["conditions"][1]["status"] = "True"
    assert cond.met(pod)
    assert condition("jsonpath=.status.conditions").met({"status": {"conditions": []}})  # no value: any value found will do


def test_wait_for_an_unsupported_jsonpath_fails_at_once_instead_of_timing_out() -> None:
    with pytest.raises(VolctlError) as err:
        condition("jsonpath={.status.phase | lower}=bound")
    assert err.value.line == "error: error parsing jsonpath {.status.phase | lower}, unrecognized character in action: U+007C '|'"


def test_wait_for_a_jsonpath_that_finds_a_map_is_kubectls_error() -> None:
    cond = condition("jsonpath={.status}=Bound")
    with pytest.raises(VolctlError, match="jsonpath leads to a nested object or list which is not supported"):
        cond.met({"status": {"phase": "Bound"}})
