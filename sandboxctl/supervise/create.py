"""Make the plan's `filesystem.create` paths on the host before the launch (plan/create.py decided them).

Each path is made beneath the user's home one component at a time, relative to a descriptor of its
parent and never through a symbolic link (O_NOFOLLOW at every step), so a link planted meanwhile
cannot send the creation elsewhere; nothing that exists is ever written over (mkdir, O_EXCL). What
was made is logged as a `create` event and returned, for the caller to name on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Creation

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_all(creations: tuple[Creation, ...], home: str, log: Callable[..., None]) -> list[Creation]:
    """Make every absent path in order (parents first); a failure stops the run before anything starts."""
    made = []
    for creation in creations:
        try:
            if _make(creation, home):
                made.append(creation)
                log("create", path=creation.path, kind=creation.kind,
                    mode=oct(creation.mode) if creation.mode is not None else "umask default",
                    bytes=len(creation.content.encode()), rule=creation.reason)
        except OSError as exc:
            raise SandboxError(f"filesystem.create: cannot make {creation.path}: {exc.strerror or exc}",
                               "make it yourself, or fix what is in its way; nothing was run") from None
    return made


def _open_parent(path: str, home: str) -> tuple[int, str]:
    """A descriptor of path's parent, reached from home without following any link; and the last name."""
    relative = os.path.relpath(path, home)
    if relative.startswith("..") or relative == ".":
        raise OSError(errno.EPERM, "not beneath your home")
    *parents, name = relative.split("/")
    fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            next_fd = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _make(creation: Creation, home: str) -> bool:
    """True when this call made it; False when it was there already (of the right kind)."""
    parent, name = _open_parent(creation.path, home)
    try:
        if creation.kind == "dir":
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                _expect(parent, name, stat.S_ISDIR, "directory")
                return False
            if creation.mode is not None:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    os.fchmod(fd, creation.mode)
                finally:
                    os.close(fd)
            return True
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o666 if creation.mode is None else creation.mode & 0o666, dir_fd=parent)
        except FileExistsError:
            _expect(parent, name, stat.S_ISREG, "regular file")
            return False
        try:
            if creation.mode is not None:
                os.fchmod(fd, creation.mode)
            data = creation.content.encode()
            while data:
                data = data[os.write(fd, data):]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent)
            raise
        os.close(fd)
        return True
    finally:
        os.close(parent)


def _expect(parent: int, name: str, test: Callable[[int], bool], what: str) -> None:
    mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    if not test(mode):
        raise OSError(errno.EEXIST, f"something else than a {what} is there")
