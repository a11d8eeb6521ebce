"""The upstream side of the HTTP exchange: one connection to the destination, reused while it lasts.

The socket is the connection's (`_Connection.upstream`, so that stopping the proxy reaches it); a
tunnel's first one is dialled before the client is told the tunnel is open. Toward an inspected
HTTPS host the proxy speaks TLS itself and verifies the real server (tls.upstream_context): a
server the host's trust and `network.upstream_ca` do not vouch for gets no request, and the
client gets a 502 that says why. Requests are written, and answers read, by h11.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

import h11

from sandboxctl.network.messages import Refusal
from sandboxctl.network.tls import PlainStream, StreamClosed, TlsStream, describe_tls_error
from sandboxctl.network.wire import HEAD_LIMIT

if TYPE_CHECKING:
    from sandboxctl.network.connection import _Connection
    from sandboxctl.network.tls import Stream

HANDSHAKE_TIMEOUT_S = 15.0


class Broken(Exception):
    """The exchange cannot go on; the message says why (for the log)."""


class Upstream:
    """The destination's end of one client connection."""

    def __init__(self, conn: _Connection, tls: bool) -> None:
        self.conn = conn
        self.tls = tls
        self.stream: Stream | None = None
        self.h11: h11.Connection | None = None

    @property
    def idle(self) -> bool:
        return self.h11 is not None and self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE

    def ensure(self, host: str, port: int) -> Refusal | None:
        """Ready for a request: the idle connection, the socket dialled for it, or a new one; else why not."""
        if self.idle:
            return None
        self.drop()
        with self.conn.lock:
            sock = self.conn.upstream
        if sock is None:
            outcome = self.conn.connect(host, port)
            if not isinstance(outcome, socket.socket):
                return Refusal(outcome.status, outcome.message, outcome.proxy_status)
            sock = outcome
        sock.settimeout(None)
        stream: Stream = PlainStream(sock)
        if self.tls:
            inspection = self.conn.server.inspection
            assert inspection is not None
            try:
                secured = TlsStream(sock, inspection.upstream_context(), server_side=False, server_hostname=host)
                secured.handshake(HANDSHAKE_TIMEOUT_S)
            except Exception as exc:
                self.drop()
                detail = describe_tls_error(exc)
                self.conn.error = f"TLS to {host}:{port} failed: {detail}"
                certificate = "certificate" in detail
                hint = "; if it is signed by a private CA, add that CA to network.upstream_ca" if certificate else ""
                kind = "tls_certificate_error" if certificate else "tls_protocol_error"
                return Refusal(502, f"sandboxctl: could not open a verified TLS connection to {host}:{port} "
                                    f"({detail}){hint}.", kind)
            sock.settimeout(None)
            stream = secured
        self.stream, self.h11 = stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)
        return None

    def drop(self) -> None:
        """Close the upstream connection (none to reuse, or the next request goes elsewhere)."""
        with self.conn.lock:
            sock, self.conn.upstream = self.conn.upstream, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self.stream = self.h11 = None

    def reset(self) -> None:
        """Drop with a reset: a request cut off on purpose must not look complete to the server."""
        with self.conn.lock:
            sock = self.conn.upstream
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.drop()

    def finished(self) -> None:
        """After an answer: keep the connection for the next request when both sides allow it."""
        if self.h11 is not None and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        else:
            self.drop()

    def next_event(self) -> Any:
        assert self.h11 is not None and self.stream is not None
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise Broken(f"the upstream's answer is not valid HTTP/1.1: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.stream.recv()
            except (StreamClosed, TimeoutError):
                data = b""
            self.h11.receive_data(data)

    def send(self, event: Any, count: dict[str, Any]) -> None:
        assert self.h11 is not None and self.stream is not None
        data = self.h11.send(event)
        if data:
            try:
                self.stream.sendall(data)
            except StreamClosed as exc:
                raise Broken(f"upstream closed: {exc}") from None
            count["bytes_out"] += len(data)
            self.conn.bytes_out += len(data)
