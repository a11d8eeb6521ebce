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


def status_fields(pid: int, *wanted: str) -> dict[str, str]:
    """The last value of each wanted field of /proc/PID/status (the innermost PID namespace's, for
    NStgid and NSpid), read up to the last one wanted; {} when it cannot be read. One reader for
    the thread's leader (Tgid) and its ids in the sandbox's namespace (mediate_calls, mediate_walk,
    sandbox_paths: /proc/self and /proc/thread-self name those)."""
    found: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in wanted and value.split():
                    found[key] = value.split()[-1]
                    if len(found) == len(wanted):
                        break
    except OSError:
        return {}
    return found


def command_pids(init_pid: int) -> list[int]:
    """The direct children of the sandbox init: the command (and anything it left at top level)."""
    try:
        with open(f"/proc/{init_pid}/task/{init_pid}/children") as handle:
            return [int(c) for c in handle.read().split()]
    except OSError:
        return []


def running_child(pid: int) -> bool:
    """Whether our child `pid` still runs, without reaping it if it has exited (WNOWAIT): a reaped
    child's pid may be reused at once, and whoever signals it next by that number (HeadStart.abort)
    would signal another process."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def exited(pidfd: int) -> bool:
    """Whether the process a pidfd names has exited (its pidfd polls readable from then on)."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def send(pidfd: int | None, signum: int) -> None:
    """Signal the process a pidfd holds, never a number: a process the supervisor found by its pid
    may have exited and been reaped since, and its pid taken by another (a host process: the
    supervisor sees host pids, and may be root). None (no pidfd held): nothing is signalled."""
    if pidfd is None:
        return
    with contextlib.suppress(OSError):  # ESRCH: it has exited (and may be reaped) meanwhile
        _signal.pidfd_send_signal(pidfd, signum)


def first_child(parent: int, parent_pidfd: int) -> tuple[int, int] | None:
    """(pid, pidfd) of `parent`'s first child, proved its own: `parent` (one of ours, held by
    parent_pidfd) had not exited when its children were read, and the child opened is still
    among them after the pidfd was taken (else it exited meanwhile and its pid may be another's)."""
    children = command_pids(parent)
    if not children or exited(parent_pidfd):
        return None
    try:
        pidfd = os.pidfd_open(children[0])
    except OSError:
        return None
    if children[0] not in command_pids(parent) or exited(parent_pidfd):
        os.close(pidfd)
        return None
    return children[0], pidfd


def pid_namespace(pid: int, pidfd: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the PID namespace of the process `pidfd` holds, read while it lived."""
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return None if exited(pidfd) else (st.st_dev, st.st_ino)


NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2): the parent of a PID (or user) namespace
MAX_PID_NS_DEPTH = 33  # the kernel nests PID namespaces at most 32 deep


def _within(pid: int, namespace: tuple[int, int]) -> bool:
    """Whether the PID namespace `pid` is in is `namespace` or nested inside it (a sandboxed
    process that unshared one: `syscalls.allow: [unshare, clone]`), walking its parents with
    NS_GET_PARENT (EPERM past the top: the host's, or one outside ours)."""
    import fcntl

    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for _ in range(MAX_PID_NS_DEPTH):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == namespace:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def open_member(pid: int, namespace: tuple[int, int]) -> int | None:
    """A pidfd of `pid` only if the process it holds is in the sandbox's PID namespace or one
    nested inside it: the pidfd first, then its namespace, then proof that it has not exited (so
    /proc/PID was its own). A reused pid now naming a host process, or another sandbox's, is
    refused: neither namespace lies within this sandbox's."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if pid_namespace(pid, pidfd) != namespace and not (_within(pid, namespace) and not exited(pidfd)):
        os.close(pidfd)
        return None
    return pidfd


def signal_members(pids: list[int], namespace: tuple[int, int] | None, signum: int) -> None:
    """Signal each of `pids` that is a process of the sandbox (through a pidfd: a pid read from
    /proc a moment ago may be another process's by now), those in PID namespaces nested inside it
    included: a policy that allows unshare/clone lets the command make one, and its processes get
    the forwarded SIGTERM and the timeout's as the others do (an init of such a namespace, like any
    init, only takes the signals it handles)."""
    if namespace is None:
        return
    for pid in pids:
        pidfd = open_member(pid, namespace)
        if pidfd is not None:
            try:
                send(pidfd, signum)
            finally:
                os.close(pidfd)


def alive(pid: int) -> bool:
    """Whether a process exists (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/PID/stat field 22): with its pid,
    which process it is — a pid alone is another process's once it was reused (pid_max may be
    32 768). None: it cannot be read (gone, or hidden)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            line = handle.read()
        return int(line.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


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
