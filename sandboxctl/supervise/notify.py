"""Seccomp user notifications: the supervisor sees chosen system calls before the kernel runs them.

The shim loads a small filter with SECCOMP_FILTER_FLAG_NEW_LISTENER and hands us the listener
(bubblewrap's --seccomp cannot return one). We use it to record every program the sandbox
executes (execve/execveat: supervise/exec_events.py), to see write-intent opens, and to turn the
baseline's denials into logged `syscall` events.

pyseccomp wraps notifications only for a filter object it loaded itself, so the three ioctls are
made here directly, with the kernel's struct layouts spelled out below.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable

from sandboxctl.plan.syscalls import MEDIATED_CALLS, OPEN_CALLS

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

MEDIATED = frozenset(OPEN_CALLS + MEDIATED_CALLS)  # the calls supervise/mediate.py answers

# include/uapi/linux/seccomp.h: _IOWR('!', 0, struct seccomp_notif) etc.
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_ID_VALID = 0x40082102
NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64): its argument is the flags value itself
FD_SYNC_WAKE_UP = 1
FLAG_CONTINUE = 1
_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, data.args[6]
_RESP = struct.Struct("<QqiI")  # id, val, error, flags
SETTLE_S = 5.0  # Dispatcher.settled(): how long a session's command end waits for the call being answered
MAX_ARGS = 256
MAX_STRING = 4096
PATH_MAX = 4096  # bytes, with the terminating NUL


class Notification:
    __slots__ = ("args", "id", "nr", "pid")

    def __init__(self, raw: bytes):
        self.id, self.pid, _flags, self.nr, _arch, _ip, *args = _NOTIF.unpack(raw)
        self.args = args


def receive(fd: int) -> Notification | None:
    buffer = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(fd, NOTIF_RECV, buffer, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):  # the caller died meanwhile
            return None
        raise
    return Notification(bytes(buffer))


def hung_up(fd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


def still_valid(fd: int, notification_id: int) -> bool:
    try:
        fcntl.ioctl(fd, NOTIF_ID_VALID, struct.pack("<Q", notification_id))
        return True
    except OSError:
        return False


def respond(fd: int, notification_id: int, *, error: int = 0, allow: bool = False) -> bool:
    """Either let the kernel run the call (allow) or fail it with -error; False if the caller is gone."""
    flags = FLAG_CONTINUE if allow else 0
    try:
        fcntl.ioctl(fd, NOTIF_SEND, bytearray(_RESP.pack(notification_id, 0, -error if error else 0, flags)))
    except OSError:  # ENOENT: the caller died; nothing left to answer
        return False
    return True


class ProcessMemory:
    """Reads strings and pointer arrays from a stopped caller through /proc/PID/mem."""

    first_chunk: tuple[int, bytes] | None = None  # (address, bytes) of cstring's first read

    def __init__(self, pid: int):
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def string(self, address: int) -> str:
        if not address:
            return ""
        data, complete = self.cstring(address, MAX_STRING)
        return data.decode(errors="replace") + ("" if complete else "…")

    def cstring(self, address: int, limit: int) -> tuple[bytes, bool]:
        """The NUL-terminated bytes at `address` (without the NUL) and whether the NUL came within
        `limit` bytes. An unmapped page (the caller's bad pointer) is an OSError (EIO/EFAULT)."""
        if not address:
            raise OSError(errno.EFAULT, "NULL pointer")
        data = b""
        while len(data) < limit:
            page_left = 4096 - (address + len(data)) % 4096  # never read across into an unmapped page
            chunk = os.pread(self.fd, min(page_left, limit - len(data)), address + len(data))
            if not chunk:
                raise OSError(errno.EFAULT, "unreadable memory")
            if self.first_chunk is None:  # an exec's argv array is mostly on its path's page
                self.first_chunk = (address, chunk)
            end = chunk.find(b"\0")
            if end >= 0:
                return data + chunk[:end], True
            data += chunk
        return data[:limit], False

    def path(self, address: int) -> str:
        """A path argument exactly as the kernel will take it: at most PATH_MAX bytes with the NUL
        (longer: ENAMETOOLONG, as the kernel says), bytes that are not UTF-8 kept as they are
        (surrogateescape: os functions give the same bytes back, and two names never merge)."""
        if not address:
            raise OSError(errno.EFAULT, "a NULL path")
        data = b""
        while len(data) < PATH_MAX:
            page_left = 4096 - (address + len(data)) % 4096
            chunk = os.pread(self.fd, min(page_left, PATH_MAX - len(data)), address + len(data))
            if not chunk:
                raise OSError(errno.EFAULT, "the path runs into unreadable memory")
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            data += chunk
        raise OSError(errno.ENAMETOOLONG, "path longer than PATH_MAX")

    def word(self, address: int) -> int:
        """One 64-bit value; a short read (the caller is exiting, or lied) is an OSError."""
        data = os.pread(self.fd, 8, address)
        if len(data) != 8:
            raise OSError(errno.EFAULT, "short read from the caller's memory")
        return struct.unpack("<Q", data)[0]

    def words(self, address: int, count: int) -> list[int]:
        """`count` consecutive 64-bit values in one read (the caller keeps them within a page);
        a short read is an OSError, as for word()."""
        data = os.pread(self.fd, 8 * count, address)
        if len(data) != 8 * count:
            raise OSError(errno.EFAULT, "short read from the caller's memory")
        return list(struct.unpack(f"<{count}Q", data))

    def string_array(self, address: int) -> list[str]:
        items: list[str] = []
        while address and len(items) < MAX_ARGS:
            pointer = self.word(address)
            if not pointer:
                return items
            items.append(self.string(pointer))
            address += 8
        return items


AT_FDCWD = 0xFFFFFF9C


class Dispatcher:
    """Answers each notification: exec calls are logged and continued; file-changing calls go to
    the mediator (supervise/mediate.py), which performs those under writable host grants itself
    and hands the rest back here (`outside`): writes outside the writable set are denied or go to
    the approval broker; anything else is a baseline denial."""

    def __init__(self, fd: int, names: dict[int, str], deny: Callable[[Notification], tuple[str, int, str]],
                 judge_write: Callable[[str], Any], log: Callable[..., None],
                 denied: list[dict[str, object]] | None = None, escalate: Callable[[Any], None] | None = None,
                 log_allowed: bool = True, mediator: Any = None,
                 is_denial: Callable[[Notification], bool] = lambda notification: False,
                 exec_guard: Any = None, tasks: Callable[[], list[int]] | None = None,
                 tampered: list[dict[str, Any]] | None = None, memory_writes_trapped: bool = True,
                 routes: dict[str, Callable[[Notification, str], bool]] | None = None,
                 log_soon: Callable[..., None] | None = None, memory_writers: tuple[str, ...] = (),
                 sandbox_root: int | None = None):
        self.fd = fd
        self.names = names  # syscall number -> name, for the calls we trap
        self.deny = deny  # notification -> (syscall name, errno, rule)
        self.judge_write = judge_write  # sandbox path -> WriteVerdict (Plan.write_verdict)
        self.log = log
        self.denied = denied if denied is not None else []  # shared with the proxy: in time order
        self.escalate = escalate  # an approvable write escape goes to the approval broker
        self.log_allowed = log_allowed  # log.file_events: none still traps writes for approvals
        self.mediator = mediator  # supervise.mediate.Mediator: file-changing calls
        self.is_denial = is_denial  # a call the baseline or syscalls.deny refuses (trapped to be logged)
        from sandboxctl.supervise.exec_events import ExecEvents

        self.execs = ExecEvents(fd, log, self.denied, judge_write, tasks or (lambda: []), tampered,
                                memory_writes_trapped, log_soon, memory_writers, root=sandbox_root)
        self.exec_guard = exec_guard  # supervise.exec_guard.ExecGuard under exec.allow
        # syscall name -> a handler of its own (network/sockets.py: connect, sendto, …); it returns
        # False to leave a call to the default path (a baseline denial)
        self.routes = routes or {}
        self.busy = threading.Lock()  # held while one notification is handled (settled())

    def handle(self) -> bool:
        """Answer one notification; False once no sandboxed process can send any more (the
        listener then polls as hung up, and must leave the loop instead of spinning it)."""
        notification = receive(self.fd)
        if notification is None:
            return not hung_up(self.fd)
        with self.busy:
            try:
                return self._answer(notification)
            except Exception as exc:  # never crash the supervisor over one call: refuse it instead
                respond(self.fd, notification.id, error=errno.EPERM)
                self.denied.append({"kind": "syscall", "target": self.names.get(notification.nr, "?"),
                                    "rule": f"sandboxctl could not examine the call ({type(exc).__name__})"})
                self.log("syscall", pid=notification.pid, name=self.names.get(notification.nr, "?"),
                         decision="deny", rule=f"sandboxctl could not examine the call ({type(exc).__name__})",
                         errno="EPERM")
                return True

    def settled(self, timeout: float | None = None) -> bool:
        """Wait until the call being answered (if any) is answered and its records and denials
        are in: handle() runs on the listener's own thread, and a caller woken by our answer can
        exit — and its session command end — before the rest of handle() has run. At most
        SETTLE_S: a call stuck in a host operation that hangs must not hang the session's loop
        (False then; that call's record comes after the command's end, still before run.end)."""
        if not self.busy.acquire(timeout=SETTLE_S if timeout is None else timeout):
            return False
        self.busy.release()
        return True

    def _answer(self, notification: Notification) -> bool:
        name = self.names.get(notification.nr)
        self.execs.observe(notification.pid)  # did an earlier exec of this process run what its record says?
        route = self.routes.get(name)
        if route is not None and not self.is_denial(notification) and route(notification, name):
            return True
        if name == "umask" and self.mediator is not None:  # only to keep the mediator's umask cache true
            self.mediator.forget(notification.pid)
            respond(self.fd, notification.id, allow=True)
            return True
        if name in MEDIATED and self.mediator is not None and not self.is_denial(notification):
            self.mediator.handle(notification, name)
            return True
        if name == "memfd_create" and self.exec_guard is not None and not self.is_denial(notification):
            self.exec_guard.memfd_create(notification)
            return True
        if name not in ("execve", "execveat"):
            syscall, error, rule = self.deny(notification)
            respond(self.fd, notification.id, error=error)
            self.denied.append({"kind": "syscall", "target": syscall, "rule": rule})
            self.log("syscall", pid=notification.pid, name=syscall, decision="deny", rule=rule,
                     errno=errno.errorcode.get(error, str(error)))
            return True
        if self.mediator is not None:
            self.mediator.forget(notification.pid)
        self.execs.handle(notification, name, self.exec_guard)
        return True

    def outside(self, notification: Notification, full: str, op: str, flags: int, mode: int) -> None:
        """An open that is not under a writable host grant: the kernel decides inside the
        writable set (tmpfs, /proc, /dev: the mounts and Landlock hold whatever was read);
        outside it the approval broker does, and only the supervisor itself may then open the
        file (never "continue"). Reads (file_events: all) are only logged."""
        verdict = self.judge_write(full) if op != "read" else None
        refused = self.execs.refuses_open(notification.pid, AT_FDCWD, full, op != "read")
        if refused:  # /proc/PID/mem (/proc is in the writable set): exec records rely on this
            if not respond(self.fd, notification.id, error=errno.EACCES):
                return  # the caller is gone: its cwd read for this may have been another process's
            self.denied.append({"kind": "file", "target": f"{op} {full}", "rule": refused})
            self.log("file", pid=notification.pid, path=full, op=op, decision="deny", rule=refused)
            return
        if verdict is None or verdict.inside:
            # a failed answer means the caller died, or its pid was reused while we read: then
            # nothing is logged
            if respond(self.fd, notification.id, allow=True) and (self.log_allowed or verdict is None):
                self.execs.log_soon("file", pid=notification.pid, path=full, op=op, decision="allow",
                                    rule=verdict.rule if verdict else "read")  # queued, as the mediator's
            return
        if not still_valid(self.fd, notification.id):  # what we read must be the caller's own
            return
        missing = self._missing(full, flags)
        if missing:  # what the kernel itself answers: nothing was crossed, nothing to ask or log
            respond(self.fd, notification.id, error=missing)
            return
        if verdict.approvable and self.escalate is not None:
            from sandboxctl.supervise.file_escape import FileEscape

            self.escalate(FileEscape(notification.id, notification.pid, full, op, flags, mode & 0o7777, verdict))
        else:
            respond(self.fd, notification.id, error=errno.EACCES)
            self.denied.append({"kind": "file", "target": f"{op} {full}", "rule": verdict.rule})
            self.log("file", pid=notification.pid, path=full, op=op, decision="deny", rule=verdict.rule)

    def _missing(self, full: str, flags: int) -> int | None:
        """ENOENT/ENOTDIR/ENAMETOOLONG when the open would fail so in the sandbox's own view before
        any permission matters (a parent that is not there; the file itself, without O_CREAT; a
        name too long for the file system, which no permission could make right):
        `echo x > /no/such/dir/f`, Node's write of /sys/kernel/debug/tracing/trace_marker. The
        sandbox cannot create anything outside the writable set, so the answer cannot go stale.
        Only a walk that follows no symlink is trusted: ours resolves /proc/self and
        /proc/thread-self as the supervisor, which has no pid in the sandbox's /proc, so RO/l/passwd
        with a read-only host link RO/l -> /proc/self/root/etc would be "missing" where the
        caller's kernel reaches /etc/passwd (a symlink on the way: refused and logged, as before)."""
        root = self.execs.root
        parent, _, name = full.rpartition("/")
        if root is None or not name or not full.startswith("/"):
            return None
        from sandboxctl.supervise import fdops

        try:
            fd = fdops.openat2(root, parent or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                               fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            return exc.errno if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG) else None
        try:
            os.lstat(name, dir_fd=fd)  # with O_CREAT too: a name past the file system's NAME_MAX
        except FileNotFoundError:
            return None if flags & os.O_CREAT else errno.ENOENT
        except OSError as exc:
            return errno.ENAMETOOLONG if exc.errno == errno.ENAMETOOLONG else None
        finally:
            os.close(fd)
        return None

    @staticmethod
    def _absolute(pid: int, dirfd: int, path: str) -> str:
        """The path as the sandbox sees it (readlink of /proc/PID/cwd and fd/N is in its view)."""
        if path.startswith("/"):
            return os.path.normpath(path)
        base = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
        try:
            return os.path.normpath(os.path.join(os.readlink(f"/proc/{pid}/{base}"), path))
        except OSError:
            return path
