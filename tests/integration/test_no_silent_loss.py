"""A flood of proxy connections is refused at the proxy, never paid for with log records.

The supervisor runs with a hard limit of 1024 descriptors (as for the issue's user), so raising
its own soft limit cannot help: the connection cap and the descriptor reserve must.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import threading

import pytest

FLOOD = r"""
import socket, subprocess, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held, refused = [], 0
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    reply = s.recv(12)
    if reply.startswith(b"HTTP/1.1 200"):
        held.append(s)
    else:
        refused += 1
        s.close()
for s in held:  # bulk: enough bytes through each tunnel for the proxy to switch to splice pipes
    s.settimeout(20)
    got = 0
    while got < 200_000:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += len(chunk)
try:  # during the flood: an escape outside the workspace, and a program run
    open("/etc/flood-escape", "w")
    print("escape written")
except OSError as exc:
    print("escape refused", exc.errno)
subprocess.run(["/bin/true"], check=True)
print("held", len(held), "refused", refused, flush=True)
for s in held:
    s.close()
"""


@pytest.fixture
def bulk_upstream():
    """127.0.0.1: streams to each connection until it closes (every tunnel stays a bulk transfer)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=512)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conns.append(conn)
            threading.Thread(target=_send, args=(conn,), daemon=True).start()

    def _send(conn: socket.socket) -> None:
        block = b"x" * (64 << 10)
        try:
            while not stop.is_set():
                conn.sendall(block)
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _hard_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_a_tunnel_flood_is_refused_at_the_proxy_and_nothing_is_lost(sandbox, bulk_upstream):
    policy = sandbox.write_policy("flood.yaml", f"""
version: 1
name: flood
extends: default
network:
  mode: proxy
  allow: ["127.0.0.1:{bulk_upstream}"]
  allow_private: true
approval: {{mode: deny}}
limits: {{open_files: 1024}}
""")
    result = subprocess.run(sandbox.argv("--", "python3", "-c", FLOOD, str(bulk_upstream), "250", policy=str(policy)),
                            cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=240,
                            preexec_fn=_hard_limit(1024))
    assert result.returncode == 0, result.stderr[-3000:]
    words = next(line for line in result.stdout.splitlines() if line.startswith("held ")).split()
    held, refused = int(words[1]), int(words[3])
    assert "escape refused 13" in result.stdout
    assert held + refused == 250 and refused > 0 and held >= 16, result.stdout
    raw = sandbox.log_path.read_text()
    assert '"path":"?"' not in raw and '"path": "?"' not in raw
    records = [json.loads(line) for line in raw.splitlines()]
    busy = [r for r in records if r["event"] == "net" and r.get("rule", "").startswith("connection limit")]
    assert busy and len(busy) <= 3 and sum(r["count"] for r in busy) == refused, busy  # collapsed
    escape = [r for r in records if r["event"] == "file" and r["path"] == "/etc/flood-escape"]
    assert escape and escape[0]["decision"] == "deny"
    assert any(r["event"] == "exec" and r["path"] == "/bin/true" and r["argv"] for r in records)
    assert not [r for r in records if r["event"] == "syscall" and "could not" in r.get("rule", "")]
    [end] = [r for r in records if r["event"] == "run.end"]
    assert end["denied"] == refused + 1, (end["denied"], refused)
    allowed = [r for r in records if r["event"] == "net" and r["decision"] == "allow"]
    assert len(allowed) == held
