"""What the proxy speaks, as pure functions: HTTP proxy request heads and SOCKS5 replies.

parse_request_head() turns the bytes a client sent before the blank line into a ProxyRequest
(CONNECT or an absolute-URI request, checked strictly: tokens, versions, framing headers,
authority) or an HttpError to send back; nothing here touches a socket, so the parser is fuzzed
directly (tests/unit/test_proxy.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandboxctl.network import addresses

HEAD_LIMIT = 64 * 1024  # a request head larger than this is refused (431)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than HTAB
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
_PORT = re.compile(r"[0-9]{1,5}")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTROL_TEXT = re.compile(r"[\x00-\x1f\x7f]")
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
    """A parsed proxy request. host is normalized (addresses.normalize_host); target is the origin form."""

    method: str
    host: str
    port: int
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def protocol(self) -> str:
        return "connect" if self.method == "CONNECT" else "http"


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
    host = addresses.normalize_host(host_text)
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
    host, port, path = _absolute(target, "http", 80)
    _check_framing(headers)
    return ProxyRequest(method, host, port, path, version_text, tuple(headers))


def _absolute(target: str, scheme_wanted: str, default_port: int) -> tuple[str, int, str]:
    """'http://host[:port]/path?query' -> (normalized host, port, origin-form target)."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        if target.startswith("/") or target == "*":
            raise _BadRequest("this is a proxy, so the request needs an absolute URI")
        raise _BadRequest("malformed request target")
    scheme = scheme.lower()
    if scheme != scheme_wanted:
        if scheme == "https":
            raise _BadRequest("https:// URLs go through CONNECT (set HTTPS_PROXY)")
        raise _BadRequest(f"only {scheme_wanted}:// URLs are forwarded; use CONNECT for other protocols")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    host, port = _split_authority(authority, default_port)
    return host, port, path


def parse_absolute_target(target: str, default_port: int = 80) -> tuple[str, int, str] | str:
    """An absolute-form request target (http://, or https:// when default_port is 443) as
    (host, port, origin-form target), or the reason it is refused."""
    try:
        return _absolute(target, "https" if default_port == 443 else "http", default_port)
    except _BadRequest as exc:
        return exc.detail


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
