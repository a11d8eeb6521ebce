"""UNIX socket paths of any length.

A socket address holds at most 107 bytes of path, and runtime directories (a CI runner's
XDG_RUNTIME_DIR, a workspace's own) are often deeper than that. The kernel follows
/proc/self/fd/N of an open directory like the directory itself, so a long path is bound or
reached through a descriptor of its directory: same file, same permissions, no chdir (which
would race the supervisor's other threads).
"""

from __future__ import annotations

import contextlib
import os
import socket
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
