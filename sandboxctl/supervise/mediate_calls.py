"""What a trapped write-class call asks for, and where its paths lead in the sandbox's view.

`read_call` reads a call's arguments once from the caller's memory (steps 1 of supervise/mediate.py);
`_unmagic` makes the caller's own magic links plain paths; where they lead is mediate_resolve's.
"""

from __future__ import annotations

import os
import stat

from sandboxctl import lazyre
from sandboxctl.plan.syscalls import OPEN_CALLS
from sandboxctl.record import Record
from sandboxctl.supervise import processes
from sandboxctl.supervise.notify import AT_FDCWD, Notification, ProcessMemory

O_CREAT, O_TRUNC = os.O_CREAT, os.O_TRUNC
AT_REMOVEDIR = 0x200


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
        pid = leader(pid)
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


def leader(pid: int) -> int | None:
    """The host pid of the thread `pid`'s process (the Tgid of its status)."""
    tgid = processes.status_fields(pid, "Tgid").get("Tgid", "")
    return int(tgid) if tgid.isdigit() else None
