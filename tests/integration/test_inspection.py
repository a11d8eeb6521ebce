"""network.inspect and phantom secrets in real sandboxes: curl, Python urllib, requests and Node's fetch
reach local HTTPS upstreams through the run's CA; what arrived is judged by the upstreams' own records
and the action log, outside the sandbox."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxctl.plan.build import DEFAULT_PATH
from tests.tlsfixtures import RecordingServer, UpstreamCA

REAL = "real-token-a1b2c3d4e5f6a7b8c9"
NODE_UNDICI = """
const paths = ['/usr/lib/node_modules/npm/node_modules', '/usr/share/nodejs', '/usr/lib/node_modules'];
const { ProxyAgent } = require(require.resolve('undici', { paths }));
fetch(process.argv[1], { dispatcher: new ProxyAgent(process.env.HTTPS_PROXY),
                         headers: { authorization: 'Bearer ' + process.env.TOKEN } })
  .then(async r => { console.log(r.status); console.log(await r.text()); })
  .catch(e => { console.log('fetch failed', e.cause ? e.cause.message : e.message); process.exit(3); });
"""


def _node_undici() -> bool:
    if not shutil.which("node"):
        return False
    probe = "require.resolve('undici', {paths: ['/usr/lib/node_modules/npm/node_modules', '/usr/share/nodejs', " \
            "'/usr/lib/node_modules']})"
    return subprocess.run(["node", "-e", probe], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("inspect-ca"))


@pytest.fixture
def servers(upstream_ca: UpstreamCA):
    bound, other = RecordingServer(upstream_ca.server_context()), RecordingServer(upstream_ca.server_context())
    yield bound, other
    bound.close()
    other.close()


def _policy(sandbox, upstream_ca: UpstreamCA, bound: RecordingServer, other: RecordingServer, extra: str = "",
            allow: tuple[str, ...] = ()) -> str:
    listed = ", ".join(f'"{host}"' for host in (f"localhost:{bound.port}", f"localhost:{other.port}", *allow))
    text = f"""version: 1
extends: default
network:
  mode: proxy
  allow: [{listed}]
  allow_private: true
  upstream_ca: ["{upstream_ca.ca_file}"]
  inspect:
    localhost:{bound.port}:
      allow: ["GET /api/**", "POST /api/*/items", "GET /ws"]
    localhost:{other.port}:
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{bound.port}"]
{extra}approval:
  mode: deny
"""
    return str(sandbox.write_policy("inspect.yaml", text))


def _run(sandbox, policy: str, script: str, **kwargs):
    return sandbox.run("--", "/bin/sh", "-c", script, policy=policy, env={"REAL_TOKEN": REAL}, **kwargs)


def _events(sandbox, kind: str) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == kind]


CLIENTS = {
    "curl": 'curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$URL"',
    "urllib": "python3 -c 'import os, urllib.request as u; r = u.urlopen(u.Request(os.environ[\"URL\"], "
              "headers={\"Authorization\": \"Bearer \" + os.environ[\"TOKEN\"]})); print(r.status, r.read().decode())'",
    "requests": "python3 -c 'import os, requests; r = requests.get(os.environ[\"URL\"], "
                "headers={\"Authorization\": \"Bearer \" + os.environ[\"TOKEN\"]}); print(r.status_code, r.text)'",
    "node": f'node -e "{NODE_UNDICI.strip()}" "$URL"'.replace("\n", " "),
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_clients_reach_an_inspected_host_and_the_phantom_becomes_real(sandbox, upstream_ca, servers, client):
    inside = shutil.which("python3", path=DEFAULT_PATH)  # the python3 the sandbox runs
    if client == "requests" and subprocess.run([inside or "python3", "-c", "import requests"],
                                               capture_output=True).returncode:
        pytest.skip("python3-requests is not installed")
    if client == "node" and not _node_undici():
        pytest.skip("node or its bundled undici (for a proxy dispatcher) is not installed")
    if client == "curl" and not shutil.which("curl"):
        pytest.skip("curl is not installed")
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    url = f"https://localhost:{bound.port}/api/{client}?q=1"
    result = _run(sandbox, policy, f'export URL="{url}"; {CLIENTS[client]}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert REAL not in result.stdout and REAL not in result.stderr  # the echo came back masked
    assert bound.headers_of()["authorization"] == f"Bearer {REAL}"  # the upstream's own record
    assert bound.seen[-1]["path"] == f"/api/{client}?q=1"
    (event,) = _events(sandbox, "http")
    assert (event["method"], event["path"], event["status"], event["decision"]) == ("GET", f"/api/{client}", 200,
                                                                                   "allow")
    assert event["secrets"] == ["TOKEN"] and event["host"] == "localhost"
    assert REAL not in sandbox.log_path.read_text()
    start = next(r for r in sandbox.records() if r["event"] == "run.start")
    assert sorted(start["layers"]["network"]["inspected"]) == sorted([f"localhost:{bound.port}",
                                                                       f"localhost:{other.port}"])


def test_the_real_value_is_nowhere_inside(sandbox, upstream_ca, servers, tmp_path):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    script = ("env; cat /proc/self/environ /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; "
              "grep -rsa -l -- \"$REAL_PROBE\" /run /etc /tmp /root /home 2>/dev/null; echo TOKEN=$TOKEN")
    result = sandbox.run("--", "/bin/sh", "-c", script, policy=policy,
                         env={"REAL_TOKEN": REAL, "REAL_PROBE": "nothing"})
    assert result.returncode == 0, result.stderr
    assert REAL not in result.stdout
    token = next(line for line in result.stdout.splitlines() if line.startswith("TOKEN="))
    assert token.startswith("TOKEN=sbx-phantom-")
    # files: search the whole visible tree for the value, from inside, with the value never given to it
    finder = sandbox.run("--", "python3", "-c", f"""
import os, stat
needle = bytes.fromhex({REAL.encode().hex()!r})
hits = []
for top in ("/run", "/etc", "/tmp", "/var", "{sandbox.workspace}", "{sandbox.home}"):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                if not stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode):
                    continue
                with open(os.path.join(root, name), "rb") as f:
                    if needle in f.read(4 << 20):
                        hits.append(os.path.join(root, name))
            except OSError:
                pass
print("hits:", hits)
""", policy=policy, env={"REAL_TOKEN": REAL})
    assert finder.returncode == 0 and "hits: []" in finder.stdout, finder.stdout + finder.stderr
    dry = sandbox.run("--dry-run", "--json", "--", "true", policy=policy, env={"REAL_TOKEN": REAL})
    assert dry.returncode == 0 and REAL not in dry.stdout + dry.stderr
    plan = json.loads(dry.stdout)
    assert "TOKEN" not in plan["env"] and plan["env"]["SSL_CERT_FILE"] == "/run/sandboxctl/tls/ca-bundle.pem"
    assert REAL not in sandbox.log_path.read_text()


def test_the_placeholder_toward_another_host_is_refused_and_logged(sandbox, upstream_ca, servers):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    script = (f'curl -sS -o /dev/null -w "%{{http_code}}\\n" -H "Authorization: Bearer $TOKEN" '
              f'https://localhost:{other.port}/steal; '
              f'curl -sS -o /dev/null -w "%{{http_code}}\\n" "https://localhost:{other.port}/q?t=$TOKEN"; '
              f'curl -sS -o /dev/null -w "%{{http_code}}\\n" https://localhost:{other.port}/fine')
    result = _run(sandbox, policy, script)
    assert result.stdout.split() == ["403", "403", "200"], result.stdout + result.stderr
    assert [s["path"] for s in other.seen] == ["/fine"]  # nothing with the placeholder reached it
    leaks = [e for e in _events(sandbox, "http") if e.get("leak")]
    assert [(e["leak"], e["path"], e["decision"]) for e in leaks] == [("TOKEN", "/steal", "deny"),
                                                                      ("TOKEN", "/q", "deny")]


def test_path_rules_and_keep_alive(sandbox, upstream_ca, servers):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    base = f"https://localhost:{bound.port}"
    # one curl, one connection, four requests: each judged on its own
    script = (f'curl -sS -o /dev/null -w "%{{http_code}} %{{num_connects}}\\n" {base}/api/a {base}/admin '
              f'{base}/api/../admin --path-as-is {base}/api/%2e%2e/admin; '
              f'curl -sS -o /dev/null -w "%{{http_code}}\\n" -X POST -d x {base}/api/repo/items; '
              f'curl -sS -o /dev/null -w "%{{http_code}}\\n" -X POST -d x {base}/api/repo/other')
    result = _run(sandbox, policy, script)
    lines = [line for line in result.stdout.splitlines() if line[:3].isdigit()]  # curl -o covers one URL only
    assert [line.split()[0] for line in lines] == ["200", "403", "403", "403", "200", "403"], result.stdout
    assert [s["path"] for s in bound.seen] == ["/api/a", "/api/repo/items"]
    denied = [e for e in _events(sandbox, "http") if e["decision"] == "deny"]
    assert len(denied) == 4
    assert "not in network.inspect" in denied[0]["rule"] and denied[1]["rule"].startswith("bad request")
    assert sum(int(line.split()[1]) for line in lines[:4]) == 1  # four requests, one connection


def test_websocket_upgrade_through_an_inspected_host(sandbox, upstream_ca, servers):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    code = f"""
import os, socket, ssl
sock = socket.create_connection(("127.0.0.1", 3128))
sock.sendall(b"CONNECT localhost:{bound.port} HTTP/1.1\\r\\nHost: localhost:{bound.port}\\r\\n\\r\\n")
assert sock.recv(1000).startswith(b"HTTP/1.1 200")
tls = ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
tls.sendall(b"GET /ws HTTP/1.1\\r\\nHost: localhost:{bound.port}\\r\\nConnection: Upgrade\\r\\n"
            b"Upgrade: websocket\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += tls.recv(1)
print(head.split(b"\\r\\n")[0].decode())
tls.sendall(b"hello over the upgrade")
print(tls.recv(100).decode())
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HTTP/1.1 101 Switching Protocols", "echo:hello over the upgrade"]
    (event,) = _events(sandbox, "http")
    assert event["status"] == 101 and event.get("upgrade") == "websocket"


def test_upgrade_smuggling_on_plain_http(sandbox, upstream_ca, servers):
    """Connection: Upgrade + Upgrade: foo, then a second request for secret.internal on the same
    connection: the upstream declines the upgrade, and the second request is read and refused."""
    bound, other = servers
    plain = RecordingServer(None)
    try:
        policy = _policy(sandbox, upstream_ca, bound, other, allow=(f"127.0.0.1:{plain.port}",))
        code = f"""
import socket
sock = socket.create_connection(("127.0.0.1", 3128))
sock.sendall(b"GET http://127.0.0.1:{plain.port}/first HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: Upgrade\\r\\n"
             b"Upgrade: foo\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: secret.internal\\r\\n\\r\\n")
sock.settimeout(5)
data = b""
try:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print(data.count(b"HTTP/1.1 "), data.split(b"\\r\\n")[0].decode())
print("400" in data.decode("latin-1"))
"""
        result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
        assert result.returncode == 0, result.stderr
        assert [s["path"] for s in plain.seen] == ["/first"]  # the second request never reached it
        assert all("secret.internal" not in json.dumps(s) for s in plain.seen)
        assert result.stdout.splitlines()[1] == "True"  # origin-form to a proxy: refused as a bad request
    finally:
        plain.close()


def test_phantom_expiry(sandbox, upstream_ca, servers):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    text = Path(policy).read_text()
    Path(policy).write_text(text.replace('    hosts: ["localhost', '    ttl: 4s\n    hosts: ["localhost'))
    url = f"https://localhost:{bound.port}/api/x"
    script = (f'curl -sS -o /dev/null -w "%{{http_code}}\\n" -H "Authorization: Bearer $TOKEN" {url}; sleep 6; '
              f'curl -sS -o /dev/null -w "%{{http_code}}\\n" -H "Authorization: Bearer $TOKEN" {url}')
    result = _run(sandbox, policy, script)
    assert result.stdout.split() == ["200", "403"], result.stdout + result.stderr
    assert [h["authorization"] for h in (bound.headers_of(i) for i in range(len(bound.seen)))] == [f"Bearer {REAL}"]
    expiry = [e for e in _events(sandbox, "secret") if e.get("action") == "expire"]
    assert expiry and expiry[0]["name"] == "TOKEN" and expiry[0]["as"] == "proxy"
    assert _events(sandbox, "http")[-1]["rule"] == "secret TOKEN expired"


def test_a_proxy_secret_needs_the_proxy(sandbox, upstream_ca, servers):
    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    result = sandbox.run("--net", "none", "--", "true", policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 125 and "as: proxy needs network mode proxy" in result.stderr


@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed: apt-get install runsc")
def test_inspection_under_gvisor(sandbox, upstream_ca, servers, tmp_path):
    """The same plan under runsc: the bundle is bound over the system's, the phantom injected."""
    import os
    import tempfile

    bound, other = servers
    policy = _policy(sandbox, upstream_ca, bound, other)
    runtime = Path(tempfile.mkdtemp(prefix="gv", dir="/tmp"))
    os.chmod(runtime, 0o700)
    try:
        argv = sandbox.argv("--backend", "gvisor", "-p", policy, "--", "/bin/sh", "-c",
                            f'curl -sS -H "Authorization: Bearer $TOKEN" https://localhost:{bound.port}/api/gv; '
                            f'curl -sS -o /dev/null -w "%{{http_code}}" https://localhost:{bound.port}/nope',
                            policy=None)
        result = subprocess.run(argv, cwd=sandbox.workspace, capture_output=True, text=True, timeout=120,
                                env=sandbox.env({"REAL_TOKEN": REAL, "XDG_RUNTIME_DIR": str(runtime)}))
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("403") and REAL not in result.stdout
    assert bound.headers_of(0)["authorization"] == f"Bearer {REAL}" and len(bound.seen) == 1
    assert [e["status"] for e in _events(sandbox, "http")] == [200, 403]
