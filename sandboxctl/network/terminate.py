"""An inspected tunnel: the client's TLS answered with the run's CA; and the relay after a 101.

CONNECT (or SOCKS5) to an inspected host opens a tunnel as usual; then, when the client starts a
TLS handshake, the proxy answers it with a leaf certificate for the tunnel's host (never for the
name the client puts in SNI: the policy decided on the CONNECT host), offering only http/1.1 in
ALPN, and reads the requests inside (exchange.py). A client that does not trust the run's CA
(a CA bundle of its own, certificate pinning) fails its handshake: it cannot reach the host,
and the `net` record says why. A tunnel that does not start with TLS is read as plain HTTP.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sandboxctl.network.tls import PlainStream, StreamClosed, TlsStream, describe_tls_error

if TYPE_CHECKING:
    from sandboxctl.network.connection import _Connection
    from sandboxctl.network.tls import Stream
    from sandboxctl.network.wsmask import WebSocketMasker

HANDSHAKE_TIMEOUT_S = 15.0


def inspect_tunnel(conn: _Connection, first: bytes) -> None:
    """Terminate the client's TLS with the run's CA (or read plain HTTP inside the tunnel)."""
    from sandboxctl.network.exchange import Exchange

    inspection = conn.server.inspection
    assert inspection is not None and conn.host is not None and conn.port is not None
    client: Stream = PlainStream(conn.client)
    if not first:
        try:
            conn.client.settimeout(HANDSHAKE_TIMEOUT_S)
            first = client.recv()
        except (TimeoutError, StreamClosed):
            return
        if not first:
            return
    if first[:1] == b"\x16":  # a TLS handshake record
        try:
            context = inspection.authority.server_context(conn.host)
        except Exception as exc:  # a certificate that cannot be made costs this connection only
            conn.error = f"cannot make a certificate for {conn.host}: {exc}"
            return
        secured = TlsStream(conn.client, context, server_side=True, first=first)
        try:
            secured.handshake(HANDSHAKE_TIMEOUT_S)
        except Exception as exc:
            conn.error = (f"TLS handshake with the sandboxed client failed ({describe_tls_error(exc)}); a client "
                          "that does not trust the run's CA (its own CA bundle, certificate pinning) cannot reach "
                          "an inspected host")
            return
        client, first = secured, b""
    Exchange(conn, client, first, tunnel=(conn.host, conn.port)).run()


class StreamRelay:
    """After a 101: both directions as they are, one thread each, until both sides are done; the
    bytes are counted in `event` (the request's http record) and on the connection. `inbound`,
    when given, rewrites what the server sends before the client gets it (wsmask.WebSocketMasker:
    a secret the server got is masked in its frames)."""

    def __init__(self, conn: _Connection, event: dict[str, Any], inbound: WebSocketMasker | None = None) -> None:
        self.conn = conn
        self.event = event
        self.inbound = inbound

    def run(self, client: Stream, upstream: Stream, client_rest: bytes, up_rest: bytes) -> None:
        helper = threading.Thread(target=self._pump, args=(upstream, client, up_rest, False),
                                  name="sandboxctl-proxy-in", daemon=True)
        try:
            helper.start()
        except RuntimeError:
            self.conn.abort(reset=True)
            return
        self._pump(client, upstream, client_rest, True)
        helper.join()

    def _pump(self, src: Stream, dst: Stream, first: bytes, outbound: bool) -> None:
        from sandboxctl.network.wsmask import FrameError

        key = "bytes_out" if outbound else "bytes_in"
        rewrite = None if outbound or self.inbound is None else self.inbound
        try:
            data = first
            src.settimeout(None)
            while True:
                if rewrite is not None:
                    data = rewrite.feed(data)
                if data:
                    dst.sendall(data)
                    self.event[key] += len(data)
                    setattr(self.conn, key, getattr(self.conn, key) + len(data))
                data = src.recv()
                if not data:
                    if rewrite is not None:
                        rewrite.finish()
                    break
        except FrameError as exc:
            self.conn.error = self.conn.error or f"WebSocket frames not passed on: {exc}"
            self.conn.abort(reset=True)
            return
        except (StreamClosed, OSError):
            self.conn.abort(reset=True)
            return
        dst.shutdown_write()
