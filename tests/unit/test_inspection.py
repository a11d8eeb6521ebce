"""The proxy reading requests one by one (network/exchange.py, inspection.py, certs.py, tls.py), live on
127.0.0.1 without a sandbox: what reached the upstream is judged by the upstream's own record."""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sandboxctl.network.inspection import Inspection, PhantomSpec
from sandboxctl.network.proxy import NetPolicy, ProxyServer
from tests.tlsfixtures import RecordingServer, UpstreamCA

REAL = "real-token-0123456789abcdef"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("upstream-ca"))


@pytest.fixture
def upstream(test_ca: UpstreamCA) -> Iterator[RecordingServer]:
    server = RecordingServer(test_ca.server_context())
    yield server
    server.close()


@pytest.fixture
def upstream2(test_ca: UpstreamCA) -> Iterator[RecordingServer]:
    server = RecordingServer(test_ca.server_context())
    yield server
    server.close()


@pytest.fixture
def plain(test_ca: UpstreamCA) -> Iterator[RecordingServer]:
    server = RecordingServer(None)
    yield server
    server.close()


@dataclass
class Proxy:
    server: ProxyServer
    port: int
    inspection: Inspection
    records: list[dict[str, Any]] = field(default_factory=list)
    asked: list[tuple[Any, ...]] = field(default_factory=list)

    def http_events(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len([r for r in self.records if r.get("event") == "http"]) < n and time.monotonic() < end:
            time.sleep(0.01)
        return [r for r in self.records if r.get("event") == "http"]

    def net_events(self, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len([r for r in self.records if "event" not in r]) < n and time.monotonic() < end:
            time.sleep(0.01)
        return [r for r in self.records if "event" not in r]

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.inspection.ca_pem.decode())
        return context

    def https(self, port: int, host: str = "localhost") -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.client_context(), timeout=10)
        conn.set_tunnel(f"{host}:{port}")
        return conn

    def tunnel(self, port: int, host: str = "localhost", context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        return (context or self.client_context()).wrap_socket(sock, server_hostname=host)


@pytest.fixture
def make_proxy(test_ca: UpstreamCA) -> Iterator[Callable[..., Proxy]]:
    made: list[ProxyServer] = []

    def make(inspect: dict[str, Any], secrets: tuple[PhantomSpec, ...] = (), allow: tuple[str, ...] = ("localhost",),
             approve: bool | None = None, upstream_ca: tuple[str, ...] | None = None) -> Proxy:
        inspection = Inspection(inspect, secrets, (str(test_ca.ca_file),) if upstream_ca is None else upstream_ca)
        listener = socket.create_server(("127.0.0.1", 0))
        records: list[dict[str, Any]] = []
        asked: list[tuple[Any, ...]] = []

        def ask_request(*args: Any) -> bool:
            asked.append(args)
            return bool(approve)

        server = ProxyServer(listener, NetPolicy(allow, (), True), records.append, inspection=inspection,
                             ask_request=ask_request if approve is not None else None)
        server.start()
        made.append(server)
        return Proxy(server, listener.getsockname()[1], inspection, records, asked)

    yield make
    for server in made:
        server.stop()


class _Unclosable:
    """http.client closes its file after each response; the next one is read from the same buffer."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class Responses:
    """Reads the responses on one connection in order (one buffered reader for all of them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = _Unclosable(sock.makefile("rb"))

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self.file

    def close(self) -> None:
        self.file._file.close()  # the socket's descriptor is closed only once its files are
        self.sock.close()

    def next(self) -> tuple[int, http.client.HTTPResponse, bytes]:
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response.status, response, response.read()


def read_response(sock: socket.socket) -> tuple[int, http.client.HTTPResponse, bytes]:
    return Responses(sock).next()


# ====================================================================== rules, keep-alive, events


def test_keep_alive_each_request_judged_and_logged(make_proxy: Callable[..., Proxy],
                                                   upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /repos/acme/**", "POST /repos/acme/*/issues"]})
    conn = proxy.https(upstream.port)
    statuses = []
    for method, path in (("GET", "/repos/acme/widget?page=2"), ("GET", "/repos/other/x"),
                         ("POST", "/repos/acme/widget/issues"), ("GET", "/repos/acme/../other"),
                         ("GET", "/repos/acme/x")):
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read()
        statuses.append(response.status)
        if response.status == 403:
            assert body.startswith(b"sandboxctl: ") and body.count(b".") >= 1
    conn.close()
    assert statuses == [200, 403, 200, 403, 200]
    assert [s["path"] for s in upstream.seen] == ["/repos/acme/widget?page=2", "/repos/acme/widget/issues",
                                                  "/repos/acme/x"]
    assert len({s["connection"] for s in upstream.seen}) == 1  # one upstream connection, kept alive
    events = proxy.http_events(5)
    assert [(e["method"], e["path"], e["status"], e["decision"]) for e in events] == [
        ("GET", "/repos/acme/widget", 200, "allow"), ("GET", "/repos/other/x", 403, "deny"),
        ("POST", "/repos/acme/widget/issues", 200, "allow"), ("GET", "/repos/acme/../other", 403, "deny"),
        ("GET", "/repos/acme/x", 200, "allow")]
    assert events[0]["rule"] == f"network.inspect[localhost:{upstream.port}]: GET /repos/acme/**"
    assert events[1]["rule"] == f"not in network.inspect[localhost:{upstream.port}].allow"
    assert events[3]["rule"] == "bad request: the path contains a '.' or '..' segment"
    assert all(e["host"] == "localhost" and e["port"] == upstream.port for e in events)
    assert events[0]["bytes_in"] > 0 and events[0]["bytes_out"] > 0 and "secrets" not in events[0]
    (net,) = proxy.net_events()
    assert net["inspected"] is True and net["protocol"] == "connect" and net["decision"] == "allow"


def test_unmatched_request_can_be_approved(make_proxy: Callable[..., Proxy], upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /a"]}, approve=True)
    conn = proxy.https(upstream.port)
    conn.request("DELETE", "/b?x=1")
    assert conn.getresponse().status == 200
    assert proxy.asked[0][:4] == ("DELETE", "localhost", upstream.port, "/b")
    assert proxy.http_events(1)[0]["rule"].endswith("(approved)")
    proxy2 = make_proxy({f"localhost:{upstream.port}": ["GET /a"]}, approve=False)
    conn = proxy2.https(upstream.port)
    conn.request("GET", "/b/../a")  # a refused path is never put to a human
    response = conn.getresponse()
    response.read()
    assert response.status == 403 and proxy2.asked == []
    conn.request("GET", "/c")
    response = conn.getresponse()
    assert response.status == 403 and b"and sending it was not approved" in response.read()
    assert proxy2.http_events(2)[1]["rule"].endswith(".allow (not approved)")


def test_pipelined_requests_after_a_refused_one_are_each_judged(make_proxy: Callable[..., Proxy],
                                                               upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /ok"]})
    tls = proxy.tunnel(upstream.port)
    host = f"Host: localhost:{upstream.port}\r\n"
    tls.sendall(f"GET /no HTTP/1.1\r\n{host}\r\nGET /ok HTTP/1.1\r\n{host}\r\nGET /no2 HTTP/1.1\r\n{host}"
                f"Connection: close\r\n\r\n".encode())
    responses = Responses(tls)
    assert [responses.next()[0] for _ in range(3)] == [403, 200, 403]
    assert [s["path"] for s in upstream.seen] == ["/ok"]


def test_a_refused_request_with_a_body_closes_the_connection(make_proxy: Callable[..., Proxy],
                                                            upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /ok"]})
    tls = proxy.tunnel(upstream.port)
    host = f"Host: localhost:{upstream.port}\r\n"
    tls.sendall(f"POST /no HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhelloGET /ok HTTP/1.1\r\n{host}\r\n".encode())
    status, response, _ = read_response(tls)
    assert status == 403 and response.getheader("Connection") == "close"
    assert tls.recv(100) == b""
    assert upstream.seen == []


def test_host_header_must_name_the_tunnel(make_proxy: Callable[..., Proxy], upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None})
    tls = proxy.tunnel(upstream.port)
    tls.sendall(b"GET / HTTP/1.1\r\nHost: secret.internal\r\n\r\n")
    status, _, body = read_response(tls)
    assert status == 403 and b"Host header" in body
    tls = proxy.tunnel(upstream.port)
    tls.sendall(f"GET / HTTP/1.1\r\nHost: LOCALHOST:{upstream.port}\r\nConnection: close\r\n\r\n".encode())
    assert read_response(tls)[0] == 200
    assert upstream.headers_of()["host"] == f"localhost:{upstream.port}"


def test_expect_continue_and_chunked_bodies(make_proxy: Callable[..., Proxy], upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None})
    tls = proxy.tunnel(upstream.port)
    tls.sendall(f"PUT /up HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nContent-Length: 4\r\n"
                "Expect: 100-continue\r\n\r\n".encode())
    assert tls.recv(100).startswith(b"HTTP/1.1 100 ")
    tls.sendall(b"data")
    assert read_response(tls)[0] == 200
    tls = proxy.tunnel(upstream.port)
    tls.sendall(f"POST /c HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n".encode())
    assert read_response(tls)[0] == 200
    assert [s["body"] for s in upstream.seen] == ["data", "abcde"]
    assert "expect" not in upstream.headers_of(0)


# ====================================================================== phantom secrets


def test_phantom_reaches_the_upstream_as_the_real_value_only(make_proxy: Callable[..., Proxy],
                                                            upstream: RecordingServer,
                                                            upstream2: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream2.port}": None},
                       secrets=(PhantomSpec("TOKEN", REAL, [f"localhost:{upstream.port}"]),))
    placeholder = proxy.inspection.placeholders["TOKEN"]
    conn = proxy.https(upstream.port)  # bound, so inspected without an inspect entry
    conn.request("GET", "/user", headers={"Authorization": f"token {placeholder}", "X-Other": placeholder})
    response = conn.getresponse()
    echoed = response.read()
    assert response.status == 200
    headers = upstream.headers_of()
    assert headers["authorization"] == f"token {REAL}" and headers["x-other"] == REAL  # judged by the upstream
    assert REAL.encode() not in echoed  # the echo of the request came back masked
    assert b"*" * len(REAL) in echoed
    event = proxy.http_events(1)[0]
    assert event["secrets"] == ["TOKEN"] and event["rule"].endswith(": every request")
    # toward another inspected host: refused, logged as a leak, never sent
    conn = proxy.https(upstream2.port)
    conn.request("GET", "/x", headers={"Authorization": f"Bearer {placeholder}"})
    response = conn.getresponse()
    assert response.status == 403 and b"placeholder of the secret TOKEN" in response.read()
    assert upstream2.seen == []
    leak = proxy.http_events(2)[1]
    assert leak["leak"] == "TOKEN" and leak["decision"] == "deny" and leak["rule"] == "leak: TOKEN"
    assert REAL not in json.dumps(proxy.records)


def test_phantom_in_a_url_or_plain_http_body_is_refused(make_proxy: Callable[..., Proxy],
                                                        upstream: RecordingServer, plain: RecordingServer) -> None:
    proxy = make_proxy({}, secrets=(PhantomSpec("TOKEN", REAL, [f"localhost:{upstream.port}"]),),
                       allow=("localhost", "127.0.0.1"))
    placeholder = proxy.inspection.placeholders["TOKEN"]
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"GET http://127.0.0.1:{plain.port}/q?t={placeholder} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, text = read_response(sock)
    assert status == 403 and b"TOKEN" in text
    body = b"x" * 70000 + placeholder.encode() + b"y" * 10
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"POST http://127.0.0.1:{plain.port}/p HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    status, _, text = read_response(sock)
    assert status == 403 and b"body carries the placeholder" in text
    time.sleep(0.2)
    assert plain.seen == []  # the upstream never got a complete request
    assert [(e["leak"], e["path"]) for e in proxy.http_events(2)] == [("TOKEN", "/q"), ("TOKEN", "/p")]
    # toward its own host, but in clear text: not injected, refused
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"GET http://localhost:{upstream.port}/ HTTP/1.1\r\nHost: x\r\nAuthorization: {placeholder}\r\n\r\n"
                 .encode())
    status, _, text = read_response(sock)
    assert status == 403 and b"only put into requests over HTTPS" in text


# ====================================================================== smuggling


def test_upgrade_smuggling_on_plain_http_is_parsed_and_ruled(make_proxy: Callable[..., Proxy],
                                                             plain: RecordingServer) -> None:
    """The attack: an Upgrade the upstream declines, then a second request naming another host."""
    proxy = make_proxy({}, allow=("127.0.0.1",))
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"GET http://127.0.0.1:{plain.port}/a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                 f"Upgrade: foo\r\n\r\nGET http://127.0.0.1:{plain.port}/b HTTP/1.1\r\nHost: secret.internal\r\n\r\n"
                 f"GET http://secret.internal/c HTTP/1.1\r\nHost: secret.internal\r\n\r\n".encode())
    responses = Responses(sock)
    first, second, third = responses.next(), responses.next(), responses.next()
    assert (first[0], second[0], third[0]) == (200, 200, 403)
    assert b"secret.internal:80 is not in this sandbox's network.allow" in third[2]
    assert [s["path"] for s in plain.seen] == ["/a", "/b"]
    assert all(dict((k.lower(), v) for k, v in s["headers"])["host"] == f"127.0.0.1:{plain.port}"
               for s in plain.seen)  # Host comes from the URI, never from the client


@pytest.mark.parametrize("headers", [
    "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    "Content-Length: 3\r\nContent-Length: 4\r\n",
    "Content-Length: 3, 4\r\n",
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "X-A: 1\r\n folded: yes\r\n",
    "Content-Length: -1\r\n",
])
def test_ambiguous_framing_never_reaches_the_upstream(make_proxy: Callable[..., Proxy], plain: RecordingServer,
                                                      upstream: RecordingServer, headers: str) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None}, allow=("127.0.0.1", "localhost"))
    ok = f"GET http://127.0.0.1:{plain.port}/ok HTTP/1.1\r\nHost: x\r\n\r\n"
    bad = f"POST http://127.0.0.1:{plain.port}/bad HTTP/1.1\r\nHost: x\r\n{headers}\r\nabc\r\n0\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall((ok + bad).encode())  # the bad one second: it is read by h11, not by the entry parser
    responses = Responses(sock)
    assert responses.next()[0] == 200
    assert responses.next()[0] in (400, 501)
    tls = proxy.tunnel(upstream.port)  # and inside an inspected tunnel
    tls.sendall(bad.replace(f"http://127.0.0.1:{plain.port}", "").replace("Host: x",
                                                                          f"Host: localhost:{upstream.port}").encode())
    assert read_response(tls)[0] in (400, 501)
    assert [s["path"] for s in plain.seen] == ["/ok"] and upstream.seen == []


# ====================================================================== upgrades, TLS


def test_websocket_upgrade_passes_after_the_rule_check(make_proxy: Callable[..., Proxy],
                                                       upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /ws"]})
    tls = proxy.tunnel(upstream.port)
    tls.sendall(f"GET /nows HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\n\r\n".encode())
    responses = Responses(tls)
    assert responses.next()[0] == 403
    tls.sendall(f"GET /ws HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: websocket" in head.lower()
    tls.sendall(b"frame-1")
    assert tls.recv(100) == b"echo:frame-1"
    responses.close()
    events = proxy.http_events(2)
    assert events[1]["status"] == 101 and events[1]["upgrade"] == "websocket" and events[1]["path"] == "/ws"
    assert [s["path"] for s in upstream.seen] == ["/ws"]


def test_h2c_upgrade_is_not_offered_to_an_inspected_host(make_proxy: Callable[..., Proxy],
                                                         upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None})
    conn = proxy.https(upstream.port)
    conn.request("GET", "/", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                      "HTTP2-Settings": "AAMAAABkAAQAAP__"})
    assert conn.getresponse().status == 200
    seen = upstream.headers_of()
    assert "upgrade" not in seen and "http2-settings" not in seen


def test_alpn_offers_only_http11(make_proxy: Callable[..., Proxy], upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None})
    context = proxy.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    tls = proxy.tunnel(upstream.port, context=context)
    assert tls.selected_alpn_protocol() == "http/1.1"


def test_leaf_certificates(make_proxy: Callable[..., Proxy], upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None, "127.0.0.1": None}, allow=("localhost", "127.0.0.1"))
    for host in ("localhost", "127.0.0.1"):
        tls = proxy.tunnel(upstream.port, host=host)
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        tls.close()
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(n.value) for n in san] == [host]
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).critical
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
        assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=1, hours=1)
    authority = proxy.inspection.authority
    assert authority.minted == 2
    proxy.tunnel(upstream.port).close()
    assert authority.minted == 2  # cached per host
    ca = authority.certificate
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert [str(n.value) for n in constraints.value.permitted_subtrees] == ["localhost", "127.0.0.1/32"]


def test_name_constraints_hold_even_for_a_leaked_key(tmp_path: Path) -> None:
    """A leaf for a host the run does not inspect does not verify, even if someone made one."""
    from sandboxctl.network.certs import RunAuthority
    from sandboxctl.units import parse_host_pattern

    authority = RunAuthority([parse_host_pattern("*.github.com")])
    for host, ok in (("api.github.com", True), ("evil.example", False)):
        server = socket.create_server(("127.0.0.1", 0))
        context = authority.server_context(host)
        client = ssl.create_default_context(cadata=authority.pem.decode())
        import threading

        def serve(server: socket.socket = server, context: ssl.SSLContext = context) -> None:
            conn, _ = server.accept()
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sock = socket.create_connection(server.getsockname(), timeout=5)
        if ok:
            client.wrap_socket(sock, server_hostname=host).close()
        else:
            with pytest.raises(ssl.SSLCertVerificationError, match=r"name constraint|permitted"):
                client.wrap_socket(sock, server_hostname=host)
        thread.join(5)
        server.close()


def test_an_untrusted_upstream_is_a_502_that_says_why(make_proxy: Callable[..., Proxy],
                                                      upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None}, upstream_ca=())
    conn = proxy.https(upstream.port)
    conn.request("GET", "/")
    response = conn.getresponse()
    text = response.read().decode()
    assert response.status == 502 and "certificate verify failed" in text and "network.upstream_ca" in text
    assert upstream.seen == []
    assert proxy.http_events(1)[0]["status"] == 502


def test_a_client_that_does_not_trust_the_run_ca_is_logged(make_proxy: Callable[..., Proxy],
                                                           upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": None})
    with pytest.raises(ssl.SSLCertVerificationError):
        proxy.tunnel(upstream.port, context=ssl.create_default_context())  # the system's trust only
    assert "does not trust the run's CA" in proxy.net_events()[0]["error"]


def test_hosts_not_inspected_keep_the_opaque_tunnel(make_proxy: Callable[..., Proxy], upstream: RecordingServer,
                                                    test_ca: UpstreamCA) -> None:
    proxy = make_proxy({"api.example.com": None})
    context = ssl.create_default_context(cafile=str(test_ca.ca_file))  # the real server's certificate
    tls = proxy.tunnel(upstream.port, context=context)
    tls.sendall(f"GET / HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nConnection: close\r\n\r\n".encode())
    responses = Responses(tls)
    assert responses.next()[0] == 200
    responses.close()
    assert "inspected" not in proxy.net_events()[0]
    assert proxy.http_events(0) == []


def test_a_run_that_inspects_nothing_imports_neither_h11_nor_cryptography() -> None:
    code = """
import socket, sys, threading
from sandboxctl.network.proxy import NetPolicy, ProxyServer
echo = socket.create_server(("127.0.0.1", 0))
def serve():
    conn, _ = echo.accept(); conn.sendall(conn.recv(10)); conn.close()
threading.Thread(target=serve, daemon=True).start()
listener = socket.create_server(("127.0.0.1", 0))
records = []
server = ProxyServer(listener, NetPolicy(("127.0.0.1",), (), True), records.append, inspection=None)
server.start()
sock = socket.create_connection(listener.getsockname())
sock.sendall(f"CONNECT 127.0.0.1:{echo.getsockname()[1]} HTTP/1.1\\r\\n\\r\\n".encode())
reply = sock.recv(100)
sock.sendall(b"ping"); assert sock.recv(10) == b"ping"
sock.close(); server.stop()
assert reply.startswith(b"HTTP/1.1 200"), reply
print(sorted(m for m in ("h11", "cryptography") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plain_http_to_an_inspected_host_is_ruled_request_by_request(make_proxy: Callable[..., Proxy],
                                                                     plain: RecordingServer) -> None:
    proxy = make_proxy({f"127.0.0.1:{plain.port}": ["GET /ok"]}, allow=("127.0.0.1",))
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    base = f"http://127.0.0.1:{plain.port}"
    sock.sendall(f"GET {base}/ok HTTP/1.1\r\nHost: x\r\n\r\nGET {base}/no HTTP/1.1\r\nHost: x\r\n\r\n"
                 f"GET {base}/ok?again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    responses = Responses(sock)
    assert [responses.next()[0] for _ in range(3)] == [200, 403, 200]
    assert [s["path"] for s in plain.seen] == ["/ok", "/ok?again"]
    assert [(e["path"], e["status"]) for e in proxy.http_events(3)] == [("/ok", 200), ("/no", 403), ("/ok", 200)]


def test_socks5_to_an_inspected_host_is_terminated_too(make_proxy: Callable[..., Proxy],
                                                       upstream: RecordingServer) -> None:
    proxy = make_proxy({f"localhost:{upstream.port}": ["GET /s"]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00\x03\x09localhost" + upstream.port.to_bytes(2, "big"))
    assert sock.recv(10)[:2] == b"\x05\x00"
    tls = proxy.client_context().wrap_socket(sock, server_hostname="localhost")
    tls.sendall(f"GET /s HTTP/1.1\r\nHost: localhost:{upstream.port}\r\n\r\nGET /t HTTP/1.1\r\n"
                f"Host: localhost:{upstream.port}\r\n\r\n".encode())
    responses = Responses(tls)
    assert [responses.next()[0] for _ in range(2)] == [200, 403]
    assert [s["path"] for s in upstream.seen] == ["/s"]
