"""What a trapped write-class call asks for, and where its paths lead in the sandbox's view.

`read_call` reads a call's arguments once from the caller's memory (steps 1 of supervise/mediate.py);
`Resolver.entry` resolves a path from the sandbox's root with RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS, the caller's own magic links translated first, and reads back from the
kernel where the parent lies (steps 2 and 3). The mediator decides and performs (step 4).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from sandboxctl import lazyre
from sandboxctl.plan.syscalls import OPEN_CALLS
from sandboxctl.record import Record
from sandboxctl.supervise import fdops, mediate_walk
from sandboxctl.supervise.mediate_walk import Budget, Unresolved
from sandboxctl.supervise.notify import AT_FDCWD, Notification, ProcessMemory

O_CREAT, O_TRUNC = os.O_CREAT, os.O_TRUNC
AT_REMOVEDIR = 0x200
MAX_SYMLINKS = 40
MAX_HELD_DIRS = 16  # directories the Resolver keeps open between calls (within fd_budget.RESERVE)


def is_dir(entry: Entry) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(entry.name, dir_fd=entry.parent).st_mode)
    except OSError:
        return False


def exists_at(dirfd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dirfd)
    except OSError:
        return False
    return True


class Entry(Record):
    """A resolved directory entry: our O_PATH descriptor of its parent, the parent's path as the
    kernel names it inside the sandbox, and the entry's name in it (and, when resolution already
    looked at it, its lstat: None for no such entry)."""

    parent: int
    parent_path: str
    name: str
    looked: bool = False
    st: os.stat_result | None = None
    parent_id: tuple[int, int] | None = None  # the parent's (st_dev, st_ino), when already known

    @property
    def path(self) -> str:
        return f"{self.parent_path.rstrip('/')}/{self.name}"


class Call(Record):
    op: str  # open | mkdir | mknod | unlink | rmdir | rename | link | symlink | truncate | chmod | fchmod
    paths: tuple[tuple[int, str], ...]  # (dirfd, path) as the caller gave them
    flags: int = 0
    mode: int = 0
    extra: int = 0  # dev for mknod, length for truncate, resolve for openat2, fd for fchmod
    link_target: str = ""  # symlink's contents


def sandbox_path(pid: int, dirfd: int, path: str, bases: dict[int, str | None] | None = None) -> str | None:
    """The caller's path made absolute in its own view (None: its base is not a directory path).
    `bases`: the bases this call already read (dirfd -> where), so a rename or link of two
    relative paths reads the caller's cwd once, as one snapshot (one readlink of /proc less)."""
    if path.startswith("/"):
        return path
    if bases is None or dirfd not in bases:
        where = _linked_path(pid, "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}")
        if bases is not None:
            bases[dirfd] = where
    else:
        where = bases[dirfd]
    if where is None:
        return None
    return f"{where.rstrip('/')}/{path}" if path else where


def _linked_path(pid: int, link: str) -> str | None:
    """The path /proc/PID/LINK names (cwd, fd/N), None when it is not a path (a pipe, a deleted file)."""
    try:
        where = os.readlink(f"/proc/{pid}/{link}")
    except OSError:
        return None
    if not where.startswith("/") or where.endswith(" (deleted)"):
        return None
    return where


MAGIC_STARTS = ("/proc/self/", "/proc/thread-self/", "/dev/fd/", "/dev/std")  # what _MAGIC can match
_MAGIC = lazyre.Pattern(r"^/(?:proc/(?:self|thread-self)/(fd/\d+|cwd|root)|dev/(fd/\d+|stdin|stdout|stderr))(/.*)?$",
                       MAGIC_STARTS)
_STDIO = {"stdin": "fd/0", "stdout": "fd/1", "stderr": "fd/2"}


def _unmagic(pid: int, path: str) -> str | None:
    """A path through the caller's own magic links (/proc/self/fd/N, /dev/stdout, /proc/self/cwd)
    made into the plain path the kernel names for it, in the sandbox's view. The same path when it
    has none; None when the link does not lead to a path (a pipe, a deleted file)."""
    match = _MAGIC.match(path)
    if not match:
        return path
    link = match.group(1) or match.group(2)
    link = _STDIO.get(link, link)
    rest = match.group(3) or ""
    if link == "root":
        return rest or "/"
    if not path.startswith("/proc/thread-self/"):
        # /proc/self (and /dev/fd -> /proc/self/fd) names the caller's process, whose cwd and
        # descriptors are its leader's: a thread's own (unshare(CLONE_FS) or CLONE_FILES) are
        # another place, where the supervisor created what the kernel creates in the leader's (review rev)
        pid = mediate_walk.leader(pid)
        if pid is None:
            return None
    where = _linked_path(pid, link)
    return None if where is None else where + rest

    return None


def _split(path: str) -> tuple[str, str] | None:
    trimmed = path.rstrip("/")
    if not trimmed:
        return None
    parent, _, name = trimmed.rpartition("/")
    if name in ("", ".", ".."):
        return None
    return (parent or "/"), name


def read_call(n: Notification, name: str) -> Call | None:
    """What a trapped call asks for, its path arguments read once from the caller's memory
    (None: a call that is not ours to perform, such as bind() of an abstract socket)."""
    a = n.args
    low = [x & 0xFFFFFFFF for x in a]
    dirfd = low[0]
    if name in OPEN_CALLS:
        memory = ProcessMemory(n.pid)
        try:
            if name == "creat":
                return Call("open", ((AT_FDCWD, memory.path(a[0])),), O_CREAT | O_TRUNC | os.O_WRONLY, low[1])
            if name == "open":
                return Call("open", ((AT_FDCWD, memory.path(a[0])),), low[1], low[2])
            if name == "openat":
                return Call("open", ((dirfd, memory.path(a[1])),), low[2], low[3])
            flags = memory.word(a[2]) if a[2] else 0  # openat2: struct open_how {flags, mode, resolve}
            return Call("open", ((dirfd, memory.path(a[1])),), flags & 0xFFFFFFFF,
                        memory.word(a[2] + 8) if a[2] else 0, memory.word(a[2] + 16) if a[2] else 0)
        finally:
            memory.close()
    if name == "fchmod":
        return Call("fchmod", (), mode=low[1], extra=low[0])
    if name == "bind":
        return _read_bind(n, a, low)
    memory = ProcessMemory(n.pid)
    try:
        text = memory.path
        if name == "mkdir":
            return Call("mkdir", ((AT_FDCWD, text(a[0])),), mode=low[1])
        if name == "mkdirat":
            return Call("mkdir", ((dirfd, text(a[1])),), mode=low[2])
        if name == "mknod":
            return Call("mknod", ((AT_FDCWD, text(a[0])),), mode=low[1], extra=a[2])
        if name == "mknodat":
            return Call("mknod", ((dirfd, text(a[1])),), mode=low[2], extra=a[3])
        if name == "unlink":
            return Call("unlink", ((AT_FDCWD, text(a[0])),))
        if name == "rmdir":
            return Call("rmdir", ((AT_FDCWD, text(a[0])),))
        if name == "unlinkat":
            return Call("rmdir" if low[2] & AT_REMOVEDIR else "unlink", ((dirfd, text(a[1])),))
        if name == "rename":
            return Call("rename", ((AT_FDCWD, text(a[0])), (AT_FDCWD, text(a[1]))))
        if name in ("renameat", "renameat2"):
            return Call("rename", ((dirfd, text(a[1])), (low[2], text(a[3]))),
                        flags=low[4] if name == "renameat2" else 0)
        if name == "link":
            return Call("link", ((AT_FDCWD, text(a[0])), (AT_FDCWD, text(a[1]))))
        if name == "linkat":
            return Call("link", ((dirfd, text(a[1])), (low[2], text(a[3]))), flags=low[4])
        if name == "symlink":  # the target is text, not a path to resolve, but kept byte for byte too
            return Call("symlink", ((AT_FDCWD, text(a[1])),), link_target=text(a[0]))
        if name == "symlinkat":
            return Call("symlink", ((low[1], text(a[2])),), link_target=text(a[0]))
        if name == "truncate":
            return Call("truncate", ((AT_FDCWD, text(a[0])),), extra=a[1])
        if name == "chmod":
            return Call("chmod", ((AT_FDCWD, text(a[0])),), mode=low[1])
        if name == "fchmodat":
            return Call("chmod", ((dirfd, text(a[1])),), mode=low[2])
        if name == "fchmodat2":
            return Call("chmod", ((dirfd, text(a[1])),), mode=low[2], flags=low[3])
    finally:
        memory.close()
    return None

def _read_bind(n: Notification, a: list[int], low: list[int]) -> Call | None:
    """bind(2) of a pathname UNIX socket creates an entry; anything else is the kernel's."""
    length = min(low[2], 110)
    if length <= 2 or not a[1]:
        return None
    memory = ProcessMemory(n.pid)
    try:
        raw = os.pread(memory.fd, length, a[1])
    finally:
        memory.close()
    if len(raw) < 3 or int.from_bytes(raw[:2], "little") != 1 or raw[2] == 0:  # not AF_UNIX, or abstract
        return None
    path = raw[2:].split(b"\0", 1)[0]
    return Call("bind", ((AT_FDCWD, os.fsdecode(path)),), extra=low[0])


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
        return mediate_walk.walk(self.root_fd(), pid, parent_path, hops, budget)
