"""Whether the mediator may make a change: the rules, identities, repositories and mounts.

Part of the Mediator (mediate.py). A path is judged as resolved in the sandbox's own view
(mediate_calls.py): by protect.rules (its spelling), by the launch record (its identity: a
hardlink or a directory reached by another name), by what it would make (a git repository),
and by where it lies (a writable host grant, the sandbox's own mounts, or a mount point).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from sandboxctl.paths import within
from sandboxctl.protect import names
from sandboxctl.protect.names import GITDIR_MARKERS, gitdir_marker
from sandboxctl.supervise import aliases
from sandboxctl.supervise.mediate_calls import Entry, exists_at
from sandboxctl.supervise.mediate_resolve import Unresolved
from sandboxctl.supervise.notify import respond

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable

    from sandboxctl.supervise.mediate_calls import Call
    from sandboxctl.supervise.notify import Notification

BUSY = "a mount point"  # a sentinel reason: answered EBUSY, as the kernel would


class Judgement:
    """Where a path lies and why it may not change (a mixin of mediate.Mediator)."""

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

    def _why_not(self, path: str, st: os.stat_result | None = None, *, written: bool = True) -> str | None:
        """Why the sandbox may not change this entry: the rules (by path) or the launch record
        (by identity: a hardlink made before the run is another name for the same file).
        written=False: the file's content and mode stay (a link's source gets a name more)."""
        if self._root_of(path) is None:
            return None  # not beneath a writable grant: the mounts and Landlock decide there
        why = self._reason(path)
        if why is None and st is not None:
            why = self.identity_reason(st, written=written)
        return why

    def identity_reason(self, st: os.stat_result, *, written: bool = True) -> str | None:
        """Why this file may not be written whatever its path: another name for a protected file
        (by the launch record's identities, or, with the record cut short, by its link count).
        Also asked of an approved write outside the grants (file_escape): never approvable."""
        why = self.protected_inodes.get((st.st_dev, st.st_ino))
        if why:
            why = f"{why} (another name for a protected file)"
        elif written and self.protected_incomplete and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            # a protected directory past the launch record's limit: its files left out have no
            # identity above, so a hardlink of one made before the run (uv's cache into a venv)
            # would be written through unseen; fail closed: no file with another name is written.
            # A name more (link) is no write: the protected name stays, so every other name of
            # such a file still counts two or more, and a write through it is refused here
            from sandboxctl.protect.snapshot import MAX_ENTRIES

            cut = self.protected_incomplete
            where = f"{cut} is" if isinstance(cut, str) else "the protected paths are"
            why = (f"protected: this file has another name, and {where} too big to record whole (past "
                   f"{MAX_ENTRIES} entries): a hardlink of a file left out cannot be told apart from it")
        return why

    def _other_name(self, n: Notification, entry: Entry) -> str | None:
        """Why an entry reached by another name than its own may not be changed (the rules judged
        the spelling, folded; supervise/aliases.py): its parent is a protected directory by
        identity, or a component of its path is an 8.3 short name of another entry."""
        root = self._root_of(entry.path)
        if root is None:
            return None
        if self.protected_inodes:
            identity = entry.parent_id  # the held directory's, read when it was resolved
            if identity is None:
                try:
                    st = os.fstat(entry.parent)
                except OSError:
                    return "the resolved directory could not be examined"
                identity = (st.st_dev, st.st_ino)
            why = self.protected_inodes.get(identity)
            if why:
                return f"{why} (a directory reached by another name)"
        alias = aliases.short_alias(self.resolver.root_fd(), entry.path, root)
        if alias:
            return (f"protected: {alias} is a short (8.3) name of another entry, which the rules cannot judge "
                    "by it: use the entry's long name")
        return None

    def _makes_repository(self, entry: Entry, opened: list[int]) -> str | None:
        """git takes any directory holding HEAD with objects/ and refs/ (or a commondir) for a
        repository and runs what its config says; a directory under a writable grant must not
        become one during the run (name rules cannot see it: the entries have ordinary names).
        The look and the making are one step for every run: the directory is locked (flock) until
        the call's descriptors close, after the change — two runs in one workspace each saw the
        other's marker absent and made their own (red team rt8: a repository, half the time)."""
        marker = gitdir_marker(entry.name)  # folded: `head` is HEAD on a case-insensitive directory
        if marker is None or self._root_of(entry.path) is None:
            return None
        if self.protection.gitdir_of(entry.parent_path):
            return None  # inside a git directory: git's own work
        why = _lock_markers(entry, opened)
        if why:
            return why
        present = {name for name in GITDIR_MARKERS if name != marker and exists_at(entry.parent, name)}
        after = present | {marker}
        if "HEAD" in after and ({"objects", "refs"} <= after or "commondir" in after):
            return ("protected: this would make the directory a git repository (HEAD with objects/ and refs/): "
                    "its config would run on the host's next git command there")
        return None

    def _busy(self, path: str) -> str | None:
        """A mount point cannot be removed or renamed over: the kernel's EBUSY, not a denial."""
        return BUSY if path in self.mount_points else self.protection.blocks_move(path)

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
            if isinstance(entry, Unresolved):  # where it leads is unknown: never continued unseen
                self._refuse(n, call.op, full or call.paths[0][1], entry.why)
            elif full and entry is not None and (here or self._mediated(full)):
                respond(self.listener, n.id, error=getattr(errno, entry, errno.ENOENT))
            elif here:
                self._refuse(n, call.op, full or call.paths[0][1], "the path could not be resolved in the sandbox")
            else:
                self._continue(n)
            return None
        st = self._lstat(entry)
        why = (guard(entry.path) if guard else self._why_not(entry.path, st)) or self._other_name(n, entry)
        if not why and creates and st is None:
            why = self._makes_repository(entry, opened)
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


MARKER_LOCK_S = 2.0  # how long a marker's directory lock is waited for (another supervisor holds it µs)


def _lock_markers(entry: Entry, opened: list[int]) -> str | None:
    """Lock the entry's directory for the rest of the call (its descriptor joins `opened`): every
    supervisor takes this lock before looking at a directory's markers, so one run's look never
    misses another's marker being made. Held past MARKER_LOCK_S (a sandbox may flock it too):
    refused, as is a directory that cannot be opened to lock."""
    import fcntl
    import time

    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=entry.parent)
    except OSError as exc:
        return (f"protected: {entry.name} is a git directory's marker, and its directory could not be opened to "
                f"lock it against another run making the others ({exc.strerror})")
    opened.append(fd)
    deadline, delay = time.monotonic() + MARKER_LOCK_S, 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return (f"protected: {entry.name} is a git directory's marker, and its directory stayed locked "
                        f"(by another run, or a process holding flock on it) for {MARKER_LOCK_S:g} s")
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
        except OSError as exc:  # a file system without flock (some FUSE): fail closed
            return (f"protected: {entry.name} is a git directory's marker, and its directory cannot be locked "
                    f"against another run making the others ({exc.strerror})")


# ------------------------------------------------------------------ the host's git config, meanwhile
POLL_S = 0.01
SPACING = 50  # a poll costs at most 1/50 of the time between two (thousands of nested repositories)
# up to this many config files (a repository and a nested one, with the host's global ones) are
# statted before every judged call: spaced by POLL_S, a sandbox making calls all the time and
# watching .git/config rewrote .husky/pre-commit within the 10 ms after the host set
# core.hooksPath, 5 times in 5 (review rev); a few stats cost microseconds against a call's ~100
EVERY_CALL = 8


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class LiveGitRefs:
    """The git config files of the repositories found at launch, and the host's global ones: what
    the host changes in one while a run goes on is held from then on.

    The planner reads core.hooksPath and includes once, at launch. A session (or a long run) outlives
    that: the user's `npm install` runs husky, which sets `core.hooksPath = .husky/_` in .git/config,
    and from then on the host's next commit runs `.husky/pre-commit` — which the sandbox could still
    rewrite (red team rt14, judged by the host's git). The sandbox cannot write these config files
    (they are protected), so a change of one is the host's: the mediator asks `poll()` before it
    judges a call, and holds the new targets as the planner would have.

    Cost: one stat per config file before every judged call where there are at most EVERY_CALL of
    them (a target is then held from the host's change on: a call judged after it sees it); past
    that, at most once per POLL_S (a run of 10 000 writes in a second stats them 100 times), and
    never more than 1/SPACING of the time (a workspace of thousands of nested repositories is looked
    at less often): a target becomes held within POLL_S of the host's change, a window a sandbox
    watching the config can write in. Never before it: what the sandbox wrote there until then is
    its, as any file of the workspace the user then chooses to run.
    """

    def __init__(self, gitdirs: tuple[str, ...], repositories: tuple[str, ...], home: str):
        worktrees = sorted({os.path.dirname(r) for r in repositories if names.is_git_name(os.path.basename(r))})
        self.configs: list[tuple[str, str | None, list[str]]] = []
        for gitdir in gitdirs:
            worktree = os.path.dirname(gitdir) if names.is_git_name(os.path.basename(gitdir)) else None
            for name in ("config", "config.worktree"):
                self.configs.append((f"{gitdir}/{name}", worktree, [worktree] if worktree else []))
        for template in names.GLOBAL_GIT_CONFIGS:
            self.configs.append((template.replace("{home}", home), None, worktrees))
        self.home = home
        self.seen = {path: _signature(path) for path, _, _ in self.configs}
        # read once at the first poll, for the files they include: a change of an included file
        # (~/.gitconfig.local setting core.hooksPath) was never seen, only the including one's (review rev)
        self.unread = {path for path, _, _ in self.configs if self.seen[path] is not None}
        self.next_poll = time.monotonic() + POLL_S

    def poll(self) -> list[tuple[str, str]]:
        """(path, why) for what a config file changed since the last poll now points at (all of
        its references: the caller keeps what is new and under its roots)."""
        now = time.monotonic()
        if now < self.next_poll and len(self.configs) > EVERY_CALL:
            return []
        found: list[tuple[str, str]] = []
        for path, worktree, worktrees in list(self.configs):
            signature = _signature(path)
            changed = signature != self.seen[path]
            if not changed and path not in self.unread:
                continue
            self.seen[path] = signature
            self.unread.discard(path)
            from sandboxctl.protect import gitconfig  # only once a config changed (or at the first poll)

            hooks, includes = gitconfig.references(path, self.home, worktree)
            if changed:  # unchanged since launch: the planner held what it leads to (or released it)
                found += gitconfig.held_targets(path, hooks, includes, worktrees)
            for included in includes:  # watched from now on, as the file including it (read just now)
                if included not in self.seen:
                    self.seen[included] = _signature(included)
                    self.configs.append((included, worktree, worktrees))
        done = time.monotonic()
        self.next_poll = done + max(POLL_S, (done - now) * SPACING)
        return found
