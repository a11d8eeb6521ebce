"""Coding agents on an account where they never ran, and agents installed outside the system dirs.

filesystem.create (issue 19, item 4): the built-in agent policies make what the agent would make
(its state dir, ~/.claude.json with content claude accepts), on the host, logged, never through a
symbolic link. Where an agent lives outside the mounts (a venv, an npm prefix), a 127 names the host
path and the grant that shows it, and `shell-init` grants it (item 5). The real agents (claude and
codex from npm, aider from PyPI) are run where installed: --version, --help, and a prompt that must
fail at authentication, not at the sandbox; judged from their output and from the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Creation
from sandboxctl.supervise.create import make_all


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---------------------------------------------------------------------- made on the host, safely

def test_first_run_of_claude_code_policy_makes_its_state_then_nothing(sandbox):
    home = sandbox.home
    first = sandbox.run("--", "/bin/sh", "-c", "cat ~/.claude.json; test -d ~/.claude && echo dir-ok",
                        policy="claude-code")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["{}", "dir-ok"]
    assert (home / ".claude.json").read_text() == "{}\n" and _mode(home / ".claude.json") == 0o600
    assert (home / ".claude").is_dir() and _mode(home / ".claude") == 0o777 & ~_umask()
    made = [r for r in sandbox.records() if r["event"] == "create"]
    assert [(r["path"], r["kind"]) for r in made] == [(str(home / ".claude"), "dir"),
                                                      (str(home / ".claude.json"), "file")]
    assert made[1]["mode"] == "0o600" and made[1]["rule"] == "filesystem.create"
    assert made[0]["seq"] < next(r["seq"] for r in sandbox.records() if r["event"] == "run.start")
    # -q silences the note; without it, stderr names what was made
    noisy = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-p", "codex", "--", "true"],
                           cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert noisy.returncode == 0, noisy.stderr
    assert f"made before the run (filesystem.create): {home / '.codex'} (dir)" in noisy.stderr

    (home / ".claude.json").write_text('{"kept": true}')
    again = sandbox.run("--", "cat", str(home / ".claude.json"), policy="claude-code")
    assert again.stdout == '{"kept": true}'  # never written over
    assert len([r for r in sandbox.records() if r["event"] == "create"]) == 2 + 1  # codex's, nothing new


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_dry_run_makes_nothing_and_shows_what_would_be_made(sandbox):
    done = sandbox.run("--dry-run", "--", "true", policy="aider")
    assert done.returncode == 0, done.stderr
    assert not (sandbox.home / ".aider").exists()
    assert f"  dir {sandbox.home}/.aider/caches (umask default, " not in done.stdout  # (dirs carry no size)
    assert f"  dir {sandbox.home}/.aider/caches (umask default): filesystem.create" in done.stdout
    assert f"  dir {sandbox.home}/.aider (umask default): parent of {sandbox.home}/.aider/caches" in done.stdout


def test_a_symlink_in_the_way_is_never_followed(tmp_path):
    """A link planted where the state dir will be (or at its parent) must not redirect the creation."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / ".aider").symlink_to(elsewhere)
    log: list[tuple] = []
    plan = (Creation(str(home / ".aider"), "dir", None), Creation(str(home / ".aider" / "caches"), "dir", None))
    with pytest.raises(SandboxError, match="cannot make"):
        make_all(plan, str(home), lambda *a, **k: log.append((a, k)))
    with pytest.raises(SandboxError, match="cannot make"):
        make_all(plan[1:], str(home), lambda *a, **k: log.append((a, k)))
    assert list(elsewhere.iterdir()) == [] and log == []
    (home / ".claude.json").symlink_to(elsewhere / "target.json")
    with pytest.raises(SandboxError):
        make_all((Creation(str(home / ".claude.json"), "file", 0o600, "{}"),), str(home), lambda *a, **k: None)
    assert not (elsewhere / "target.json").exists()


def test_a_run_whose_creation_fails_does_not_start(sandbox, tmp_path):
    """A state dir that is a link (dotfiles) is the user's: used, never made. A dangling link is not
    a directory to make through: nothing runs, and nothing appears where it points."""
    (sandbox.home / ".codex").symlink_to(tmp_path)
    done = sandbox.run("--", "true", policy="codex")
    assert done.returncode == 0, done.stderr
    assert not [r for r in sandbox.records() if r["event"] == "create"]
    (sandbox.home / ".codex").unlink()
    (sandbox.home / ".codex").symlink_to(tmp_path / "absent")
    done = sandbox.run("--", "true", policy="codex")
    assert done.returncode == 125, done.stderr
    assert not (tmp_path / "absent").exists()


# ---------------------------------------------------------------------- installed outside the mounts

def _fake_venv(root: Path, name: str) -> Path:
    """A virtual environment with one console script (what pip install puts there)."""
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    os.symlink("/usr/bin/python3", root / "bin" / "python3")
    script = root / "bin" / name
    script.write_text(f"#!{root}/bin/python3\nimport os\nprint('ran inside', os.environ.get('SANDBOXCTL'))\n")
    script.chmod(0o755)
    return script


def _fake_npm_prefix(prefix: Path, name: str) -> Path:
    """npm install -g --prefix: bin/NAME -> ../lib/node_modules/PKG/cli.js (here a python script)."""
    package = prefix / "lib" / "node_modules" / "@acme" / name
    package.mkdir(parents=True)
    cli = package / "cli.js"
    cli.write_text("#!/usr/bin/env python3\nimport os\nprint('ran inside', os.environ.get('SANDBOXCTL'))\n")
    cli.chmod(0o755)
    (prefix / "bin").mkdir()
    os.symlink(f"../lib/node_modules/@acme/{name}/cli.js", prefix / "bin" / name)
    return prefix / "bin" / name


@pytest.mark.parametrize("layout", ["venv", "npm-prefix"])
def test_not_found_names_the_host_path_and_the_grant_that_works(sandbox, tmp_path, layout):
    root = tmp_path / f"install-{layout}"
    tool = _fake_venv(root, "mytool") if layout == "venv" else _fake_npm_prefix(root, "mytool")
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    done = sandbox.run("--env", "PATH", "--", "mytool", env=env)
    assert done.returncode == 127
    lines = done.stderr.splitlines()
    assert lines[0] == "sandboxctl: error: mytool: command not found inside the sandbox", done.stderr
    assert f"on the host it is {tool}" in lines[1] and f"--allow-read {root}" in lines[1], lines[1]
    assert "exec.allow" not in done.stderr  # no policy here sets it
    fixed = sandbox.run("--env", "PATH", "--allow-read", str(root), "--", "mytool", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout == "ran inside 1\n"


def test_not_found_anywhere_says_so(sandbox):
    done = sandbox.run("--", "no-such-agent-xyz")
    assert done.returncode == 127
    assert "'no-such-agent-xyz' is not on your PATH outside the sandbox either" in done.stderr


def test_shell_init_grants_an_agent_installed_in_a_venv(sandbox, tmp_path):
    aider = _fake_venv(tmp_path / "aider-venv", "aider")
    path = f"{aider.parent}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"
    env = {**sandbox.env(), "PATH": path}
    init = subprocess.run([sys.executable, "-m", "sandboxctl", "shell-init", "bash"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=sandbox.workspace)
    assert init.returncode == 0, init.stderr
    assert f"run -p aider --allow-read {tmp_path / 'aider-venv'} -- aider" in init.stdout
    used = subprocess.run(["bash", "-c", f'eval "$({sys.executable} -m sandboxctl shell-init bash)"; aider'],
                          env=env, capture_output=True, text=True, timeout=120, cwd=sandbox.workspace)
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip().endswith("ran inside 1")


# ---------------------------------------------------------------------- the real agents

def _agent(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in Path("/opt").glob(f"*/bin/{name}")), None)
    if found is None:
        pytest.skip(f"{name} is not installed (npm -g @anthropic-ai/claude-code / @openai/codex, pip aider-chat)")
    return found


def _run_agent(sandbox, policy: str, path: str, *args: str, timeout: float = 120, options: tuple[str, ...] = ()):
    """The agent as a user runs it through its shell-init function: by name, its install granted."""
    from sandboxctl.plan.locate import locate

    bin_dir = os.path.dirname(path)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}
    location = locate(os.path.basename(path), env["PATH"], str(sandbox.workspace))
    grants = [a for root in location.roots if root not in ("/usr", "/bin") and not root.startswith(("/usr/", "/bin/"))
              for a in ("--allow-read", root)]
    return sandbox.run(*options, *grants, "--", os.path.basename(path), *args, policy=policy, env=env,
                       timeout=timeout)


def test_claude_starts_on_a_fresh_account_and_stops_at_authentication(sandbox):
    claude = _agent("claude")
    version = _run_agent(sandbox, "claude-code", claude, "--version")
    assert version.returncode == 0 and "(Claude Code)" in version.stdout, version.stderr
    usage = _run_agent(sandbox, "claude-code", claude, "--help")
    assert usage.returncode == 0 and "Usage: claude" in usage.stdout, usage.stderr
    prompt = _run_agent(sandbox, "claude-code", claude, "-p", "say hi")
    assert prompt.returncode == 1
    assert "Not logged in" in prompt.stdout + prompt.stderr, prompt.stdout + prompt.stderr
    assert "corrupted" not in prompt.stdout + prompt.stderr


def test_claude_keeps_its_configuration(sandbox):
    """A rename over the ~/.claude.json bind gets EBUSY, as the kernel answers for a mount point,
    and claude falls back to writing the file in place."""
    claude = _agent("claude")
    _run_agent(sandbox, "claude-code", claude, "-p", "say hi")
    config = json.loads((sandbox.home / ".claude.json").read_text())  # claude filled in what we made
    assert "userID" in config


def test_codex_starts_on_a_fresh_account(sandbox):
    codex = _agent("codex")
    version = _run_agent(sandbox, "codex", codex, "--version")
    assert version.returncode == 0 and version.stdout.startswith("codex-cli "), version.stderr
    usage = _run_agent(sandbox, "codex", codex, "--help")
    assert usage.returncode == 0 and "Usage: codex" in usage.stdout, usage.stderr
    assert (sandbox.home / ".codex").is_dir()


def test_codex_exec_stops_beyond_the_sandbox(sandbox):
    """No credentials: codex exec goes to its API (it asks no login first); the proxy allows the
    host (a `net` allow event), so whatever fails is OpenAI's side, not the sandbox. Without a route
    to OpenAI (this machine) it retries until the run's timeout ends it."""
    codex = _agent("codex")
    done = _run_agent(sandbox, "codex", codex, "exec", "--skip-git-repo-check", "say hi", timeout=150,
                      options=("--timeout", "15s"))
    assert "Not a directory" not in done.stderr, done.stderr
    assert done.returncode in (1, 124), done.stderr
    allowed = [r for r in sandbox.records() if r["event"] == "net" and r["host"] in ("api.openai.com", "chatgpt.com")]
    assert allowed and {r["rule"] for r in allowed} <= {"network.allow: api.openai.com:443",
                                                          "network.allow: chatgpt.com:443"}


def test_aider_starts_on_a_fresh_account_and_stops_at_authentication(sandbox):
    aider = _agent("aider")
    version = _run_agent(sandbox, "aider", aider, "--version")
    assert version.returncode == 0 and version.stdout.startswith("aider "), version.stderr
    usage = _run_agent(sandbox, "aider", aider, "--help")
    assert usage.returncode == 0 and "usage: aider" in usage.stdout, usage.stderr
    prompt = _run_agent(sandbox, "aider", aider, "--message", "say hi", "--yes-always", "--no-git")
    assert prompt.returncode != 0
    assert "API key" in prompt.stdout + prompt.stderr, prompt.stdout + prompt.stderr
