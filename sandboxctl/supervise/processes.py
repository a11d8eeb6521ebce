"""Finding and ending the processes of one sandbox, from outside it.

Every process of a sandbox descends from bubblewrap's PID-namespace init (orphans are reparented
to it, never to the host), so that init's descendants are the whole sandbox, and killing the init
makes the kernel kill everything else in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal


def descendants(pid: int) -> list[int]:
    """Children first-level to leaves, read from /proc (cheap), psutil as the fallback."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            children: list[int] = []
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    children += [int(c) for c in handle.read().split()]
        except FileNotFoundError:
            continue
        except OSError:
            import psutil

            try:
                children = [c.pid for c in psutil.Process(current).children()]
            except psutil.Error:
                continue
        found += children
        queue += children
    return found


def command_pids(init_pid: int) -> list[int]:
    """The direct children of the sandbox init: the command (and anything it left at top level)."""
    try:
        with open(f"/proc/{init_pid}/task/{init_pid}/children") as handle:
            return [int(c) for c in handle.read().split()]
    except OSError:
        return []


def signal_all(init_pid: int, signum: int) -> None:
    for pid in descendants(init_pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def kill_sandbox(init_pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(init_pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether a process exists (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def with_command_line(command_line: str) -> list[int]:
    """Host pids whose whole command line is exactly this (how tests and selftest judge that
    nothing survived a run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline == command_line:
            found.append(int(entry))
    return found


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll predicate until it holds or timeout passes (processes take a moment to appear or go)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
