"""Byte streams for the HTTP exchange: a plain socket, or TLS over one through memory BIOs.

Why memory BIOs and not ssl.SSLSocket: once a WebSocket (or any upgrade) is relayed, one thread
reads a connection while another writes it, and an OpenSSL connection object must not be used
by two threads at once. Here the TLS object is touched only under a lock and never while a
socket call blocks: the reading thread receives raw bytes unlocked, then feeds them in and
takes plaintext out under the lock; the writing thread encrypts under the lock, then sends.
A second lock keeps the bytes of the two threads in order on the wire.

Upstream, the proxy verifies the real server: the host's trust store plus `network.upstream_ca`,
the host name (or IP address) checked, TLS 1.2 at least, and only http/1.1 offered in ALPN.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Sequence

CHUNK = 64 * 1024


class StreamClosed(Exception):
    """The peer went away (EOF, reset, or a TLS error in the middle of the stream)."""


class PlainStream:
    """A connected socket with the interface TlsStream has."""

    tls = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, size: int = CHUNK) -> bytes:
        try:
            return self.sock.recv(size)
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise StreamClosed(str(exc)) from None

    def sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise StreamClosed(str(exc)) from None

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close_notify(self) -> None:
        pass


class TlsStream:
    """TLS over a connected socket (see the module docstring); handshake() first."""

    tls = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None, first: bytes = b"") -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        if first:
            self.incoming.write(first)
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                    server_hostname=server_hostname)
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.eof = False

    def _flush(self) -> None:
        with self.lock:
            data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        with self.lock:
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
                self.eof = True

    def handshake(self, timeout: float) -> None:
        """Complete the handshake within timeout; ssl.SSLError / OSError / TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                try:
                    self.obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            with self.send_lock:
                self._flush()
            if done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("TLS handshake timed out")
            self.sock.settimeout(remaining)
            self._fill()
            if self.eof:
                with self.lock, contextlib.suppress(ssl.SSLWantReadError):
                    self.obj.do_handshake()
                raise ConnectionError("the peer closed the connection during the TLS handshake")

    @property
    def alpn(self) -> str | None:
        return self.obj.selected_alpn_protocol()

    def recv(self, size: int = CHUNK) -> bytes:
        """Plaintext; b'' at the end of the stream (close_notify, or EOF without one)."""
        while True:
            with self.lock:
                try:
                    data = self.obj.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                except ssl.SSLError as exc:
                    raise StreamClosed(f"TLS error: {exc.reason or exc}") from None
                pending = self.outgoing.pending
            if pending:  # e.g. an answer to a key update: it must go out before we wait
                with self.send_lock:
                    self._send_flush()
            if data is not None:
                return data
            if self.eof:
                return b""
            try:
                self._fill()
            except TimeoutError:
                raise
            except OSError as exc:
                raise StreamClosed(str(exc)) from None

    def _send_flush(self) -> None:
        try:
            self._flush()
        except OSError as exc:
            raise StreamClosed(str(exc)) from None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        with self.send_lock:
            for start in range(0, len(view), CHUNK):
                with self.lock:
                    try:
                        self.obj.write(view[start:start + CHUNK])
                    except ssl.SSLError as exc:
                        raise StreamClosed(f"TLS error: {exc.reason or exc}") from None
                self._send_flush()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown_write(self) -> None:
        """Half-close: the socket only. A close_notify would end reading too in Python's ssl."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close_notify(self) -> None:
        """Tell the peer the stream is complete (before closing it for good); best effort."""
        with self.send_lock:
            with self.lock, contextlib.suppress(ssl.SSLError, ValueError):
                self.obj.unwrap()
            with contextlib.suppress(OSError):
                self.sock.settimeout(1.0)
                self._flush()


Stream = PlainStream | TlsStream  # what the HTTP exchange reads and writes


def upstream_context(extra_cas: Sequence[str] = ()) -> ssl.SSLContext:
    """How the proxy checks real servers: the host's trust plus network.upstream_ca (OSError / ssl.SSLError
    name a CA file that cannot be loaded)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for path in extra_cas:
        context.load_verify_locations(cafile=path)
    return context


def describe_tls_error(exc: BaseException) -> str:
    """A short, human sentence for a failed handshake (OpenSSL's verify message when there is one)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
