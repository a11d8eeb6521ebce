"""HTTP/1.1 messages as the proxy rewrites them, as pure functions of their parts.

What is forwarded is built here, so that the rules about it sit in one place and are tested
without sockets: hop-by-hop headers are dropped both ways (Connection and what it lists,
Keep-Alive, Proxy-*, TE, Expect — the proxy answers `100 Continue` itself), Host is set from the
destination the proxy decided on (never from the client's Host header), an upgrade is passed on
only when asked for properly (and, to inspected hosts, only to `websocket`: an `h2c` upgrade would
carry further requests past the rules), and a request that frames its body both with
Content-Length and Transfer-Encoding is refused, not guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandboxctl.network import addresses

Headers = list[tuple[bytes, bytes]]

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
                         b"proxy-authenticate", b"te", b"upgrade", b"expect"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_FOLD = re.compile(rb"\n[ \t]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {400: b"Bad Request", 403: b"Forbidden", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


def connection_tokens(headers: Headers) -> set[bytes]:
    return {token.strip().lower() for name, value in headers if name.lower() in (b"connection", b"proxy-connection")
            for token in value.split(b",") if token.strip()}


def upgrade_requested(headers: Headers) -> list[bytes]:
    """The protocols an Upgrade request asks for (Connection must list `upgrade`), lower-cased."""
    if b"upgrade" not in connection_tokens(headers):
        return []
    return [token.strip().lower().split(b"/")[0] for name, value in headers if name.lower() == b"upgrade"
            for token in value.split(b",") if token.strip()]


def framing_problem(headers: Headers) -> str | None:
    """Why the body's framing is ambiguous (request smuggling material), or None."""
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        return "both Content-Length and Transfer-Encoding"
    return None


def fold_in_head(data: bytes) -> bool:
    """True when the request head at the start of data folds a header line (obs-fold): refused."""
    data = data.lstrip(b"\r\n")
    end = _HEAD_END.search(data)
    head = data[: end.start() + 1] if end else data
    return _FOLD.search(head) is not None


def host_header(host: str, port: int, default_port: int) -> bytes:
    return addresses.format_destination(host, None if port == default_port else port).encode("ascii")


def upstream_request_headers(headers: Headers, host: str, port: int, default_port: int,
                             upgrade: bytes | None) -> Headers:
    """The request headers to forward: Host first, hop-by-hop dropped, an accepted upgrade passed on."""
    strip = (_HOP_BY_HOP | connection_tokens(headers)) - _FRAMING
    out: Headers = [(b"Host", host_header(host, port, default_port))]
    out += [(name, value) for name, value in headers if name.lower() not in strip and name.lower() != b"host"]
    if upgrade:
        out += [(b"Upgrade", value) for name, value in headers if name.lower() == b"upgrade"]
        out.append((b"Connection", b"upgrade"))
    return out


def response_headers(headers: Headers, switching: bool = False) -> Headers:
    """The response headers to pass back: hop-by-hop dropped (a 101 keeps its Upgrade and Connection)."""
    if switching:
        drop = {b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"te"}
        return [(name, value) for name, value in headers if name.lower() not in drop]
    strip = (_HOP_BY_HOP | connection_tokens(headers)) - {b"content-length", b"transfer-encoding"}
    return [(name, value) for name, value in headers if name.lower() not in strip]


def host_header_matches(headers: Headers, host: str) -> bool:
    """In a tunnel, the Host header (when sent) must name the tunnel's host. Its port is not compared:
    the connection goes to the tunnel's port whatever it says, and the forwarded Host names that."""
    values = [value for name, value in headers if name.lower() == b"host"]
    if not values:
        return True
    if len(values) > 1:
        return False
    text = values[0].decode("latin-1").strip()
    if text.startswith("["):
        end = text.find("]")
        name, rest = (text[: end + 1], text[end + 1:]) if end > 0 else (text, "")
    else:
        name, sep, rest = text.partition(":")
        rest = ":" + rest if sep else ""
    if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
        return False
    return addresses.normalize_host(name) == host


@dataclass(frozen=True)
class Refusal:
    """A reply the proxy makes itself: status, the one sentence for the agent, an RFC 9209 error type."""

    status: int
    message: str
    proxy_status: str = "http_request_denied"

    def headers(self, close: bool) -> Headers:
        body = self.body()
        out = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", str(len(body)).encode()),
               (b"Proxy-Status", b"sandboxctl; error=" + self.proxy_status.encode())]
        if close:
            out.append((b"Connection", b"close"))
        return out

    def body(self) -> bytes:
        return (self.message + "\n").encode("utf-8", "replace")

    @property
    def reason(self) -> bytes:
        return _REASONS.get(self.status, b"Error")
