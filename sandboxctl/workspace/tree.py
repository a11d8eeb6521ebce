"""Read file trees without ever following a symlink: the run's layer, and the host's workspace.

Everything here resolves names one component at a time beneath an open directory (O_NOFOLLOW),
so a symlink — planted in a layer, or swapped into the workspace while we look — is read as a
symlink and never walked through. A layer is read as overlayfs reads it: a character device 0/0,
or an empty file carrying an `overlay.whiteout` xattr, is a whiteout (a deletion); a directory
whose `overlay.opaque` xattr is "y" hides everything beneath it in the lower layer (`user.` with
userxattr, `trusted.` for a privileged mount: both are read).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator

from sandboxctl.record import Record

OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")
WHITEOUT_XATTRS = ("user.overlay.whiteout", "trusted.overlay.whiteout")
# a metacopy file holds metadata only, its bytes stay in the lower layer: overlayfs never makes one
# with userxattr, so one in a layer was put there by hand, and its content cannot be read from it
METACOPY_XATTRS = ("user.overlay.metacopy", "trusted.overlay.metacopy")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


class Node(Record):
    """One entry of a tree, as far as the workspace is concerned (owner and times are not)."""

    kind: str  # file | dir | symlink | whiteout | fifo | socket | device | metacopy (a layer's, see above)
    mode: int  # permission bits, 0o7777
    size: int = 0
    target: str | None = None  # a symlink's text
    digest: str | None = None  # SHA-256 of a file's content, when it was read
    opaque: bool = False  # a layer directory that hides the lower one
    ctime_ns: int = 0
    mtime_ns: int = 0

    @property
    def special(self) -> bool:
        return self.kind in ("fifo", "socket", "device", "metacopy")

    def describe(self) -> dict:
        """What `changes --json`, the manifest and the apply journal record of a node."""
        out: dict = {"kind": self.kind, "mode": self.mode}
        if self.kind == "file":
            out.update(size=self.size, sha256=self.digest)
        elif self.kind == "symlink":
            out["target"] = self.target
        return out


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def from_stat(st: os.stat_result) -> Node:
    kind = kind_of(st.st_mode)
    if kind == "device" and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        kind = "whiteout"
    return Node(kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0,
                ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def node_at(dir_fd: int, name: str, *, digest: bool = False) -> Node | None:
    """The entry `name` of an open directory (None: absent); a symlink's text; a file's hash if asked."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return None
    node = from_stat(st)
    if node.kind == "symlink":
        node = node._replace(target=os.readlink(name, dir_fd=dir_fd))
    elif node.kind == "file" and digest:
        node = node._replace(digest=hash_file(dir_fd, name))
    return node


def open_dir(dir_fd: int, name: str) -> int:
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_root(path: str) -> int:
    """The top of a tree (the workspace, a layer): a real directory, not a symlink to one."""
    return os.open(path, DIR_FLAGS)


@contextlib.contextmanager
def opened_dir(dir_fd: int, name: str) -> Iterator[int]:
    fd = open_dir(dir_fd, name)
    try:
        yield fd
    finally:
        os.close(fd)


def open_parent(root_fd: int, relative: str) -> tuple[int, str]:
    """(descriptor of the parent directory, last name) of a relative path, walked without
    following any symlink: a symlink or a file on the way is ELOOP/ENOTDIR, never a detour."""
    parts = relative.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            if part in ("", ".", ".."):
                raise OSError(22, f"not a plain relative path: {relative!r}")
            child = open_dir(fd, part)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    if parts[-1] in ("", ".", ".."):
        os.close(fd)
        raise OSError(22, f"not a plain relative path: {relative!r}")
    return fd, parts[-1]


def hash_file(dir_fd: int, name: str) -> str:
    """SHA-256 of a regular file's content (opened without following a symlink, never blocking)."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(21, f"{name!r} is not a regular file")
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _xattr(dir_fd: int, name: str, keys: tuple[str, ...]) -> bytes | None:
    """The first of `keys` set on the entry itself (never a symlink's target)."""
    path = f"/proc/self/fd/{dir_fd}/{name}"
    for key in keys:
        try:
            return os.getxattr(path, key, follow_symlinks=False)
        except OSError:
            continue
    return None


def layer_node(dir_fd: int, name: str, *, digest: bool = True) -> Node | None:
    """An entry of an overlayfs upper layer, whiteouts and opaque directories recognised."""
    node = node_at(dir_fd, name, digest=False)
    if node is None:
        return None
    if node.kind == "dir":
        value = _xattr(dir_fd, name, OPAQUE_XATTRS)
        node = node._replace(opaque=value == b"y")
    elif node.kind == "file" and node.size == 0 and _xattr(dir_fd, name, WHITEOUT_XATTRS) is not None:
        node = node._replace(kind="whiteout")
    elif node.kind == "file" and _xattr(dir_fd, name, METACOPY_XATTRS) is not None:
        node = node._replace(kind="metacopy")
    if node.kind == "file" and digest:
        node = node._replace(digest=hash_file(dir_fd, name))
    return node


def names(dir_fd: int) -> list[str]:
    """The entries of an open directory, sorted (scandir on a duplicate: it closes what it gets)."""
    with os.scandir(os.dup(dir_fd)) as entries:
        return sorted(entry.name for entry in entries)


def walk(dir_fd: int, prefix: str = "", *, layer: bool = False, digest: bool = True) -> Iterator[tuple[str, Node]]:
    """(relative path, node) of everything beneath an open directory, parents before children."""
    for name in names(dir_fd):
        node = layer_node(dir_fd, name, digest=digest) if layer else node_at(dir_fd, name, digest=digest)
        if node is None:
            continue
        path = f"{prefix}{name}"
        yield path, node
        if node.kind == "dir":
            with opened_dir(dir_fd, name) as child:
                yield from walk(child, f"{path}/", layer=layer, digest=digest)


def tree_digest(dir_fd: int) -> tuple[str, int]:
    """One SHA-256 over a directory tree (names, kinds, modes, contents, link texts), and its size
    in entries: what undo checks before it moves a kept directory back."""
    digest = hashlib.sha256()
    count = 0
    for path, node in walk(dir_fd):
        value = node.digest if node.kind == "file" else node.target or ""
        digest.update(f"{path}\0{node.kind}\0{node.mode:o}\0{value}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return digest.hexdigest(), count
