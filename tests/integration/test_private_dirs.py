"""sandboxctl's own directories under a hostile environment: XDG_STATE_HOME, XDG_RUNTIME_DIR and
TMPDIR that lead through a directory others may write, or that are relative.

The head start executes a remembered entry's argv before any check, so its cache must be one no
other user could have put together (from directories of ours: a workspace a sandbox wrote); the
sessions' sockets must never land where a sandbox, or another user, can reach them. Judged from
outside: a canary file on the host, where the session's files are, what a command inside sees.
"""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_a_cache_reached_through_a_directory_others_may_write_is_never_executed(sandbox, tmp_path):
    """The state dir is ours and private, but it lies in a directory anyone may write (not sticky):
    anyone could have swapped it for another directory of ours. Its entries are never run: the
    run is refused, as every use of such a state dir is (its trust store, log and approvals too)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    sandbox.state = shared / "state"
    canary = tmp_path / "canary"
    script = "echo fine"
    assert "fine" in sandbox.sh(script).stdout
    [entry] = list((sandbox.state / "sandboxctl" / "cache").glob("headstart-*.marshal"))
    data = marshal.loads(entry.read_bytes())
    data["argv"] = ["/bin/sh", "-c", f"touch {canary}"]  # what the swapped-in directory holds
    entry.write_bytes(marshal.dumps(data))
    shared.chmod(0o777)
    try:
        again = sandbox.sh(script)
    finally:
        shared.chmod(0o755)
    assert again.returncode == 125 and "fine" not in again.stdout, again.stderr
    assert "is reached through a directory another user may change" in again.stderr
    assert not canary.exists()


def _cli(sandbox, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=cwd or sandbox.workspace,
                          env=sandbox.env(env), capture_output=True, text=True, timeout=60)


def _fallback() -> Path:
    return Path("/tmp") / f"sandboxctl-{os.getuid()}" / "sessions"


def test_a_relative_tmpdir_never_puts_the_sessions_in_the_workspace(sandbox):
    """No runtime dir of ours and TMPDIR=rel: the sockets went to ./rel — the workspace, seen and
    writable inside the session's own sandbox. They go to /tmp/sandboxctl-UID."""
    env = {"TMPDIR": "rel", "XDG_RUNTIME_DIR": "/nonexistent-runtime-dir"}
    name = f"t-reltmp-{os.getpid()}"
    started = _cli(sandbox, env, "session", "start", "--name", name)
    assert started.returncode == 0, started.stderr
    try:
        assert not (sandbox.workspace / "rel").exists()
        assert (_fallback() / f"{name}.sock").exists()
        inside = _cli(sandbox, env, "exec", name, "--", "sh", "-c", "ls -a rel 2>&1; echo listed")
        assert "listed" in inside.stdout and f"{name}.sock" not in inside.stdout, inside.stdout
        elsewhere = sandbox.workspace.parent / "elsewhere"
        elsewhere.mkdir()
        assert _cli(sandbox, env, "exec", name, "--", "true", cwd=elsewhere).returncode == 0  # found from any cwd
    finally:
        _cli(sandbox, env, "session", "stop", name)
    assert not (_fallback() / f"{name}.sock").exists()


def test_a_runtime_dir_in_a_directory_others_may_write_is_not_used(sandbox, tmp_path):
    """XDG_RUNTIME_DIR is ours and private, inside a directory anyone may write: anyone could swap
    it (and read the sockets' names, replace them). The sessions go to /tmp/sandboxctl-UID."""
    shared = tmp_path / "shared-rt"
    shared.mkdir()
    runtime = shared / "rt"
    runtime.mkdir(mode=0o700)
    shared.chmod(0o777)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    name = f"t-sharedrt-{os.getpid()}"
    try:
        started = _cli(sandbox, env, "session", "start", "--name", name)
        assert started.returncode == 0, started.stderr
        assert not (runtime / "sandboxctl").exists()
        assert (_fallback() / f"{name}.sock").exists()
        assert _cli(sandbox, env, "exec", name, "--", "true").returncode == 0
    finally:
        _cli(sandbox, env, "session", "stop", name)
        shared.chmod(0o755)
        shutil.rmtree(shared, ignore_errors=True)
