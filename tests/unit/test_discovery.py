"""How tools find the running ``make run`` (``volplane.discovery``): its ``run/stack.json``,
unless NATS_URL / REDIS_URL name servers of your own; nothing, or a file its launcher left
when it died, is no stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from volplane import discovery
from volplane.discovery import NoStack, RunningStack


def _stack(pid: int | None = None) -> RunningStack:
    return RunningStack(nats_url="nats://admin:secret@127.0.0.1:4001", redis_url="redis://volplane:secret@127.0.0.1:4002/0", pid=pid or os.getpid())


def test_published_file_is_private_and_fills_in_the_unset_urls(tmp_path: Path) -> None:
    path = discovery.publish(tmp_path, _stack())
    assert path == tmp_path / "stack.json" and path.stat().st_mode & 0o777 == 0o600
    env = discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path), "HOME": "/root"})
    assert env["NATS_URL"] == "nats://admin:secret@127.0.0.1:4001"
    assert env["REDIS_URL"] == "redis://volplane:secret@127.0.0.1:4002/0"
    assert env["HOME"] == "/root"


def test_urls_of_your_own_win_over_the_stack(tmp_path: Path) -> None:
    discovery.publish(tmp_path, _stack())
    env = discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path), "NATS_URL": "nats://mine:4222"})
    assert env["NATS_URL"] == "nats://mine:4222" and env["REDIS_URL"].endswith("@127.0.0.1:4002/0")
    own = {"NATS_URL": "nats://mine:4222", "REDIS_URL": "redis://mine:6379/0", "VOLPLANE_RUN_DIR": str(tmp_path / "nowhere")}
    assert discovery.with_running_stack(own) == own


def test_no_file_is_no_stack_with_one_line_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NoStack) as info:
        discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path)})
    message = str(info.value)
    assert "\n" not in message and "make run" in message and str(tmp_path / "stack.json") in message


def test_a_file_whose_launcher_is_gone_is_no_stack(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    discovery.publish(tmp_path, _stack(pid=gone.pid))
    assert discovery.find(tmp_path) is None
    with pytest.raises(NoStack):
        discovery.with_running_stack({"VOLPLANE_RUN_DIR": str(tmp_path)})


def test_withdraw_removes_only_its_own_file(tmp_path: Path) -> None:
    discovery.publish(tmp_path, _stack(pid=1))
    discovery.withdraw(tmp_path)
    assert discovery.find(tmp_path) is not None  # pid 1's, not ours
    discovery.publish(tmp_path, _stack())
    discovery.withdraw(tmp_path)
    assert not (tmp_path / "stack.json").exists()


def test_a_damaged_file_is_no_stack(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text('{"nats_url": ')
    assert discovery.find(tmp_path) is None
