"""Buffered reads of a proxy client's entry request (an HTTP head or a SOCKS5 handshake).

Every read is under one deadline (the head timeout), so a client that trickles bytes cannot hold
a connection thread for longer than that; what was read past the head stays in `buf` and is the
first data of the tunnel or of the exchange.
"""

from __future__ import annotations

import socket
import time

from sandboxctl.network.wire import _HEAD_END


class HeadTooLarge(Exception):
    """The request head grew past its limit before its blank line."""


class ClientReader:
    """Buffered reads from the client, all under one deadline (the head timeout)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self._scanned = 0

    def fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def head(self, limit: int) -> bytes:
        """Up to and including the blank line that ends an HTTP head; the rest stays in buf."""
        while True:
            match = _HEAD_END.search(self.buf, max(0, self._scanned - 3))
            if match is not None and match.end() <= limit:
                out = bytes(self.buf[: match.end()])
                del self.buf[: match.end()]
                return out
            if match is not None or len(self.buf) > limit:
                raise HeadTooLarge
            self._scanned = len(self.buf)
            if not self.fill():
                raise EOFError
