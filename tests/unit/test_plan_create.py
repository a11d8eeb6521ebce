"""filesystem.create in the planner: what would be made for a first run, and what never is (issue 19, item 4)."""

from __future__ import annotations

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.plan.create import plan_creations

from .test_plan import HOME, WS, plan_for, policy_from_text

FRESH = {}  # an account where no agent ever ran: HOME holds nothing


def creations(plan):
    return [(c.path, c.kind, c.mode, c.content) for c in plan.creations]


def test_claude_code_on_a_fresh_account_plans_its_state_as_claude_makes_it():
    plan = plan_for("claude-code", FRESH)
    assert creations(plan) == [(f"{HOME}/.claude", "dir", None, ""), (f"{HOME}/.claude.json", "file", 0o600, "{}\n")]
    kinds = {m.target: m.kind for m in plan.mounts}
    assert kinds[f"{HOME}/.claude"] == "rw" and kinds[f"{HOME}/.claude.json"] == "rw"
    assert f"{HOME}/.claude" in plan.protect.roots  # planned as a writable root, protections inside


def test_codex_and_aider_on_a_fresh_account():
    assert creations(plan_for("codex", FRESH)) == [(f"{HOME}/.codex", "dir", None, "")]
    aider = plan_for("aider", FRESH)
    assert creations(aider) == [(f"{HOME}/.aider", "dir", None, ""), (f"{HOME}/.aider/caches", "dir", None, "")]
    assert aider.creations[0].reason == f"parent of {HOME}/.aider/caches"


def test_nothing_is_planned_where_the_agent_already_ran():
    files = {f"{HOME}/.claude": "dir", f"{HOME}/.claude.json": "file"}
    assert plan_for("claude-code", files).creations == ()


def test_an_existing_path_of_the_other_kind_is_an_error():
    with pytest.raises(SandboxError, match=r"\.claude\.json: exists as a dir, the policy expects a file"):
        plan_for("claude-code", {f"{HOME}/.claude.json": "dir"})


def test_every_absent_writable_grant_is_named_at_once(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nfilesystem:\n  write: [~/.a, ~/.b, /srv/c]\n", tmp_path)
    with pytest.raises(SandboxError) as info:
        plan_for(policy, FRESH)
    message = info.value.message
    for name in (f"{HOME}/.a", f"{HOME}/.b", "/srv/c"):
        assert name in message
    assert "filesystem.create" in info.value.hint


def _policy(tmp_path, create: str, write: str = "[~/.tool]", extra: str = ""):
    return policy_from_text(f"version: 1\nextends: default\nfilesystem:\n  write: {write}\n  create: {create}\n{extra}",
                            tmp_path)


@pytest.mark.parametrize(("create", "write", "why"), [
    ("[{path: /srv/tool}]", "[/srv/tool]", "outside your home"),
    ("[{path: ~/.other}]", "[~/.tool]", "not granted by filesystem.write"),
    ("[{path: ~/.ssh}]", "[~/.ssh]", "lies under the denied"),
    ("[{path: ~/.tool/.envrc, kind: file}]", "[~/.tool]", "protected"),
    ("[{path: ~/.tool/.git/hooks}]", "[~/.tool]", "protected"),
    ("[{path: ~/.tool/hooks}]", "[~/.tool]", "protected"),
    ("[{path: ~/.tool, content: x}]", "[~/.tool]", "content is for a file"),
    ("[{path: ~/.local/state/sandboxctl/x}]", "[~/.local]", "denied"),
])
def test_what_is_never_made(tmp_path, create: str, write: str, why: str):
    policy = _policy(tmp_path, create, write, extra="  protect: [~/.tool/hooks]\n")
    with pytest.raises(SandboxError, match=why):
        plan_for(policy, FRESH)


def test_all_refusals_are_named_at_once(tmp_path):
    policy = _policy(tmp_path, "[{path: /srv/x}, {path: ~/.y}]", "[/srv/x, ~/.z]")
    with pytest.raises(SandboxError) as info:
        plan_for(policy, FRESH)
    assert "/srv/x: outside your home" in info.value.message and f"{HOME}/.y: not granted" in info.value.message


def test_a_path_beneath_a_write_grant_is_made_with_its_parents(tmp_path):
    policy = _policy(tmp_path, '[{path: ~/.tool/cache/v1, kind: file, mode: "0640", content: "{}"}]',
                     "[~/.tool]")
    plan = plan_for(policy, FRESH)
    assert creations(plan) == [(f"{HOME}/.tool", "dir", None, ""), (f"{HOME}/.tool/cache", "dir", None, ""),
                               (f"{HOME}/.tool/cache/v1", "file", 0o640, "{}")]


def test_mode_must_be_quoted_octal(tmp_path):
    from sandboxctl.policy.errors import PolicyError

    with pytest.raises(PolicyError, match="expected a string"):
        _policy(tmp_path, "[{path: ~/.tool, mode: 0700}]")
    with pytest.raises(PolicyError, match="does not match"):
        _policy(tmp_path, '[{path: ~/.tool, mode: "rwx"}]')


def test_planning_is_pure_the_parent_must_be_a_directory():
    with pytest.raises(SandboxError, match="not a directory"):
        plan_creations(({"path": f"{HOME}/f/x"},), [f"{HOME}/f"], [], lambda p: None, HOME,
                       lambda p: {HOME: "dir", f"{HOME}/f": "file"}.get(p, "missing"), lambda p: p)


def test_workspace_paths_are_not_made():
    with pytest.raises(SandboxError, match="outside your home"):
        plan_creations(({"path": "/srv/ws/.cache"},), ["/srv/ws"], [], lambda p: None, HOME, lambda p: "missing",
                       lambda p: p)
    assert WS.startswith(HOME)  # (a workspace inside HOME is HOME's, and follows the same rules)
