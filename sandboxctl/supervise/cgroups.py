"""Per-run cgroups for the pids and memory limits, where this user may create them.

RLIMIT_NPROC does not bind uid 0 (the kernel exempts root), and RLIMIT_AS limits address space,
not memory; a cgroup does both properly, and its OOM kill gives exit 137 as SPEC says. We use
one when the cgroup tree is writable (root, or a delegated cgroup v2 subtree) and fall back to
rlimits otherwise; the plan and the log say which.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

from sandboxctl.record import Record
from sandboxctl.supervise.processes import alive, descendants

ROOT = "/sys/fs/cgroup"
PREFIX = "sandboxctl-"


class CgroupLayout(Record):
    """Where a run's cgroup directories go, per controller (v1) or once (v2)."""

    version: str  # v1 | v2
    parents: dict[str, str]  # controller -> directory to create the run's cgroup in


def _own_paths() -> dict[str, str]:
    paths = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as handle:
        for line in handle:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else ["unified"]:
                paths[name] = path
    return paths


def detect() -> CgroupLayout | None:
    """Which writable cgroup layout serves pids and memory limits here, if any."""
    own = _own_paths()
    if os.path.exists(f"{ROOT}/cgroup.controllers"):  # pure v2
        parent = os.path.normpath(ROOT + own.get("unified", "/"))
        try:
            with open(f"{parent}/cgroup.controllers") as handle:
                available = set(handle.read().split())
        except OSError:
            return None
        if {"pids", "memory"} <= available and os.access(parent, os.W_OK) \
                and os.access(f"{parent}/cgroup.subtree_control", os.W_OK):
            return CgroupLayout("v2", {"pids": parent, "memory": parent})
        return None
    parents = {}
    for controller in ("pids", "memory"):
        parent = os.path.normpath(f"{ROOT}/{controller}" + own.get(controller, "/"))
        if os.path.isdir(parent) and os.access(parent, os.W_OK):
            parents[controller] = parent
    return CgroupLayout("v1", parents) if len(parents) == 2 else None


class RunCgroup:
    """The cgroup(s) of one run: created before the command starts, removed after the run."""

    def __init__(self, layout: CgroupLayout, run_id: str, pids: int | None, memory: int | None):
        self.layout = layout
        self.dirs: list[str] = []
        self._mover = None  # move_soon's thread
        self._move_error: Exception | None = None
        self._switch_interval = 0.005
        self._listing_dir: int | None = None  # threads(): an O_PATH descriptor of dirs[0], opened at its first use
        self._listing_lock = threading.Lock()  # threads() and remove(): never an open through a closed number
        self.name = f"{PREFIX}{os.getpid()}-{run_id}"  # the pid tells a later sweep whether we are gone
        _sweep_stale(layout)
        if layout.version == "v2":
            parent = layout.parents["pids"]
            _write(f"{parent}/cgroup.subtree_control", "+pids +memory")
            os.mkdir(f"{parent}/{self.name}", 0o755)
            self.dirs.append(f"{parent}/{self.name}")
        else:
            for parent in layout.parents.values():
                os.mkdir(f"{parent}/{self.name}", 0o755)
                self.dirs.append(f"{parent}/{self.name}")
        self.limit(pids, memory)

    def limit(self, pids: int | None, memory: int | None) -> None:
        """Write the run's limits (at creation, or into the cgroup a head start made: before its
        command may start, which is all that the early sandbox ever holds)."""
        layout, name = self.layout, self.name
        if layout.version == "v2":
            path = f"{layout.parents['pids']}/{name}"
            if pids:
                _write(f"{path}/pids.max", str(pids))
            if memory:
                _write(f"{path}/memory.max", str(memory))
                with contextlib.suppress(OSError):
                    _write(f"{path}/memory.swap.max", "0")
        else:
            if pids:
                _write(f"{layout.parents['pids']}/{name}/pids.max", str(pids))
            if memory:
                base = f"{layout.parents['memory']}/{name}"
                _write(f"{base}/memory.limit_in_bytes", str(memory))
                with contextlib.suppress(OSError):
                    _write(f"{base}/memory.memsw.limit_in_bytes", str(memory))

    def add(self, pids: list[int]) -> int:
        """Move the sandbox's processes in; one that cannot join (and still lives) stops the run.
        A process the kernel lists in the cgroup already is not written again: each write takes
        the kernel's cgroup lock for writing, and the first one after a quiet while waits for an
        RCU grace period (~10 ms here) — on the path to the command's start, at "ready". Returns
        how many were written."""
        from sandboxctl.errors import SandboxError

        written = 0
        for path in self.dirs:
            inside = _members(path)
            for pid in pids:
                if pid in inside:
                    continue
                written += 1
                try:
                    _write(f"{path}/cgroup.procs", str(pid))
                except ProcessLookupError:
                    continue
                except OSError as exc:
                    if os.path.exists(f"/proc/{pid}"):
                        raise SandboxError(f"cannot move the sandbox into its cgroup ({path}): {exc.strerror}",
                                           "the pids/memory limits could not be applied; run sandboxctl doctor"
                                           ) from None
        return written

    def move_soon(self, pid: int) -> None:
        """Start moving `pid` on a thread of its own: the kernel makes the first cgroup.procs write
        of a while wait for an RCU grace period (5-15 ms on cgroup v1 here), which then overlaps
        the sandbox's start; moved() waits for it. A later add() finds the lock warm."""
        if self._mover is not None:
            return
        import sys
        import threading

        def move() -> None:
            try:
                self.add([pid])
                # what bubblewrap forked while that first move waited was born outside: moved
                # now, while the kernel's lock is warm (µs each), so that the move at "ready"
                # finds every process in and writes nothing (handshake.py); what the moved
                # processes fork from now on is born inside
                for _ in range(3):
                    if not self.add(descendants(pid)):
                        break
            except Exception as exc:  # SandboxError: reported by moved()
                self._move_error = exc

        # after each system call the thread needs the GIL back while the main thread imports:
        # within 0.5 ms instead of the default 5 (restored by moved())
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, 0.0005))
        self._mover = threading.Thread(target=move, name="sandboxctl-cgroup", daemon=True)
        self._mover.start()

    def moved(self) -> None:
        """Wait for move_soon; its failure is raised here."""
        if self._mover is None:
            return
        import sys

        self._mover.join()
        self._mover = None
        sys.setswitchinterval(self._switch_interval)
        error, self._move_error = self._move_error, None
        if error is not None:
            raise error

    @property
    def moving(self) -> bool:
        return self._mover is not None

    def threads(self) -> list[int]:
        """Every thread of the run, in one read (the kernel keeps the list: children join at
        fork; cgroup v2 names it cgroup.threads, v1 tasks).

        The list file is opened afresh each time (cgroup v1 keeps a loaded list for a second and
        hands it to a reader of a descriptor held open, so only a fresh open is the list now),
        but from a descriptor of the run's own directory, held from the first call to remove():
        the walk of /sys/fs/cgroup/… was a third of the open, twice per exec. The directory is
        the supervisor's own (made by it, not visible in the sandbox), so it names the same
        cgroup the path does until remove()."""
        name = "cgroup.threads" if self.layout.version == "v2" else "tasks"
        with self._listing_lock:  # remove() on another thread closes it: that number may name anything next
            where = self._listing_dir
            if where is None:
                if self._removed:  # never opened again: the listener walks the process tree instead
                    raise FileNotFoundError(errno.ENOENT, "the run's cgroup was removed", self.dirs[0])
                where = self._listing_dir = os.open(self.dirs[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=where)
        try:  # read to the end (a seq_file may stop short of it), with no per-read Python call
            data = os.read(fd, 65536)
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        return list(map(int, data.split()))  # this runs at every exec (supervise/exec_events.py)

    def oom_killed(self) -> bool:
        for path in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                with contextlib.suppress(OSError), open(f"{path}/{name}") as handle:
                    for line in handle:
                        field, _, value = line.partition(" ")
                        if field == key and int(value or 0) > 0:
                            return True
        return False

    _removed = False

    def remove(self) -> None:
        with self._listing_lock:  # after a listing under way has its own descriptor of the list
            where, self._listing_dir = self._listing_dir, None
            self._removed = True
            if where is not None:
                os.close(where)
        for path in self.dirs:
            for _ in range(50):  # tasks of a killed namespace take a moment to leave
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _members(path: str) -> set[int]:
    """The processes the kernel lists in one cgroup directory (none when it cannot be read)."""
    try:
        fd = os.open(f"{path}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return set()
    try:
        data = os.read(fd, 65536)
        while chunk := os.read(fd, 65536):
            data += chunk
    except OSError:
        return set()
    finally:
        os.close(fd)
    return set(map(int, data.split()))


def _write(path: str, value: str) -> None:
    """One write(2) of the value, as the kernel wants for cgroup files (no buffered file object:
    each system call is a point where a thread must win the GIL back, see runner's cgroup thread)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _sweep_stale(layout: CgroupLayout) -> None:
    """Remove cgroups left by supervisors that were killed (never a live run's, even an empty one)."""
    for parent in set(layout.parents.values()):
        with contextlib.suppress(OSError):
            for entry in os.listdir(parent):
                owner = entry.removeprefix(PREFIX).split("-", 1)[0]
                if not entry.startswith(PREFIX) or not owner.isdigit() or alive(int(owner)):
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(f"{parent}/{entry}")

