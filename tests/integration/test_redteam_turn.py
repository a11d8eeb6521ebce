"""Red-team attacks on this turn's walls — overlay workspaces and apply/undo, phantom secrets,
the action log, sessions — each played by a hostile command and judged from outside the
sandbox: the host's own files, the host's git, the upstream server's record, the host's copy of
the log. A test marked xfail(strict) proves a hole that is still open (its reason says which)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from tests.integration.test_inspection import REAL
from tests.tlsfixtures import RecordingServer, UpstreamCA, _Recorder


def _cli(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=sandbox.workspace,
                          env=sandbox.env(), capture_output=True, text=True, timeout=60)


# ====================================================================== phantom secrets
class _EchoingRecorder(_Recorder):
    """A server that, like many WebSocket servers, accepts whatever sub-protocol it is offered and
    names it in its 101 answer."""

    def _answer(self) -> None:
        if self.headers.get("Upgrade", "").lower() != "websocket":
            return super()._answer()
        self.server.seen.append({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]})
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Protocol", self.headers.get("Sec-WebSocket-Protocol", ""))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        return None

    do_GET = do_POST = _answer


@pytest.fixture(scope="module")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("rt-ca"))


@pytest.fixture
def echo(upstream_ca: UpstreamCA):
    server = RecordingServer(upstream_ca.server_context())
    server.RequestHandlerClass = _EchoingRecorder
    yield server
    server.close()


def _phantom_policy(sandbox, upstream_ca: UpstreamCA, server: RecordingServer) -> str:
    return str(sandbox.write_policy("rt-inspect.yaml", f"""version: 1
extends: default
network:
  mode: proxy
  allow: ["localhost:{server.port}"]
  allow_private: true
  upstream_ca: ["{upstream_ca.ca_file}"]
  inspect:
    localhost:{server.port}:
      allow: ["* /**"]
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{server.port}"]
approval:
  mode: deny
"""))


def _learned(output: str) -> bool:
    """Did the command's output carry the real value, as is or in any base64 a server echoed?"""
    if REAL in output:
        return True
    for word in output.replace('"', " ").replace(",", " ").split():
        for candidate in (word, word + "=", word + "=="):
            try:
                if REAL.encode() in base64.b64decode(candidate, validate=True):
                    return True
            except ValueError:
                continue
    return False


def test_an_echoed_basic_credential_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """The placeholder inside `Authorization: Basic` is replaced (git's way of sending a token); a
    host that echoes the request's headers then returns base64(user:REAL), which the masking of
    the raw value cannot see: the command decodes it."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    code = f"""
import base64, os, urllib.request as u
basic = base64.b64encode(b"x:" + os.environ["TOKEN"].encode()).decode()
r = u.urlopen(u.Request("https://localhost:{echo.port}/echo", headers={{"Authorization": "Basic " + basic}}))
print(r.read().decode())
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    sent = echo.headers_of()["authorization"]
    assert base64.b64decode(sent.split()[1]) == f"x:{REAL}".encode()  # the upstream got the real value
    assert not _learned(result.stdout), "the command learned the real value from the echo"


def test_a_101_answer_naming_the_sub_protocol_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """Any request header gets the real value, Sec-WebSocket-Protocol too; a WebSocket server names
    the sub-protocol it accepted in its 101 answer. The 101's headers must be masked like any
    other answer's."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    code = f"""
import os, socket, ssl
sock = socket.create_connection(("127.0.0.1", 3128))
sock.sendall(b"CONNECT localhost:{echo.port} HTTP/1.1\\r\\nHost: localhost:{echo.port}\\r\\n\\r\\n")
assert sock.recv(1000).startswith(b"HTTP/1.1 200")
tls = ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
tls.sendall(b"GET /ws HTTP/1.1\\r\\nHost: localhost:{echo.port}\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n"
            b"Sec-WebSocket-Protocol: " + os.environ["TOKEN"].encode() + b"\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    chunk = tls.recv(1)
    if not chunk:
        break
    head += chunk
print(head.decode("latin-1"))
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert "101" in result.stdout.split("\n")[0], result.stdout + result.stderr
    assert echo.headers_of()["sec-websocket-protocol"] == REAL  # the upstream got the real value
    assert not _learned(result.stdout), "the 101 answer handed the real value back"


def test_the_placeholder_in_the_url_or_body_of_its_own_host_stays_a_placeholder(sandbox, upstream_ca, echo):
    """Only headers get the value: a URL or a body toward the secret's own host carries the
    placeholder (the server's own record), and the echo holds nothing real."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    script = (f'curl -sS "https://localhost:{echo.port}/q?t=$TOKEN"; echo; '
              f'curl -sS -d "t=$TOKEN" "https://localhost:{echo.port}/b"; echo; '
              f'curl -sS -H "Transfer-Encoding: chunked" -d "t=$TOKEN" "https://localhost:{echo.port}/c"')
    result = sandbox.run("--", "/bin/sh", "-c", script, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert len(echo.seen) == 3 and REAL not in json.dumps(echo.seen)
    assert not _learned(result.stdout)
