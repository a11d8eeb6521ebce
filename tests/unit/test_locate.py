"""Where a command lives on the host and which grant shows it (issue 19, item 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxctl.plan.locate import (
    exec_restricted,
    grantable,
    hint_for_exec_error,
    install_root,
    locate,
    session_exec_hint,
    shown,
)

from .test_plan import HOME, plan_for, policy_from_text


@pytest.mark.parametrize(("real", "root"), [
    ("/opt/x/lib/node_modules/@anthropic-ai/claude-code/cli.js", "/opt/x"),
    ("/home/ann/.npm-global/lib/node_modules/@openai/codex/bin/codex.js", "/home/ann/.npm-global"),
    ("/home/ann/.pyenv/versions/3.12.1/bin/aider", "/home/ann/.pyenv/versions/3.12.1"),
    ("/home/ann/.nvm/versions/node/v22.1.0/bin/node", "/home/ann/.nvm/versions/node/v22.1.0"),
    ("/srv/tools/bin/tool", "/srv/tools"),
    ("/srv/tools/tool", "/srv/tools"),
])
def test_install_root(real: str, root: str) -> None:
    assert install_root(real) == root


def test_install_root_of_a_venv_anywhere(tmp_path: Path) -> None:
    venv = tmp_path / "deep" / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert install_root(str(venv / "bin" / "aider")) == str(venv)


def test_locate_follows_a_link_and_names_the_interpreter(tmp_path: Path) -> None:
    node_prefix = tmp_path / "node"
    (node_prefix / "bin").mkdir(parents=True)
    node = node_prefix / "bin" / "node"
    node.write_text("#!/bin/sh\n")
    node.chmod(0o755)
    package = tmp_path / "prefix" / "lib" / "node_modules" / "agent"
    package.mkdir(parents=True)
    (package / "cli.js").write_text("#!/usr/bin/env node\n")
    (package / "cli.js").chmod(0o755)
    (tmp_path / "prefix" / "bin").mkdir()
    os.symlink("../lib/node_modules/agent/cli.js", tmp_path / "prefix" / "bin" / "agent")
    found = locate("agent", f"{tmp_path / 'prefix' / 'bin'}:{node_prefix / 'bin'}", str(tmp_path))
    assert found is not None
    assert found.command == str(tmp_path / "prefix" / "bin" / "agent")
    assert found.real == str(package / "cli.js")
    assert found.roots == (str(tmp_path / "prefix"), str(node_prefix))  # the package's prefix, then node's


def test_nothing_too_broad_is_ever_proposed() -> None:
    for root in ("/", "/home", "/opt", "/usr/local", "/tmp", HOME, "/home"):
        assert not grantable(root, HOME)
    assert grantable("/opt/x", HOME) and grantable(f"{HOME}/.venvs/aider", HOME)


def test_shown_follows_the_deepest_mount() -> None:
    plan = plan_for("default")
    assert shown(plan.mounts, "/usr/bin/python3")
    assert not shown(plan.mounts, "/opt/x/bin/tool")  # not mounted at all
    assert not shown(plan.mounts, f"{HOME}/.venv/bin/x")  # HOME is a private tmpfs
    assert not shown(plan.mounts, "/etc/shadow")  # masked


def test_126_blames_exec_allow_only_when_the_policy_sets_it(tmp_path: Path) -> None:
    assert not exec_restricted(plan_for("default"))
    assert "exec.allow" not in hint_for_exec_error(plan_for("default"), 126, "x", "")
    policy = policy_from_text("version: 1\nextends: default\nexec:\n  allow: [/usr/bin]\n", tmp_path)
    restricted = plan_for(policy)
    assert exec_restricted(restricted)
    assert "exec.allow" in hint_for_exec_error(restricted, 126, "x", "")


def test_a_session_commands_hint_says_what_its_exit_code_means() -> None:
    assert "exec.allow" not in session_exec_hint(127) and "PATH" in session_exec_hint(127)
    assert "exec.allow" in session_exec_hint(126) and "chmod +x" in session_exec_hint(126)
    assert "sandboxctl log" in session_exec_hint(125)
