"""network: proxy through real sandboxes: only the policy's destinations, via the supervisor.

All traffic stays on 127.0.0.1 (allow_private: true lets the proxy dial loopback servers)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _policy(sandbox, allow: list[str], deny: list[str] = (), private: bool = True) -> str:
    text = ("version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
            f"  allow: {list(allow)!r}\n  deny: {list(deny)!r}\n  allow_private: {str(private).lower()}\n")
    return str(sandbox.write_policy("net.yaml", text))


def _net_events(sandbox):
    return [r for r in sandbox.records() if r["event"] == "net"]


needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")


@needs_curl
def test_allowed_destination_is_reachable_and_others_get_403(sandbox, web):
    port, _ = web
    policy = _policy(sandbox, [f"127.0.0.1:{port}"])
    result = sandbox.run("--", "/bin/sh", "-c",
                         f"curl -s http://127.0.0.1:{port}/hello.txt; "
                         f"curl -s -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{port + 1}/", policy=policy)
    lines = result.stdout.splitlines()
    assert lines[0] == "hello from the host"
    assert lines[-1] == "403"
    events = _net_events(sandbox)
    assert [e["decision"] for e in events] == ["allow", "deny"]
    assert events[0]["bytes_in"] > 0 and events[0]["address"] == "127.0.0.1"
    assert "network.allow" in events[1]["rule"]


@needs_curl
def test_refusal_body_tells_an_agent_what_to_do(sandbox, web):
    port, _ = web
    # a name: 127.0.0.1 would be the sandbox's own loopback (NO_PROXY) when no rule names the host's
    result = sandbox.run("--", "curl", "-s", f"http://registry.example.invalid:{port}/", policy=_policy(sandbox, []))
    assert "--allow-net" in result.stdout and f"registry.example.invalid:{port}" in result.stdout


@needs_curl
def test_https_style_connect_tunnel_and_socks5(sandbox, web):
    port, _ = web
    policy = _policy(sandbox, [f"localhost:{port}"])
    result = sandbox.run("--", "/bin/sh", "-c",
                         f"curl -s -p -x http://127.0.0.1:3128 http://localhost:{port}/hello.txt; "
                         f"curl -s --socks5-hostname 127.0.0.1:3128 http://localhost:{port}/hello.txt",
                         policy=policy)
    assert result.stdout.count("hello from the host") == 2, result.stderr
    assert {e["protocol"] for e in _net_events(sandbox)} == {"connect", "socks5"}


@needs_curl
def test_wildcards_and_deny_precedence(sandbox, web):
    port, _ = web
    policy = _policy(sandbox, ["*.localhost", "localhost"], deny=[f"localhost:{port}"])
    result = sandbox.run("--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         f"http://localhost:{port}/hello.txt", policy=policy)
    assert result.stdout == "403"
    assert "network.deny" in _net_events(sandbox)[0]["rule"]


@needs_curl
def test_private_addresses_stay_blocked_even_when_the_name_is_listed(sandbox, web):
    port, _ = web
    policy = _policy(sandbox, [f"localhost:{port}"], private=False)
    result = sandbox.run("--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         f"http://localhost:{port}/hello.txt", policy=policy)
    assert result.stdout == "403"
    assert "private" in _net_events(sandbox)[0]["rule"] or "loopback" in _net_events(sandbox)[0]["rule"]


def test_python_urllib_uses_the_proxy(sandbox, web):
    port, _ = web
    result = sandbox.py(f"import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:{port}/hello.txt')"
                        ".read().decode().strip())", policy=_policy(sandbox, [f"127.0.0.1:{port}"]))
    assert result.stdout.strip() == "hello from the host", result.stderr


def test_a_program_that_ignores_the_proxy_gets_no_network(sandbox, web):
    port, _ = web
    result = sandbox.py(f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 2)\n"
                        "    print('bypassed')\nexcept OSError as e:\n    print('refused', e.errno)",
                        policy=_policy(sandbox, [f"127.0.0.1:{port}"]))
    assert result.stdout.startswith("refused")
    assert not _net_events(sandbox)


def test_network_none_has_no_route_at_all(sandbox):
    result = sandbox.run("--", "python3", "-c",
                         "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 3128), 2)\n"
                         "    print('proxy reachable')\nexcept OSError as e:\n    print('refused', e.errno)",
                         policy="offline")
    assert result.stdout.startswith("refused")
    env = sandbox.run("--", "/bin/sh", "-c", "env | grep -ci proxy || true", policy="offline")
    assert env.stdout.strip() == "0"


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_clone_over_http_through_the_proxy(sandbox, web, tmp_path):
    port, root = web
    source = tmp_path / "src"
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    (source / "README").write_text("cloned through the proxy\n")
    subprocess.run(["git", "-C", str(source), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(root / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(root / "repo.git"), "update-server-info"], check=True)  # dumb HTTP
    # a new repository is never made inside the workspace (its config and hooks would run outside
    # later): clone into the sandbox's own /tmp, and copy out what is needed
    result = sandbox.run("--", "/bin/sh", "-c", f"git clone -q http://127.0.0.1:{port}/repo.git /tmp/clone && "
                         "cp /tmp/clone/README got.txt", policy=_policy(sandbox, [f"127.0.0.1:{port}"]))
    assert result.returncode == 0, result.stderr
    assert (sandbox.workspace / "got.txt").read_text() == "cloned through the proxy\n"
