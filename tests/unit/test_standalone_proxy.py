"""`sandboxctl proxy` in process (network/standalone.py): the same allowlist, private-address refusal, request
rules and phantom secrets as `run`, for clients outside any sandbox. What reached an upstream is judged by
the upstream's own record; what was logged, by the chained log (verified)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.log.verify import verify
from sandboxctl.network.clientfiles import probe
from sandboxctl.network.phantoms import PREFIX, derived_placeholder
from sandboxctl.network.standalone import StandaloneProxy
from sandboxctl.network.standalone_setup import ProxyOptions, check, client_environment, parse_listen
from sandboxctl.policy.discover import load_named
from tests.tlsfixtures import RecordingServer, UpstreamCA

REAL = "real-standalone-token-0123456789"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("standalone-ca"))


@pytest.fixture
def upstreams(test_ca: UpstreamCA) -> Iterator[tuple[RecordingServer, RecordingServer]]:
    bound, other = RecordingServer(test_ca.server_context()), RecordingServer(test_ca.server_context())
    yield bound, other
    bound.close()
    other.close()


def write_policy(path: Path, test_ca: UpstreamCA, bound: RecordingServer, other: RecordingServer, *,
                 allow_private: bool = True, extra_allow: tuple[str, ...] = ()) -> Path:
    listed = ", ".join(f'"{h}"' for h in (f"localhost:{bound.port}", f"localhost:{other.port}", *extra_allow))
    path.write_text(f"""version: 1
name: standalone-test
network:
  mode: proxy
  allow: [{listed}]
  deny: ["denied.localhost"]
  allow_private: {str(allow_private).lower()}
  upstream_ca: ["{test_ca.ca_file}"]
  inspect:
    localhost:{bound.port}:
      allow: ["GET /api/**", "POST /api/*/items"]
    localhost:{other.port}:
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{bound.port}"]
  NOT_MINE:
    from: env:NOT_SET_ANYWHERE
    as: file
""")
    return path


class Running:
    """A started StandaloneProxy serving in a thread, and what its clients read from its directory."""

    def __init__(self, proxy: StandaloneProxy) -> None:
        self.proxy = proxy
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None
        self.thread.start()
        self.env = read_env(Path(proxy.files.directory) / "env")

    def _serve(self) -> None:
        try:
            self.proxy.serve()
        except BaseException as exc:  # reported by the test
            self.error = exc

    @property
    def port(self) -> int:
        return self.proxy.address[1]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.env["SSL_CERT_FILE"])

    def https(self, port: int, host: str = "localhost") -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=10)
        conn.set_tunnel(f"{host}:{port}")
        return conn

    def stop(self, reason: str = "SIGTERM") -> None:
        self.proxy.request_stop(reason)
        self.thread.join(10)
        assert not self.thread.is_alive()


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture
def start(home: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def run(policy_path: Path, **options: Any) -> Running:
        options.setdefault("listen", "127.0.0.1:0")
        options.setdefault("log_path", str(tmp_path / "actions.jsonl"))
        options.setdefault("client_dir", str(tmp_path / "client"))
        confirmed = tuple(options.pop("confirmed", ()))
        proxy = StandaloneProxy(load_named(str(policy_path)).policy, ProxyOptions(**options),
                                ["sandboxctl", "proxy", "-p", str(policy_path)],
                                environ={"REAL_TOKEN": REAL}, confirmed=confirmed)
        proxy.start()
        running = Running(proxy)
        started.append(running)
        return running

    yield run
    for running in started:
        if running.thread.is_alive():
            running.stop()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_same_rules_phantoms_and_refusals_as_a_run(start, test_ca, upstreams, tmp_path) -> None:
    bound, other = upstreams
    proxy = start(write_policy(tmp_path / "p.yaml", test_ca, bound, other))
    env = proxy.env
    placeholder = env["TOKEN"]
    assert placeholder.startswith(PREFIX) and REAL not in (tmp_path / "client" / "env").read_text()
    assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{proxy.port}" and env["ALL_PROXY"].startswith("socks5h://")
    assert env["NODE_EXTRA_CA_CERTS"].endswith("/ca.pem") and env["SSL_CERT_FILE"].endswith("/ca-bundle.pem")
    assert "NOT_MINE" not in env  # a file secret is a sandbox's, never read by the proxy

    # an allowed request toward the secret's host: the upstream sees the real value
    conn = proxy.https(bound.port)
    conn.request("GET", "/api/repos?page=2", headers={"Authorization": f"Bearer {placeholder}"})
    response = conn.getresponse()
    echoed = response.read()
    assert response.status == 200 and REAL.encode() not in echoed  # the echo comes back masked
    assert bound.headers_of()["authorization"] == f"Bearer {REAL}"
    # a request the rules do not list: 403, never sent
    conn.request("DELETE", "/api/repos")
    response = conn.getresponse()
    assert response.status == 403 and response.read().startswith(b"sandboxctl: ")
    assert [s["method"] for s in bound.seen] == ["GET"]
    conn.close()
    # the placeholder toward another host: refused as a leak, never sent
    conn = proxy.https(other.port)
    conn.request("GET", "/x", headers={"Authorization": f"Bearer {placeholder}"})
    response = conn.getresponse()
    assert response.status == 403 and b"TOKEN" in response.read()
    assert other.seen == []
    conn.close()
    # a host the policy does not list, and one it denies: refused before any dial
    for host in (f"not-listed.localhost:{bound.port}", f"denied.localhost:{bound.port}"):
        refused = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        refused.request("CONNECT", host)
        assert refused.getresponse().status == 403, host
        refused.close()

    proxy.stop()
    assert proxy.error is None
    log = tmp_path / "actions.jsonl"
    assert verify(log).ok
    seen = records(log)
    run = {r["run"] for r in seen}
    assert len(run) == 1
    start_record, *_, end = seen
    assert start_record["event"] == "run.start" and start_record["standalone"] == "proxy"
    assert start_record["layers"]["sandbox"] is None and start_record["listen"] == f"127.0.0.1:{proxy.port}"
    assert end["event"] == "run.end" and end["exit_code"] == 0 and end["stopped_by"] == "SIGTERM"
    assert end["denied"] == 4
    http_events = [r for r in seen if r["event"] == "http"]
    assert [(e["method"], e["status"], e["decision"]) for e in http_events] == [
        ("GET", 200, "allow"), ("DELETE", 403, "deny"), ("GET", 403, "deny")]
    assert http_events[0]["secrets"] == ["TOKEN"] and http_events[2]["leak"] == "TOKEN"
    net = [r for r in seen if r["event"] == "net"]
    denied = {r["host"]: r["rule"] for r in net if r["decision"] == "deny"}
    assert denied == {"not-listed.localhost": "not in network.allow (not approved)",
                      "denied.localhost": "network.deny: denied.localhost"}
    assert all(r["client"].startswith("127.0.0.1:") for r in net)  # whoever connected
    approvals = [r for r in seen if r["event"] == "approval"]
    assert [(a["kind"], a["target"], a["answer"], a["via"]) for a in approvals] == [
        ("http", f"DELETE localhost:{bound.port}/api/repos", "deny", "mode:deny"),
        ("network", f"not-listed.localhost:{bound.port}", "deny", "mode:deny")]
    assert [(r["name"], r["action"], r["placeholder"]) for r in seen if r["event"] == "secret"] == [
        ("TOKEN", "inject", "random")]
    assert REAL not in log.read_text() and placeholder not in log.read_text()
    assert not (tmp_path / "client").exists()  # made by the proxy, removed with everything in it


def test_private_addresses_are_refused_unless_the_policy_allows_them(start, test_ca, upstreams, tmp_path) -> None:
    bound, other = upstreams
    proxy = start(write_policy(tmp_path / "p.yaml", test_ca, bound, other, allow_private=False))
    conn = proxy.https(other.port)
    with pytest.raises(OSError, match="403"):
        conn.request("GET", "/")
    assert other.seen == []
    proxy.stop()
    (record,) = [r for r in records(tmp_path / "actions.jsonl") if r["event"] == "net"]
    assert record["decision"] == "deny" and "private" in record["rule"]


def test_derived_placeholders_for_a_sidecar(start, test_ca, upstreams, tmp_path) -> None:
    bound, other = upstreams
    pod_uid = "5e0c4a7e-1b2c-4d5e-8f90-0123456789ab"
    proxy = start(write_policy(tmp_path / "p.yaml", test_ca, bound, other), phantom_id=pod_uid)
    assert proxy.env["TOKEN"] == derived_placeholder(pod_uid, "TOKEN") == f"{PREFIX}{pod_uid}-" + \
        __import__("hashlib").sha256(b"TOKEN").hexdigest()[:8]
    conn = proxy.https(bound.port)
    conn.request("GET", "/api/x", headers={"x-api-key": proxy.env["TOKEN"]})
    assert conn.getresponse().status == 200
    assert bound.headers_of()["x-api-key"] == REAL
    proxy.stop()
    secret = next(r for r in records(tmp_path / "actions.jsonl") if r["event"] == "secret")
    assert secret["placeholder"] == "derived"


def test_the_client_directory_and_the_probe(start, test_ca, upstreams, tmp_path) -> None:
    bound, other = upstreams
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses").write_text("kept")
    proxy = start(write_policy(tmp_path / "p.yaml", test_ca, bound, other), client_dir=str(shared))
    names = sorted(p.name for p in shared.iterdir())
    assert names == ["ca-bundle.pem", "ca.pem", "env", "ready", "someone-elses"]
    assert (shared / "env").stat().st_mode & 0o777 == 0o640
    assert (shared / "ca.pem").stat().st_mode & 0o777 == 0o644
    bundle = (shared / "ca-bundle.pem").read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") > 1 and (shared / "ca.pem").read_bytes().strip() in bundle
    assert json.loads((shared / "ready").read_text())["listen"] == f"127.0.0.1:{proxy.port}"
    assert probe(str(shared))
    proxy.stop()
    assert not probe(str(shared))
    assert sorted(p.name for p in shared.iterdir()) == ["someone-elses"]  # an existing directory stays, with its own


def test_without_a_client_dir_the_environment_goes_to_out(home, tmp_path, monkeypatch, test_ca, upstreams) -> None:
    bound, other = upstreams
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    printed: list[str] = []
    policy = load_named(str(write_policy(tmp_path / "p.yaml", test_ca, bound, other))).policy
    proxy = StandaloneProxy(policy, ProxyOptions(listen="127.0.0.1:0", log_path=str(tmp_path / "log.jsonl")),
                            ["sandboxctl", "proxy"], environ={"REAL_TOKEN": REAL}, out=printed.append)
    proxy.start()
    directory = Path(proxy.files.directory)
    assert directory.parent == tmp_path / f"sandboxctl-{os.getuid()}" and directory.stat().st_mode & 0o777 == 0o700
    (text,) = printed
    assert text == (directory / "env").read_text() and "TOKEN=sbx-phantom-" in text and REAL not in text
    proxy.request_stop("SIGINT")
    proxy.serve()
    assert not directory.exists()


def test_a_failed_log_write_stops_the_proxy(start, test_ca, upstreams, tmp_path) -> None:
    bound, other = upstreams
    proxy = start(write_policy(tmp_path / "p.yaml", test_ca, bound, other))
    from sandboxctl.log.writer import LogWriteError

    def full_disk(event: str, **fields: Any) -> None:
        raise LogWriteError("cannot write the action log: No space left on device")

    proxy.proxy.log.write = full_disk  # the next record cannot be written
    refused = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    refused.request("CONNECT", "not-listed.localhost:1")
    # the denial's record fails first: the proxy may stop before its 403 is read, or after
    with contextlib.suppress(http.client.RemoteDisconnected, ConnectionError):
        refused.getresponse()
    proxy.thread.join(10)
    assert isinstance(proxy.error, SandboxError) and "action log" in proxy.error.message
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)  # nothing serves unobserved


# ====================================================================== what is refused before anything starts


def _policy(tmp_path: Path, network: str, secrets: str = "") -> Any:
    path = tmp_path / "q.yaml"
    path.write_text(f"version: 1\nname: q\nnetwork:\n{network}{secrets}")
    return load_named(str(path)).policy


def test_checks_refuse_what_cannot_be_served(tmp_path: Path) -> None:
    proxy_policy = _policy(tmp_path, "  mode: proxy\n  allow: [example.com]\n")
    for mode in ("none", "host"):
        with pytest.raises(SandboxError, match=f"network: {mode}"):
            check(_policy(tmp_path, f"  mode: {mode}\n"), ProxyOptions())
    for listen in ("3128", "localhost:3128", "127.0.0.1:70000", "[::1]", "127.0.0.1:x"):
        with pytest.raises(SandboxError, match="--listen"):
            check(proxy_policy, ProxyOptions(listen=listen))
    with pytest.raises(SandboxError, match="--approve"):
        check(proxy_policy, ProxyOptions(approve="once"))
    with pytest.raises(SandboxError, match="--phantom-id"):
        check(proxy_policy, ProxyOptions(phantom_id="short"))
    with pytest.raises(SandboxError, match=r"refused on 0\.0\.0\.0:3128"):
        check(proxy_policy, ProxyOptions(listen="0.0.0.0:3128", phantom_id="a" * 36))
    with pytest.raises(SandboxError, match="--log-stdout"):
        check(proxy_policy, ProxyOptions(log_stdout=True))
    assert check(proxy_policy, ProxyOptions()) == []
    assert check(proxy_policy, ProxyOptions(listen="[::1]:3128", phantom_id="a" * 36)) == []
    phantom = _policy(tmp_path, "  mode: proxy\n  allow: [api.example]\n",
                      "secrets:\n  KEY: {from: 'env:K', as: proxy, hosts: [api.example]}\n")
    (confirmation,) = check(phantom, ProxyOptions(listen="0.0.0.0:3128"))
    assert "opens the proxy to the network" in confirmation and "KEY" in confirmation
    assert len(check(proxy_policy, ProxyOptions(listen="10.1.2.3:3128", approve="allow"))) == 2


def test_start_refuses_what_was_not_confirmed(home: Path, tmp_path: Path) -> None:
    policy = _policy(tmp_path, "  mode: proxy\n  allow: [example.com]\n")
    proxy = StandaloneProxy(policy, ProxyOptions(listen="0.0.0.0:0"), ["sandboxctl", "proxy"])
    with pytest.raises(SandboxError, match="needs confirming"):
        proxy.start()
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.jsonl"))


def test_a_bad_upstream_ca_or_secret_leaves_nothing(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    policy = _policy(tmp_path, "  mode: proxy\n  allow: [api.example]\n  upstream_ca: [/nonexistent/ca.pem]\n",
                     "secrets:\n  KEY: {from: 'env:K', as: proxy, hosts: [api.example]}\n")
    for environ, message in (({"K": "v"}, "is not a file"), ({}, "the variable K is not set"),
                             ({"K": "two\nlines"}, "line break")):
        proxy = StandaloneProxy(policy._replace(network=policy.network._replace(
            upstream_ca=() if message != "is not a file" else policy.network.upstream_ca)),
            ProxyOptions(listen="127.0.0.1:0", log_path=str(log), client_dir=str(tmp_path / "c")),
            ["sandboxctl", "proxy"], environ=environ)
        with pytest.raises(SandboxError, match=message):
            proxy.start()
        assert not (tmp_path / "c").exists()
    assert not log.exists() or "run.start" not in log.read_text()


def test_an_address_in_use_is_one_clear_error(home: Path, tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    policy = _policy(tmp_path, "  mode: proxy\n  allow: [example.com]\n")
    proxy = StandaloneProxy(policy, ProxyOptions(listen=f"127.0.0.1:{port}", log_path=str(tmp_path / "l.jsonl")),
                            ["sandboxctl", "proxy"])
    with pytest.raises(SandboxError, match=f"cannot listen on 127.0.0.1:{port}"):
        proxy.start()
    holder.close()


def test_client_environment() -> None:
    policy = load_named("default").policy
    env = client_environment("0.0.0.0", 3128, policy, None, None, {})
    assert env["HTTP_PROXY"] == "http://127.0.0.1:3128" and env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    assert "SSL_CERT_FILE" not in env
    env = client_environment("::", 8080, policy, "/b.pem", "/c.pem", {"K": "sbx-phantom-x"})
    assert env["ALL_PROXY"] == "socks5h://[::1]:8080" and env["SSL_CERT_FILE"] == "/b.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == "/c.pem" and env["K"] == "sbx-phantom-x"
    assert parse_listen("[::1]:3128") == ("::1", 3128)


def test_a_connection_stuck_past_the_stop_is_named_in_run_end_and_nothing_follows_it(home, tmp_path,
                                                                                       monkeypatch) -> None:
    """A client's destination whose name never resolves (a DNS server that does not answer) when
    the proxy stops: run.end says a connection was still running, and is the run's last record."""
    from sandboxctl.network import proxy as proxy_module

    release = threading.Event()
    original_init = proxy_module.ProxyServer.__init__

    def hanging_resolver(*args: Any, **kwargs: Any) -> list:
        release.wait(20)
        raise OSError(110, "timed out")

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs, resolver=hanging_resolver)

    monkeypatch.setattr(proxy_module.ProxyServer, "__init__", init)
    monkeypatch.setattr(proxy_module.ProxyServer.stop, "__defaults__", (0.3,))
    said: list[str] = []
    log_path = tmp_path / "log.jsonl"
    proxy = StandaloneProxy(_policy(tmp_path, "  mode: proxy\n  allow: [hangs.example:80]\n"),
                            ProxyOptions(listen="127.0.0.1:0", log_path=str(log_path),
                                         client_dir=str(tmp_path / "clients")),
                            ["sandboxctl", "proxy"], notice=said.append)
    proxy.start()
    client = socket.create_connection(proxy.address, timeout=10)
    client.sendall(b"CONNECT hangs.example:80 HTTP/1.1\r\nHost: hangs.example:80\r\n\r\n")
    try:
        assert _wait(lambda: proxy.server.active_connections == 1)
        proxy.request_stop("SIGTERM")
        proxy.serve()
    finally:
        release.set()
        client.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert records[-1]["event"] == "run.end" and records[-1]["unfinished"] == {"proxy_connections": 1}
    assert [r.get("error") for r in records if r["event"] == "net"] == ["still open when the proxy stopped"]
    assert any("proxy connection threads" in line for line in said) and verify(log_path).ok


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
