"""Exec events that match what ran, however the caller's memory is raced.

The supervisor reads the path and argv of a trapped execve from the caller's memory, then tells
the kernel to continue, and the kernel reads that memory again. Anything able to write the
memory in between (another thread, another process sharing it with CLONE_VM, a MAP_SHARED
mapping, a writer of /proc/PID/mem) could make the record name one file while another runs. So
each record says whether the read is provably what the kernel will use:

- `verified: true` when the caller is single-threaded, no other thread of the sandbox shares its
  memory (kcmp KCMP_VM against every thread, not only each process's leader: a leader that has
  exited is a zombie with no memory, while its other threads still hold the caller's; its
  cwd/fd table too when the path depends on them) except the parent
  that vfork()ed it and waits, blocked, for this exec; every byte read (path, argv array and
  strings) lies in a private mapping that nobody else can change (anonymous, or a read-only
  mapping of a file outside the writable set); opening /proc/PID/mem for writing is denied
  inside the sandbox (Dispatcher asks `refuses_open`); and ptrace and process_vm_writev are
  refused (the baseline's rule, unless the policy's `syscalls.allow` takes them out);
- otherwise `verified: false` with `unverified` saying why.

After the fact, where possible: at the next trapped call of the same process the supervisor
compares /proc/PID/exe (device and inode) with the file it resolved (the interpreter for a
script, whose name the kernel also puts in argv); a mismatch is a `tamper` event.

Failed lookups are not exec events: the supervisor resolves the path as the sandbox sees it, and
a path that certainly does not resolve (ENOENT/ENOTDIR, as every miss of a PATH search) or names
something that cannot be executed (a directory, no execute bit) is answered with that error by
the supervisor itself, so the kernel runs nothing and nothing is logged. Every exec record is of
a call handed to the kernel (`result: "continued"`): what is left for the kernel to refuse is
Landlock's exec.allow, a binary format it does not know, or a noexec mount, which the caller
sees as its own error (126 for the command of the run).

A call whose memory cannot be read (the supervisor short of descriptors, a fault) is refused and
logged as a `syscall` denial, never let through with a guessed record.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable

from sandboxctl.record import Record
from sandboxctl.supervise import exec_facts as facts
from sandboxctl.supervise import exec_sharing, notify, sandbox_paths
from sandboxctl.supervise.exec_sharers import (  # noqa: F401 - imported from here
    CLONE_VFORK,
    CLONE_VM,
    KCMP_FILES,
    KCMP_FS,
    KCMP_VM,
    MAX_LISTINGS,
    MAX_PARENTS,
    VFORK_BLOCK_LOOKS,
    Sharers,
)

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

AT_EMPTY_PATH = facts.AT_EMPTY_PATH
# per machine: kcmp, and the calls a vfork() parent waits in (clone3 is ENOSYS in the baseline)
_MACHINE = {"x86_64": (312, {56: "clone", 58: "vfork"}), "aarch64": (272, {220: "clone"})}
MAX_CLAIMS = 4096


class ExecTarget(Record):
    """What the supervisor resolved, to compare with /proc/PID/exe after the exec."""

    path: str  # as the caller asked (absolute)
    ident: tuple[int, int]  # (st_dev, st_ino) of the file
    kind: str  # elf | script | other | unknown
    expect: tuple[int, int] | None  # the file /proc/PID/exe should name: the ELF, or the script's interpreter
    interpreter: str | None  # a script's #! line, as the kernel will put it in argv
    previous: tuple[int, int] | None  # the caller's exe before the exec
    started: str  # /proc/PID/stat starttime: a reused pid is another process


def memory_writers(rules: Any) -> tuple[str, ...]:
    """The calls through which one process writes another's memory that the seccomp rules do
    not refuse outright (`syscalls.allow: [ptrace]` gives back ptrace and process_vm_writev;
    `[io_uring]` io_uring_setup, whose IORING_OP_OPENAT seccomp never sees, so /proc/PID/mem
    opens for writing past refuses_open): while any is allowed, no read of a caller's memory is
    provably what the kernel will read."""
    refused = {rule.syscall for rule in rules if not rule.conditions}
    return tuple(name for name in ("ptrace", "process_vm_writev", "io_uring_setup") if name not in refused)


class ExecEvents(Sharers):
    """Handles execve/execveat notifications for the Dispatcher and checks them afterwards."""

    def __init__(self, listener: int, log: Callable[..., None], denied: list[dict[str, Any]],
                 judge_write: Callable[[str], Any], tasks: Callable[[], list[int]],
                 tampered: list[dict[str, Any]] | None = None, memory_writes_trapped: bool = True,
                 log_soon: Callable[..., None] | None = None, memory_writers: tuple[str, ...] = (),
                 root: int | None = None):
        self.listener = listener
        self.log = log
        self.log_soon = log_soon or log  # the exec record, once the kernel has its answer (queued)
        self.denied = denied
        self.judge_write = judge_write  # sandbox path -> WriteVerdict (inside: writable in the sandbox)
        self.tasks = tasks  # host ids of every thread of the sandbox
        self.tampered = tampered if tampered is not None else []
        self.memory_writes_trapped = memory_writes_trapped  # write-intent opens reach refuses_open
        self.memory_writers = memory_writers  # calls the policy lets write another's memory (memory_writers())
        self.claims: OrderedDict[int, ExecTarget] = OrderedDict()
        machine = os.uname().machine
        self._kcmp_nr, self._vfork_calls = _MACHINE.get(machine, (None, {}))
        # the sandbox's root (owned), opened from its init by the supervisor (loop._sandbox_root); never
        # cached from a caller, whose pid may be another process's by the time /proc is read
        self.root: int | None = root
        self.formats = facts.Formats()
        # pid -> descriptors of its /proc/PID/stat, /proc/PID/task/PID/syscall and schedstat (_parent_files)
        self.parents: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        self._blocked_since: dict[int, bytes] = {}  # excused in this exec's checks: its schedstat then

    def close(self) -> None:
        if self.root is not None:
            os.close(self.root)
            self.root = None
        while self.parents:
            self._forget_parent(next(iter(self.parents)))

    def _root(self, pid: int) -> int | None:
        """The sandbox's root, or None: each lookup then opens the caller's own (sandbox_paths),
        which the answer to the call proves was the caller's (a record is logged only then)."""
        return self.root

    # ------------------------------------------------------------------ the call
    def handle(self, notification: notify.Notification, name: str, guard: Any = None) -> None:
        """`guard`: supervise.exec_guard.ExecGuard under exec.allow (the ELF loader is refused)."""
        pid = notification.pid
        path_arg, argv_arg = (0, 1) if name == "execve" else (1, 2)
        dirfd = notification.args[0] & 0xFFFFFFFF if name == "execveat" else notify.AT_FDCWD
        flags = notification.args[4] & 0xFFFFFFFF if name == "execveat" else 0
        try:
            memory = notify.ProcessMemory(pid)
        except OSError as exc:
            self.unexaminable(notification, name, exc)
            return
        try:
            self._handle_read(notification, name, guard, memory, path_arg, argv_arg, dirfd, flags)
        finally:
            memory.close()

    def _handle_read(self, notification: notify.Notification, name: str, guard: Any,
                     memory: notify.ProcessMemory, path_arg: int, argv_arg: int, dirfd: int, flags: int) -> None:
        """handle(), with the caller's memory open: read once for the record, and again at the
        end of the checks (facts.changed_since_read)."""
        pid = notification.pid
        try:
            raw_path, path_done = memory.cstring(notification.args[path_arg], facts.MAX_ARG_BYTES)
            ranges = [(notification.args[path_arg], len(raw_path) + 1)]
            reads = [(notification.args[path_arg], raw_path + b"\0" if path_done else raw_path)]
            argv, truncated, argv_ranges = facts.read_argv(memory, notification.args[argv_arg],
                                                           (notification.args[path_arg], raw_path, path_done),
                                                           reads)
            ranges += argv_ranges
        except OSError as exc:
            if not notify.still_valid(self.listener, notification.id):
                return  # the caller died meanwhile: nothing ran
            if exc.errno == errno.EFAULT or exc.errno == errno.EIO:  # the caller's own bad pointer
                notify.respond(self.listener, notification.id, error=errno.EFAULT)
                return
            self.unexaminable(notification, name, exc)
            return
        if not path_done:  # no NUL within PATH_MAX: the kernel would say the same
            notify.respond(self.listener, notification.id, error=errno.ENAMETOOLONG)
            return
        path = os.fsdecode(raw_path)
        caller = facts.caller_of(pid)
        anchor = facts.anchor(pid, dirfd, path, flags)  # a relative path's start, held (see facts.moved)
        try:
            absolute = facts.absolute(pid, dirfd, path, flags, anchor)
            target, refusal, unsure = self._resolve(pid, caller, dirfd, path, absolute, flags)
            if refusal is not None:  # a failed lookup: the kernel runs nothing, and it is no exec event
                notify.respond(self.listener, notification.id, error=refusal)
                return
            if guard is not None and guard.runs_the_loader(pid, absolute):
                guard.refuse_loader(notification, absolute)
                return
            resolved = self._through_proc(pid, caller.tgid, absolute)
            why = unsure or self._unverifiable(pid, caller, path, dirfd, flags, ranges)
            if why is None and facts.changed_since_read(memory, reads):  # after every check: see there
                why = "the exec's arguments changed while they were read (another thread or process wrote them)"
            if why is None and anchor is not None and facts.moved(pid, dirfd, path, anchor):
                why = "what the path starts from (the working directory, or dirfd) changed while the exec was examined"
            # the kernel takes the answer only while the call is pending: the caller was alive (its
            # pid its own) throughout our reads, or nothing is continued and nothing is logged
            if not notify.respond(self.listener, notification.id, allow=True):
                return
            fields: dict[str, Any] = {"pid": pid, "path": absolute, "argv": argv, "result": "continued",
                                      "verified": why is None}
            if resolved:
                fields["resolved"] = resolved
            if why is not None:
                fields["unverified"] = why
            if truncated:
                fields["argv_truncated"] = True
            if target is not None and target.kind == "script" and target.interpreter:
                # what the kernel runs for a script is its #! line's program, which no execve names:
                # without it the record shows "./build.sh" while a workspace binary runs
                fields["interpreter"] = target.interpreter
            if target is not None:
                self._remember(caller.tgid, target)
            self.log_soon("exec", **fields)
        finally:
            if anchor is not None and anchor >= 0:
                os.close(anchor)

    @staticmethod
    def _through_proc(pid: int, tgid: int, absolute: str) -> str | None:
        """Where a path through the caller's /proc magic links leads (`/proc/self/fd/3` names no
        program: the file behind descriptor 3 ran), read while the call waits: None when the
        path is not under /proc or leads to nothing else that can be named."""
        if not absolute.startswith("/proc/"):
            return None
        walked = sandbox_paths.walk(pid, tgid, absolute)
        text = walked.text if walked.state == "exists" else sandbox_paths.proc_link_text(pid, tgid, absolute)
        return text if text and text != absolute else None

    def unexaminable(self, notification: notify.Notification, name: str, exc: OSError) -> None:
        """Refuse a call the supervisor cannot read (never let it run with a guessed record)."""
        if not notify.respond(self.listener, notification.id, error=errno.EPERM):
            return
        rule = f"sandboxctl could not examine the call ({errno.errorcode.get(exc.errno or 0, exc)})"
        self.denied.append({"kind": "syscall", "target": name, "rule": rule})
        self.log("syscall", pid=notification.pid, name=name, decision="deny", rule=rule, errno="EPERM")

    # ------------------------------------------------------------------ what the kernel will open
    def _resolve(self, pid: int, caller: facts.Caller, dirfd: int, path: str, absolute: str,
                 flags: int) -> tuple[ExecTarget | None, int | None, str | None]:
        """(target, errno to answer with, why the target is unsure): the file as the sandbox sees it."""
        try:
            fd = facts.open_target(pid, caller.tgid, dirfd, path, absolute, flags, self._root(pid))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # openat2 is sure of neither through /proc
                walked = sandbox_paths.walk(pid, caller.tgid, absolute)
                if walked.state == "absent":
                    return None, walked.error, None
            return None, None, f"the supervisor could not resolve the path ({errno.errorcode.get(exc.errno or 0, exc)})"
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None, errno.EACCES, None
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
                return None, errno.EACCES, None
            kind, interpreter = self.formats.of(fd, st)
            expect: tuple[int, int] | None = (st.st_dev, st.st_ino) if kind == "elf" else None
            if kind == "script" and interpreter:
                expect = facts.interpreter_ident(pid, caller.tgid, interpreter.split()[0], self.root, self.formats)
        finally:
            os.close(fd)
        target = ExecTarget(absolute, (st.st_dev, st.st_ino), kind, expect, interpreter, facts.exe_ident(pid),
                            caller.started)
        return target, None, None

    # ------------------------------------------------------------------ is the read what the kernel reads?
    def _unverifiable(self, pid: int, caller: facts.Caller, path: str, dirfd: int, flags: int,
                      ranges: list[tuple[int, int]]) -> str | None:
        if caller.threads != 1:
            return f"{caller.threads or 'an unknown number of'} threads share the caller's memory"
        if not self.memory_writes_trapped:
            return "write opens are not trapped in this run, so /proc/PID/mem stays writable"
        if self.memory_writers:
            return (f"the policy allows {' and '.join(self.memory_writers)}, "
                    "through which a process can write another's memory")
        if self._kcmp_nr is None:
            return f"no kcmp check on {os.uname().machine}"
        kinds = [KCMP_VM]
        if not path.startswith("/") and not (flags & AT_EMPTY_PATH and not path):
            kinds.append(KCMP_FS if dirfd == notify.AT_FDCWD else KCMP_FILES)
        elif flags & AT_EMPTY_PATH and not path:
            kinds.append(KCMP_FILES)
        elif path.startswith("/proc/"):  # /proc/self/fd/N, /proc/self/cwd/…: what they lead to is shared too
            kinds += [KCMP_FILES, KCMP_FS]
        sharer = self._sharer(pid, caller.tgid, kinds, caller.parent)
        if sharer:
            return sharer
        return exec_sharing.shared_pages(pid, ranges, self.judge_write)

    # ------------------------------------------------------------------ after the fact
    def _remember(self, tgid: int, target: ExecTarget) -> None:
        if target.expect is None:
            return
        self.claims[tgid] = target
        self.claims.move_to_end(tgid)
        while len(self.claims) > MAX_CLAIMS:
            self.claims.popitem(last=False)

    def observe(self, pid: int) -> None:
        """A trapped call from `pid`: if it exec'd since its last record, check what it runs."""
        target = self.claims.get(pid)
        if target is None:
            return
        if facts.start_time(pid) != target.started:
            del self.claims[pid]  # not the process that exec'd (gone, its pid reused)
            return
        running = facts.exe_ident(pid)
        if running is None or running == target.previous != target.expect:
            return  # not exec'd yet (or that exec failed): check again at its next call
        del self.claims[pid]
        if running == target.expect and (target.kind != "script" or self._script_named(pid, target)):
            return
        ran = facts.readlink(f"/proc/{pid}/exe")
        detail = (f"the exec record names {target.path} ({target.kind}), but the process runs {ran}"
                  if running != target.expect else
                  f"the exec record names the script {target.path}, but the kernel's argv names another file")
        self.tampered.append({"kind": "exec", "target": target.path, "rule": detail})
        self.log("tamper", kind="exec", pid=pid, path=target.path, ran=ran, what=detail)

    @staticmethod
    def _script_named(pid: int, target: ExecTarget) -> bool:
        """binfmt_script makes argv [interpreter, (its argument), the script's name as the kernel
        opened it, ...]; a process that rewrote its own argv since is not held against it."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = handle.read(16384).split(b"\0")
        except OSError:
            return True
        line = (target.interpreter or "").split(None, 1)
        expected_head = [os.fsencode(part) for part in line]
        if words[: len(expected_head)] != expected_head:
            return True  # argv rewritten by the process (setproctitle): nothing to compare
        named = words[len(expected_head)] if len(words) > len(expected_head) else b""
        return os.path.normpath(os.fsdecode(named)) == target.path or os.fsdecode(named) == target.path \
            or not named.startswith(b"/")

    # ------------------------------------------------------------------ /proc/PID/mem
    @staticmethod
    def refuses_open(pid: int, dirfd: int, path: str, writes: bool) -> str | None:
        """Opening a process's memory for writing is how a sandboxed process could rewrite a
        pending exec's path after the supervisor read it (there is no Yama here to stop a process
        of the same user): such an open is refused. Returns the rule, or None."""
        if not writes:
            return None
        if not path.startswith("/"):
            base = facts.readlink(f"/proc/{pid}/cwd" if dirfd == notify.AT_FDCWD else f"/proc/{pid}/fd/{dirfd}")
            path = f"{base}/{path}"
        why = sandbox_paths.process_memory_open(pid, facts.caller_of(pid).tgid, path)
        if why is None:
            return None
        return f"writing process memory through /proc/PID/mem is refused ({why})"
