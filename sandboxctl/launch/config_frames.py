"""The launch configuration, sent to the shim in frames a SOCK_SEQPACKET socket can carry.

One message holds at most about the socket's send buffer (~200 KiB), and a workspace with
thousands of nested repositories plans a configuration of megabytes (a Landlock rule and a
protected mount per entry). Every frame starts with one byte: MORE, or LAST for the frame that
ends it; the shim (launch/shim.py, which cannot import this) joins them. Standard library only,
and nothing but marshal: headstart.py sends with this before anything heavy is imported.
"""

from __future__ import annotations

import _socket  # socket.socket's base, and C: the head start has not imported socket yet
import marshal

FRAME = 64 * 1024  # well under any send buffer, so every frame is one message
MORE, LAST = b"+", b"."


def frames(data: bytes) -> list[bytes]:
    """data cut into frames (at least one: an empty configuration is still a LAST frame)."""
    parts = [data[at:at + FRAME] for at in range(0, len(data), FRAME)] or [b""]
    return [MORE + part for part in parts[:-1]] + [LAST + parts[-1]]


def send_config(sock: _socket.socket, config: dict) -> None:
    """Send it all, in frames (send_to_shim: unless bubblewrap has died already)."""
    send_to_shim(sock, *frames(marshal.dumps(config)))


def send_to_shim(sock: _socket.socket, *messages: bytes) -> None:
    """Send each message, unless the shim (or bubblewrap) has died already: its stderr and exit
    status, which the supervisor's loop reads next, say what became of the run. Its EPIPE must
    not end the run as a broken pipe: reaching the CLI it could be taken for the CLI's own reader
    going away, and a run that never ran would exit 0. Any other error is raised."""
    try:
        for message in messages:
            sock.sendall(message)
    except (BrokenPipeError, ConnectionResetError):
        pass
