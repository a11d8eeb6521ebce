"""File-write escapes: ask the broker, then open the file ourselves and hand the caller the descriptor.

The kernel is never told to "continue" an open outside the writable set: the path we showed the
human is the path we open (a second thread rewriting the caller's buffer changes nothing), the
open resolves beneath the host directory the read-only mount came from (RESOLVE_BENEATH: no
symlink leads out of it), and the descriptor goes in with SECCOMP_IOCTL_NOTIF_ADDFD and
SECCOMP_ADDFD_FLAG_SEND (Linux 5.14), which also answers the call with that descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable

from sandboxctl.plan.model import WriteVerdict
from sandboxctl.record import Record
from sandboxctl.supervise import fdops, notify

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class FileEscape(Record):
    notification_id: int
    pid: int
    path: str  # as the sandbox sees it
    op: str
    flags: int
    mode: int
    verdict: WriteVerdict


def _beneath(verdict: WriteVerdict) -> tuple[str, str]:
    """The host directory a bind came from, and the path beneath it."""
    source = os.path.realpath(verdict.host_source or "")
    if os.path.isdir(source):
        return source, verdict.relative or "."
    if verdict.relative:  # a single-file bind (~/.gitconfig): beneath its directory, that name only
        raise OSError(errno.ENOTDIR, "not a directory")
    return os.path.dirname(source), os.path.basename(source)


def stat_beneath(verdict: WriteVerdict) -> os.stat_result:
    """What an approved path names on the host (O_PATH: nothing is opened for reading or writing)."""
    root, relative = _beneath(verdict)
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = fdops.openat2(dirfd, relative, os.O_PATH | os.O_CLOEXEC, 0,
                           fdops.RESOLVE_BENEATH | fdops.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(dirfd)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def open_beneath(verdict: WriteVerdict, flags: int, mode: int) -> int:
    """Open the host file behind an approved path, never leaving the bind's host directory."""
    root, relative = _beneath(verdict)
    flags = (flags & fdops.VALID_OPEN_FLAGS & ~os.O_PATH) | os.O_CLOEXEC
    tmpfile = getattr(os, "O_TMPFILE", 0)
    creates = bool(flags & os.O_CREAT) or (tmpfile and flags & tmpfile == tmpfile)
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # non-blocking: a FIFO there waits for a reader, and this runs on the listener's thread
        # (modes allow and deny) — every call of the sandbox waited with it; without a reader
        # the caller gets ENXIO, as from a non-blocking open
        fd = fdops.openat2(dirfd, relative, flags | os.O_NONBLOCK, mode & 0o7777 if creates else 0,
                           fdops.RESOLVE_BENEATH | fdops.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(dirfd)
    if not flags & os.O_NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def caller_umask(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def command_line(pid: int) -> str:
    """The caller's command line, raw (bytes that are not UTF-8 kept by surrogateescape): the log
    keeps it as it is, and whoever shows it to a human renders it with sandboxctl.inert."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            parts = handle.read(4096).rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    return " ".join(os.fsdecode(p) for p in parts)


JOIN_S = 2.0  # the workers, once the broker has denied what waited (they only answer and record then)


class FileEscapes:
    """Takes escapes from the notification loop; a human's answer is awaited on a worker thread
    so the loop (exec events, signals, timeouts) never waits for a person. The workers' records
    all come before run.end: close() joins them (the broker's stop has answered them), and once
    it has begun no worker is started (an escape is settled on the caller's thread, which the
    run joins too); one still running past the deadline records nothing more."""

    def __init__(self, listener: int, broker, log: Callable[..., None], denied: list[dict[str, Any]]):
        self.listener = listener
        # why a file may not be written whatever its path (the mediator's identity_reason, set once
        # it exists): a hardlink, in a read-only grant, of a protected file is never approvable
        self.guard: Callable[[os.stat_result], str | None] = lambda st: None
        self.broker = broker
        self._write = log
        self.denied = denied
        self.lock = threading.Lock()
        self.workers: list[threading.Thread] = []
        self.closing = False  # no worker is started any more
        self.sealed = False  # no worker records anything any more (run.end may follow)
        self.on_worker = threading.local()

    def __call__(self, escape: FileEscape) -> None:
        with self.lock:
            if self.broker.asks_human and not self.closing:
                worker = threading.Thread(target=self._work, args=(escape,), name="sandboxctl-file-escape",
                                          daemon=True)
                self.workers = [w for w in self.workers if w.is_alive()]
                self.workers.append(worker)
                worker.start()
                return
        self._settle(escape)

    def close(self, timeout: float = JOIN_S) -> None:
        """After the broker's stop (every waiting request denied): the workers finish first."""
        import time

        with self.lock:
            self.closing = True
            workers = list(self.workers)
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            self.sealed = True

    def _work(self, escape: FileEscape) -> None:
        self.on_worker.yes = True
        self._settle(escape)

    def _recording(self) -> bool:
        """With the lock held: a worker past close()'s deadline records nothing (run.end may be
        written); the caller's thread (joined before run.end) always does."""
        return not (self.sealed and getattr(self.on_worker, "yes", False))

    def log(self, event: str, **fields: Any) -> None:
        with self.lock:
            if self._recording():
                self._write(event, **fields)

    def _settle(self, escape: FileEscape) -> None:
        try:
            self._decide(escape)
        except Exception as exc:  # never leave the caller blocked: refuse
            notify.respond(self.listener, escape.notification_id, error=errno.EACCES)
            self._deny(escape, f"{escape.verdict.rule}; approval failed ({type(exc).__name__})")

    def _decide(self, escape: FileEscape) -> None:
        why = self._protected(escape)
        if why:  # never asked: protected paths are never approvable, whatever name leads there
            notify.respond(self.listener, escape.notification_id, error=errno.EACCES)
            self._deny(escape, why)
            return
        detail = f"{escape.op}; on the host: {escape.verdict.host_path}"
        request = self.broker.decide("file", escape.path, escape.verdict.rule, escape.pid, command_line(escape.pid),
                                     detail)
        if not request.approved:
            notify.respond(self.listener, escape.notification_id, error=errno.EACCES)
            self._deny(escape, f"{escape.verdict.rule} ({'no answer' if request.answer == 'timeout' else 'denied'})")
            return
        if not notify.still_valid(self.listener, escape.notification_id):
            self.log("file", pid=escape.pid, path=escape.path, op=escape.op, decision="deny",
                     rule="approved, but the caller was gone")
            return
        mode = escape.mode & ~caller_umask(escape.pid)
        try:  # O_TRUNC once what was opened is judged: the name may lead elsewhere since it was asked
            fd = open_beneath(escape.verdict, escape.flags & ~os.O_TRUNC, mode)
        except OSError as exc:
            notify.respond(self.listener, escape.notification_id, error=exc.errno or errno.EACCES)
            self.log("file", pid=escape.pid, path=escape.path, op=escape.op, decision="deny",
                     rule=f"approved ({request.answer}), but the host open failed: "
                          f"{errno.errorcode.get(exc.errno or 0, exc.errno)}")
            return
        try:
            st = os.fstat(fd)
            why = self.guard(st)  # what was opened: another name for a protected file is never approvable
            if not why and escape.flags & os.O_TRUNC and stat.S_ISREG(st.st_mode):
                fdops.truncate_opened(fd)
        except BaseException as exc:
            os.close(fd)
            if not isinstance(exc, OSError):
                raise
            notify.respond(self.listener, escape.notification_id, error=exc.errno or errno.EACCES)
            return
        if why:
            os.close(fd)
            notify.respond(self.listener, escape.notification_id, error=errno.EACCES)
            self._deny(escape, f"approved ({request.answer}), but {why}")
            return
        try:
            fdops.add_fd(self.listener, escape.notification_id, fd, bool(escape.flags & os.O_CLOEXEC))
        except OSError as exc:
            notify.respond(self.listener, escape.notification_id, error=errno.EACCES)
            why = "the kernel lacks SECCOMP_ADDFD_FLAG_SEND (Linux 5.14)" if exc.errno == errno.EINVAL \
                else errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self._deny(escape, f"approved ({request.answer}), but the descriptor could not be handed over: {why}")
            return
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log("file", pid=escape.pid, path=escape.path, op=escape.op, decision="allow",
                 rule=f"approved ({request.answer}, {request.via}); opened by the supervisor",
                 host_path=escape.verdict.host_path)

    def _protected(self, escape: FileEscape) -> str | None:
        """Why the file an escape names may not be written at all, looked at before anyone is
        asked (the open after an approval is judged again, on its descriptor)."""
        try:
            st = stat_beneath(escape.verdict)
        except OSError:
            return None  # not there (a creation: a new file), or unreachable: the open will tell
        return self.guard(st)

    def _deny(self, escape: FileEscape, rule: str) -> None:
        with self.lock:
            if not self._recording():
                return
            self.denied.append({"kind": "file", "target": f"{escape.op} {escape.path}", "rule": rule})
            self._write("file", pid=escape.pid, path=escape.path, op=escape.op, decision="deny", rule=rule)
