"""volctl's command line without a server: --help with examples on every command, shell
completion, and errors that need no server coming before any connection is tried."""

from __future__ import annotations

import pytest

from volctl import main

COMMANDS = ("apply", "get", "describe", "delete", "wait", "history")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_kubectl_style_examples(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"Usage: volctl {command} ")
    examples = lines[lines.index("Examples:") + 1 : lines.index("Options:")]
    assert any(line.startswith("  # ") for line in examples)
    assert any(line.startswith(f"  volctl {command} ") for line in examples)


def test_the_top_level_help_lists_commands_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Examples:" in out and "--install-completion" in out
    assert all(f"  {command} " in out for command in COMMANDS)


def test_bash_completion_script_calls_volctl_back(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--show-completion", "bash")
    assert code == 0 and "_VOLCTL_COMPLETE=complete_bash" in out and "complete -o default -F _volctl_completion volctl" in out


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (("get", "pvc", "-o", "jsonpath={.items[?(@.a>)]}"),
         'error: error parsing jsonpath {.items[?(@.a>)]}, invalid filter expression "@.a>": a comparison needs a value on each side'),
        (("get", "pvc", "-o", "custom-columns="), "error: custom-columns format specified but no custom columns given"),
        (("get", "pvc", "--sort-by=.metadata[name]"), "error: sorting error: invalid array index name"),
        (("get", "pvc", "--output-watch-events"), "error: --output-watch-events option can only be used with --watch or --watch-only"),
        (("wait", "pvc/a", "--for=jsonpath={.status.phase | lower}=bound"),
         "error: error parsing jsonpath {.status.phase | lower}, unrecognized character in action: U+007C '|'"),
    ],
)
def test_bad_templates_are_one_line_and_exit_1_before_connecting(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], line: str) -> None:
    # No server at this address: the error must come from the flags, not the connection.
    code, out, err = run(capsys, *argv, "--server", "unix:///nonexistent/api.sock")
    assert (code, out, err) == (1, "", line + "\n")
