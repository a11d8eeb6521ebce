"""Who else shares an exec caller's memory, and whether a vfork parent that does is excused.

Part of ExecEvents (exec_events.py, whose docstring says what `verified` means): the sandbox's
threads are listed and each compared with the caller by kcmp (its memory; its working directory
or descriptor table when the path depends on them). The one sharer excused is the parent that
vfork()ed the caller and waits, blocked, for this exec — and only while a listing after the
checks brings nothing new and the parent has not run since it was excused. A shell vforks every
command, so such a parent's stat, syscall and schedstat files stay open from one exec to the next.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

from sandboxctl.supervise import exec_facts as facts
from sandboxctl.supervise import exec_sharing

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable

CLONE_VM, CLONE_VFORK = 0x100, 0x4000
KCMP_VM, KCMP_FILES, KCMP_FS = 1, 2, 3  # include/uapi/linux/kcmp.h
VFORK_BLOCK_LOOKS = 3  # looks at a vfork parent's state before it counts as running
MAX_LISTINGS = 4  # listings of the sandbox's processes per exec while a vfork parent is excused
MAX_PARENTS = 8  # vfork parents whose stat, syscall and schedstat files are held open (three descriptors each)


class Sharers:
    """kcmp against the sandbox's threads, vfork parents excused (a mixin of ExecEvents: its
    `tasks`, `_kcmp_nr`, `_vfork_calls`, `parents` and `_blocked_since` are set there)."""

    tasks: Callable[[], list[int]]
    _kcmp_nr: int | None
    _vfork_calls: dict[int, str]
    parents: OrderedDict[int, tuple[int, int, int]]
    _blocked_since: dict[int, bytes]

    def _sharer(self, pid: int, own: int, kinds: list[int], parent: int = 0) -> str | None:
        """Another process sharing what the call's read depends on, or None.

        A sharer is excused only while it waits, blocked, in a vfork. But a process it vforked
        is a sharer that runs: one made after our listing (the excused process may have vforked
        it while we looked, and be waiting for it rather than for the caller) would be missed. So
        once anything is excused the sandbox's processes are listed again, and every new one is
        judged too, until a listing brings nothing new (a blocked vfork parent's child exists
        before it blocks, so a stable listing after the checks holds every such child).

        Nor does a parent blocked in a vfork wait for this caller just because the caller is its
        child: it may have made the caller with clone(CLONE_VM) and vforked another child since,
        which exits while we look (its kcmp then finds no memory), and the parent wakes and
        writes (proven). So an excused parent is looked at once more after the last listing
        (_excused_still_blocked): still blocked, and not run at all since it was excused. Its
        vforked child was then alive throughout, so in the last listing, and judged: unless it
        is the caller, the caller is not verified. The caller's exec is what wakes the parent."""
        self._blocked_since.clear()
        try:
            others = self.tasks()
        except OSError as exc:
            return f"the sandbox's processes could not be listed ({exc.strerror})"
        kcmp = exec_sharing.kcmp()
        seen: set[int] = set()
        for _listing in range(MAX_LISTINGS):
            excused = False
            for other in others:
                if other == own or other in seen:
                    continue
                seen.add(other)
                for kind in kinds:
                    result = kcmp(self._kcmp_nr, pid, other, kind, 0, 0)
                    if result == 0:
                        if kind == KCMP_VM and self._waits_for_vfork(other, pid, parent):
                            excused = True
                            continue
                        what = {KCMP_VM: "memory", KCMP_FS: "working directory", KCMP_FILES: "descriptor table"}[kind]
                        return f"process {other} shares the caller's {what}"
                    if result < 0 and os.path.exists(f"/proc/{other}"):
                        return f"kcmp against process {other} failed"
            if not excused and not self._blocked_since:
                return None
            try:
                others = [other for other in self.tasks() if other not in seen and other != own]
            except OSError as exc:
                return f"the sandbox's processes could not be listed ({exc.strerror})"
            if not others:
                return self._excused_still_blocked()
        return "the processes sharing the caller's memory kept changing while they were examined"

    def _excused_still_blocked(self) -> str | None:
        """Every parent excused in this exec's checks is still blocked and has not run since
        (/proc/PID/schedstat: its run time and the times it was scheduled; read after its state,
        so a run in between shows), or why not."""
        for parent, since in self._blocked_since.items():
            held = self.parents.get(parent)
            try:
                if held is None:
                    raise OSError(errno.ESRCH, "gone")
                stat_line = facts.pread_line(held[0])
                sched_line = facts.pread_line(held[2])
            except OSError:
                return f"the vfork parent {parent} could not be looked at again"
            if stat_line.rsplit(b")", 1)[1].split()[:1] != [b"D"] or sched_line != since:
                return f"the vfork parent {parent} ran while the exec was examined (it may wait for another child)"
        return None

    def _waits_for_vfork(self, parent: int, child: int, child_parent: int = 0) -> bool:
        """Every thread of `parent` is either the one that vfork()ed `child` and now waits for its
        exec (the kernel holds it until the exec has copied the arguments) — or there is none
        other. Any other thread could run and write the shared memory. `child_parent`: the
        child's ppid as its stat said (its parent's only thread then lists it as its child).

        The threads are counted from /proc/PID/stat (one read, not a directory listing): a count
        of 1 is the thread group leader itself, as a leader that exits before its other threads
        stays a zombie and counted until the last of them is gone."""
        for attempt in range(VFORK_BLOCK_LOOKS):
            lines = self._parent_files(parent)
            if lines is None:
                return False
            stat_line, syscall_line, sched_line = lines
            try:
                fields_after_name = stat_line.rsplit(b")", 1)[1].split()
                threads = int(fields_after_name[17])
            except (IndexError, ValueError):
                return False
            if threads != 1:
                return False
            # blocked ('D': wait_for_vfork_done is a killable, uninterruptible wait), so past
            # making its child: one still running in clone() may not have made it yet. A real
            # vfork parent blocks a moment after its child starts: look again, yielding
            if fields_after_name[0] == b"D":
                break
            if attempt + 1 == VFORK_BLOCK_LOOKS:
                return False
            os.sched_yield()
        try:
            if child_parent != parent and str(child).encode() not in facts.read_proc(
                    f"/proc/{parent}/task/{parent}/children").split():
                return False
        except OSError:
            return False
        fields = syscall_line.decode().split()
        if not fields or not fields[0].isdigit() or int(fields[0]) not in self._vfork_calls:
            return False
        if self._vfork_calls[int(fields[0])] != "vfork":
            clone_flags = int(fields[1], 16) if len(fields) > 1 else 0
            if clone_flags & (CLONE_VM | CLONE_VFORK) != CLONE_VM | CLONE_VFORK:
                return False
        self._blocked_since[parent] = sched_line  # read before the 'D': looked at again at the end
        return True

    def _parent_files(self, parent: int) -> tuple[bytes, bytes, bytes] | None:
        """`parent`'s /proc/PID/stat, /proc/PID/task/PID/syscall and /proc/PID/schedstat, now, or
        None if unreadable (schedstat first: a run after it changes it; a kernel without
        CONFIG_SCHED_INFO has none, and excuses nobody).

        A shell vforks every command it runs, so the same parent is looked at exec after exec:
        its two files stay open (at most MAX_PARENTS parents), and each look is one pread of
        each from offset 0, which makes the kernel show the file afresh. A held descriptor names
        that very process, never a later one given its pid: once the process is gone its reads
        fail (ESRCH), and the files are opened again by number, as on a first look."""
        for _attempt in (0, 1):
            held = self.parents.get(parent)
            if held is None:
                try:
                    stat_fd = os.open(f"/proc/{parent}/stat", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
                try:
                    syscall_fd = os.open(f"/proc/{parent}/task/{parent}/syscall", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    os.close(stat_fd)
                    return None
                try:
                    sched_fd = os.open(f"/proc/{parent}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    os.close(stat_fd)
                    os.close(syscall_fd)
                    return None
                held = self.parents[parent] = (stat_fd, syscall_fd, sched_fd)
                while len(self.parents) > MAX_PARENTS:
                    self._forget_parent(next(iter(self.parents)))
            else:
                self.parents.move_to_end(parent)
            try:
                sched_line = facts.pread_line(held[2])
                return facts.pread_line(held[0]), facts.pread_line(held[1]), sched_line
            except OSError:
                self._forget_parent(parent)  # gone (or its pid now another's): open by number again
        return None

    def _forget_parent(self, parent: int) -> None:
        for fd in self.parents.pop(parent, ()):
            os.close(fd)
