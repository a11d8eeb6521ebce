"""Write-intent opens under writable host grants: opened by the supervisor, handed over.

Part of the Mediator (mediate.py). A write-intent open beneath a writable host grant is opened
here on the descriptors resolution returned (the final component a plain name, O_NOFOLLOW) and
the descriptor handed to the caller; a FIFO or a device, which may block, waits on a thread of
its own; O_TMPFILE is opened in the sandbox's root. Elsewhere (or for reading) the open goes to
`outside` (file_escape: approvals and the file_events log).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time

from sandboxctl.supervise import fdops
from sandboxctl.supervise.mediate_calls import Entry, sandbox_path
from sandboxctl.supervise.mediate_changes import NO_SETID
from sandboxctl.supervise.mediate_resolve import Unresolved
from sandboxctl.supervise.notify import respond

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from sandboxctl.supervise.mediate_calls import Call
    from sandboxctl.supervise.notify import Notification

O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = os.O_ACCMODE, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_NOFOLLOW
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
MAX_WAITING = 32


class Opens:
    """Opens, performed or passed on (a mixin of mediate.Mediator)."""

    def _open(self, n: Notification, call: Call, opened: list[int]) -> None:
        flags = call.flags
        # O_PATH: the kernel ignores every other flag of open/openat (openat2 refuses them): nothing
        # is written or truncated, so the kernel opens it (performed here, O_TRUNC truncated the file)
        writes = not flags & os.O_PATH and (bool(flags & O_ACCMODE) or bool(flags & (O_CREAT | O_TRUNC))
                                             or flags & O_TMPFILE == O_TMPFILE)
        if not writes:  # file_events: all, or openat2 for reading: nothing to mediate, only to log
            self.outside(n, sandbox_path(n.pid, *call.paths[0]) or call.paths[0][1], "read", flags, call.mode)
            return
        op = "create" if flags & O_CREAT else "truncate" if flags & O_TRUNC else "write"
        if call.extra:  # openat2 with the caller's own RESOLVE_* limits: honour them by letting the kernel judge
            full = sandbox_path(n.pid, *call.paths[0])
            if full and self._mediated(full):
                self._refuse(n, op, full, "openat2 with RESOLVE_* flags under a writable grant is not supported")
            else:
                self.outside(n, full or call.paths[0][1], op, flags, call.mode)
            return
        if flags & O_TMPFILE == O_TMPFILE:
            self._open_tmpfile(n, call, opened)
            return
        follow = not (flags & O_NOFOLLOW) and not (flags & O_CREAT and flags & O_EXCL)
        full, entry = self._resolve(n, call, 0, opened, follow=follow)
        if not isinstance(entry, Entry):
            if isinstance(entry, Unresolved):  # where it leads is unknown: never continued unseen
                self._refuse(n, op, full or call.paths[0][1], entry.why)
            elif isinstance(entry, str):  # the caller's own lookup fails so: nothing was crossed
                respond(self.listener, n.id, error=getattr(errno, entry, errno.ENOENT))
            else:
                self.outside(n, full or call.paths[0][1], op, flags, call.mode)
            return
        path = entry.path
        st = self._lstat(entry)
        why = self._why_not(path, st) or self._other_name(n, entry)
        if not why and st is None and flags & O_CREAT:
            why = self._makes_repository(entry, opened)
        if why:
            self._refuse(n, op, path, why)
            return
        if not self._mediated(path):
            self.outside(n, path, op, flags, call.mode)
            return
        mode = call.mode & NO_SETID & ~self._umask(n.pid) if flags & O_CREAT else 0
        # O_TRUNC only once what was opened is judged (_settle): the name may lead elsewhere by then
        open_flags = (flags & fdops.VALID_OPEN_FLAGS & ~(os.O_PATH | O_TRUNC)) | O_NOFOLLOW | os.O_CLOEXEC
        truncating = bool(flags & O_TRUNC)
        self._still_asked(n)  # all that was read (path, cwd, umask) was the caller's
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            # a FIFO or a device may block: not in the loop
            self._open_waiting(n, op, path, entry, open_flags, st, truncating)
            return
        try:  # O_NONBLOCK: should it have become a FIFO since the lstat (another run can swap one in),
            # the loop must not wait for its reader
            fd = os.open(entry.name, open_flags | os.O_NONBLOCK, mode, dir_fd=entry.parent)
        except OSError as exc:
            if exc.errno == errno.ENXIO and not flags & os.O_NONBLOCK:  # a FIFO without a reader yet
                self._open_waiting(n, op, path, entry, open_flags, st, truncating)
            else:
                self._done(n, op, path, exc)
            return
        opened.append(fd)
        if not self._settle(n, op, path, fd, st, truncating):
            return
        if not flags & os.O_NONBLOCK:
            # blocking again, as asked: one F_SETFL of the flags it was opened with (they hold every bit
            # F_SETFL changes: O_APPEND, O_DIRECT, O_NOATIME), where os.set_blocking asks F_GETFL first
            fcntl.fcntl(fd, fcntl.F_SETFL, open_flags)
        self._hand_over(n, op, path, fd, bool(flags & os.O_CLOEXEC))

    def _settle(self, n: Notification, op: str, path: str, fd: int, judged: os.stat_result | None,
                truncating: bool) -> bool:
        """What was opened is what was judged, else it is judged now: the open goes by name, and
        the name may lead to another file since it was looked at — another run's sandbox renames
        a hardlink of a protected file there, or this sandbox does while a FIFO open waits on its
        thread (red team rt5: a protected hook was written both ways). Only then O_TRUNC is done
        (on a descriptor of the file itself). False: refused or failed, and answered."""
        try:
            st = os.fstat(fd)
        except OSError as exc:
            self._done(n, op, path, exc)
            return False
        if judged is None or (st.st_dev, st.st_ino) != (judged.st_dev, judged.st_ino):
            why = self._why_not(path, st)
            if why:
                self._refuse(n, op, path, why)
                return False
        if truncating and stat.S_ISDIR(st.st_mode):  # O_TRUNC asks for write access: the kernel's answer
            self._done(n, op, path, OSError(errno.EISDIR, "a directory"))
            return False
        if truncating and stat.S_ISREG(st.st_mode):  # the kernel ignores O_TRUNC on FIFOs and devices
            try:
                fdops.truncate_opened(fd)
            except OSError as exc:
                self._done(n, op, path, exc)
                return False
        return True

    def _open_waiting(self, n: Notification, op: str, path: str, entry: Entry, flags: int,
                      judged: os.stat_result | None, truncating: bool) -> None:
        """Opening a FIFO for writing waits for a reader: done on a thread of its own (at most
        MAX_WAITING at once), so the loop — exec events, timeouts, signals — never waits with it."""
        if not self.waiting.acquire(blocking=False):
            respond(self.listener, n.id, error=errno.EAGAIN)
            return
        parent = os.dup(entry.parent)

        def wait() -> None:
            try:
                with self.as_caller:
                    fd = self._open_when_read(n, entry.name, flags, parent)
            except OSError as exc:
                respond(self.listener, n.id, error=exc.errno or errno.EIO)
                return
            finally:
                os.close(parent)
                self.waiting.release()
            if fd is None:  # the caller is gone, or the run is over
                return
            try:
                with self.as_caller:  # the name was looked up again while it waited: judged again
                    settled = self._settle(n, op, path, fd, judged, truncating)
                if settled:
                    self._hand_over(n, op, path, fd, bool(flags & os.O_CLOEXEC))
            finally:
                os.close(fd)

        self.waiters = [t for t in self.waiters if t.is_alive()]
        thread = threading.Thread(target=wait, name="sandboxctl-fifo-open", daemon=True)
        self.waiters.append(thread)
        thread.start()

    def _open_when_read(self, n: Notification, name: str, flags: int, parent: int) -> int | None:
        """A FIFO is opened non-blocking, again until a reader has come (ENXIO: none yet), so the
        wait ends with its caller — killed, or the run over. A blocking open outlived the run: it
        held a thread and the directory in the supervisor (the library's caller), and opened
        the FIFO whenever a reader came, to hand it to a call long gone. None: nobody waits now."""
        from sandboxctl.supervise.notify import still_valid

        if not stat.S_ISFIFO(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            return os.open(name, flags, 0, dir_fd=parent)  # a device: as the kernel would open it
        delay = 0.001
        while True:
            try:
                fd = os.open(name, flags | os.O_NONBLOCK, 0, dir_fd=parent)
            except OSError as exc:
                if exc.errno != errno.ENXIO or not stat.S_ISFIFO(os.stat(name, dir_fd=parent,
                                                                         follow_symlinks=False).st_mode):
                    raise
            else:
                if not flags & os.O_NONBLOCK:
                    os.set_blocking(fd, True)
                return fd
            if self.closed or not still_valid(self.listener, n.id):
                return None
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _open_tmpfile(self, n: Notification, call: Call, opened: list[int]) -> None:
        """An unnamed file in the directory as the caller's kernel reaches it (a symlink on the
        way may lead through /proc/self, which our own view cannot follow: mediate_walk)."""
        full = sandbox_path(n.pid, *call.paths[0])
        if full is None:
            self.outside(n, call.paths[0][1], "create", call.flags, call.mode)
            return
        found = self.resolver.directory(n.pid, full, opened)
        if isinstance(found, Unresolved):
            self._refuse(n, "create", full, found.why)
            return
        if isinstance(found, str):  # the caller's own lookup fails so: nothing was crossed
            respond(self.listener, n.id, error=getattr(errno, found, errno.ENOENT))
            return
        if found is None or not self._mediated(found[1]):
            self.outside(n, full if found is None else found[1], "create", call.flags, call.mode)
            return
        where, path = found
        mode = call.mode & NO_SETID & ~self._umask(n.pid)
        self._still_asked(n)
        flags = call.flags & fdops.VALID_OPEN_FLAGS & ~os.O_NOFOLLOW
        try:
            fd = os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=where)
        except OSError as exc:
            self._done(n, "create", path, exc)
            return
        opened.append(fd)
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not self._mediated(real.removesuffix(" (deleted)").rsplit("/", 1)[0]):
            respond(self.listener, n.id, error=errno.EACCES)
            return
        self._hand_over(n, "create", path, fd, bool(call.flags & os.O_CLOEXEC))
