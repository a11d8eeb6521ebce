"""Helpers that launch real sandboxes. Everything is judged from outside the sandbox."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandboxctl.supervise.processes import with_command_line

pytestmark = pytest.mark.integration

if not shutil.which("bwrap"):
    pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)", allow_module_level=True)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory outside the workspace (policies show it read-only, or not at all): the
    place writes escape to. Its parent is made searchable for an unprivileged run's view."""
    path = tmp_path / "outside"
    path.mkdir()
    os.chmod(tmp_path, 0o755)
    return path


class Sandbox:
    """Runs `sandboxctl run` in a subprocess with a private HOME/state/workspace."""

    def __init__(self, workspace: Path, home: Path, state: Path):
        self.workspace = workspace
        self.home = home
        self.state = state

    @property
    def log_path(self) -> Path:
        return self.state / "sandboxctl" / "actions.jsonl"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_STATE_HOME": str(self.state),
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    def argv(self, *args: str, policy: str | None = "default") -> list[str]:
        head = [sys.executable, "-m", "sandboxctl", "run", "-q"]
        if policy:
            head += ["-p", policy]
        return head + list(args)

    def run(self, *args: str, policy: str | None = "default", env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args, policy=policy), cwd=self.workspace, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout, input=input)

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.run("--", "/bin/sh", "-c", script, **kwargs)

    def py(self, code: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.run("--", "python3", "-c", code, **kwargs)

    def records(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def write_policy(self, name: str, text: str) -> Path:
        path = self.home.parent / name
        path.write_text(text)
        return path


@pytest.fixture
def sandbox(tmp_path: Path, workspace: Path, home: Path) -> Sandbox:
    return Sandbox(workspace, home, tmp_path / "state")


processes_with = with_command_line  # exact command lines: the judge of "nothing survives"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _static_server(tmp_path, address: str):
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the host\n")
    handler = functools.partial(_Quiet, directory=str(root))
    server = socketserver.ThreadingTCPServer((address, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], root
    server.shutdown()
    server.server_close()


@pytest.fixture
def web(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/www (policies that reach it name the host's
    loopback, so 127.0.0.1 goes to the proxy)."""
    yield from _static_server(tmp_path, "127.0.0.1")


@pytest.fixture
def web_elsewhere(tmp_path):
    """The same server on the host's 127.0.0.2: a stand-in for a remote host under policies that do
    not name it (127.0.0.1 inside is then the sandbox's own loopback, and NO_PROXY names it)."""
    yield from _static_server(tmp_path, "127.0.0.2")
