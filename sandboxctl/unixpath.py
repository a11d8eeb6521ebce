"""UNIX socket paths of any length.

A socket address holds at most 107 bytes of path, and runtime directories (a CI runner's
XDG_RUNTIME_DIR, a workspace's own) are often deeper than that. The kernel follows
/proc/self/fd/N of an open directory like the directory itself, so a long path is bound or
reached through a descriptor of its directory: same file, same permissions, no chdir (which
would race the supervisor's other threads).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator

MAX_PATH = 107  # sun_path's 108 bytes, less the terminating NUL


@contextlib.contextmanager
def address(path: str) -> Iterator[str]:
    """`path` itself when it fits a socket address, else the same file through its directory."""
    if len(os.fsencode(path)) <= MAX_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(short)) > MAX_PATH:
            raise OSError(36, "File name too long", path)  # ENAMETOOLONG: the name alone is too long
        yield short
    finally:
        os.close(fd)


def bind(sock: socket.socket, path: str) -> None:
    with address(path) as where:
        sock.bind(where)


def connect(sock: socket.socket, path: str) -> None:
    with address(path) as where:
        sock.connect(where)


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def connect_own(sock: socket.socket, path: str) -> None:
    """connect() to a socket of our own user: a path another user could have made first (the
    runtime dir in /tmp, when XDG_RUNTIME_DIR is not ours) must not get a request from us, let
    alone our descriptors — nor even a connection, whose SO_PEERCRED would tell its server our pid
    and uid. So the socket file must be ours before connect(), and its server ours after (the file
    could be swapped in between only by someone who may write its directory).
    PermissionError when it is someone else's."""
    with address(path) as where:
        owner = os.stat(where).st_uid  # what connect() reaches: a link of ours to theirs is theirs
        if owner != os.getuid():
            raise PermissionError(errno.EPERM, f"the socket belongs to another user (uid {owner})", path)
        sock.connect(where)
    uid = peer_uid(sock)
    if uid != os.getuid():
        raise PermissionError(errno.EPERM, f"the socket is served by another user (uid {uid})", path)
