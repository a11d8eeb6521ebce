"""Workspaces far larger than the tests' usual ones: thousands of repositories (more protected
binds than bubblewrap takes arguments, a configuration larger than one control message) and,
as root, other users' private directories. Judged from outside: the host's files while the
sandbox still runs, and the exit status the caller sees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_protected_paths import _start, _wait_for, repo

BIG = 1100  # three protected binds each (9900 words): past bubblewrap's 9000 options, the binds are left out


def fake_repositories(ws: Path, count: int, name: str = "r") -> None:
    """count directories holding a .git with config, hooks/ and info/: what the planner protects."""
    for n in range(count):
        git_dir = ws / f"{name}{n}" / ".git"
        (git_dir / "hooks").mkdir(parents=True)
        (git_dir / "info").mkdir()
        (git_dir / "config").write_text("[core]\n\tbare = false\n")


def test_thousands_of_repositories_run_with_their_hooks_still_held(sandbox):
    """BIG repositories plan 3300 protected binds (9900 words, bubblewrap's limit is 9000): they
    are left out, said in the plan, and Landlock with the supervisor still refuses every write."""
    ws = sandbox.workspace
    fake_repositories(ws, BIG)
    real = repo(ws / "real", sandbox.home)
    plan = sandbox.run("--dry-run", "--", "true")
    assert plan.returncode == 0, plan.stderr
    assert "read-only binds are left out (bubblewrap takes at most 9000 arguments)" in plan.stdout
    attack = ("for d in r7 r1099 real; do echo evil > $d/.git/hooks/pre-commit; echo evil >> $d/.git/config;"
              " mv $d/.git/hooks $d/.git/gone; ln -s /tmp $d/.git/info/x; done 2>/dev/null;"
              " echo ok > made; touch planted; while [ ! -e go ]; do sleep 0.05; done; exit 3")
    proc = _start(sandbox, attack)
    try:
        _wait_for(ws / "planted", timeout=120)
        for d in (ws / "r7", ws / "r1099", real):  # while it runs: nothing for the end-of-run check to undo
            assert not (d / ".git" / "hooks" / "pre-commit").exists()
            assert b"evil" not in (d / ".git" / "config").read_bytes()
            assert (d / ".git" / "hooks").is_dir() and not (d / ".git" / "gone").exists()
            assert not os.path.lexists(d / ".git" / "info" / "x")
        assert (ws / "made").read_text() == "ok\n"  # the workspace itself is writable
    finally:
        (ws / "go").touch()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err  # the command's own status, not bubblewrap's refusal


def test_a_configuration_larger_than_one_control_message_reaches_the_shim(sandbox):
    """800 repositories with long names keep their binds (under bubblewrap's limit) and make a
    launch configuration (a Landlock rule per bind) of more than one SOCK_SEQPACKET message."""
    ws = sandbox.workspace
    name = "a-repository-with-a-long-name-so-that-its-paths-are-long-" * 2
    fake_repositories(ws, 800, name=name)
    plan = sandbox.run("--dry-run", "--", "true")
    assert plan.returncode == 0, plan.stderr
    assert "left out" not in plan.stdout and plan.stdout.count(": protected\n") >= 2400
    assert sum(len(line) for line in plan.stdout.splitlines() if name in line) > 4 * 212992
    result = sandbox.sh(f"echo evil > {name}5/.git/hooks/pre-commit; echo ran; exit 4")
    assert result.returncode == 4, result.stderr
    assert result.stdout == "ran\n"
    assert not (ws / f"{name}5" / ".git" / "hooks" / "pre-commit").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can make another user's private directory")
def test_root_runs_in_a_workspace_holding_another_users_private_directory(sandbox):
    """As root the planner can see into another user's 0700 directory; the sandbox (whose user
    namespace maps uid 0 alone) cannot, so a mask or bind inside it would fail to mount."""
    ws = sandbox.workspace
    private = ws / "theirs" / "private"
    (private / "proj" / ".git" / "hooks").mkdir(parents=True)
    (private / "proj" / ".env").write_text("SECRET=1\n")
    subprocess.run(["chown", "-R", "65534:65534", str(ws / "theirs")], check=True)
    os.chmod(private, 0o700)
    plan = sandbox.run("--dry-run", "--", "true")
    assert plan.returncode == 0, plan.stderr
    assert "below directories the sandbox's user cannot enter" in plan.stdout
    result = sandbox.sh("cat theirs/private/proj/.env; echo $?; echo ok > mine")
    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout and result.stdout.endswith("1\n")
    assert (ws / "mine").read_text() == "ok\n"
