"""Changes under writable host grants are carried out by the supervisor, after checking them.

Landlock makes every writable host directory read-only to the kernel (the plan grants it read
and execute only); the notification filter traps each call that could change one: write-intent
opens, mkdir, mknod, unlink, rmdir, rename, link, symlink, truncate and chmod. For each call:

1. its path arguments are read once from the caller's memory;
2. they are resolved here, in the sandbox's own view: from the sandbox's root (/proc/PID/root)
   with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, relative paths joined to the caller's cwd or
   dirfd as the kernel reports them (readlink of /proc/PID/cwd, /proc/PID/fd/N);
3. where the result lies is read back from the kernel (readlink of our own descriptor), never
   taken from the caller's string;
4. under a writable host grant: protect.rules decides, and the call is performed here on the
   descriptors just resolved (the final component is a plain name) — opens hand the caller our
   descriptor with SECCOMP_IOCTL_NOTIF_ADDFD — or refused; elsewhere the kernel runs the call
   ("continue"): Landlock and the mounts decide there, so a buffer rewritten after step 1 can
   only land on a denial.

Steps 1 to 3 (reading a call, resolving its paths) live in supervise/mediate_calls.py.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping

from sandboxctl.plan.model import Plan
from sandboxctl.protect.names import GITDIR_MARKERS, gitdir_marker
from sandboxctl.protect.rules import Protection, within
from sandboxctl.supervise import aliases, fdops
from sandboxctl.supervise.mediate_calls import Call, Entry, Resolver, exists_at, is_dir, read_call, sandbox_path
from sandboxctl.supervise.notify import Notification, respond

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW = os.O_ACCMODE, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_NOFOLLOW
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_MAGIC_FD = re.compile(r"^/proc/(self|\d+)/fd/(\d+)$")
MAX_WAITING = 32
CALL_OPS = ("open", "mkdir", "bind", "mknod", "unlink", "rmdir", "symlink", "truncate", "chmod", "fchmod", "rename",
            "link")
BUSY = "a mount point"  # a sentinel reason: answered EBUSY, as the kernel would


class Mediator:
    """Answers write-class calls: performs, refuses, or lets the kernel decide (outside the grants)."""

    def __init__(self, listener: int, plan: Plan, protection: Protection, log: Callable[..., None],
                 denied: list[dict[str, Any]], outside: Callable[[Notification, str, str, int, int], None],
                 protected_inodes: Mapping[tuple[int, int], str] | None = None, log_allowed: bool = True):
        self.listener = listener
        self.plan = plan
        self.protection = protection
        self.log = log
        self.denied = denied
        self.outside = outside  # a write-intent open outside the grants: approvals (file_escape)
        self.protected_inodes = dict(protected_inodes or {})
        self.log_allowed = log_allowed
        self.resolver = Resolver()
        self.mounts = sorted(((m.target, m.kind) for m in plan.mounts if m.kind != "symlink"),
                             key=lambda item: len(item[0]), reverse=True)
        self.mediated_roots = set(protection.roots) | set(plan.protect.ephemeral)
        self.mount_points = {m.target for m in plan.mounts}
        # pure functions of the path for the whole run (the plan and its Protection never change):
        # asked for every call, answered once per path
        self._reason = functools.lru_cache(maxsize=8192)(protection.reason)
        self._root_of = functools.lru_cache(maxsize=8192)(protection.root_of)
        self._mediated = functools.lru_cache(maxsize=8192)(self._mediated_uncached)
        self.as_caller = fdops.CallerPermissions()  # a root supervisor acts with the caller's permissions
        self.umasks: dict[int, int] = {}
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)  # FIFO opens waiting on threads of their own
        self._calls = {op: getattr(self, f"_{op}") for op in CALL_OPS}  # Call.op -> its method, bound once

    def close(self) -> None:
        self.resolver.close()

    # ------------------------------------------------------------------ entry point
    def handle(self, notification: Notification, name: str) -> None:
        try:
            call = read_call(notification, name)
        except OSError as exc:
            self._unreadable(notification, name, exc)
            return
        if call is None:
            respond(self.listener, notification.id, allow=True)
            return
        empty_allowed = call.op in ("chmod", "link") and call.flags & AT_EMPTY_PATH
        if not empty_allowed and any(not path for _dirfd, path in call.paths):
            # the kernel's answer to an empty path; never the cwd or the dirfd itself
            respond(self.listener, notification.id, error=errno.ENOENT)
            return
        opened: list[int] = []
        try:
            with self.as_caller:
                self._calls[call.op](notification, call, opened)
        finally:
            for fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # ------------------------------------------------------------------ resolution
    def _holder(self, path: str) -> tuple[str, str] | None:
        return next(((t, k) for t, k in self.mounts if within(path, t)), None)

    def _mediated_uncached(self, path: str) -> bool:
        """Under a writable host grant (read-only to Landlock): ours to perform or refuse."""
        holder = self._holder(path)
        return holder is not None and holder[1] in ("rw", "tmpfs") and holder[0] in self.mediated_roots

    @staticmethod
    def _lstat(entry: Entry) -> os.stat_result | None:
        if entry.looked:  # resolution has just looked (an open that follows a final symlink)
            return entry.st
        try:
            return os.lstat(entry.name, dir_fd=entry.parent)
        except OSError:
            return None

    def _why_not(self, path: str, st: os.stat_result | None = None) -> str | None:
        """Why the sandbox may not change this entry: the rules (by path) or the launch record
        (by identity: a hardlink made before the run is another name for the same file)."""
        if self._root_of(path) is None:
            return None  # not beneath a writable grant: the mounts and Landlock decide there
        why = self._reason(path)
        if why is None and st is not None:
            why = self.protected_inodes.get((st.st_dev, st.st_ino))
            if why:
                why = f"{why} (another name for a protected file)"
        return why

    def _other_name(self, n: Notification, entry: Entry) -> str | None:
        """Why an entry reached by another name than its own may not be changed (the rules judged
        the spelling, folded; supervise/aliases.py): its parent is a protected directory by
        identity, or a component of its path is an 8.3 short name of another entry."""
        root = self._root_of(entry.path)
        if root is None:
            return None
        if self.protected_inodes:
            try:
                st = os.fstat(entry.parent)
            except OSError:
                return "the resolved directory could not be examined"
            why = self.protected_inodes.get((st.st_dev, st.st_ino))
            if why:
                return f"{why} (a directory reached by another name)"
        alias = aliases.short_alias(self.resolver.root_of(n.pid), entry.path, root)
        if alias:
            return (f"protected: {alias} is a short (8.3) name of another entry, which the rules cannot judge "
                    "by it: use the entry's long name")
        return None

    def _makes_repository(self, entry: Entry) -> str | None:
        """git takes any directory holding HEAD with objects/ and refs/ (or a commondir) for a
        repository and runs what its config says; a directory under a writable grant must not
        become one during the run (name rules cannot see it: the entries have ordinary names)."""
        marker = gitdir_marker(entry.name)  # folded: `head` is HEAD on a case-insensitive directory
        if marker is None or self._root_of(entry.path) is None:
            return None
        if self.protection.gitdir_of(entry.parent_path):
            return None  # inside a git directory: git's own work
        present = {name for name in GITDIR_MARKERS if name != marker and exists_at(entry.parent, name)}
        after = present | {marker}
        if "HEAD" in after and ({"objects", "refs"} <= after or "commondir" in after):
            return ("protected: this would make the directory a git repository (HEAD with objects/ and refs/): "
                    "its config would run on the host's next git command there")
        return None

    # ------------------------------------------------------------------ outcomes
    def _unreadable(self, n: Notification, name: str, exc: OSError) -> None:
        """The call's arguments could not be read: a bad pointer gets what the kernel would say;
        anything else (the supervisor short of descriptors) is refused and counted as a denial of
        the call, never logged with a guessed path."""
        from sandboxctl.supervise.notify import still_valid

        if exc.errno in (errno.ENOENT, errno.ESRCH) or not still_valid(self.listener, n.id):
            return  # the caller is gone
        if exc.errno in (errno.EFAULT, errno.EIO, errno.ENAMETOOLONG):  # what the kernel itself would answer
            respond(self.listener, n.id, error=errno.ENAMETOOLONG if exc.errno == errno.ENAMETOOLONG else errno.EFAULT)
            return
        respond(self.listener, n.id, error=errno.EPERM)
        rule = f"sandboxctl could not read the call's arguments ({errno.errorcode.get(exc.errno or 0, exc)})"
        self.denied.append({"kind": "syscall", "target": name, "rule": rule})
        self.log("syscall", pid=n.pid, name=name, decision="deny", rule=rule, errno="EPERM")

    def _refuse(self, n: Notification, op: str, path: str, why: str, error: int = errno.EACCES) -> None:
        respond(self.listener, n.id, error=error)
        self.denied.append({"kind": "file", "target": f"{op} {path}", "rule": why})
        self.log("file", pid=n.pid, path=path, op=op, decision="deny", rule=why)

    def _done(self, n: Notification, op: str, path: str, result: int | OSError, **more: Any) -> None:
        if isinstance(result, OSError):
            respond(self.listener, n.id, error=result.errno or errno.EIO)
            return
        respond(self.listener, n.id)
        if self.log_allowed:
            self.log("file", pid=n.pid, path=path, op=op, decision="allow",
                     rule="writable grant; carried out by the supervisor", **more)

    def _continue(self, n: Notification) -> None:
        respond(self.listener, n.id, allow=True)

    def _umask(self, pid: int) -> int:
        """The caller's umask, read from /proc once per process: umask() is trapped too (it only
        clears this cache), and an exec (also trapped) forgets the pid, so a reused pid is read again."""
        known = self.umasks.get(pid)
        if known is None:
            from sandboxctl.supervise.file_escape import caller_umask

            if len(self.umasks) > 4096:
                self.umasks.clear()
            known = self.umasks[pid] = caller_umask(pid)
        return known

    def forget(self, pid: int) -> None:
        self.umasks.pop(pid, None)

    def _resolve(self, n: Notification, call: Call, index: int, opened: list[int], *,
                 follow: bool) -> tuple[str | None, Entry | str | None]:
        dirfd, raw = call.paths[index]
        full = sandbox_path(n.pid, dirfd, raw)
        if full is None:
            return None, None
        return full, self.resolver.entry(n.pid, full, opened, follow=follow)

    # ------------------------------------------------------------------ the calls
    def _open(self, n: Notification, call: Call, opened: list[int]) -> None:
        flags = call.flags
        writes = bool(flags & O_ACCMODE) or bool(flags & (O_CREAT | O_TRUNC)) or flags & O_TMPFILE == O_TMPFILE
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
            if full and entry is not None and self._mediated(full):
                respond(self.listener, n.id, error=getattr(errno, entry, errno.ENOENT))
            else:
                self.outside(n, full or call.paths[0][1], op, flags, call.mode)
            return
        path = entry.path
        st = self._lstat(entry)
        why = self._why_not(path, st) or self._other_name(n, entry)
        if not why and st is None and flags & O_CREAT:
            why = self._makes_repository(entry)
        if why:
            self._refuse(n, op, path, why)
            return
        if not self._mediated(path):
            self.outside(n, path, op, flags, call.mode)
            return
        mode = call.mode & NO_SETID & ~self._umask(n.pid) if flags & O_CREAT else 0
        open_flags = (flags & fdops.VALID_OPEN_FLAGS & ~os.O_PATH) | O_NOFOLLOW | os.O_CLOEXEC
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            self._open_waiting(n, op, path, entry, open_flags)  # a FIFO or a device may block: not in the loop
            return
        try:  # O_NONBLOCK: should it have become a FIFO since the lstat (another run can swap one in),
            # the loop must not wait for its reader
            fd = os.open(entry.name, open_flags | os.O_NONBLOCK, mode, dir_fd=entry.parent)
        except OSError as exc:
            if exc.errno == errno.ENXIO and not flags & os.O_NONBLOCK:  # a FIFO without a reader yet
                self._open_waiting(n, op, path, entry, open_flags)
            else:
                self._done(n, op, path, exc)
            return
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        opened.append(fd)
        self._hand_over(n, op, path, fd, bool(flags & os.O_CLOEXEC))

    def _open_waiting(self, n: Notification, op: str, path: str, entry: Entry, flags: int) -> None:
        """Opening a FIFO for writing waits for a reader: done on a thread of its own (at most
        MAX_WAITING at once), so the loop — exec events, timeouts, signals — never waits with it."""
        if not self.waiting.acquire(blocking=False):
            respond(self.listener, n.id, error=errno.EAGAIN)
            return
        parent = os.dup(entry.parent)

        def wait() -> None:
            try:
                with self.as_caller:
                    fd = os.open(entry.name, flags, 0, dir_fd=parent)
            except OSError as exc:
                respond(self.listener, n.id, error=exc.errno or errno.EIO)
                return
            finally:
                os.close(parent)
                self.waiting.release()
            try:
                self._hand_over(n, op, path, fd, bool(flags & os.O_CLOEXEC))
            finally:
                os.close(fd)

        threading.Thread(target=wait, name="sandboxctl-fifo-open", daemon=True).start()

    def _open_tmpfile(self, n: Notification, call: Call, opened: list[int]) -> None:
        full = sandbox_path(n.pid, *call.paths[0])
        if full is None or not self._mediated(full):
            self.outside(n, full or call.paths[0][1], "create", call.flags, call.mode)
            return
        try:
            fd = fdops.openat2(self.resolver.root_of(n.pid), full, (call.flags & fdops.VALID_OPEN_FLAGS) | os.O_CLOEXEC,
                               call.mode & NO_SETID & ~self._umask(n.pid),
                               fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            self._done(n, "create", full, exc)
            return
        opened.append(fd)
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not self._mediated(real.removesuffix(" (deleted)").rsplit("/", 1)[0]):
            respond(self.listener, n.id, error=errno.EACCES)
            return
        self._hand_over(n, "create", full, fd, bool(call.flags & os.O_CLOEXEC))

    def _hand_over(self, n: Notification, op: str, path: str, fd: int, cloexec: bool) -> None:
        try:
            fdops.add_fd(self.listener, n.id, fd, cloexec)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return  # the caller died meanwhile
            respond(self.listener, n.id, error=errno.EACCES)
            why = "the kernel lacks SECCOMP_ADDFD_FLAG_SEND (Linux 5.14)" if exc.errno == errno.EINVAL \
                else f"the descriptor could not be handed over ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            self.denied.append({"kind": "file", "target": f"{op} {path}", "rule": why})
            self.log("file", pid=n.pid, path=path, op=op, decision="deny", rule=why)
            return
        if self.log_allowed:
            self.log("file", pid=n.pid, path=path, op=op, decision="allow",
                     rule="writable grant; opened by the supervisor")

    def _single(self, n: Notification, call: Call, opened: list[int], *, follow: bool,
                guard: Callable[[str], str | None] | None = None, creates: bool = False,
                also: Callable[[str], str | None] | None = None, here: bool = False) -> Entry | None:
        """Resolve a one-path call; answer it here unless it is ours to perform (then return it).
        `also`: one more reason to refuse, checked after the usual ones. `here`: a call Landlock
        does not check (chmod; truncate below ABI 3) is never continued to the kernel, which reads
        the path again (a racing thread may have rewritten it onto a protected path by then): it
        is performed here in the sandbox's own writable mounts too, and refused elsewhere."""
        full, entry = self._resolve(n, call, 0, opened, follow=follow)
        if not isinstance(entry, Entry):
            if full and entry is not None and (here or self._mediated(full)):
                respond(self.listener, n.id, error=getattr(errno, entry, errno.ENOENT))
            elif here:
                self._refuse(n, call.op, full or call.paths[0][1], "the path could not be resolved in the sandbox")
            else:
                self._continue(n)
            return None
        st = self._lstat(entry)
        why = (guard(entry.path) if guard else self._why_not(entry.path, st)) or self._other_name(n, entry)
        if not why and creates and st is None:
            why = self._makes_repository(entry)
        if not why and also is not None:
            why = also(entry.path)
        if why is BUSY:
            respond(self.listener, n.id, error=errno.EBUSY)
            return None
        if why:
            self._refuse(n, call.op, entry.path, why)
            return None
        if not self._mediated(entry.path):
            if here:
                return entry if self._performed_here(n, call.op, entry.path) else None
            self._elsewhere(n, call.op, entry.path)
            return None
        return entry

    def _performed_here(self, n: Notification, op: str, path: str) -> bool:
        """A call Landlock cannot judge, outside the writable host grants: performed here where
        the path lies in one of the sandbox's own writable mounts (a tmpfs); refused on read-only
        mounts (EROFS, as the kernel answers) and on /dev and /proc, whose nodes are the host's
        (root in the sandbox owns them: the kernel would let it re-mode the host's /dev/null)."""
        verdict = self.plan.write_verdict(path)
        if not verdict.inside:
            self._refuse(n, op, path, verdict.rule, errno.EROFS)
            return False
        holder = self._holder(path)
        if holder is None or holder[1] not in ("rw", "tmpfs"):
            self._refuse(n, op, path, f"{op} of the host's device nodes and /proc is not allowed", errno.EPERM)
            return False
        return True

    def _elsewhere(self, n: Notification, op: str, *paths: str) -> None:
        """Not beneath a writable host grant: in the sandbox's own tmpfs, /proc or /dev the kernel
        goes on; outside the writable set the call fails anyway (read-only), so it is refused here
        and logged as the denial it is (never asked about: only opens are approvable)."""
        for path in paths:
            verdict = self.plan.write_verdict(path)
            if not verdict.inside:
                self._refuse(n, op, path, verdict.rule, errno.EROFS)
                return
        self._continue(n)

    def _mkdir(self, n: Notification, call: Call, opened: list[int]) -> None:
        entry = self._single(n, call, opened, follow=False, creates=True)
        if entry is not None:
            self._done(n, "mkdir", entry.path, _attempt(os.mkdir, entry.name, call.mode & 0o3777
                                                        & ~self._umask(n.pid), dir_fd=entry.parent))

    def _bind(self, n: Notification, call: Call, opened: list[int]) -> None:
        """A pathname UNIX socket bound beneath a writable grant: the supervisor binds the caller's
        own socket (pidfd_getfd) at the entry it resolved, with the caller's umask."""
        entry = self._single(n, call, opened, follow=False, creates=True)
        if entry is None:
            return
        from sandboxctl.network.native import pidfd_getfd, pidfd_of_thread

        target = f"/proc/self/fd/{entry.parent}/{entry.name}"
        if len(os.fsencode(target)) > 107:
            respond(self.listener, n.id, error=errno.ENAMETOOLONG)
            return
        try:
            pidfd = pidfd_of_thread(n.pid)
            opened.append(pidfd)
            theirs = pidfd_getfd(pidfd, call.extra)
        except OSError as exc:
            respond(self.listener, n.id, error=exc.errno or errno.EBADF)
            return
        import socket

        sock = socket.socket(fileno=theirs)
        mask = os.umask(self._umask(n.pid))
        try:
            sock.bind(target)
            result: int | OSError = 0
        except OSError as exc:
            result = exc
        finally:
            os.umask(mask)
            sock.close()  # our duplicate; the caller's socket stays bound
        self._done(n, "bind", entry.path, result)

    def _mknod(self, n: Notification, call: Call, opened: list[int]) -> None:
        kind = stat.S_IFMT(call.mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            full = sandbox_path(n.pid, *call.paths[0]) or call.paths[0][1]
            if self._mediated(full):  # no device nodes: the sandbox has no CAP_MKNOD, the supervisor may
                respond(self.listener, n.id, error=errno.EPERM)
            else:
                self._continue(n)
            return
        entry = self._single(n, call, opened, follow=False, creates=True)
        if entry is not None:
            mode = (kind or stat.S_IFREG) | (call.mode & NO_SETID & ~self._umask(n.pid))
            self._done(n, "mknod", entry.path, _attempt(os.mknod, entry.name, mode, 0, dir_fd=entry.parent))

    def _busy(self, path: str) -> str | None:
        """A mount point cannot be removed or renamed over: the kernel's EBUSY, not a denial."""
        return BUSY if path in self.mount_points else self.protection.blocks_move(path)

    def _unlink(self, n: Notification, call: Call, opened: list[int]) -> None:
        entry = self._single(n, call, opened, follow=False, guard=self._busy)
        if entry is not None:
            self._done(n, "unlink", entry.path, _attempt(os.unlink, entry.name, dir_fd=entry.parent))

    def _rmdir(self, n: Notification, call: Call, opened: list[int]) -> None:
        entry = self._single(n, call, opened, follow=False, guard=self._busy)
        if entry is not None:
            self._done(n, "rmdir", entry.path, _attempt(os.rmdir, entry.name, dir_fd=entry.parent))

    def _symlink(self, n: Notification, call: Call, opened: list[int]) -> None:
        # a link to a directory brings that directory's tree in as a rename would: refused where a
        # directory moved in is (.config of .config/git, a git directory's objects/)
        entry = self._single(n, call, opened, follow=False, creates=True, also=self.protection.holds_names)
        if entry is not None:
            self._done(n, "symlink", entry.path, _attempt(os.symlink, call.link_target, entry.name,
                                                          dir_fd=entry.parent), target=call.link_target)

    def _truncate(self, n: Notification, call: Call, opened: list[int]) -> None:
        entry = self._single(n, call, opened, follow=True, here=True)
        if entry is None:
            return
        if call.extra >= 1 << 63:  # a negative length
            respond(self.listener, n.id, error=errno.EINVAL)
            return
        if call.extra > _file_size_limit(n.pid):  # ours would be the supervisor's limit, not the caller's
            respond(self.listener, n.id, error=errno.EFBIG)
            return
        st = self._lstat(entry)
        if st is not None and not stat.S_ISREG(st.st_mode):  # what the kernel answers (and a FIFO would block us)
            respond(self.listener, n.id, error=errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL)
            return
        try:  # O_NONBLOCK: a FIFO swapped in since the lstat never makes the loop wait for a reader
            fd = os.open(entry.name, os.O_WRONLY | O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=entry.parent)
            opened.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.ftruncate(fd, call.extra)
        except OSError as exc:
            self._done(n, "truncate", entry.path, OSError(errno.EINVAL, "") if exc.errno == errno.ENXIO else exc)
            return
        self._done(n, "truncate", entry.path, 0)

    def _chmod(self, n: Notification, call: Call, opened: list[int]) -> None:
        if call.flags & AT_EMPTY_PATH and not call.paths[0][1]:
            self._fchmod(n, call._replace(extra=call.paths[0][0]), opened)
            return
        entry = self._single(n, call, opened, follow=not call.flags & AT_SYMLINK_NOFOLLOW, here=True)
        if entry is None:
            return
        # the entry itself, never a symlink put there since it was resolved (another run in the same
        # workspace can swap one in): os.chmod by name would follow it in the supervisor's own view
        try:
            fd = os.open(entry.name, os.O_PATH | O_NOFOLLOW | os.O_CLOEXEC, dir_fd=entry.parent)
            opened.append(fd)
            st = os.fstat(fd)
        except OSError as exc:
            self._done(n, "chmod", entry.path, exc)
            return
        if stat.S_ISLNK(st.st_mode):  # what the kernel answers for a symlink's own mode
            respond(self.listener, n.id, error=errno.EOPNOTSUPP)
            return
        why = self._why_not(entry.path, st) or self._other_name(n, entry)
        if why:
            self._refuse(n, "chmod", entry.path, why)
            return
        mode = _chmod_mode(call.mode, st)
        self._done(n, "chmod", entry.path, _attempt(os.chmod, f"/proc/self/fd/{fd}", mode), mode=oct(mode))

    def _fchmod(self, n: Notification, call: Call, opened: list[int]) -> None:
        """Performed on our own descriptor of the caller's file, never continued: the caller's
        other threads may dup2 a protected file onto that number before the kernel looks again."""
        try:
            fd = os.open(f"/proc/{n.pid}/fd/{call.extra}", os.O_PATH | os.O_CLOEXEC)
            opened.append(fd)
            real = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
        except OSError:
            respond(self.listener, n.id, error=errno.EBADF)
            return
        path = real.removesuffix(" (deleted)")
        if real.startswith("/"):  # else a pipe or a socket: its own inode, changed below all the same
            if not self._mediated(path) and not self._performed_here(n, "chmod", path):
                return
            why = self._why_not(path, st)
            if why:
                self._refuse(n, "chmod", path, why)
                return
        mode = _chmod_mode(call.mode, st)
        self._done(n, "chmod", path, _attempt(os.chmod, f"/proc/self/fd/{fd}", mode), mode=oct(mode))

    def _rename(self, n: Notification, call: Call, opened: list[int]) -> None:
        src_full, src = self._resolve(n, call, 0, opened, follow=False)
        dst_full, dst = self._resolve(n, call, 1, opened, follow=False)
        if not isinstance(src, Entry) or not isinstance(dst, Entry):
            mediated = any(p and self._mediated(p) for p in (src_full, dst_full))
            failed = next((e for e in (src, dst) if isinstance(e, str)), None)
            if mediated and failed:
                respond(self.listener, n.id, error=getattr(errno, failed, errno.ENOENT))
            elif mediated:
                self._refuse(n, "rename", src_full or "?", "the path could not be resolved in the sandbox")
            else:
                self._continue(n)
            return
        if not (self._mediated(src.path) or self._mediated(dst.path)):
            self._elsewhere(n, "rename", src.path, dst.path)
            return
        if src.path in self.mount_points or dst.path in self.mount_points:
            respond(self.listener, n.id, error=errno.EBUSY)  # as the kernel answers: callers fall back on it
            return
        exchange = call.flags & RENAME_EXCHANGE
        why = self.protection.blocks_move(src.path) or self._reason(dst.path) \
            or self._other_name(n, src) or self._other_name(n, dst) \
            or (self._makes_repository(dst) if src.parent_path != dst.parent_path or src.name != dst.name else None)
        if not why and (exchange or os.path.lexists(f"/proc/self/fd/{dst.parent}/{dst.name}")):
            why = self.protection.blocks_move(dst.path)  # what is replaced (or swapped) goes away
        if not why and is_dir(src):  # a directory moved in brings its whole tree: .config/git, objects/info/…
            why = self.protection.holds_names(dst.path)
        if not why and exchange and is_dir(dst):
            why = self.protection.holds_names(src.path)
        if why:
            self._refuse(n, "rename", f"{src.path} -> {dst.path}", why)
            return
        self._done(n, "rename", src.path, _attempt(fdops.renameat2, src.parent, src.name, dst.parent, dst.name,
                                                   call.flags), to=dst.path)

    def _link(self, n: Notification, call: Call, opened: list[int]) -> None:
        dst_full, dst = self._resolve(n, call, 1, opened, follow=False)
        if not isinstance(dst, Entry) or not self._mediated(dst.path):
            if dst_full and isinstance(dst, str) and self._mediated(dst_full):
                respond(self.listener, n.id, error=getattr(errno, dst, errno.ENOENT))
            else:
                self._continue(n)
            return
        if call.flags & AT_EMPTY_PATH:  # needs CAP_DAC_READ_SEARCH, which the sandbox does not have
            respond(self.listener, n.id, error=errno.ENOENT)
            return
        why = self._reason(dst.path) or self._other_name(n, dst) or self._makes_repository(dst)
        if why:
            self._refuse(n, "link", dst.path, why)
            return
        source = self._link_source(n, call, opened)
        if source is None:
            self._refuse(n, "link", dst.path, "the link's source could not be resolved in the sandbox")
            return
        src_path, src_ref, st = source
        why = self._why_not(src_path, st)
        if why:
            self._refuse(n, "link", f"{src_path} -> {dst.path}", why)
            return
        self._done(n, "link", dst.path, _attempt(os.link, src_ref[1], dst.name, src_dir_fd=src_ref[0],
                                                 dst_dir_fd=dst.parent, follow_symlinks=src_ref[2]), source=src_path)

    def _link_source(self, n: Notification, call: Call, opened: list[int]):
        """(path, (dirfd, name, follow), stat) of a link's source; a /proc/…/fd/N source with
        AT_SYMLINK_FOLLOW (how an O_TMPFILE file gets its name) is taken from the caller's fd."""
        raw = call.paths[0][1]
        follow = bool(call.flags & AT_SYMLINK_FOLLOW)
        magic = _MAGIC_FD.match(raw)
        if magic and follow:
            owner = n.pid if magic.group(1) == "self" else int(magic.group(1))
            try:
                fd = os.open(f"/proc/{owner}/fd/{magic.group(2)}", os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return None
            opened.append(fd)
            real = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
            return real, (None, f"/proc/self/fd/{fd}", True), os.fstat(fd)
        _full, entry = self._resolve(n, call, 0, opened, follow=follow)
        if not isinstance(entry, Entry):
            return None
        try:
            st = os.lstat(entry.name, dir_fd=entry.parent)
        except OSError:
            return None
        return entry.path, (entry.parent, entry.name, False), st


# No setuid/setgid file is made beneath a writable host grant: inside the mounts are nosuid, but on the
# host a setuid file the sandbox left (setuid-root, when sandboxctl runs as root) would run with its
# owner's rights for every local user. A directory keeps its setgid bit (group inheritance only).
NO_SETID = 0o1777


def _chmod_mode(mode: int, st: os.stat_result | None) -> int:
    keep = 0o3777 if st is not None and stat.S_ISDIR(st.st_mode) else NO_SETID
    return mode & keep


def _attempt(function: Callable[..., Any], *args: Any, **kwargs: Any) -> int | OSError:
    try:
        function(*args, **kwargs)
    except OSError as exc:
        return exc
    return 0


def _file_size_limit(pid: int) -> int:
    """The caller's RLIMIT_FSIZE (limits.file_size): a length past it fails with EFBIG, as the
    kernel answers the caller itself (which also sends SIGXFSZ; the error is enough here)."""
    import resource

    try:
        soft, _hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    except OSError:
        return -1  # the caller is gone (or unreadable): nothing is truncated for it
    return soft if soft != resource.RLIM_INFINITY else 1 << 63
