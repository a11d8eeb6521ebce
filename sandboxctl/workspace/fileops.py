"""The file operations apply and undo are made of, all beneath open directories, none following a
symlink: stage a new entry under a temporary name next to its target, keep the old one aside,
put the new one in place with rename(2).

A staged file is complete (content checked against the hash the change was reviewed with, mode,
modification time) before it gets its real name, so a full disk leaves the old file untouched and
a temporary one removed — never half a file. The old entry is kept aside in the run's backup
directory: hard-linked (files, symlinks: then the rename replaces the name atomically) or renamed
(directories) when it is on the same file system, copied otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat

from sandboxctl.workspace import tree
from sandboxctl.workspace.tree import Node

PERMISSIONS = 0o1777  # what apply writes of a mode: never setuid or setgid
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CROSS_DEVICE = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


class Mismatch(OSError):
    """Content that is not what was reviewed (the layer changed after `changes` read it)."""


def copy_content(src_fd: int, dst_fd: int, expected: str | None = None) -> str:
    """Copy a file's bytes, hashing them on the way; with `expected`, refuse other bytes."""
    digest = hashlib.sha256()
    while chunk := os.read(src_fd, tree.CHUNK):
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
    if expected is not None and digest.hexdigest() != expected:
        raise Mismatch(errno.EIO, "the content differs from what was reviewed")
    return digest.hexdigest()


def stage(parent_fd: int, temp: str, node: Node, source_fd: int | None, source_name: str | None) -> None:
    """Create `temp` in parent_fd as `node` (file content from source_fd/source_name, checked
    against node.digest). A directory is made 0700: its own mode is set last (set_mode), so that
    a read-only new directory can still be filled."""
    if node.kind == "symlink":
        os.symlink(node.target or "", temp, dir_fd=parent_fd)
        return
    if node.kind == "dir":
        os.mkdir(temp, 0o700, dir_fd=parent_fd)
        return
    if node.kind != "file" or source_fd is None or source_name is None:
        raise OSError(errno.EINVAL, f"cannot write a {node.kind}")
    src = os.open(source_name, tree.READ_FLAGS, dir_fd=source_fd)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise Mismatch(errno.EIO, "no longer a regular file")
        dst = os.open(temp, CREATE, 0o600, dir_fd=parent_fd)
        try:
            copy_content(src, dst, node.digest)
            os.fchmod(dst, node.mode & PERMISSIONS)
            os.utime(dst, ns=(node.mtime_ns, node.mtime_ns))
        except BaseException:
            os.close(dst)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent_fd)
            raise
        os.close(dst)
    finally:
        os.close(src)


def discard_staged(parent_fd: int, temp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(temp, dir_fd=parent_fd)
    with contextlib.suppress(OSError):
        os.rmdir(temp, dir_fd=parent_fd)


def keep_aside(parent_fd: int, name: str, kind: str, keep_fd: int, kept: str) -> bool:
    """Put the entry `name` in keep_fd as `kept`. Files and symlinks are linked (True: the name is
    still in place) or copied; directories are moved (False: the name is gone)."""
    if kind == "dir":
        try:
            os.rename(name, kept, src_dir_fd=parent_fd, dst_dir_fd=keep_fd)
        except OSError as exc:
            if exc.errno not in CROSS_DEVICE:
                raise
            try:
                copy_tree(parent_fd, name, keep_fd, kept)
            except BaseException:
                remove_at(keep_fd, kept)
                raise
            remove_at(parent_fd, name)
        return False
    try:
        os.link(name, kept, src_dir_fd=parent_fd, dst_dir_fd=keep_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in CROSS_DEVICE:
            raise
        try:
            copy_entry(parent_fd, name, keep_fd, kept)
        except BaseException:
            remove_at(keep_fd, kept)
            raise
    return True


def copy_entry(src_fd: int, name: str, dst_fd: int, target: str) -> None:
    """A copy of one file or symlink (mode and modification time kept)."""
    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_fd), target, dir_fd=dst_fd)
        return
    if not stat.S_ISREG(st.st_mode):
        return  # sockets, fifos, devices: not kept (the same file system keeps them by rename)
    src = os.open(name, tree.READ_FLAGS, dir_fd=src_fd)
    try:
        dst = os.open(target, CREATE, 0o600, dir_fd=dst_fd)
        try:
            copy_content(src, dst)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def copy_tree(src_fd: int, name: str, dst_fd: int, target: str) -> None:
    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        copy_entry(src_fd, name, dst_fd, target)
        return
    os.mkdir(target, 0o700, dir_fd=dst_fd)
    with tree.opened_dir(src_fd, name) as source, tree.opened_dir(dst_fd, target) as copy:
        for child in tree.names(source):
            copy_tree(source, child, copy, child)
        os.fchmod(copy, stat.S_IMODE(st.st_mode))


def remove_at(parent_fd: int, name: str) -> None:
    """Remove an entry and, for a directory, everything in it (never through a symlink)."""
    st = tree.lstat_at(parent_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    with contextlib.suppress(OSError):
        os.chmod(name, 0o700, dir_fd=parent_fd)  # a read-only directory we made or kept
    with tree.opened_dir(parent_fd, name) as fd:
        for child in tree.names(fd):
            remove_at(fd, child)
    os.rmdir(name, dir_fd=parent_fd)


def set_mode(parent_fd: int, name: str, kind: str, mode: int) -> None:
    """chmod through a descriptor opened without following a symlink (a swapped-in link is
    refused, not followed)."""
    flags = tree.READ_FLAGS | (os.O_DIRECTORY if kind == "dir" else 0)
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except PermissionError:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            if tree.kind_of(os.fstat(fd).st_mode) != kind:
                raise OSError(errno.ESTALE, "replaced while being applied")
            os.chmod(f"/proc/self/fd/{fd}", mode & PERMISSIONS)  # O_PATH: chmod the entry it names
            return
        finally:
            os.close(fd)
    try:
        if tree.kind_of(os.fstat(fd).st_mode) != kind:
            raise OSError(errno.ESTALE, "replaced while being applied")
        os.fchmod(fd, mode & PERMISSIONS)
    finally:
        os.close(fd)


def same_entry(current: Node | None, expected: Node | None) -> bool:
    """Is the host entry still the one that was reviewed (no change since, by its inode stamp)?"""
    if current is None or expected is None:
        return current is None and expected is None
    return (current.kind, current.mode, current.size, current.ctime_ns) == \
        (expected.kind, expected.mode, expected.size, expected.ctime_ns)
