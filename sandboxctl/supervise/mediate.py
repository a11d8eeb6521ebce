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

The Mediator is split by step, one mixin per module (its state stays one object's, set here):

  mediate_calls.py    steps 1 to 3: reading a call, resolving its paths
  mediate_judge.py    step 4's judgement: the rules, identities, repositories, where a path lies
  mediate_opens.py    write-intent opens, performed and handed over (or passed to `outside`)
  mediate_changes.py  the other calls (mkdir to link), performed on the resolved descriptors
  mediate_answers.py  the answers to the kernel, and the denial and allow records of each

This module keeps the entry point (handle: read, dispatch by call family), the caller's umask,
the resolution of one path argument, and the check that the call is still asked (`_still_asked`):
everything read of the caller (its memory, /proc/PID/cwd, fd/N, status, limits, a pidfd) names
the caller only while its notification is pending — once it is killed its pid may be another
process's, a host process's too — so every change is made only after SECCOMP_IOCTL_NOTIF_ID_VALID
has said, after the last of those reads, that the call still waits for its answer.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping

from sandboxctl.plan.model import Plan
from sandboxctl.protect.rules import Protection
from sandboxctl.supervise import fdops
from sandboxctl.supervise.mediate_answers import Answers
from sandboxctl.supervise.mediate_calls import Call, Entry, read_call, sandbox_path
from sandboxctl.supervise.mediate_changes import (  # noqa: F401 - imported from here
    AT_EMPTY_PATH,
    AT_REMOVEDIR,
    AT_SYMLINK_FOLLOW,
    AT_SYMLINK_NOFOLLOW,
    NO_SETID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Changes,
)
from sandboxctl.supervise.mediate_judge import BUSY, Judgement, LiveGitRefs  # noqa: F401 - imported from here
from sandboxctl.supervise.mediate_opens import (  # noqa: F401 - imported from here
    MAX_WAITING,
    O_ACCMODE,
    O_CREAT,
    O_EXCL,
    O_NOFOLLOW,
    O_TMPFILE,
    O_TRUNC,
    Opens,
)
from sandboxctl.supervise.mediate_resolve import Resolver
from sandboxctl.supervise.notify import Notification, respond, still_valid

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


CALL_OPS = ("open", "mkdir", "bind", "mknod", "unlink", "rmdir", "symlink", "truncate", "chmod", "fchmod", "rename",
            "link")


class NotCopied:
    """`workspace: overlay`: the workspace files the kernel would not change (EOVERFLOW). overlayfs
    copies a file up with its owner and group, and fails when either is not mapped in the
    sandbox's user namespace (bubblewrap maps the caller's own uid and gid only: a file of a
    secondary group, or another user's). The command sees only "Value too large for defined data
    type"; the run's end says what it was (lifecycle). A few paths kept, every failed call counted."""

    KEPT = 10

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.count = 0

    def note(self, path: str) -> None:
        self.count += 1
        if len(self.paths) < self.KEPT and path not in self.paths:
            self.paths.append(path)


class CallerGone(Exception):
    """The call is no longer pending (its caller was killed): what was read of it may be another
    process's, so nothing is done for it and nothing is answered."""


class Mediator(Judgement, Opens, Changes, Answers):
    """Answers write-class calls: performs, refuses, or lets the kernel decide (outside the grants)."""

    def __init__(self, listener: int, plan: Plan, protection: Protection, log: Callable[..., None],
                 denied: list[dict[str, Any]], outside: Callable[[Notification, str, str, int, int], None],
                 protected_inodes: Mapping[tuple[int, int], str] | None = None, log_allowed: bool = True, *,
                 root: int | None, protected_incomplete: str | bool | None = None,
                 log_soon: Callable[..., None] | None = None):
        """root: a descriptor of the sandbox's root, now the Mediator's (mediate_resolve.Resolver);
        None: nothing is resolved (the run is failing: the sandbox's root could not be opened).
        log_soon: where the records of performed calls go once the kernel has the answer (queued
        for the log's thread, ActionLog.write_soon: in order, before any later record); denials
        are written at once, with `log`."""
        self.listener = listener
        self.plan = plan
        self.protection = protection
        self.log = log
        self.log_soon = log_soon or log
        self.denied = denied
        self.outside = outside  # a write-intent open outside the grants: approvals (file_escape)
        self.protected_inodes = dict(protected_inodes or {})
        # where the launch record was cut short: some protected files have no identity in it
        self.protected_incomplete = protected_incomplete
        self.log_allowed = log_allowed
        self.resolver = Resolver(root)
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
        self.waiters: list[threading.Thread] = []  # those threads (joined by close)
        self.closed = False
        self._calls = {op: getattr(self, f"_{op}") for op in CALL_OPS}  # Call.op -> its method, bound once
        self.live = _live_refs(plan)  # the host's git config changed meanwhile: its new hooksPath is held too
        self.late_held: list[str] = []
        self.not_copied = NotCopied()
        self._bases: dict[int, str | None] = {}  # the call's dirfds read so far -> where (new for each call)

    def close(self) -> None:
        """The sandbox is gone: FIFO opens still waiting stop (they poll), and are over before
        the listener closes and run.end is written."""
        self.closed = True
        deadline = time.monotonic() + 1.0
        for thread in self.waiters:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.resolver.close()

    def handle(self, notification: Notification, name: str) -> None:
        try:
            call = read_call(notification, name)
        except OSError as exc:
            self._unreadable(notification, name, exc)
            return
        if call is None:
            respond(self.listener, notification.id, allow=True)
            return
        for _dirfd, path in call.paths:
            if not path and not (call.op in ("chmod", "link") and call.flags & AT_EMPTY_PATH):
                # the kernel's answer to an empty path; never the cwd or the dirfd itself
                respond(self.listener, notification.id, error=errno.ENOENT)
                return
        if self.live is not None:
            self._follow_host_config()
        opened: list[int] = []
        self._bases = {}
        try:
            with self.as_caller:
                self._calls[call.op](notification, call, opened)
        except CallerGone:
            self.umasks.pop(notification.pid, None)  # it may have been read from the pid's next owner
        finally:
            for fd in opened:
                try:  # noqa: SIM105 -- contextlib.suppress costs a Python context manager per descriptor, every call
                    os.close(fd)
                except OSError:
                    pass

    def _follow_host_config(self) -> None:
        """Hold what a git config file the host changed now points at (mediate_judge.LiveGitRefs, red team
        rt14: `npm install` on the host ran husky during a session, and the sandbox's
        .husky/pre-commit then ran at the host's commit); the answers cached by path go."""
        held = [(path, why) for path, why in self.live.poll() if self.protection.hold(path, why)]
        if held:
            self._reason.cache_clear()
            self.late_held += [path for path, _ in held]  # the end-of-run check says what changed there
            for path, why in held:
                self._hold_identities(path, why)

    def _hold_identities(self, path: str, why: str) -> None:
        """The files beneath a path held late, by identity as the launch record's are: a hardlink
        the sandbox made of `hidden/pre-commit` before the host set `core.hooksPath = hidden` was
        written through by that other name, and the host's next commit ran it (rt16). Past
        MAX_ENTRIES the walk stops and every file with another name is refused (protected_incomplete)."""
        from sandboxctl.protect.snapshot import MAX_ENTRIES

        pending, seen = [path], 0
        while pending:
            current = pending.pop()
            try:
                st = os.lstat(current)
            except OSError:
                continue
            seen += 1
            if seen > MAX_ENTRIES:
                self.protected_incomplete = self.protected_incomplete or path
                return
            if stat.S_ISREG(st.st_mode):
                self.protected_inodes.setdefault((st.st_dev, st.st_ino), why)
            elif stat.S_ISDIR(st.st_mode):
                try:
                    pending += [os.path.join(current, name) for name in os.listdir(current)]
                except OSError:
                    continue

    def held_late(self) -> list[str]:
        """At the run's end: every path held since launch because the host's git config came to
        name it — looked at once more now, for a change no call of the sandbox came after (a write
        on a descriptor it opened before is no call)."""
        if self.live is not None:
            self.live.next_poll = 0.0
            self._follow_host_config()
        return list(self.late_held)

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

    def _still_asked(self, n: Notification) -> None:
        """Called after the last read of the caller's state and right before the change made for
        it (one ioctl per performed call): raises CallerGone once the call is no longer pending."""
        if not still_valid(self.listener, n.id):
            raise CallerGone

    def forget(self, pid: int) -> None:
        self.umasks.pop(pid, None)

    def _resolve(self, n: Notification, call: Call, index: int, opened: list[int], *,
                 follow: bool) -> tuple[str | None, Entry | str | None]:
        dirfd, raw = call.paths[index]
        full = sandbox_path(n.pid, dirfd, raw, self._bases)  # both paths of a rename on one reading of the cwd
        if full is None:
            return None, None
        return full, self.resolver.entry(n.pid, full, opened, follow=follow)


def _live_refs(plan: Plan) -> LiveGitRefs | None:
    """Only where the supervisor performs the changes (bwrap): elsewhere nothing asks it."""
    if not plan.protect.mediated or not plan.protect.roots:
        return None
    from sandboxctl.paths import home_dir

    return LiveGitRefs(plan.protect.gitdirs, plan.protect.repositories, os.path.realpath(home_dir()))
