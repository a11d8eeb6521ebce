"""How a session's clients talk to its supervisor: one JSON object per SOCK_SEQPACKET message,
descriptors alongside (SCM_RIGHTS). Stdlib only and tiny: `sandboxctl exec` imports it on its
fast path.

Requests (client -> supervisor), one per connection at a time:
  {"exec": {"argv": [...], "cwd": DIR|null, "env": {NAME: VALUE}, "timeout": SECONDS|null,
            "tty": [ROWS, COLS]|null}}  + the command's stdin, stdout, stderr (none with a tty)
  {"status": true}   {"stop": true}
Replies:
  {"started": N} (+ the pty's master with a tty)   {"exited": N, "exit_code": C, "timed_out": B,
  "denials": [...]}   {"error": TEXT, "hint": TEXT|null, "exit_code": C}   {"session": {...}}
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

MAX_MESSAGE = 1 << 20
MAX_FDS = 4


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and its descriptors (close-on-exec); (None, []) when the peer is gone. A message
    that is not a JSON object counts as the peer gone (it is never guessed at)."""
    try:
        data, fds = recv_fds(sock)
    except (ConnectionError, OSError):
        return None, []
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        return None, []
    return message, list(fds)


def recv_fds(sock: socket.socket, size: int = MAX_MESSAGE, most: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """socket.recv_fds, but close-on-exec from the start (Python 3.11's ignores its flags argument,
    and a descriptor meant for one command must never be inherited by another)."""
    import array

    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(size, socket.CMSG_LEN(most * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
