"""The allowlisting proxy behind `network: proxy`.

Why it exists: under `network: proxy` the sandbox has a network namespace of its own with nothing
in it but a listening socket on 127.0.0.1:3128. The supervisor receives that socket (the sandbox
never sees the host's network), accepts the sandbox's connections on it, decides each destination
against the policy (netcheck.py), and dials out from the host. Every connection, allowed or
refused, becomes one `net` record of the action log.

What it speaks — the three ways tools reach a proxy, told apart by the first byte:
- HTTP CONNECT host:port (any TCP protocol; what HTTPS_PROXY clients send),
- plain HTTP with an absolute URI (`GET http://host/path HTTP/1.1`; what HTTP_PROXY clients send),
  rewritten to origin form with the hop-by-hop and Proxy-* headers removed, Host set from the URI
  (so a Host header cannot point an allowed server's virtual hosting elsewhere) and
  `Connection: close`, so one client connection carries one request (anything the client sends
  after it goes to the same, already checked, upstream, which stops reading after a close request),
- SOCKS5 without authentication (first byte 0x05), names included (socks5h), CONNECT only.

A refusal tells the agent, in one sentence, which rule refused it and how a human would allow it:
HTTP 403 with a plain-text body, or the SOCKS5 reply code for "not allowed by ruleset".

Threads, and why not a select loop: one accept thread polls the listener together with a wake-up
pipe (closing a socket does not wake a thread blocked in accept(); a pipe write does). Each
connection gets a thread that reads the request, waits for a human's approval if needed (which may
take a while), resolves and dials — all blocking steps — and then relays one direction while a
second thread relays the other. Blocking relays give back-pressure for free (a slow reader stalls
its writer, nothing is buffered without bound), half-close is simply "EOF on one side, shutdown
(SHUT_WR) on the other", both directions run in parallel because recv/send/splice release the GIL,
and a blocking loop can hand bulk transfers to splice(2), which a poll loop over non-blocking
sockets would make much harder. A select loop was measured too: it relayed no faster than the
copying threads, and needs buffering and wake-up bookkeeping of its own. The cost is two threads
per connection and a small buffer (16 KiB, growing to 64 KiB before a bulk transfer switches to a
pipe), bounded by `max_connections`. stop() shuts every socket down, which wakes every blocked
thread, so the threads close what they own and end.

The proxy relies on SIGPIPE being ignored, as Python arranges at start-up (a write to a closed
socket is then an EPIPE error, handled as the end of that connection).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from sandboxctl.supervise import netcheck
from sandboxctl.supervise.netcheck import IPAddress, NetPolicy, Verdict

__all__ = ["HttpError", "NetPolicy", "ProxyRequest", "ProxyServer", "parse_request_head"]

MAX_CONNECTIONS = 256
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
STOP_JOIN_S = 3.0
_BUF_MIN = 16 * 1024
_BUF_BULK = 64 * 1024
_BUF_MAX = 256 * 1024
_SPLICE_CHUNK = 1 << 20
_DRAIN_LIMIT = 256 * 1024
_DRAIN_S = 1.0
_DRAIN_IDLE_S = 0.25

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than HTAB
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
_PORT = re.compile(r"[0-9]{1,5}")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTROL_TEXT = re.compile(r"[\x00-\x1f\x7f]")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "upgrade"}
)
_FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_USAGE = "send 'CONNECT host:port HTTP/1.1' or an absolute URI such as 'GET http://host/path HTTP/1.1'"

# SOCKS5 reply codes (RFC 1928).
SOCKS_OK = 0x00
SOCKS_FAILURE = 0x01
SOCKS_NOT_ALLOWED = 0x02
SOCKS_NET_UNREACHABLE = 0x03
SOCKS_HOST_UNREACHABLE = 0x04
SOCKS_REFUSED = 0x05
SOCKS_TTL_EXPIRED = 0x06
SOCKS_BAD_COMMAND = 0x07
SOCKS_BAD_ADDRESS_TYPE = 0x08


# ------------------------------------------------------------------ the request head
@dataclass(frozen=True)
class HttpError:
    """An HTTP error reply: status, a one-sentence message for the agent, an RFC 9209 error type."""

    status: int
    message: str
    proxy_status: str | None = None
    detail: str = ""  # what was wrong, for the log's rule

    def to_bytes(self) -> bytes:
        """The reply; the message is also in the reason phrase, the only part many clients show for a
        failed CONNECT (Python: "Tunnel connection failed: 403 Forbidden: sandboxctl: …")."""
        body = (self.message + "\n").encode("utf-8", "replace")
        reason = _CONTROL_TEXT.sub(" ", f"{_REASONS.get(self.status, 'Error')}: {self.message}")
        head = (
            f"HTTP/1.1 {self.status} {reason}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
        )
        if self.proxy_status:
            head += f"Proxy-Status: sandboxctl; error={self.proxy_status}\r\n"
        return (head + "\r\n").encode("ascii", "replace") + body


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed proxy request. host is normalized (netcheck.normalize_host); target is the origin form."""

    method: str
    host: str
    port: int
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def protocol(self) -> str:
        return "connect" if self.method == "CONNECT" else "http"

    def upstream_head(self) -> bytes:
        """The head to send upstream: origin form, Host from the URI, hop-by-hop headers removed."""
        tokens = {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() in ("connection", "proxy-connection")
            for token in value.split(",")
        }
        upgrade = "upgrade" in tokens and any(name.lower() == "upgrade" for name, _ in self.headers)
        strip = (_HOP_BY_HOP | tokens) - _FRAMING
        host = netcheck.format_destination(self.host, None if self.port == 80 else self.port)
        lines = [f"{self.method} {self.target} {self.version}", f"Host: {host}"]
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "host" or lowered in strip:
                continue
            lines.append(f"{name}: {value}")
        if upgrade:
            lines += [f"{name}: {value}" for name, value in self.headers if name.lower() == "upgrade"]
            lines.append("Connection: upgrade")
        else:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def bad_request(detail: str, status: int = 400) -> HttpError:
    """The reply to a request the proxy cannot read; the message says what a proxy request looks like."""
    if status == 431:
        return HttpError(431, f"sandboxctl: the request head is larger than {HEAD_LIMIT // 1024} KiB.",
                         "http_request_error", detail)
    if status == 505:
        return HttpError(505, "sandboxctl: only HTTP/1.0 and HTTP/1.1 requests can go through this proxy.",
                         "http_protocol_error", detail)
    return HttpError(status, f"sandboxctl: bad proxy request ({detail}); {_USAGE}.", "http_request_error", detail)


def _split_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (with a default port) 'host' -> (normalized host, port)."""
    if "@" in text:
        raise _BadRequest("user information in the address is not supported")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _BadRequest("unclosed '[' in the address")
        host_text, rest = text[: end + 1], text[end + 1 :]
    else:
        if text.count(":") > 1:
            raise _BadRequest("IPv6 addresses must be written in brackets")
        host_text, sep, port_text = text.partition(":")
        rest = ":" + port_text if sep else ""
    if rest and not rest.startswith(":"):
        raise _BadRequest("unexpected text after the address")
    port_text = rest[1:]
    if port_text:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise _BadRequest("the port must be a number from 1 to 65535")
        port = int(port_text)
    elif default_port is None:
        raise _BadRequest("CONNECT needs host:port")
    else:
        port = default_port
    host = netcheck.normalize_host(host_text)
    if host is None:
        raise _BadRequest("not a valid host name or IP address")
    return host, port


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            raise _BadRequest("folded header lines are not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _BadRequest("malformed header line")
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise _BadRequest("control character in a header")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return headers


def _check_framing(headers: list[tuple[str, str]]) -> None:
    """Refuse ambiguous message framing, the stuff of request smuggling."""
    lengths = {value.strip() for name, value in headers if name.lower() == "content-length"}
    chunked = any(name.lower() == "transfer-encoding" for name, _ in headers)
    if len(lengths) > 1 or any(not v.isascii() or not v.isdigit() for v in lengths):
        raise _BadRequest("invalid Content-Length")
    if lengths and chunked:
        raise _BadRequest("both Content-Length and Transfer-Encoding")


def _parse(head: bytes) -> ProxyRequest:
    if len(head) > HEAD_LIMIT:
        raise _BadRequest("request head too large", 431)
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first == len(lines):
        raise _BadRequest("empty request")
    request_line = lines[first]
    if _CTL.search(request_line):
        raise _BadRequest("control character in the request line")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method_raw, target_raw, version_raw = parts
    if not _TOKEN.fullmatch(method_raw):
        raise _BadRequest("malformed method")
    version = _VERSION.fullmatch(version_raw)
    if version is None:
        raise _BadRequest("not an HTTP request")
    if version.group(1) != b"1" or version.group(2) not in (b"0", b"1"):
        raise _BadRequest("unsupported HTTP version", 505)
    if not target_raw or _TARGET_BAD.search(target_raw):
        raise _BadRequest("malformed request target")
    headers = _parse_headers(lines[first + 1 :])
    method, target, version_text = method_raw.decode("ascii"), target_raw.decode("ascii"), version_raw.decode("ascii")
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return ProxyRequest(method, host, port, target, version_text, tuple(headers))
    scheme, sep, rest = target.partition("://")
    if not sep:
        if target.startswith("/") or target == "*":
            raise _BadRequest("this is a proxy, so the request needs an absolute URI")
        raise _BadRequest("malformed request target")
    scheme = scheme.lower()
    if scheme == "https":
        raise _BadRequest("https:// URLs go through CONNECT (set HTTPS_PROXY)")
    if scheme != "http":
        raise _BadRequest("only http:// URLs are forwarded; use CONNECT for other protocols")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    host, port = _split_authority(authority, 80)
    _check_framing(headers)
    return ProxyRequest(method, host, port, path, version_text, tuple(headers))


def parse_request_head(head: bytes) -> ProxyRequest | HttpError:
    """Parse a request head (request line and headers, up to the blank line): a request or the HTTP error to send."""
    try:
        return _parse(head)
    except _BadRequest as exc:
        return bad_request(exc.detail, exc.status)


def socks_reply(code: int) -> bytes:
    """A SOCKS5 reply; the bound address is left zero so the sandbox learns nothing of the host's."""
    return bytes((5, code, 0, 1)) + bytes(6)


# ------------------------------------------------------------------ reading from the client
class _TooLarge(Exception):
    pass


class _Reader:
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
                raise _TooLarge
            self._scanned = len(self.buf)
            if not self.fill():
                raise EOFError


# ------------------------------------------------------------------ one connection
@dataclass
class _Refusal:
    """Why a connection was not relayed, in every form it is reported."""

    status: int
    socks: int
    message: str
    proxy_status: str
    error: str | None = None

    def http(self) -> bytes:
        return HttpError(self.status, self.message, self.proxy_status).to_bytes()


_splice_ok = hasattr(os, "splice")


def _open_pipe() -> tuple[int, int] | None:
    """A pipe for splice(2), or None (no splice here, or out of descriptors: the caller copies instead)."""
    if not _splice_ok:
        return None
    try:
        return os.pipe()  # close-on-exec, like every descriptor Python opens
    except OSError:
        return None


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        with contextlib.suppress(OSError):
            os.close(fd)


def _disable_splice() -> None:
    global _splice_ok
    _splice_ok = False


def _errno_name(exc: OSError) -> str:
    return exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or type(exc).__name__


class _Connection:
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

    # -------------------------------------------------------------- lifecycle
    def run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # a bug must cost one connection, never the supervisor
            self.error = self.error or f"internal error: {exc!r}"
        finally:
            self._close_all()
            self.server._finished(self)
            if self.seen:
                self.server._emit(self.record())

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
        reader = _Reader(self.client, self.started + self.server.head_timeout)
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

    def _http(self, reader: _Reader) -> None:
        self.protocol = "http"
        try:
            head = reader.head(HEAD_LIMIT)
        except _TooLarge:
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
        self.host, self.port = request.host, request.port
        outcome = self._open(request.host, request.port)
        if isinstance(outcome, _Refusal):
            self._refuse_raw(outcome.http())
            return
        if request.method == "CONNECT":
            if self._reply(b"HTTP/1.1 200 Connection established\r\n\r\n"):
                self._relay(bytes(reader.buf), tunnel=True)
        else:
            self._relay(request.upstream_head() + bytes(reader.buf), tunnel=False)

    def _socks5(self, reader: _Reader) -> None:
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
                host = netcheck.normalize_host(raw.decode("ascii")) if raw.isascii() else None
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
        if isinstance(outcome, _Refusal):
            self._refuse_raw(socks_reply(outcome.socks))
            return
        if self._reply(socks_reply(SOCKS_OK)):
            self._relay(bytes(reader.buf), tunnel=True)

    # -------------------------------------------------------------- decision and dial
    def _open(self, host: str, port: int) -> socket.socket | _Refusal:
        """Decide, resolve once, screen the addresses and dial the first that passed and answers."""
        server = self.server
        dest = netcheck.format_destination(host, port)
        verdict = netcheck.match_destination(server.policy, host, port)
        self.rule = verdict.rule
        if verdict.kind == "deny":
            return self._policy_refusal(verdict, host, dest)
        if verdict.kind == "unlisted":
            asked = server.ask is not None
            if not self._ask(host, port):
                self.rule = "not in network.allow (not approved)" if asked else "not in network.allow"
                return self._policy_refusal(verdict, host, dest, declined=asked)
            self.rule = "not in network.allow (approved)"
        if self.aborted:
            return self._stopped()
        literal = netcheck.parse_ip(host)
        try:
            infos = server.resolver(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                    socket.AI_NUMERICHOST if literal is not None else 0)
        except (OSError, UnicodeError) as exc:
            self.decision = "allow"
            self.error = f"could not resolve {host}: {_errno_name(exc) if isinstance(exc, OSError) else exc}"
            return _Refusal(502, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "dns_error", self.error)
        sockaddrs: dict[IPAddress, tuple[Any, ...]] = {}
        order: list[IPAddress] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            addr = netcheck.parse_ip(str(sockaddr[0]))
            if addr is not None and addr not in sockaddrs:
                sockaddrs[addr] = sockaddr
                order.append(addr)
        local = frozenset() if server.policy.allow_private else netcheck.local_addresses()
        passed, refusal = netcheck.screen_addresses(server.policy, order, port, local)
        if not passed:
            if refusal is None:
                self.decision = "allow"
                self.error = f"could not resolve {host}: no IPv4 or IPv6 address"
                return _Refusal(502, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "dns_error", self.error)
            self.rule = refusal.rule
            return self._policy_refusal(refusal, host, dest)
        self.decision = "allow"
        return self._dial(passed, sockaddrs, port, dest)

    def _dial(self, passed: list[IPAddress], sockaddrs: dict[IPAddress, tuple[Any, ...]], port: int,
              dest: str) -> socket.socket | _Refusal:
        deadline = time.monotonic() + 2 * self.server.connect_timeout
        failure: tuple[IPAddress, OSError] | None = None
        for addr in passed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                failure = (addr, exc)
                continue
            if not self.attach(sock):
                sock.close()
                return self._stopped()
            try:
                sock.settimeout(min(self.server.connect_timeout, remaining))
                sock.connect(sockaddrs[addr])
                sock.settimeout(None)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                failure = (addr, exc)
                with self.lock:
                    self.upstream = None
                sock.close()
                if self.aborted:
                    return self._stopped()
                continue
            self.address = str(addr)
            return sock
        if failure is None:
            self.error = f"could not connect to {dest}: timed out"
            return _Refusal(504, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "connection_timeout",
                            self.error)
        addr, exc = failure
        if isinstance(exc, TimeoutError):
            self.error = f"could not connect to {dest} ({addr}): no answer within {self.server.connect_timeout:g} s"
            return _Refusal(504, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "connection_timeout",
                            self.error)
        self.error = f"could not connect to {dest} ({addr}): {_errno_name(exc)}"
        code = {errno.ECONNREFUSED: SOCKS_REFUSED, errno.ENETUNREACH: SOCKS_NET_UNREACHABLE}.get(
            exc.errno or 0, SOCKS_HOST_UNREACHABLE)
        status = "connection_refused" if code == SOCKS_REFUSED else "destination_unavailable"
        return _Refusal(502, code, f"sandboxctl: {self.error}.", status, self.error)

    def _ask(self, host: str, port: int) -> bool:
        """The approval hook's answer; only a literal True approves (fail closed)."""
        ask = self.server.ask
        if ask is None:
            return False
        try:
            return ask(host, port) is True
        except Exception as exc:  # a failing approval channel denies, it does not crash
            self.error = f"approval failed: {exc!r}"
            return False

    def _stopped(self) -> _Refusal:
        self.decision = "deny"
        self.error = self.error or "the proxy was stopped"
        return _Refusal(503, SOCKS_FAILURE, "sandboxctl: the sandbox's proxy is shutting down.",
                        "proxy_internal_error", self.error)

    def _policy_refusal(self, verdict: Verdict, host: str, dest: str, declined: bool = False) -> _Refusal:
        """The one sentence an agent gets back: the rule that refused, and how a human would allow it."""
        self.decision = "deny"
        if verdict.kind == "deny" and verdict.address is None:
            message = (f"sandboxctl: {dest} is blocked by this sandbox's network.deny rule {verdict.pattern}; "
                       "only a human can change that, by editing the policy.")
            kind = "http_request_denied"
        elif verdict.kind == "deny":
            message = (f"sandboxctl: {host} resolves to {verdict.address}, which this sandbox's network.deny rule "
                       f"{verdict.pattern} blocks; only a human can change that, by editing the policy.")
            kind = "destination_ip_prohibited"
        elif verdict.kind == "private":
            listed = netcheck.format_destination(str(verdict.address), self.port)
            subject = (f"{host} resolves to {verdict.address} ({verdict.address_label}),"
                       if str(verdict.address) != host else f"{host} ({verdict.address_label}) is")
            message = (f"sandboxctl: {subject} an address this sandbox does not dial (network.allow_private: false); "
                       f"a human can allow it with --allow-net {listed} or with network.allow_private: true "
                       "in the policy.")
            kind = "destination_ip_prohibited"
        else:
            approval = " and the request to reach it was not approved" if declined else ""
            message = (f"sandboxctl: {dest} is not in this sandbox's network.allow{approval}; "
                       f"a human can allow it with --allow-net {dest} or in the policy.")
            kind = "http_request_denied"
        return _Refusal(403, SOCKS_NOT_ALLOWED, message, kind)

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

    # -------------------------------------------------------------- relay
    def _count(self, outbound: bool, n: int) -> None:
        if outbound:
            self.bytes_out += n
        else:
            self.bytes_in += n

    def _relay(self, first_out: bytes, tunnel: bool) -> None:
        """Relay both ways until both sides are done: this thread carries client->upstream, a helper the reverse."""
        upstream = self.upstream
        assert upstream is not None
        with self.lock:
            if self.aborted:
                return
            self.relaying = True
        self.client.settimeout(None)
        try:
            if first_out:
                upstream.sendall(first_out)
                self.bytes_out += len(first_out)
        except OSError as exc:
            self.error = f"upstream closed: {_errno_name(exc)}"
            self.abort(reset=True)
            return
        helper = threading.Thread(target=self._pump, args=(upstream, self.client, False, tunnel),
                                  name="sandboxctl-proxy-in", daemon=True)
        try:
            helper.start()
        except RuntimeError:
            self.error = "could not start a relay thread"
            self.abort(reset=True)
            return
        self._pump(self.client, upstream, True, tunnel)
        helper.join()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool, tunnel: bool) -> None:
        """Copy src to dst until EOF (then half-close dst) or an error (then abort both ways).

        Small transfers are copied through a buffer that grows from 16 to 64 KiB. Once a read fills
        64 KiB the transfer is bulk, and the bytes go through a pipe with splice(2) instead, never
        entering Python (less CPU and GIL, ~20% more throughput in bench/proxy). A pipe costs two
        descriptors, so interactive connections never get one; without one (EMFILE, no splice for
        these sockets) the copy simply goes on with a 256 KiB buffer.
        """
        pipe: tuple[int, int] | None = None
        try:
            size = _BUF_MIN
            view = memoryview(bytearray(size))
            while True:
                if pipe is None:
                    n = src.recv_into(view)
                    if not n:
                        break
                    dst.sendall(view[:n])
                    self._count(outbound, n)
                    if n == size and size < _BUF_MAX:
                        pipe = _open_pipe() if size >= _BUF_BULK else None
                        size = 0 if pipe is not None else size * 4
                        view = memoryview(bytearray(size))
                    continue
                try:
                    n = os.splice(src.fileno(), pipe[1], _SPLICE_CHUNK)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    _disable_splice()  # this kernel or socket type cannot splice: copy from now on
                    _close_pipe(pipe)
                    pipe, size = None, _BUF_MAX
                    view = memoryview(bytearray(size))
                    continue
                if not n:
                    break
                while n:
                    moved = os.splice(pipe[0], dst.fileno(), n)
                    self._count(outbound, moved)
                    n -= moved
        except OSError as exc:
            if not self.aborted:
                side = "client" if outbound else "upstream"
                self.error = self.error or f"{side} connection failed: {_errno_name(exc)}"
            self.abort(reset=True)
            return
        finally:
            if pipe is not None:
                _close_pipe(pipe)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        if not tunnel and not outbound:
            # Plain HTTP: the response is complete (the request said Connection: close), so the
            # client's side of this connection is over too; wake the other pump.
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RD)


# ------------------------------------------------------------------ the server
class ProxyServer:
    """Serve the sandbox's proxy connections from a listening socket; see the module docstring.

    `log(record)` gets one `net` record per connection that sent anything (calls are serialized, but come
    from proxy threads); `ask(host, port)` is asked about destinations the policy does not list (None: deny).
    `resolver` has socket.getaddrinfo's signature (a seam for tests); it is called once per connection.
    """

    def __init__(
        self,
        listener: socket.socket,
        policy: NetPolicy,
        log: Callable[[dict[str, Any]], None],
        ask: Callable[[str, int], bool] | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        resolver: Callable[..., list[Any]] = socket.getaddrinfo,
    ) -> None:
        self.listener = listener
        self.policy = policy
        self.log = log
        self.ask = ask
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.resolver = resolver
        self.log_failures = 0
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._accept_thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._started = False
        self._stopping = False
        self._stopped = False

    def start(self) -> None:
        """Serve in the background; returns at once. A second call does nothing."""
        with self._lock:
            if self._started or self._stopping:
                return
            self._started = True
        try:
            self._wake = os.pipe()
            self.listener.setblocking(False)
            self._accept_thread = threading.Thread(target=self._accept_loop, name="sandboxctl-proxy", daemon=True)
            self._accept_thread.start()
        except (OSError, RuntimeError) as exc:
            self._report(f"sandboxctl: the network proxy could not start: {exc}")
            self._accept_thread = None

    def stop(self, timeout: float = STOP_JOIN_S) -> None:
        """Close the listener and every connection, and wait (at most ~timeout s) for the threads to end."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        try:
            self._stop(timeout)
        except Exception as exc:  # stop() is called from clean-up paths: it must not raise
            self._report(f"sandboxctl: error while stopping the network proxy: {exc!r}")
        finally:
            self._stopped = True

    def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self.listener.close()
        if self._wake is not None and (self._accept_thread is None or not self._accept_thread.is_alive()):
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            thread = conn.thread
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            if conn.thread is not None and conn.thread.is_alive():
                conn.force_close()

    @property
    def serving(self) -> bool:
        """True while new connections are accepted. After start(), False means it could not start
        (no thread or pipe to be had): the sandbox then has no network, and the caller should say so."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive() and not self._stopping

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -------------------------------------------------------------- internals
    def _accept_loop(self) -> None:
        assert self._wake is not None
        poller = select.poll()
        try:
            poller.register(self.listener, select.POLLIN)
        except (OSError, ValueError):
            return
        poller.register(self._wake[0], select.POLLIN)
        listener_fd = self.listener.fileno()
        while not self._stopping:
            try:
                events = poller.poll()
            except OSError:
                return
            if self._stopping:
                return
            for fd, event in events:
                if fd != listener_fd:
                    continue
                if event & (select.POLLERR | select.POLLNVAL):
                    self._report("sandboxctl: the network proxy's listening socket failed; no new connections")
                    return
                if not self._accept_ready():
                    return

    def _accept_ready(self) -> bool:
        """Accept every pending connection; False if the listener is unusable."""
        while not self._stopping:
            try:
                client, _peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)  # out of descriptors: back off instead of spinning on poll()
                    return True
                return False
            self._admit(client)
        return True

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            busy = len(self._conns) >= self.max_connections
            conn = None if busy else _Connection(self, client)
            if conn is not None:
                self._conns.add(conn)
        if conn is None:
            self._refuse_busy(client)
            return
        thread = threading.Thread(target=conn.run, name="sandboxctl-proxy-conn", daemon=True)
        conn.thread = thread
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                client.close()

    def _refuse_busy(self, client: socket.socket) -> None:
        """Beyond max_connections: a 503 in one non-blocking send, then close. Never blocks the accept loop."""
        message = (f"sandboxctl: this sandbox already has {self.max_connections} connections open through its "
                   "proxy, the limit; close some and retry.")
        try:
            client.setblocking(False)
            client.send(HttpError(503, message, "proxy_internal_error").to_bytes())
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
        self._emit({"host": None, "port": None, "address": None, "decision": "deny",
                    "rule": f"connection limit ({self.max_connections}) reached", "bytes_in": 0, "bytes_out": 0,
                    "duration_s": 0.0, "protocol": None})

    def _finished(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _emit(self, record: dict[str, Any]) -> None:
        if self._stopped:
            return  # stop() has returned: the caller may have closed its log
        with self._log_lock:
            try:
                self.log(record)
            except Exception:
                self.log_failures += 1
                if self.log_failures == 1:
                    self._report("sandboxctl: the network proxy could not write a log record")

    @staticmethod
    def _report(message: str) -> None:
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr)
