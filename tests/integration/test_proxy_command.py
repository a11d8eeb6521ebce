"""`sandboxctl proxy` as a command: clients outside any sandbox (curl, Python) use it through the files it
writes, and get the same allowlist, request rules and phantom secrets as a sandbox; it logs to the chained
log, stops cleanly on SIGTERM and SIGINT (nothing left), and refuses what it cannot serve with 125.
Judged from outside: the upstreams' own records, the log file, /proc, the file system."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tlsfixtures import RecordingServer, UpstreamCA

REAL = "real-proxy-command-token-a1b2c3d4"


@pytest.fixture(scope="module")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("proxy-command-ca"))


@pytest.fixture
def servers(upstream_ca: UpstreamCA):
    bound, other, plain = (RecordingServer(upstream_ca.server_context()), RecordingServer(upstream_ca.server_context()),
                           RecordingServer(None))
    yield bound, other, plain
    for server in (bound, other, plain):
        server.close()


class ProxyCommand:
    def __init__(self, tmp_path: Path, home: Path) -> None:
        self.tmp = tmp_path
        self.home = home
        self.log = tmp_path / "actions.jsonl"
        self.client_dir = tmp_path / "client"
        self.process: subprocess.Popen[str] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "XDG_STATE_HOME": str(self.tmp / "state"), "TMPDIR": str(self.tmp), "LANG": "C.UTF-8",
                "REAL_TOKEN": REAL, **extra}

    def cli(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandboxctl", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)

    def start(self, policy: Path, *args: str, client_dir: bool = True) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "sandboxctl", "proxy", "-p", str(policy), "--listen", "127.0.0.1:0",
                "--log", str(self.log), *(["--client-dir", str(self.client_dir)] if client_dir else []), *args]
        self.process = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        if client_dir:
            deadline = time.monotonic() + 60
            while self.cli("proxy", "--probe", str(self.client_dir)).returncode != 0:
                assert self.process.poll() is None, self.process.stderr.read()
                assert time.monotonic() < deadline, "the proxy never became ready"
                time.sleep(0.1)
        return self.process

    def client_env(self) -> dict[str, str]:
        env = {}
        for line in (self.client_dir / "env").read_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = shlex.split(value)[0] if value else ""
        return env

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        assert self.process is not None
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def proxy(tmp_path: Path, home: Path):
    command = ProxyCommand(tmp_path, home)
    yield command
    if command.process is not None and command.process.poll() is None:
        command.process.kill()
        command.process.wait(10)


def _policy(tmp_path: Path, upstream_ca: UpstreamCA, bound: RecordingServer, other: RecordingServer) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"""version: 1
name: proxy-command
network:
  mode: proxy
  allow: ["localhost:{bound.port}", "localhost:{other.port}"]
  allow_private: true
  upstream_ca: ["{upstream_ca.ca_file}"]
  inspect:
    localhost:{bound.port}:
      allow: ["GET /api/**"]
    localhost:{other.port}:
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{bound.port}"]
approval:
  mode: ask
""")
    return path


CURL = 'curl -sS -o /dev/null -w "%{http_code}" -H "Authorization: Bearer $TOKEN" "$URL"'
PYTHON = ("import os, urllib.request as u, urllib.error as e\n"
          "try:\n"
          "    headers = {'Authorization': 'Bearer ' + os.environ['TOKEN']}\n"
          "    r = u.urlopen(u.Request(os.environ['URL'], headers=headers))\n"
          "    print(r.status, end='')\n"
          "except e.HTTPError as x:\n"
          "    print(x.code, end='')\n")


def _client(kind: str, env: dict[str, str], url: str) -> str:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "URL": url}
    argv = ["/bin/sh", "-c", CURL] if kind == "curl" else [sys.executable, "-c", PYTHON]
    result = subprocess.run(argv, env=full, capture_output=True, text=True, timeout=60)
    return result.stdout.strip() or result.stderr.strip()


@pytest.mark.parametrize("client", ["python", "curl"])
def test_clients_outside_any_sandbox_get_the_same_walls(proxy, upstream_ca, servers, tmp_path, client) -> None:
    if client == "curl" and not shutil.which("curl"):
        pytest.skip("curl is not installed")
    bound, other, _ = servers
    process = proxy.start(_policy(tmp_path, upstream_ca, bound, other))
    env = proxy.client_env()
    assert env["TOKEN"].startswith("sbx-phantom-") and REAL not in json.dumps(env)
    # toward the secret's host, a listed request: the upstream gets the real value
    assert _client(client, env, f"https://localhost:{bound.port}/api/x?y=1") == "200"
    assert bound.headers_of()["authorization"] == f"Bearer {REAL}"
    # a request the rules do not list, and the placeholder toward another host: refused, never sent
    assert _client(client, env, f"https://localhost:{bound.port}/other") == "403"
    assert _client(client, env, f"https://localhost:{other.port}/leak") == "403"
    assert other.seen == [] and [s["path"] for s in bound.seen] == ["/api/x?y=1"]

    code, out, err = proxy.stop()
    assert code == 0, err
    assert out == "" and "proxy stopped (SIGTERM)" in err
    assert process.pid not in [int(p) for p in os.listdir("/proc") if p.isdigit()]
    assert not proxy.client_dir.exists()
    assert proxy.cli("log", "--log", str(proxy.log), "--verify").returncode == 0
    records = proxy.records()
    assert records[0]["event"] == "run.start" and records[0]["standalone"] == "proxy"
    assert records[-1]["event"] == "run.end" and records[-1]["stopped_by"] == "SIGTERM"
    events = [(r["path"], r["decision"], r.get("secrets"), r.get("leak")) for r in records if r["event"] == "http"]
    assert events == [("/api/x", "allow", ["TOKEN"], None), ("/other", "deny", None, None),
                      ("/leak", "deny", None, "TOKEN")]
    assert REAL not in proxy.log.read_text()
    shown = proxy.cli("log", "--log", str(proxy.log), "--event", "http")
    assert shown.returncode == 0 and "leak: TOKEN" in shown.stdout


def test_sigint_and_the_environment_on_stdout(proxy, upstream_ca, servers, tmp_path) -> None:
    bound, other, _ = servers
    process = proxy.start(_policy(tmp_path, upstream_ca, bound, other), client_dir=False)
    lines: list[str] = []
    while not any(line.startswith("TOKEN=") for line in lines):  # the placeholders come last
        line = process.stdout.readline()
        assert line, process.stderr.read()
        lines.append(line.rstrip("\n"))
    env = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    directory = Path(env["SSL_CERT_FILE"]).parent
    assert directory.parent == proxy.tmp / f"sandboxctl-{os.getuid()}" and (directory / "ready").exists()
    request = urllib.request.Request(f"https://localhost:{bound.port}/api/ok",
                                     headers={"Authorization": f"token {env['TOKEN']}"})
    import ssl

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": env["HTTPS_PROXY"]}),
                                         urllib.request.HTTPSHandler(
                                             context=ssl.create_default_context(cafile=env["SSL_CERT_FILE"])))
    assert opener.open(request, timeout=30).status == 200
    assert bound.headers_of()["authorization"] == f"token {REAL}"
    code, _, err = proxy.stop(signal.SIGINT)
    assert code == 0 and "proxy stopped (SIGINT)" in err
    assert not directory.exists()
    assert proxy.records()[-1]["stopped_by"] == "SIGINT"


def test_ask_goes_to_sandboxctl_approve(proxy, upstream_ca, servers, tmp_path) -> None:
    bound, other, plain = servers
    proxy.start(_policy(tmp_path, upstream_ca, bound, other), "--approve", "ask")
    env = proxy.client_env()
    answers: list[str] = []
    url = f"http://127.0.0.1:{plain.port}/asked"  # not in network.allow: asked
    # (without the placeholder: sent to a host the secret is not bound to, it would be refused as a leak)
    thread = threading.Thread(target=lambda: answers.append(_client("python", {**env, "TOKEN": "none"}, url)))
    thread.start()
    listed = proxy.cli("approve", "--list", "--json", "--wait", "20")
    assert listed.returncode == 0, listed.stderr
    (request,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert request["target"] == f"127.0.0.1:{plain.port}" and request["kind"] == "network"
    assert proxy.cli("approve", request["id"], "once").returncode == 0
    thread.join(60)
    assert answers == ["200"] and [s["path"] for s in plain.seen] == ["/asked"]
    socket_dir = proxy.tmp / f"sandboxctl-{os.getuid()}"
    assert any(p.suffix == ".sock" for p in socket_dir.iterdir())
    code, _, err = proxy.stop()
    assert code == 0, err
    assert not any(p.suffix == ".sock" for p in socket_dir.iterdir())  # the approval socket went with it
    approval = next(r for r in proxy.records() if r["event"] == "approval")
    assert approval["answer"] == "once" and approval["target"] == f"127.0.0.1:{plain.port}"


def test_log_stdout_copies_every_record(proxy, upstream_ca, servers, tmp_path) -> None:
    bound, other, _ = servers
    proxy.start(_policy(tmp_path, upstream_ca, bound, other), "--log-stdout")
    assert _client("python", proxy.client_env(), f"https://localhost:{bound.port}/api/x") == "200"
    code, out, err = proxy.stop()
    assert code == 0, err
    assert out.splitlines() == proxy.log.read_text().splitlines()


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "no-such-policy"], "no built-in policy named"),
    (["-p", "offline"], "has network: none"),
    ([], "needs a policy"),
    (["-p", "default", "--listen", "0.0.0.0:0"], "opens the proxy to the network"),
    (["-p", "default", "--listen", "localhost:3128"], "is not an IP address"),
    (["-p", "default", "--approve", "maybe"], "--approve"),
    (["-p", "default", "--listen", "[::1]:0", "--phantom-id", "x"], "--phantom-id"),
    (["-p", "BROKEN"], "unknown key"),
])
def test_what_cannot_be_served_is_one_line_and_125(proxy, tmp_path, args, message) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nnetwork:\n  mode: proxy\n  allow: [x]\n  bogus: 1\n")
    args = [str(broken) if a == "BROKEN" else a for a in args]
    result = proxy.cli("proxy", *args)
    assert result.returncode == 125, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("sandboxctl: error: ") and message in lines[0], result.stderr
    assert len(lines) <= 2 and all(line.startswith("  hint: ") for line in lines[1:])
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_an_address_in_use_and_the_probe_of_nothing(proxy, tmp_path) -> None:
    import socket

    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    result = proxy.cli("proxy", "-p", "default", "--listen", f"127.0.0.1:{port}", "--log", str(proxy.log))
    holder.close()
    assert result.returncode == 125 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not proxy.log.exists() or "run.start" not in proxy.log.read_text()
    assert proxy.cli("proxy", "--probe", str(tmp_path / "nothing")).returncode == 1
