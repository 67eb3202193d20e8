"""What both chaos suites share: the kill and the restart, host checks, a table cell."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import grpc

from devstack.launcher import Stack

# Codes a caller retries on: the service or the log was away, or another call held the volume.
RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass
class Cell:
    volumes: int = 0
    converged: int = 0
    hit: int = 0
    problems: list[str] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)  # per trial: kill → every volume where it should be, s

    def text(self) -> str:
        median = sorted(self.recovery)[len(self.recovery) // 2] if self.recovery else 0.0
        return f"{self.converged}/{self.volumes} ({self.hit} hit, {median:.1f} s)"


def _losetup() -> list[str]:
    return subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True).stdout.splitlines()


def loops_of(volume_id: str) -> list[str]:
    return [line for line in _losetup() if f"{volume_id}.img" in line] if volume_id else []


def leaked_loops(stack: Stack) -> list[str]:
    return [line for line in _losetup() if str(stack.run_dir) in line]


def kill(stack: Stack, victim: str) -> None:
    if victim == "nats-server" and stack.nats is not None:
        stack.nats.stop(kill=True)
    elif victim == "redis-server" and stack.redis is not None:
        stack.redis.stop(kill=True)
    else:
        stack.stop_service(victim, kill=True)


def restart(stack: Stack, victim: str) -> None:
    if victim == "nats-server" and stack.nats is not None:
        stack.nats.start()
    elif victim == "redis-server" and stack.redis is not None:
        stack.redis.start()
    else:
        stack.start_service(victim)
    stack.wait_healthy(stack.services, timeout=90)
