"""The short scheduler slice (supervise/latency.py) is the supervisor's alone.

Judged from outside, in /proc/PID/sched: while a run is up, the supervisor's loop thread has the
0.1 ms slice, and the sandboxed command has the kernel's default, as it would anywhere else.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from sandboxctl.supervise import latency


def _kernel() -> tuple[int, ...]:
    return tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])


def _slice(path: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("se.slice"):
                    return int(line.split(":")[1])
    except OSError:
        return None
    return None


def _pid_of(argv: bytes) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read() == argv:
                        return int(entry)
            except OSError:
                continue
    return None


@pytest.mark.skipif(_kernel() < (6, 12), reason="a fair task's own slice (sched_runtime) is Linux 6.12")
def test_only_the_supervisor_runs_with_the_short_slice(sandbox):
    marker = "9.16180"
    run = subprocess.Popen(sandbox.argv("--", "sleep", marker), cwd=sandbox.workspace, env=sandbox.env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        command = supervisor = None
        while time.monotonic() < deadline:
            command = command or _pid_of(b"sleep\0" + marker.encode() + b"\0")
            supervisor = _slice(f"/proc/{run.pid}/task/{run.pid}/sched")
            if command and supervisor == latency.SLICE_NS:
                break
            time.sleep(0.05)
        assert command, "the sandboxed sleep never appeared"
        assert supervisor == latency.SLICE_NS
        theirs = _slice(f"/proc/{command}/sched")
        assert theirs is not None and theirs != latency.SLICE_NS
    finally:
        run.terminate()  # forwarded to the command: the run ends as any interrupted run
        try:
            run.wait(15)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
