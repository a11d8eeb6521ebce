"""Finding and ending the processes of one sandbox, from outside it.

Every process of a sandbox descends from bubblewrap's PID-namespace init (orphans are reparented
to it, never to the host), so that init's descendants are the whole sandbox, and killing the init
makes the kernel kill everything else in the namespace.
"""

from __future__ import annotations

import _signal  # signal.py's enums cost start-up time
import contextlib
import os


def descendants(pid: int, threads: bool = False) -> list[int]:
    """Children first-level to leaves, read from /proc (cheap), psutil as the fallback.

    `threads`: every thread of them too (exec records: a thread whose group leader has exited
    still holds the memory its zombie leader no longer names; see supervise/exec_events.py)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            children: list[int] = []
            tasks = _threads(current)
            if threads and current != pid and len(tasks) > 1:
                found += [int(task) for task in tasks if int(task) != current]
            for task in tasks:
                fd = os.open(f"/proc/{current}/task/{task}/children", os.O_RDONLY | os.O_CLOEXEC)
                try:  # os-level reads: this runs for every exec record (supervise/exec_events.py)
                    children += [int(c) for c in b"".join(iter(lambda fd=fd: os.read(fd, 65536), b"")).split()]
                finally:
                    os.close(fd)
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


def _threads(pid: int) -> list[int] | list[str]:
    """The process's threads, whose `children` files name its children: the process alone when
    its stat counts one thread (3 system calls, not a directory listing's 5 — this runs for every
    process of the sandbox at every exec of a run without a cgroup). A count of 1 is the leader
    itself: a leader that exits before its other threads stays a counted zombie."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        line = os.read(fd, 8192)
    finally:
        os.close(fd)
    try:
        if int(line.rsplit(b")", 1)[1].split()[17]) == 1:
            return [pid]
    except (IndexError, ValueError):
        pass
    return os.listdir(f"/proc/{pid}/task")


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
        os.kill(init_pid, _signal.SIGKILL)


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


def socket_owner(init_pid: int, local_port: int) -> int | None:
    """Which sandboxed process holds the TCP socket bound to this loopback port (the client end of
    a proxy connection): its inode from the sandbox's /proc/net/tcp, then whose fd points at it."""
    wanted = f":{local_port:04X}"
    inode = None
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{init_pid}/net/{table}") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 9 and fields[1].endswith(wanted):
                        inode = fields[9]
                        break
        except OSError:
            continue
        if inode:
            break
    if not inode or inode == "0":
        return None
    link = f"socket:[{inode}]"
    for pid in descendants(init_pid):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                        return pid
        except OSError:
            continue
    return None
