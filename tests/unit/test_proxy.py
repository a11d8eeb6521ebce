"""The network proxy (sandboxctl.network.proxy) and its decisions (sandboxctl.network.addresses).

Everything runs on 127.0.0.1: a ProxyServer on a listener made here, a small HTTP server and a TCP
echo server as upstreams. A fake resolver stands in for DNS where a name must resolve to a chosen
address.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.network import addresses, messages, relay
from sandboxctl.network.addresses import NetPolicy
from sandboxctl.network.proxy import (
    HEAD_LIMIT,
    HttpError,
    ProxyRequest,
    ProxyServer,
    parse_request_head,
)

# ====================================================================== addresses: address classes

PRIVATE = [
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private (RFC 1918)"),
    ("10.255.255.255", "private (RFC 1918)"),
    ("172.16.0.1", "private (RFC 1918)"),
    ("172.31.255.255", "private (RFC 1918)"),
    ("192.168.1.1", "private (RFC 1918)"),
    ("100.64.0.1", "shared CGNAT (RFC 6598)"),
    ("100.127.255.255", "shared CGNAT (RFC 6598)"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.192", "IETF protocol assignments"),
    # cloud metadata endpoints
    ("169.254.169.254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("2001:db8::1", "documentation"),
    ("64:ff9b:1::a", "local-use NAT64"),
]

EMBEDDED = [
    # (IPv6 form, embedded IPv4, form name, class of the embedded address)
    ("::ffff:127.0.0.1", "127.0.0.1", "IPv4-mapped", "loopback"),
    ("::ffff:10.0.0.1", "10.0.0.1", "IPv4-mapped", "private (RFC 1918)"),
    ("::ffff:169.254.169.254", "169.254.169.254", "IPv4-mapped", "cloud metadata"),
    ("::ffff:0:192.168.0.1", "192.168.0.1", "IPv4-translated", "private (RFC 1918)"),
    ("::127.0.0.1", "127.0.0.1", "IPv4-compatible", "loopback"),
    ("::10.1.2.3", "10.1.2.3", "IPv4-compatible", "private (RFC 1918)"),
    ("64:ff9b::7f00:1", "127.0.0.1", "NAT64", "loopback"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254", "NAT64", "cloud metadata"),
    ("2002:7f00:1::1", "127.0.0.1", "6to4", "loopback"),
    ("2002:c0a8:101:1::1", "192.168.1.1", "6to4", "private (RFC 1918)"),
    ("2002:a9fe:a9fe::", "169.254.169.254", "6to4", "cloud metadata"),
    # Teredo: the client address is stored inverted in the last 32 bits (~127.0.0.1 = 80ff:fffe)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1", "Teredo", "loopback"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "172.15.255.255",
    "172.32.0.1",
    "100.63.255.255",
    "100.128.0.1",
    "192.169.0.1",
    "11.0.0.1",
    "169.255.0.1",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "label"), PRIVATE)
def test_address_class_private(address: str, label: str) -> None:
    assert addresses.address_class(ip_address(address)) == label


@pytest.mark.parametrize(("ipv6", "ipv4", "form", "label"), EMBEDDED)
def test_embedded_ipv4_forms_are_judged_by_the_ipv4_address(ipv6: str, ipv4: str, form: str, label: str) -> None:
    addr = IPv6Address(ipv6)
    assert addresses.embedded_ipv4(addr) == (IPv4Address(ipv4), form)
    assert addresses.address_class(addr) == f"{label} via {form} {ipv4}"


@pytest.mark.parametrize("address", PUBLIC)
def test_address_class_public(address: str) -> None:
    assert addresses.address_class(ip_address(address)) is None


def test_embedded_ipv4_of_plain_ipv6_is_none() -> None:
    assert addresses.embedded_ipv4(IPv6Address("2606:4700:4700::1111")) is None
    assert addresses.embedded_ipv4(IPv6Address("::1")) is None
    assert addresses.embedded_ipv4(IPv6Address("::")) is None


@dataclass
class _IfAddr:
    family: int
    address: str


def test_interface_addresses_from_psutil_shape() -> None:
    raw = {
        "lo": [_IfAddr(socket.AF_INET, "127.0.0.1"), _IfAddr(socket.AF_INET6, "::1")],
        "eth0": [
            _IfAddr(socket.AF_INET, "203.0.113.7"),
            _IfAddr(socket.AF_INET6, "fe80::1%eth0"),
            _IfAddr(socket.AF_INET6, "2001:db8:1::7"),
            _IfAddr(getattr(socket, "AF_PACKET", 17), "02:00:00:00:00:01"),
        ],
    }
    found = addresses.interface_addresses(raw)
    assert found == {ip_address(a) for a in ("127.0.0.1", "::1", "203.0.113.7", "fe80::1", "2001:db8:1::7")}


def test_local_addresses_reads_the_hosts_interfaces() -> None:
    found = addresses.local_addresses(max_age_s=0)
    assert IPv4Address("127.0.0.1") in found
    assert addresses.local_addresses() is addresses.local_addresses()  # cached


def test_a_public_address_of_this_host_is_refused() -> None:
    policy = NetPolicy(allow=("example.com",))
    mine = frozenset({ip_address("8.8.4.4")})
    verdict = addresses.screen_address(policy, ip_address("8.8.4.4"), 443, mine)
    assert verdict is not None and verdict.rule == "private address 8.8.4.4 (host interface; allow_private: false)"
    assert addresses.screen_address(policy, ip_address("8.8.8.8"), 443, mine) is None
    for form in ("::ffff:8.8.4.4", "64:ff9b::808:404", "2002:808:404::1"):  # the same host in IPv6 clothing
        verdict = addresses.screen_address(policy, ip_address(form), 443, mine)
        assert verdict is not None and verdict.kind == "private", form
    assert addresses.screen_address(NetPolicy(allow_private=True), ip_address("8.8.4.4"), 443, mine) is None


# ====================================================================== addresses: names and rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PyPI.org", "pypi.org"),
        ("pypi.org.", "pypi.org"),
        ("my_host.internal", "my_host.internal"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::FFFF:127.0.0.1", str(IPv6Address("::ffff:127.0.0.1"))),  # the spelling varies with Python
        ("[0:0::1]", "::1"),
        ("127.1", None),  # inet_aton spellings of IPv4 are refused
        ("0x7f000001", None),
        ("2130706433", None),
        ("0177.0.0.1", None),
        ("1.2.3.04", None),
        ("", None),
        ("a..b", None),
        ("-a.com", None),
        ("a b", None),
        ("bücher.de", None),
        ("[::1", None),
        ("[fe80::1%eth0]", None),
        ("x" * 64 + ".com", None),
        ("host:80", None),
    ],
)
def test_normalize_host(text: str, expected: str | None) -> None:
    assert addresses.normalize_host(text) == expected


def test_match_destination_allow_wildcard_and_deny_precedence() -> None:
    policy = NetPolicy(
        allow=("pypi.org", "files.pythonhosted.org:443", "*.github.com:443", "*.example.com"),
        deny=("evil.example.com", "*.gist.github.com"),
    )
    assert addresses.match_destination(policy, "pypi.org", 80).rule == "network.allow: pypi.org"
    assert addresses.match_destination(policy, "files.pythonhosted.org", 443).allowed
    assert addresses.match_destination(policy, "files.pythonhosted.org", 80).rule == "not in network.allow"
    assert addresses.match_destination(policy, "api.github.com", 443).rule == "network.allow: *.github.com:443"
    assert not addresses.match_destination(policy, "github.com", 443).allowed  # *.x does not cover x
    verdict = addresses.match_destination(policy, "evil.example.com", 443)
    assert (verdict.allowed, verdict.kind, verdict.rule) == (False, "deny", "network.deny: evil.example.com")
    assert addresses.match_destination(policy, "a.gist.github.com", 443).rule == "network.deny: *.gist.github.com"
    assert addresses.match_destination(policy, "www.example.com", 8080).rule == "network.allow: *.example.com"


def test_screen_address_private_unless_allowed() -> None:
    strict = NetPolicy(allow=("localhost",))
    verdict = addresses.screen_address(strict, ip_address("127.0.0.1"), 8080)
    assert verdict is not None
    assert verdict.rule == "private address 127.0.0.1 (loopback; allow_private: false)"
    assert addresses.screen_address(NetPolicy(allow=("localhost",), allow_private=True),
                                   ip_address("127.0.0.1"), 8080) is None
    # The literal address itself listed: allowed, for the listed port only.
    listed = NetPolicy(allow=("127.0.0.1:8080", "[::1]"))
    assert addresses.screen_address(listed, ip_address("127.0.0.1"), 8080) is None
    assert addresses.screen_address(listed, ip_address("127.0.0.1"), 8081) is not None
    assert addresses.screen_address(listed, ip_address("::1"), 1) is None
    # Its IPv4-mapped spelling is the same destination (units.HostPattern compares addresses).
    assert addresses.screen_address(listed, ip_address("::ffff:127.0.0.1"), 8080) is None
    assert addresses.screen_address(listed, ip_address("::ffff:127.0.0.1"), 8081) is not None


def test_ip_literal_deny_applies_to_resolved_addresses_and_beats_allow_private() -> None:
    policy = NetPolicy(allow=("*.example.com",), deny=("93.184.216.34", "[::1]:22"), allow_private=True)
    verdict = addresses.screen_address(policy, ip_address("93.184.216.34"), 443)
    assert verdict is not None and verdict.rule == "network.deny: 93.184.216.34" and verdict.kind == "deny"
    assert addresses.screen_address(policy, ip_address("::1"), 22) is not None
    assert addresses.screen_address(policy, ip_address("::1"), 23) is None
    assert addresses.screen_address(policy, ip_address("::ffff:93.184.216.34"), 443) is not None
    assert addresses.screen_address(policy, ip_address("64:ff9b::5db8:d822"), 443) is not None  # NAT64 form


def test_screen_addresses_keeps_order_drops_duplicates_and_reports_first_refusal() -> None:
    policy = NetPolicy(allow=("x.example",))
    addrs = [ip_address(a) for a in ("10.0.0.1", "8.8.8.8", "127.0.0.1", "8.8.8.8", "1.1.1.1")]
    passed, refusal = addresses.screen_addresses(policy, addrs, 443)
    assert passed == [ip_address("8.8.8.8"), ip_address("1.1.1.1")]
    assert refusal is not None and "10.0.0.1" in refusal.rule
    assert addresses.screen_addresses(policy, [], 443) == ([], None)


def test_net_policy_rejects_bad_patterns_and_accepts_lists() -> None:
    with pytest.raises(ValueError):
        NetPolicy(allow=("not a host",))
    policy = NetPolicy(allow=["a.example"], deny=[])  # type: ignore[arg-type]
    assert policy.allow == ("a.example",)
    assert hash(policy) == hash(NetPolicy(allow=("a.example",)))


# ====================================================================== request-head parser


def test_parse_connect() -> None:
    request = parse_request_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert isinstance(request, ProxyRequest)
    assert (request.method, request.host, request.port, request.protocol) == ("CONNECT", "pypi.org", 443, "connect")
    request = parse_request_head(b"CONNECT [::1]:8443 HTTP/1.0\r\n\r\n")
    assert isinstance(request, ProxyRequest) and (request.host, request.port) == ("::1", 8443)


def test_parse_absolute_uri_and_rewrite() -> None:
    request = parse_request_head(
        b"POST http://Example.COM:8080/a/b?c=d#frag HTTP/1.1\r\n"
        b"Host: other.example\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\n"
        b"Keep-Alive: 300\r\n"
        b"Content-Length: 3\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    assert isinstance(request, ProxyRequest)
    assert (request.host, request.port, request.target, request.protocol) == ("example.com", 8080, "/a/b?c=d", "http")
    head = forwarded(request).decode()
    assert head.startswith("Host: example.com:8080\r\n")
    for gone in ("Proxy-", "keep-alive", "X-Hop", "Keep-Alive", "other.example", "Connection"):
        assert gone not in head
    assert "Content-Length: 3\r\n" in head and "X-Kept: yes\r\n" in head


def forwarded(request: ProxyRequest) -> bytes:
    """The headers the proxy sends upstream for this request (network/messages.py)."""
    headers = [(n.encode(), v.encode("latin-1")) for n, v in request.headers]
    upgrade = messages.upgrade_requested(headers)
    out = messages.upstream_request_headers(headers, request.host, request.port, 80, upgrade[0] if upgrade else None)
    return b"".join(name + b": " + value + b"\r\n" for name, value in out)


def test_parse_default_port_empty_path_and_upgrade() -> None:
    request = parse_request_head(b"GET http://example.com HTTP/1.1\r\n\r\n")
    assert isinstance(request, ProxyRequest) and (request.port, request.target) == (80, "/")
    assert b"Host: example.com\r\n" in forwarded(request)
    request = parse_request_head(b"GET http://example.com?q HTTP/1.1\r\n\r\n")
    assert isinstance(request, ProxyRequest) and request.target == "/?q"
    request = parse_request_head(
        b"GET http://[::1]:81/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert isinstance(request, ProxyRequest)
    head = forwarded(request)
    assert b"Host: [::1]:81\r\n" in head and b"Upgrade: websocket\r\n" in head and b"Connection: upgrade\r\n" in head
    # A Connection header cannot strip the message framing.
    request = parse_request_head(
        b"PUT http://e.com/ HTTP/1.1\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n"
    )
    assert isinstance(request, ProxyRequest) and b"Content-Length: 1\r\n" in forwarded(request)


MALFORMED = [
    (b"", 400),
    (b"\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # origin form: not a proxy request
    (b"OPTIONS * HTTP/1.1\r\n\r\n", 400),
    (b"GET https://example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://good.example@evil.example/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http:///path HTTP/1.1\r\n\r\n", 400),
    (b"GET http://exa mple.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com:0/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com:65536/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com:8o/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://127.1/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://::1/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://[::1/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://[::1]x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://ex\xc3\xa4mple.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET  http://example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1 \r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/2.0\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET http://example.com/ HTTPS/1.1\r\n\r\n", 400),
    (b"G(T http://example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com/\x00 HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\rX: y\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nName : x\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"CONNECT example.com HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT example.com: HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT :443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nX: " + b"a" * HEAD_LIMIT + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize(("head", "status"), MALFORMED)
def test_malformed_requests(head: bytes, status: int) -> None:
    result = parse_request_head(head)
    assert isinstance(result, HttpError), result
    assert result.status == status
    _assert_well_formed_error(result.to_bytes(), status)


def _assert_well_formed_error(data: bytes, status: int | None = None) -> str:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    lines = head.decode("ascii").split("\r\n")
    version, code, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1" and code.isdigit() and 400 <= int(code) < 600
    if status is not None:
        assert int(code) == status
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"
    text = body.decode("utf-8")
    assert text.startswith("sandboxctl: ") and text.endswith(".\n") and text.count("\n") == 1
    return text


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_parser_random_bytes(data: bytes) -> None:
    result = parse_request_head(data)
    assert isinstance(result, ProxyRequest | HttpError)
    if isinstance(result, HttpError):
        _assert_well_formed_error(result.to_bytes())
    else:
        assert addresses.normalize_host(result.host) == result.host and 1 <= result.port <= 65535
        result.upstream_head()


_PIECES = st.sampled_from(
    [b"GET", b"CONNECT", b"POST", b" ", b"  ", b"http://", b"https://", b"example.com", b"[::1]", b"127.0.0.1",
     b":", b":80", b":0", b"/", b"?", b"#", b"@", b"%", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"\r\n", b"\n",
     b"\r", b"Host: x", b"Connection: close, te", b"Content-Length: 5", b"Transfer-Encoding: chunked", b"\t",
     b"\x00", b"\xff", b"X-A:", b" folded"]
)



@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """Requests assembled from parts that are each valid four times out of five."""

    def part(valid: tuple[bytes, ...], broken: tuple[bytes, ...]) -> bytes:
        return draw(st.sampled_from(valid if draw(st.integers(0, 4)) else broken))

    method = part((b"GET", b"CONNECT", b"POST"), (b"get", b"G T", b"", b"CONNECT"))
    connect = method == b"CONNECT"
    scheme = part((b"",) if connect else (b"http://", b"HTTP://"), (b"https://", b"", b"ftp://", b"http://"))
    host = part((b"example.com", b"[::1]", b"127.0.0.1", b"a_b.example", b"xn--bcher-kva.de"),
                (b"127.1", b"", b"[::1", b"ex ample", b"\xff", b"user@host"))
    port = part((b":443", b":8080") if connect else (b"", b":80", b":8080"), (b":0", b":65536", b":", b":8o", b""))
    path = part((b"",) if connect else (b"", b"/", b"/a?b", b"?q", b"/p#f"), (b"/\x01", b"/a b", b"/"))
    version = part((b"HTTP/1.1", b"HTTP/1.0"), (b"HTTP/2.0", b"http/1.1", b""))
    headers = draw(st.lists(st.sampled_from([
        b"Host: x", b"Connection: close, te", b"Content-Length: 5", b"Transfer-Encoding: chunked",
        b"Proxy-Authorization: Basic x", b"Upgrade: websocket", b"Connection: upgrade", b"X-Empty:",
        b"Proxy-Connection: keep-alive", b"Keep-Alive: 5", b"X-Obs: caf\xe9",
    ]), max_size=6))
    if not draw(st.integers(0, 4)):
        headers.append(draw(st.sampled_from([b" folded", b"X: \x00", b"Bad Name: y", b"NoColon",
                                             b"Content-Length: 6", b"Content-Length: x"])))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    line = method + b" " + scheme + host + port + path + b" " + version
    return line + eol + b"".join(h + eol for h in headers) + eol


@settings(max_examples=600, deadline=None)
@given(st.one_of(_requests(), st.lists(_PIECES, max_size=24).map(b"".join)))
def test_fuzz_parser_structured(data: bytes) -> None:
    result = parse_request_head(data)
    assert isinstance(result, ProxyRequest | HttpError)
    if isinstance(result, HttpError):
        _assert_well_formed_error(result.to_bytes())
    elif result.protocol == "connect":
        assert result.port and addresses.normalize_host(result.host) == result.host
    else:
        head = forwarded(result)
        assert b"\r\n\r\n" not in head and result.target.startswith("/")
        lines = head.decode("latin-1").lower().split("\r\n")[:-1]
        assert lines[0].startswith("host: ")
        assert sum(line.startswith("host:") for line in lines) == 1
        assert sum(line.startswith("connection:") for line in lines) <= 1
        assert not any(line.startswith(("proxy-", "keep-alive:", "te:")) for line in lines)


# ====================================================================== live fixtures


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"z" * 65536
            with contextlib.suppress(OSError):
                while size > 0:
                    self.wfile.write(chunk[: min(size, len(chunk))])
                    size -= len(chunk)
            return
        lines = [f"path={self.path}"] + [f"{k.lower()}={v}" for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.upper())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class EchoServer:
    """Echoes each chunk back at once; on EOF from the client, sends 'BYE <n bytes>' and closes."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family, backlog=256)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        total = 0
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                total += len(data)
                conn.sendall(data)
            conn.sendall(f"BYE {total}".encode())
        except OSError:
            pass
        finally:
            with self.lock:
                if conn in self.conns:
                    self.conns.remove(conn)
            conn.close()

    def close(self) -> None:
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@dataclass
class Proxy:
    server: ProxyServer
    port: int
    records: list[dict[str, Any]] = field(default_factory=list)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

    def wait_records(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.records


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., Proxy]]:
    made: list[ProxyServer] = []

    def make(allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), allow_private: bool = True,
             ask: Callable[[str, int], bool] | None = None, **kwargs: Any) -> Proxy:
        listener = socket.create_server(("127.0.0.1", 0))
        records: list[dict[str, Any]] = []
        server = ProxyServer(listener, NetPolicy(allow, deny, allow_private), records.append, ask, **kwargs)
        server.start()
        made.append(server)
        return Proxy(server, listener.getsockname()[1], records)

    yield make
    for server in made:
        server.stop()


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    out = bytearray()
    while marker not in out:
        data = sock.recv(65536)
        if not data:
            break
        out += data
    return bytes(out)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def connect_tunnel(proxy: Proxy, target: str) -> tuple[socket.socket, bytes]:
    sock = proxy.connect()
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return sock, recv_until(sock, b"\r\n\r\n")


def socks5(proxy: Proxy, atyp: int, address: bytes, port: int, methods: bytes = b"\x00") -> tuple[socket.socket, bytes]:
    sock = proxy.connect()
    sock.sendall(bytes([5, len(methods)]) + methods)
    choice = recv_exact(sock, 2)
    if choice != b"\x05\x00":
        return sock, choice
    sock.sendall(bytes([5, 1, 0, atyp]) + address + port.to_bytes(2, "big"))
    return sock, recv_exact(sock, 10)


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sandboxctl-proxy")]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ====================================================================== live: protocols


def test_connect_relays_both_ways(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=(f"127.0.0.1:{echo.port}",))
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    for payload in (b"hello", b"x" * 300_000):
        sock.sendall(payload)
        assert recv_exact(sock, len(payload)) == payload
    sock.close()
    (record,) = proxy.wait_records(1)
    assert record["decision"] == "allow" and record["protocol"] == "connect"
    assert record["rule"] == f"network.allow: 127.0.0.1:{echo.port}"
    assert record["address"] == "127.0.0.1" and record["host"] == "127.0.0.1" and record["port"] == echo.port
    assert record["bytes_out"] == 300_005 and record["bytes_in"] >= 300_005
    assert record["duration_s"] >= 0


def test_connect_forwards_bytes_sent_with_the_request(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock = proxy.connect()
    sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nearly".encode())
    assert recv_until(sock, b"early").endswith(b"\r\n\r\nearly")
    sock.close()


def test_absolute_uri_get(make_proxy: Callable[..., Proxy], http_port: int) -> None:
    proxy = make_proxy(allow=(f"localhost:{http_port}",))
    sock = proxy.connect()
    request = (f"GET http://localhost:{http_port}/some/path?q=1 HTTP/1.1\r\nHost: spoofed.example\r\n"
               "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nX-Test: kept\r\n\r\n")
    sock.sendall(request.encode())
    first = read_response(sock)
    # keep-alive: a second request on the same connection, then the client says it is done
    sock.sendall(request.replace("X-Test: kept", "Connection: close").encode())
    second = recv_all(sock)
    sock.close()
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
    body = first.partition(b"\r\n\r\n")[2].decode()
    assert "path=/some/path?q=1\n" in body
    assert f"host=localhost:{http_port}\n" in body
    assert "x-test=kept\n" in body and "connection=" not in body
    assert "proxy-" not in body and "spoofed" not in body
    (record,) = proxy.wait_records(1)
    assert (record["protocol"], record["decision"], record["address"]) == ("http", "allow", "127.0.0.1")
    assert record["bytes_in"] == len(first) + len(second)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (the connection stays open)."""
    head = recv_until(sock, b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    head, _, body = head.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n" + body + recv_exact(sock, length - len(body))


def test_absolute_uri_post_with_body(make_proxy: Callable[..., Proxy], http_port: int) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock = proxy.connect()
    sock.sendall(f"POST http://127.0.0.1:{http_port}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                 .encode())
    response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"HELLO")


def test_socks5_with_domain_name(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("localhost",))
    sock, reply = socks5(proxy, 3, b"\x09localhost", echo.port)
    assert reply[:2] == b"\x05\x00"
    sock.sendall(b"ping")
    assert recv_exact(sock, 4) == b"ping"
    sock.close()
    (record,) = proxy.wait_records(1)
    assert (record["protocol"], record["host"], record["decision"]) == ("socks5", "localhost", "allow")
    assert record["address"] in ("127.0.0.1", "::1")


def test_socks5_with_ipv4(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock, reply = socks5(proxy, 1, socket.inet_aton("127.0.0.1"), echo.port)
    assert reply == b"\x05\x00\x00\x01" + bytes(6)
    sock.sendall(b"abc")
    assert recv_exact(sock, 3) == b"abc"
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == b"BYE 3"


def test_socks5_with_ipv6(make_proxy: Callable[..., Proxy]) -> None:
    try:
        server = EchoServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        proxy = make_proxy(allow=("[::1]",))
        sock, reply = socks5(proxy, 4, socket.inet_pton(socket.AF_INET6, "::1"), server.port)
        assert reply[:2] == b"\x05\x00"
        sock.sendall(b"six")
        assert recv_exact(sock, 3) == b"six"
        sock.close()
        assert proxy.wait_records(1)[0]["address"] == "::1"
    finally:
        server.close()


def test_socks5_refusals(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("localhost:1",))
    sock, reply = socks5(proxy, 3, b"\x09localhost", echo.port)
    assert reply[:2] == b"\x05\x02"  # not allowed by ruleset
    assert recv_all(sock) == b""
    sock, reply = socks5(proxy, 3, b"\x09localhost", echo.port, methods=b"\x02")
    assert reply == b"\x05\xff"  # only username/password offered
    sock = proxy.connect()
    sock.sendall(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))  # BIND
    assert recv_exact(sock, 12)[2:4] == b"\x05\x07"
    sock = proxy.connect()
    sock.sendall(b"\x05\x01\x00\x05\x01\x00\x09" + bytes(6))  # unknown address type
    assert recv_exact(sock, 12)[2:4] == b"\x05\x08"
    sock = proxy.connect()
    sock.sendall(b"\x05\x01\x00\x05\x01\x00\x03\x0512.34" + b"\x00\x50")  # a numeric name
    assert recv_exact(sock, 12)[2:4] == b"\x05\x01"
    records = proxy.wait_records(5)
    assert all(r["decision"] == "deny" and r["protocol"] == "socks5" for r in records)
    assert sorted(r["rule"] for r in records) == [
        "bad request: SOCKS5 client offers no unauthenticated method",
        "bad request: invalid host name",
        "bad request: unknown SOCKS5 address type",
        "bad request: unsupported SOCKS5 command (only CONNECT)",
        "not in network.allow",
    ]


def test_socks4_is_refused(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock = proxy.connect()
    sock.sendall(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
    assert recv_all(sock)[:2] == b"\x00\x5b"


# ====================================================================== live: decisions


def test_port_not_allowed_is_403_naming_the_rule(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("localhost:1",))
    sock, reply = connect_tunnel(proxy, f"localhost:{echo.port}")
    text = _assert_well_formed_error(reply + recv_all(sock), 403)
    assert f"localhost:{echo.port} is not in this sandbox's network.allow" in text
    assert f"--allow-net localhost:{echo.port}" in text
    # Many clients show only the status line of a failed CONNECT, so it carries the sentence too.
    assert reply.split(b"\r\n")[0] == f"HTTP/1.1 403 Forbidden: {text.strip()}".encode()
    (record,) = proxy.wait_records(1)
    assert record["decision"] == "deny" and record["rule"] == "not in network.allow"
    assert record["address"] is None and record["bytes_in"] == record["bytes_out"] == 0


def test_403_on_plain_http_too(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(allow=("pypi.org",))
    sock = proxy.connect()
    sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    text = _assert_well_formed_error(recv_all(sock), 403)
    assert "example.com:80 is not in this sandbox's network.allow" in text


class FakeDNS:
    """A resolver with socket.getaddrinfo's signature: listed names map to chosen addresses."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0,
                 flags: int = 0) -> list[Any]:
        self.calls.append(host)
        if host not in self.names:
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        out = []
        for addr in self.names[host]:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return out


def test_wildcard_and_deny_precedence(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    dns = FakeDNS({"api.example.test": ["127.0.0.1"], "bad.example.test": ["127.0.0.1"],
                   "x.deep.example.test": ["127.0.0.1"]})
    proxy = make_proxy(allow=("*.example.test",), deny=("bad.example.test", "*.deep.example.test"), resolver=dns)
    sock, reply = connect_tunnel(proxy, f"api.example.test:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.close()
    for host, rule in (("bad.example.test", "bad.example.test"), ("x.deep.example.test", "*.deep.example.test")):
        sock, reply = connect_tunnel(proxy, f"{host}:{echo.port}")
        text = _assert_well_formed_error(reply + recv_all(sock), 403)
        assert f"network.deny rule {rule}" in text
    records = sorted(proxy.wait_records(3), key=lambda r: r["host"])
    assert [r["rule"] for r in records] == [
        "network.allow: *.example.test", "network.deny: bad.example.test", "network.deny: *.deep.example.test"]
    assert [r["decision"] for r in records] == ["allow", "deny", "deny"]
    assert dns.calls == ["api.example.test"]  # refused names are never looked up


def test_allow_private_false_refuses_a_listed_name_that_resolves_to_loopback(
    make_proxy: Callable[..., Proxy], echo: EchoServer
) -> None:
    proxy = make_proxy(allow=("localhost",), allow_private=False)
    sock, reply = connect_tunnel(proxy, f"localhost:{echo.port}")
    text = _assert_well_formed_error(reply + recv_all(sock), 403)
    assert "network.allow_private: false" in text and "(loopback)" in text
    (record,) = proxy.wait_records(1)
    assert record["decision"] == "deny" and record["address"] is None
    assert record["rule"].startswith("private address ") and "(loopback; allow_private: false)" in record["rule"]


def test_allow_private_false_allows_a_literal_address_that_is_listed(
    make_proxy: Callable[..., Proxy], echo: EchoServer
) -> None:
    proxy = make_proxy(allow=(f"127.0.0.1:{echo.port}",), allow_private=False)
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"ok")
    assert recv_exact(sock, 2) == b"ok"
    sock.close()
    # The same literal on another port is not listed: refused by the allowlist.
    sock, reply = connect_tunnel(proxy, "127.0.0.1:1")
    assert reply.startswith(b"HTTP/1.1 403 ")


def test_allow_private_false_refuses_an_unlisted_literal_even_if_allowed_by_name(
    make_proxy: Callable[..., Proxy], echo: EchoServer
) -> None:
    # A wildcard-allowed name resolving to the host's metadata/private address is refused.
    dns = FakeDNS({"meta.example.test": ["169.254.169.254"], "lan.example.test": ["10.1.2.3"],
                   "mixed.example.test": ["10.1.2.3", "127.0.0.1"]})
    proxy = make_proxy(allow=("*.example.test", f"127.0.0.1:{echo.port}"), allow_private=False, resolver=dns)
    sock, reply = connect_tunnel(proxy, "meta.example.test:80")
    assert "169.254.169.254 (cloud metadata)" in _assert_well_formed_error(reply + recv_all(sock), 403)
    sock, reply = connect_tunnel(proxy, "lan.example.test:80")
    assert "10.1.2.3 (private (RFC 1918))" in _assert_well_formed_error(reply + recv_all(sock), 403)
    # Only the address that passed is dialled: 127.0.0.1:<port> is listed literally, 10.1.2.3 is not.
    sock, reply = connect_tunnel(proxy, f"mixed.example.test:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.close()
    records = {r["host"]: r for r in proxy.wait_records(3)}
    assert records["mixed.example.test"]["address"] == "127.0.0.1"
    assert records["meta.example.test"]["rule"] == (
        "private address 169.254.169.254 (cloud metadata; allow_private: false)"
    )


def test_name_is_resolved_once_and_the_screened_address_is_dialled(
    make_proxy: Callable[..., Proxy], echo: EchoServer
) -> None:
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding DNS server: a second look-up would differ

    class Rebinding(FakeDNS):
        def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
            self.names[host] = next(answers)
            return super().__call__(host, port, *args, **kwargs)

    dns = Rebinding({})
    proxy = make_proxy(allow=("rebind.example.test",), resolver=dns)
    sock, reply = connect_tunnel(proxy, f"rebind.example.test:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.close()
    assert dns.calls == ["rebind.example.test"]
    assert proxy.wait_records(1)[0]["address"] == "127.0.0.1"


def test_ask_hook(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    asked: list[tuple[str, int]] = []

    def ask(host: str, port: int, peer: int | None) -> bool:
        assert isinstance(peer, int)  # the client's port: how the supervisor finds who connected
        asked.append((host, port))
        time.sleep(0.2)  # a human takes a while; the client's connection stays open meanwhile
        return host == "localhost"

    proxy = make_proxy(allow=(), ask=ask)
    sock, reply = connect_tunnel(proxy, f"localhost:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"approved")
    assert recv_exact(sock, 8) == b"approved"
    sock.close()
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    text = _assert_well_formed_error(reply + recv_all(sock), 403)
    assert "not approved" in text
    assert asked == [("localhost", echo.port), ("127.0.0.1", echo.port)]
    records = sorted(proxy.wait_records(2), key=lambda r: r["host"])
    assert [(r["host"], r["decision"], r["rule"]) for r in records] == [
        ("127.0.0.1", "deny", "not in network.allow (not approved)"),
        ("localhost", "allow", "not in network.allow (approved)"),
    ]


def test_ask_is_not_consulted_for_denied_or_allowed_destinations(
    make_proxy: Callable[..., Proxy], echo: EchoServer
) -> None:
    asked: list[tuple[str, int]] = []
    proxy = make_proxy(allow=("127.0.0.1",), deny=("localhost",), ask=lambda h, p, _peer: asked.append((h, p)) or True)
    sock, reply = connect_tunnel(proxy, f"localhost:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 403 ")
    sock.close()
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.close()
    assert asked == []


def test_failing_ask_and_log_callbacks_do_not_break_the_proxy(echo: EchoServer) -> None:
    def ask(host: str, port: int, peer: int | None) -> bool:
        raise RuntimeError("approval channel gone")

    def log(record: dict[str, Any]) -> None:
        raise OSError("disk full")

    listener = socket.create_server(("127.0.0.1", 0))
    server = ProxyServer(listener, NetPolicy(("127.0.0.1",), (), True), log, ask)
    server.start()
    try:
        proxy = Proxy(server, listener.getsockname()[1])
        sock, reply = connect_tunnel(proxy, f"localhost:{echo.port}")
        assert reply.startswith(b"HTTP/1.1 403 ")
        sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
        assert reply.startswith(b"HTTP/1.1 200 ")
        sock.close()
    finally:
        server.stop()
    assert server.log_failures >= 1


# ====================================================================== live: failures and robustness


def test_upstream_failures(make_proxy: Callable[..., Proxy]) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    dns = FakeDNS({"nowhere.example.test": []})
    proxy = make_proxy(allow=("127.0.0.1", "nowhere.example.test"), resolver=dns)
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{port}")
    text = _assert_well_formed_error(reply + recv_all(sock), 502)
    assert f"could not connect to 127.0.0.1:{port}" in text
    sock, reply = socks5(proxy, 1, socket.inet_aton("127.0.0.1"), port)
    assert reply[:2] == b"\x05\x05"  # connection refused
    sock, reply = connect_tunnel(proxy, "nowhere.example.test:443")
    assert "could not resolve nowhere.example.test" in _assert_well_formed_error(reply + recv_all(sock), 502)
    sock, reply = socks5(proxy, 3, b"\x14nowhere.example.test", 443)
    assert reply[:2] == b"\x05\x04"  # host unreachable
    records = proxy.wait_records(4)
    assert all(r["decision"] == "allow" and r["error"] for r in records), records


def test_bad_requests_over_the_wire(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    for head, status in [
        (b"garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://127.0.0.1/ HTTP/2.0\r\n\r\n", 505),
    ]:
        sock = proxy.connect()
        sock.sendall(head)
        _assert_well_formed_error(recv_all(sock), status)
    records = proxy.wait_records(4)
    assert all(r["decision"] == "deny" and r["rule"].startswith("bad request: ") for r in records)


def test_oversized_head_is_431(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock = proxy.connect()
    with contextlib.suppress(OSError):  # the proxy may close before it has read everything
        sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n")
    _assert_well_formed_error(recv_all(sock), 431)


def test_slow_client_times_out_with_408(make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(allow=("127.0.0.1",), head_timeout=0.5)
    sock = proxy.connect()
    sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n")
    started = time.monotonic()
    _assert_well_formed_error(recv_all(sock), 408)
    assert time.monotonic() - started < 3
    # A client that says nothing at all is closed without a word and without a log record.
    quiet = proxy.connect()
    assert recv_all(quiet) == b""
    assert len(proxy.wait_records(1)) == 1


@contextlib.contextmanager
def running_proxy(allow: tuple[str, ...] = (), **kwargs: Any) -> Iterator[Proxy]:
    listener = socket.create_server(("127.0.0.1", 0))
    records: list[dict[str, Any]] = []
    server = ProxyServer(listener, NetPolicy(allow, (), True), records.append, **kwargs)
    server.start()
    try:
        yield Proxy(server, listener.getsockname()[1], records)
    finally:
        server.stop()


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=512))
def test_fuzz_garbage_over_the_wire(data: bytes) -> None:
    with running_proxy(allow=("127.0.0.1:1",), head_timeout=0.3) as proxy:
        sock = proxy.connect()
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            reply = recv_all(sock)
            if reply.startswith(b"HTTP/"):
                _assert_well_formed_error(reply)
        sock.close()
        probe = proxy.connect()  # and the proxy still answers
        probe.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n\r\n")
        assert recv_all(probe).startswith(b"HTTP/1.1 ")
        probe.close()


def test_half_close_propagates(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"12345")
    assert recv_exact(sock, 5) == b"12345"
    sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF only if the proxy passes it on ...
    assert recv_all(sock) == b"BYE 5"  # ... and then answers, and its close reaches us
    sock.close()
    (record,) = proxy.wait_records(1)
    assert record["bytes_out"] == 5 and record["bytes_in"] == 10


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_bulk_transfer_both_ways_is_intact(
    make_proxy: Callable[..., Proxy], echo: EchoServer, monkeypatch: pytest.MonkeyPatch, splice: bool
) -> None:
    pipes: list[object] = []
    real_open_pipe = relay._open_pipe
    monkeypatch.setattr(relay, "_open_pipe", lambda: pipes.append(real_open_pipe()) or pipes[-1])
    monkeypatch.setattr(relay, "_splice_ok", splice and hasattr(os, "splice"))
    proxy = make_proxy(allow=("127.0.0.1",))
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    payload = os.urandom(1 << 20) * 8
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    received = recv_all(sock)
    sender.join()
    sock.close()
    assert received == payload + f"BYE {len(payload)}".encode()
    (record,) = proxy.wait_records(1)
    assert record["bytes_out"] == len(payload) and record["bytes_in"] == len(received)
    assert any(pipes) == (splice and hasattr(os, "splice"))  # bulk went through splice(2), or was copied


def test_client_vanishing_mid_transfer(make_proxy: Callable[..., Proxy], http_port: int, echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{http_port}")
    assert reply.startswith(b"HTTP/1.1 200 ")
    sock.sendall(f"GET /big/{200 << 20} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset, in the middle of a 200 MB response
    (record,) = proxy.wait_records(1)
    assert record["decision"] == "allow" and record["bytes_in"] < 200 << 20 and "error" in record
    assert proxy.server.active_connections == 0
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")  # still serving
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_plain_http_connection_ends_when_the_client_is_done(make_proxy: Callable[..., Proxy], http_port: int) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    for request in (f"GET http://127.0.0.1:{http_port}/x HTTP/1.0\r\n\r\n",  # 1.0: no keep-alive
                    f"GET http://127.0.0.1:{http_port}/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"):
        sock = proxy.connect()
        sock.sendall(request.encode())
        assert recv_all(sock).startswith(b"HTTP/1.1 200 ")  # EOF arrives although the client never closed
    proxy.wait_records(2)
    assert proxy.server.active_connections == 0


def test_100_concurrent_connects(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",))
    errors: list[BaseException] = []
    barrier = threading.Barrier(100)

    def one(i: int) -> None:
        try:
            sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
            assert reply.startswith(b"HTTP/1.1 200 "), reply
            barrier.wait(timeout=30)  # all 100 tunnels open at the same time
            payload = f"payload-{i}-".encode() * 100
            sock.sendall(payload)
            assert recv_exact(sock, len(payload)) == payload
            sock.close()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    records = proxy.wait_records(100)
    assert len(records) == 100 and all(r["decision"] == "allow" for r in records)


def test_connection_limit_gives_a_clear_refusal(make_proxy: Callable[..., Proxy], echo: EchoServer) -> None:
    proxy = make_proxy(allow=("127.0.0.1",), max_connections=2)
    held = [connect_tunnel(proxy, f"127.0.0.1:{echo.port}") for _ in range(2)]
    assert all(reply.startswith(b"HTTP/1.1 200 ") for _, reply in held)
    extra = proxy.connect()
    text = _assert_well_formed_error(recv_all(extra), 503)
    assert "2 connections" in text
    for sock, _ in held:
        sock.close()
    end = time.monotonic() + 5
    while proxy.server.active_connections and time.monotonic() < end:
        time.sleep(0.01)
    sock, reply = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_a_flood_beyond_the_limit_is_one_record_with_a_count(make_proxy: Callable[..., Proxy],
                                                              echo: EchoServer) -> None:
    """Refusals at the limit are counted into one `net` record per burst, not one per connection."""
    proxy = make_proxy(allow=("127.0.0.1",), max_connections=2)
    held = [connect_tunnel(proxy, f"127.0.0.1:{echo.port}") for _ in range(2)]
    for _ in range(30):
        _assert_well_formed_error(recv_all(proxy.connect()), 503)
    end = time.monotonic() + 10
    while time.monotonic() < end and not any(r.get("count") for r in proxy.records):
        time.sleep(0.05)
    busy = [r for r in proxy.records if r.get("rule", "").startswith("connection limit")]
    assert len(busy) == 1 and busy[0]["count"] == 30 and busy[0]["decision"] == "deny", busy
    for sock, _ in held:
        sock.close()


def test_a_burst_still_open_at_stop_is_recorded(echo: EchoServer) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    records: list[dict[str, Any]] = []
    server = ProxyServer(listener, NetPolicy(("127.0.0.1",), (), True), records.append, max_connections=1)
    server.start()
    proxy = Proxy(server, listener.getsockname()[1], records)
    held, _ = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
    for _ in range(3):
        recv_all(proxy.connect())
    server.stop()
    held.close()
    assert [r["count"] for r in records if r.get("count")] == [3]


def test_a_connection_still_busy_at_stop_keeps_its_record(echo: EchoServer) -> None:
    """A connection whose thread is stuck past stop()'s deadline (here: a human who never answers)
    is recorded by stop() itself: once stop() returns, a late record would be lost."""
    gate = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    records: list[dict[str, Any]] = []
    server = ProxyServer(listener, NetPolicy((), (), True), records.append, lambda *a: gate.wait(10))
    server.start()
    client = socket.create_connection(listener.getsockname(), timeout=10)
    client.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode())
    end = time.monotonic() + 5
    while not server.active_connections and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.2)
    server.stop(timeout=0.5)
    gate.set()
    assert len(records) == 1 and records[0]["error"] == "still open when the proxy stopped", records
    time.sleep(0.3)
    assert len(records) == 1  # the thread that wakes up later writes no second record
    client.close()


def test_the_descriptor_budget_caps_connections_below_the_limit() -> None:
    from sandboxctl.supervise import fd_budget

    assert fd_budget.connection_cap(1024) == (1024 - fd_budget.RESERVE) // fd_budget.FDS_PER_CONNECTION == 128
    assert fd_budget.connection_cap(1 << 20) == fd_budget.MAX_CONNECTIONS
    assert fd_budget.connection_cap(300) == fd_budget.MIN_CONNECTIONS
    cap = fd_budget.connection_cap(1024)
    assert cap * fd_budget.FDS_PER_CONNECTION + fd_budget.RESERVE <= 1024


# ====================================================================== live: lifecycle


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_stop_closes_everything(
    echo: EchoServer, http_port: int, monkeypatch: pytest.MonkeyPatch, splice: bool
) -> None:
    if not splice:
        monkeypatch.setattr(relay, "_splice_ok", False)
    before = fd_count()
    gate = threading.Event()

    def ask(host: str, port: int, peer: int | None) -> bool:
        gate.wait(10)  # a human who never answers
        return False

    listener = socket.create_server(("127.0.0.1", 0))
    records: list[dict[str, Any]] = []
    server = ProxyServer(listener, NetPolicy(("127.0.0.1",), (), True), records.append, ask)
    server.start()
    proxy = Proxy(server, listener.getsockname()[1], records)
    tunnels = [connect_tunnel(proxy, f"127.0.0.1:{echo.port}")[0] for _ in range(5)]
    download, _reply = connect_tunnel(proxy, f"127.0.0.1:{http_port}")
    download.sendall(f"GET /big/{200 << 20} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    download.recv(1000)  # the proxy is now blocked sending to a client that does not read
    waiting = proxy.connect()
    waiting.sendall(f"CONNECT localhost:{echo.port} HTTP/1.1\r\n\r\n".encode())  # stuck in ask()
    half = proxy.connect()
    half.sendall(b"GET http://127.0.0.1/ HT")  # stuck mid-head
    time.sleep(0.3)
    assert server.active_connections == 8
    started = time.monotonic()
    server.stop(timeout=1.0)
    assert time.monotonic() - started < 3
    server.stop()  # idempotent
    for sock in [*tunnels, download, waiting, half]:
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            recv_all(sock)  # every client sees its connection end
        sock.close()
    gate.set()
    end = time.monotonic() + 5
    while fd_count() > before and time.monotonic() < end:
        time.sleep(0.02)  # the echo and http servers close their ends once they see ours closed
    assert fd_count() == before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    while proxy_threads() and time.monotonic() < end:
        time.sleep(0.02)  # the one stuck in ask() ends once the human answers
    assert proxy_threads() == []


def test_start_and_stop_are_idempotent_and_stop_without_start_is_fine() -> None:
    before = fd_count()
    listener = socket.create_server(("127.0.0.1", 0))
    server = ProxyServer(listener, NetPolicy(), lambda r: None)
    server.stop()
    server.start()  # after stop: nothing happens
    assert listener.fileno() == -1
    listener = socket.create_server(("127.0.0.1", 0))
    server = ProxyServer(listener, NetPolicy(), lambda r: None)
    assert not server.serving
    server.start()
    server.start()
    assert server.serving
    server.stop()
    server.stop()
    assert not server.serving
    assert fd_count() == before
    assert proxy_threads() == []


def test_attribute_fields_join_every_record_of_the_connection_and_a_failing_hook_costs_nothing(make_proxy, echo):
    """A session's `command_id`: asked once per connection, with the client's port, as it begins;
    the record's own fields win; a hook that raises leaves the connection served, unattributed."""
    asked: list[int | None] = []

    def attribute(client_port: int | None) -> dict[str, Any]:
        asked.append(client_port)
        if len(asked) == 2:
            raise RuntimeError("the sandbox's sockets could not be read")
        return {"command_id": 7, "decision": "forged"}

    proxy = make_proxy(allow=(f"127.0.0.1:{echo.port}",), attribute=attribute)
    clients = []
    for done in range(2):
        sock, head = connect_tunnel(proxy, f"127.0.0.1:{echo.port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        clients.append(sock.getsockname()[1])
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
        sock.close()
        assert len(proxy.wait_records(done + 1)) == done + 1  # one after the other: their order is known
    records = proxy.records
    assert asked == clients
    assert [(r["decision"], r.get("command_id")) for r in records] == [("allow", 7), ("allow", None)]
