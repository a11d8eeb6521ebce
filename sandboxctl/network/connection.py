"""One proxied connection: read the entry request, decide, dial, and hand the connection on.

Split from proxy.py (which accepts connections and owns their lifetimes). After the entry
(CONNECT, SOCKS5 or a plain-HTTP request) a connection goes to one of three: the opaque relay
(relay.py) for a tunnel to a host that is not inspected, TLS termination and the request-by-request
exchange (terminate.py, exchange.py) for an inspected one, and the exchange for plain HTTP.
Each destination it reached or was refused becomes one `net` record. The decision for a
destination and the dial are dialing.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from sandboxctl.network import addresses
from sandboxctl.network.client_reader import ClientReader, HeadTooLarge
from sandboxctl.network.dialing import Dialing
from sandboxctl.network.refusal import Refusal
from sandboxctl.network.relay import _errno_name, relay
from sandboxctl.network.wire import (
    HEAD_LIMIT,
    SOCKS_BAD_ADDRESS_TYPE,
    SOCKS_BAD_COMMAND,
    SOCKS_FAILURE,
    SOCKS_OK,
    HttpError,
    bad_request,
    parse_request_head,
    socks_reply,
)

if TYPE_CHECKING:
    from sandboxctl.network.proxy import ProxyServer

HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_DRAIN_LIMIT = 256 * 1024
_DRAIN_S = 1.0
_DRAIN_IDLE_S = 0.25


# ------------------------------------------------------------------ one connection
class _Connection(Dialing):
    """One client connection: the request, the decision, the dial, the relay, and its log record."""

    def __init__(self, server: ProxyServer, client: socket.socket) -> None:
        self.server = server
        self.client = client
        self.upstream: socket.socket | None = None
        self.lock = threading.Lock()
        self.aborted = False
        self.relaying = False
        self.reset = False
        self.thread: threading.Thread | None = None
        self.recorded = False  # its net record is written (ProxyServer._first_record)
        self.started = time.monotonic()
        self.seen = False
        self.host: str | None = None
        self.port: int | None = None
        self.address: str | None = None
        self.decision = "deny"
        self.rule = ""
        self.protocol: str | None = None
        self.error: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.inspected = False
        self.peer: str | None = None  # the client's address, when the server logs it (a standalone proxy)
        self.attributes: dict[str, Any] = {}  # ProxyServer.attribute's fields for its records

    # -------------------------------------------------------------- lifecycle
    def run(self) -> None:
        try:
            if self.server.attribute is not None:
                self._attribute()
            self._serve()
        except Exception as exc:  # a bug must cost one connection, never the supervisor
            self.error = self.error or f"internal error: {exc!r}"
        finally:
            self._close_all()
            try:  # recorded while still listed: a stop() meanwhile waits for it (or records it itself)
                if self.seen and self.server._first_record(self):
                    self.server._emit(self.record())
            finally:
                self.server._finished(self)

    def begin_destination(self, host: str, port: int) -> None:
        """A plain-HTTP connection moves on to another host: log the destination it is done with."""
        if self.host is not None:
            self.server._emit(self.record())
        self.host, self.port, self.address, self.error = host, port, None, None
        self.decision, self.rule = "deny", ""
        self.bytes_in = self.bytes_out = 0
        self.started = time.monotonic()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "decision": self.decision,
            "rule": self.rule,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": round(time.monotonic() - self.started, 6),
            "protocol": self.protocol,
        }
        if self.inspected:
            out["inspected"] = True
        if self.peer is not None:
            out["client"] = self.peer
        for key, value in self.attributes.items():
            out.setdefault(key, value)
        if self.error:
            out["error"] = self.error
        return out

    def attach(self, sock: socket.socket) -> bool:
        """Register the upstream socket so that abort() reaches it; False once the connection is aborted."""
        with self.lock:
            if self.aborted:
                return False
            self.upstream = sock
            return True

    def abort(self, reset: bool = False) -> None:
        """Wake every thread blocked on this connection's sockets; they then close them."""
        with self.lock:
            self.aborted = True
            self.reset = self.reset or reset
            socks = [self.client, self.upstream]
        for sock in socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def force_close(self) -> None:
        """Close the sockets of a thread stuck outside them (resolver, approval); never during a relay."""
        with self.lock:
            if self.relaying:
                return
            socks = [self.client, self.upstream]
        for sock in socks:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _close_all(self) -> None:
        with self.lock:
            socks = [self.client, self.upstream]
            reset = self.reset
        for sock in socks:
            if sock is None:
                continue
            if reset:  # pass a reset on, so a truncated transfer is not taken for a complete one
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                sock.close()

    # -------------------------------------------------------------- protocol dispatch
    def _serve(self) -> None:
        reader = ClientReader(self.client, self.started + self.server.head_timeout)
        try:
            if not reader.fill():
                return  # connected and left without a word: nothing to decide, nothing to log
        except (OSError, TimeoutError):
            return
        self.seen = True
        with contextlib.suppress(OSError):
            self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = reader.buf[0]
        if first == 5:
            self._socks5(reader)
        elif first == 4:
            self.protocol = "socks4"
            self.rule = "bad request: SOCKS4 is not supported"
            self._refuse_raw(b"\x00\x5b" + bytes(6))
        else:
            self._http(reader)

    def _http(self, reader: ClientReader) -> None:
        self.protocol = "http"
        try:
            head = reader.head(HEAD_LIMIT)
        except HeadTooLarge:
            self._bad(bad_request("request head larger than 64 KiB", 431))
            return
        except TimeoutError:
            timeout = self.server.head_timeout
            self._bad(HttpError(408, f"sandboxctl: the request head did not arrive within {timeout:g} s.",
                                "http_request_error", "request head timed out"))
            return
        except (EOFError, OSError):
            self.rule = "bad request: connection closed before the request head was complete"
            return
        request = parse_request_head(head)
        if isinstance(request, HttpError):
            self._bad(request)
            return
        self.protocol = request.protocol
        if request.method != "CONNECT":
            # Plain HTTP is read request by request (h11): each one is parsed, framed and ruled on,
            # so nothing the client sends reaches an upstream unparsed.
            from sandboxctl.network.exchange import Exchange
            from sandboxctl.network.tls import PlainStream

            Exchange(self, PlainStream(self.client), head + bytes(reader.buf)).run()
            return
        self.host, self.port = request.host, request.port
        outcome = self._open(request.host, request.port)
        if isinstance(outcome, Refusal):
            self._refuse_raw(outcome.http())
            return
        if self._reply(b"HTTP/1.1 200 Connection established\r\n\r\n"):
            self._tunnel(bytes(reader.buf))

    def _tunnel(self, first: bytes) -> None:
        """An open tunnel to host:port: read request by request when the host is inspected, else relay."""
        inspection = self.server.inspection
        assert self.host is not None and self.port is not None
        if inspection is None or inspection.rules_for(self.host, self.port) is None:
            relay(self, first)
            return
        from sandboxctl.network.terminate import inspect_tunnel

        self.inspected = True
        inspect_tunnel(self, first)

    def _socks5(self, reader: ClientReader) -> None:
        self.protocol = "socks5"
        try:
            _version, count = reader.exact(2)
            methods = reader.exact(count)
            if 0 not in methods:
                self.rule = "bad request: SOCKS5 client offers no unauthenticated method"
                self._refuse_raw(b"\x05\xff")
                return
            self.client.sendall(b"\x05\x00")
            version, command, _reserved, kind = reader.exact(4)
            host: str | None
            if kind == 1:
                host = str(IPv4Address(reader.exact(4)))
            elif kind == 4:
                host = str(IPv6Address(reader.exact(16)))
            elif kind == 3:
                raw = reader.exact(reader.exact(1)[0])
                host = addresses.normalize_host(raw.decode("ascii")) if raw.isascii() else None
            else:
                self.rule = "bad request: unknown SOCKS5 address type"
                self._refuse_raw(socks_reply(SOCKS_BAD_ADDRESS_TYPE))
                return
            port = int.from_bytes(reader.exact(2), "big")
        except (EOFError, OSError, TimeoutError):
            self.rule = "bad request: incomplete SOCKS5 handshake"
            return
        problem = (
            "malformed SOCKS5 request" if version != 5
            else "unsupported SOCKS5 command (only CONNECT)" if command != 1
            else "invalid host name" if host is None
            else "port 0" if port == 0
            else None
        )
        if problem is not None:
            self.rule = f"bad request: {problem}"
            self._refuse_raw(socks_reply(SOCKS_BAD_COMMAND if version == 5 and command != 1 else SOCKS_FAILURE))
            return
        self.host, self.port = host, port
        outcome = self._open(host, port)
        if isinstance(outcome, Refusal):
            self._refuse_raw(socks_reply(outcome.socks))
            return
        if self._reply(socks_reply(SOCKS_OK)):
            self._tunnel(bytes(reader.buf))

    def _attribute(self) -> None:
        try:
            self.attributes = dict(self.server.attribute(self.peer_port()) or {})
        except Exception:  # a record of fact, not a wall: the connection is served without it
            self.attributes = {}

    def peer_port(self) -> int | None:
        """The client's TCP port (the approval prompt finds the process behind it), None over a UNIX socket."""
        try:
            return self.client.getpeername()[1]
        except (OSError, IndexError, TypeError):
            return None

    # -------------------------------------------------------------- replies
    def _reply(self, data: bytes) -> bool:
        """Tell the client its tunnel is open; False if it has gone away meanwhile."""
        try:
            self.client.settimeout(10.0)
            self.client.sendall(data)
            return True
        except OSError as exc:
            self.error = f"client connection failed: {_errno_name(exc)}"
            return False

    def _bad(self, error: HttpError) -> None:
        self.rule = f"bad request: {error.detail}"
        self._refuse_raw(error.to_bytes())

    def _refuse_raw(self, payload: bytes) -> None:
        """Send a refusal, then read what the client already sent, so that close() does not become a
        reset that destroys the reply before the client has read it."""
        client = self.client
        try:
            client.settimeout(5.0)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            end = time.monotonic() + _DRAIN_S
            drained = 0
            while drained < _DRAIN_LIMIT:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                client.settimeout(min(remaining, _DRAIN_IDLE_S))
                data = client.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:  # includes the idle timeout: the client has stopped sending
            pass
