"""Where a trapped call's paths lead in the sandbox's view (steps 2 and 3 of supervise/mediate.py).

`Resolver.entry` resolves a path from the sandbox's root with RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS, the caller's own magic links translated first (mediate_calls._unmagic),
and reads back from the kernel where the parent lies; where our view cannot follow the caller's
(a link into /proc/self), mediate_walk walks it. The mediator decides and performs (step 4).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from sandboxctl.supervise import fdops
from sandboxctl.supervise.mediate_calls import Entry, _split, _unmagic

MAX_SYMLINKS = 40
MAX_HELD_DIRS = 16  # directories the Resolver keeps open between calls (within fd_budget.RESERVE)


class Budget:
    """What one call's resolution has spent, across every walk it makes: the Resolver follows a
    final symlink itself and walks each new parent afresh, and each walk counted from zero (its
    lookups) or from the final links alone (its symlinks). A chain of final links through
    /proc/self cost 35 walks of up to MAX_STEPS each (a third of a second of the supervisor's time
    per call), and was resolved where the kernel's 41st symlink fails with ELOOP (review rev)."""

    __slots__ = ("links", "steps")

    def __init__(self, links: int = 0) -> None:
        self.steps = 0  # components looked up so far, by every walk of the call
        self.links = links  # symlinks followed so far that the kernel counts too (a lower bound)

    def __repr__(self) -> str:
        return f"Budget(steps={self.steps}, links={self.links})"


class Unresolved:
    """Where the path leads in the caller's view could not be established: refused and logged.
    A plain object, never a tuple: the walk's answer is told from (descriptor, path) by type."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"Unresolved({self.why!r})"


class Resolver:
    """Resolves the caller's paths in the sandbox's own view, from its root: one descriptor for the
    run, opened by the supervisor from the sandbox's PID-namespace init while its pidfd proved it
    alive (supervise/loop.py). Never from a caller's /proc/PID/root: a caller may be killed and
    its pid reused (by a host process: the supervisor sees host pids) before the open, and a root
    cached from it would resolve every later call in the host's view. Every process of a sandbox
    has the init's root (chroot, pivot_root and new mount namespaces are refused inside)."""

    def __init__(self, root: int | None) -> None:
        self.root: int | None = root  # owned: closed by close()
        # directories resolved lately, kept open: path as the kernel named it -> (O_PATH descriptor,
        # its (st_dev, st_ino)). Owned here, never in a call's `opened`; see _held.
        self.held: dict[str, tuple[int, tuple[int, int]]] = {}

    def close(self) -> None:
        for fd, _identity in self.held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held.clear()
        if self.root is not None:
            with contextlib.suppress(OSError):
                os.close(self.root)
            self.root = None

    def _held(self, parent_path: str, opened: list[int]) -> tuple[int, tuple[int, int]] | None:
        """A directory resolved at `parent_path` by an earlier call, if the kernel still names it
        so (readlink of our descriptor, as for a fresh one): then resolving the path again would
        reach this same directory (every component a directory, no symlink — the key is what the
        kernel read back — and no mount can be made inside). A directory moved, removed or
        replaced since reads back otherwise and is dropped; the path is then resolved afresh.
        Whatever is judged is still the path read back from the descriptor the call uses. A
        dropped descriptor is closed with the call's own (`opened`): an entry this call resolved
        before may still use it."""
        held = self.held.get(parent_path)
        if held is None:
            return None
        try:
            real = os.readlink(f"/proc/self/fd/{held[0]}")
        except OSError:
            real = None
        if real == parent_path:
            # the most recently used last: MAX_HELD_DIRS evicts the least recently used (a git commit
            # makes a few objects/xx directories each time, which pushed .git itself out first)
            del self.held[parent_path]
            self.held[parent_path] = held
            return held
        del self.held[parent_path]
        opened.append(held[0])
        return None

    def _hold(self, parent_path: str, fd: int, opened: list[int]) -> tuple[int, int] | None:
        """Keep a freshly resolved directory for the next calls (the least recently used goes past
        MAX_HELD_DIRS, closed with this call's descriptors: an entry it resolved may use it); its
        identity is what _other_name compares with the launch record."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if len(self.held) >= MAX_HELD_DIRS:
            opened.append(self.held.pop(next(iter(self.held)))[0])
        opened.remove(fd)  # the cache owns it now
        identity = (st.st_dev, st.st_ino)
        self.held[parent_path] = (fd, identity)
        return identity

    def drop_held(self, opened: list[int]) -> None:
        """A directory's mode changed: a held directory beneath it may no longer be reachable to
        the caller (search permission is checked on every component of a fresh resolution, never
        on a held descriptor). Every one is dropped, closed with the call's own descriptors."""
        opened.extend(fd for fd, _identity in self.held.values())
        self.held.clear()

    def root_fd(self) -> int:
        if self.root is None:  # closed (the run is over) or never opened: nothing is resolved
            raise OSError(errno.EBADF, "the sandbox's root is closed")
        return self.root

    def entry(self, pid: int, path: str, opened: list[int], *,
              follow: bool) -> Entry | str | Unresolved | None:
        """Resolve path (absolute, in the sandbox's view) to its parent directory and name;
        with follow, a final symlink is followed (inside the sandbox's root). An errno name
        string only when the caller's own lookup certainly fails so (_walked); Unresolved when a
        symlink on the way leads where we cannot follow it as the caller would (refused and
        logged); None when we cannot resolve it for another reason (the kernel decides)."""
        budget = Budget()  # one for the call: every walk its final symlinks lead to spends from it
        for hop in range(MAX_SYMLINKS):
            plain = _unmagic(pid, path)
            if plain is None:
                return None
            if plain != path:  # /proc/self + its magic link: two links to the kernel; /dev/fd/N three
                budget.links += 2 if path.startswith("/proc/") else 3
                if budget.links > MAX_SYMLINKS:
                    return "ELOOP"
            path = plain
            split = _split(path)
            if split is None:
                return None
            parent_path, name = split
            held = self._held(parent_path, opened)
            if held is not None:
                entry = Entry(held[0], parent_path, name, parent_id=held[1])
            else:
                try:
                    parent = fdops.openat2(self.root_fd(), parent_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                           0, fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_MAGICLINKS)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        return None
                    walked = self._walked(pid, parent_path, exc.errno, hop, budget)
                    if not isinstance(walked, tuple):
                        return walked
                    parent, real = walked
                    opened.append(parent)
                    entry = Entry(parent, real, name)
                else:
                    opened.append(parent)
                    try:
                        real = os.readlink(f"/proc/self/fd/{parent}")
                    except OSError:
                        return None
                    if not real.startswith("/"):
                        return None
                    # never a name ending " (deleted)": the kernel reads a removed directory back so, and
                    # one held under it would be used for the live directory of that name ever after
                    held_as = real == parent_path and not real.endswith(" (deleted)")
                    identity = self._hold(real, parent, opened) if held_as else None
                    entry = Entry(parent, real, name, parent_id=identity)
            if not follow:
                return entry
            try:
                st = os.lstat(name, dir_fd=entry.parent)
            except FileNotFoundError:
                return entry._replace(looked=True)
            except OSError:
                return None
            if not stat.S_ISLNK(st.st_mode):
                return entry._replace(looked=True, st=st)
            try:
                target = os.readlink(name, dir_fd=entry.parent)
            except OSError:
                return None
            path = target if target.startswith("/") else f"{entry.parent_path.rstrip('/')}/{target}"
            budget.links += 1  # this final link, counted by the kernel as by the hops
            if budget.links > MAX_SYMLINKS:
                return "ELOOP"
        return "ELOOP"

    def directory(self, pid: int, path: str, opened: list[int]) -> tuple[int, str] | str | Unresolved | None:
        """A directory path itself (O_TMPFILE's) in the caller's view: our O_PATH descriptor of it
        and the path the kernel reads back, or what entry() answers instead (an errno name only
        when certain)."""
        plain = _unmagic(pid, path)
        if plain is None:
            return None
        try:
            fd = fdops.openat2(self.root_fd(), plain, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                               fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            walked = self._walked(pid, plain, exc.errno, 0)
            if isinstance(walked, tuple):
                opened.append(walked[0])
            return walked
        opened.append(fd)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return (fd, real) if real.startswith("/") else None

    def _walked(self, pid: int, parent_path: str, error: int, hops: int,
                budget: Budget | None = None) -> tuple[int, str] | str | Unresolved:
        """openat2 failed in our view (ENOENT, ENOTDIR, ELOOP): is that the caller's answer too? A walk
        that follows no symlink at all (RESOLVE_NO_SYMLINKS) failing so is the same walk as the
        caller's: certain. A symlink on the way may lead through /proc/self (which names the reader:
        "missing" for us) or a magic link (refused in our view): the path is walked again as the
        caller's kernel walks it (mediate_walk). Never concluded from our view alone: a write reaching
        /usr/share through ws/l -> /proc/self/root/usr/share was answered ENOENT and never logged."""
        if error != errno.ELOOP:
            try:
                fd = fdops.openat2(self.root_fd(), parent_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                                   fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_SYMLINKS)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return errno.errorcode[exc.errno]
            else:
                os.close(fd)  # there after all (it appeared meanwhile): walked below like any other
        from sandboxctl.supervise import mediate_walk  # the slow path, rare: not imported with the listener

        return mediate_walk.walk(self.root_fd(), pid, parent_path, hops, budget)
