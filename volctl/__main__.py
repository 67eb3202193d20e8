"""``volctl`` / ``python -m volctl``: run one command, turn every failure into
one line on stderr and an exit status.

    main(["get", "pv"])    # exits 0, or 1 after printing e.g. "Error from server (NotFound): ..."
"""

from __future__ import annotations

import os
import sys

import typer

try:  # typer ≥ 0.20 carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as cx  # type: ignore[no-redef]  # the same names, from the other module

from volctl.cli import app
from volctl.client import VolctlError

__all__ = ["main"]


def _run(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="volctl", standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        print(exc.format_message())
        return 0
    except cx.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except VolctlError as exc:
        print(exc.line, file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = _run(argv)
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, and keep Python's exit-time
        # flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:  # a traceback is never volctl's answer
        if os.environ.get("VOLCTL_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (VOLCTL_DEBUG=1 shows where)", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
