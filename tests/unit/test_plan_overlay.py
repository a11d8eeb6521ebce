"""`workspace: overlay` in the plan: the workspace mount, its layer, and what may never happen."""

from __future__ import annotations

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.launch import bwrap
from tests.unit.test_plan import HOME, WS, mounts, plan_for, policy_from_text

STATE = f"{HOME}/.local/state/sandboxctl"


def test_overlay_mounts_the_workspace_as_the_overlay_and_plans_its_layer():
    """The workspace is bound like rw: in bubblewrap's namespace its path holds the overlay."""
    plan = plan_for(workspace_mode="overlay")
    assert ("rw", WS) in mounts(plan)
    assert plan.overlay.lower == WS
    assert plan.overlay.layer_dir == f"{STATE}/workspaces/r1"
    assert plan.overlay.upper == f"{STATE}/workspaces/r1/upper"
    argv = bwrap.render(plan, bwrap.LaunchFds(3, 4, 5, "/empty"))
    i = argv.index(WS)
    assert argv[i - 1:i + 2] == ["--bind", WS, WS]  # the overlay is mounted on the path itself


def test_the_policy_key_does_the_same_as_the_flag(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nworkspace: overlay\n", tmp_path)
    assert plan_for(policy).overlay is not None
    assert plan_for().overlay is None


def test_overlay_workspace_is_protected_as_rw_is_the_supervisor_performing_each_change():
    """The same wall as rw: read-only to Landlock, every change mediated (in the sandbox's own
    view, so in the overlay)."""
    plan, rw = plan_for(workspace_mode="overlay"), plan_for()
    rule = next(r for r in plan.landlock.paths if r.path == WS)
    assert rule == next(r for r in rw.landlock.paths if r.path == WS)
    assert plan.protect.roots == rw.protect.roots and WS in plan.protect.roots
    assert plan.protect.mediated and plan.seccomp.mediate
    assert plan.judge_write(f"{WS}/src/a.py")[0] is True


def test_no_approval_may_open_anything_in_an_overlay_workspace_on_the_host():
    """An approved open is made by the supervisor on the host: in an overlay workspace it would
    bypass the layer. Protected paths inside stay read-only and are never approvable."""
    plan = plan_for(files={f"{WS}/.git": "dir", f"{WS}/.git/hooks": "dir", f"{WS}/.git/config": "file"},
                    workspace_mode="overlay")
    verdict = plan.write_verdict(f"{WS}/.git/hooks/pre-commit")
    assert not verdict.inside and not verdict.approvable
    assert "overlay workspace" in verdict.rule
    assert ("ro", f"{WS}/.git/hooks") in mounts(plan)


def test_a_write_grant_of_the_workspace_path_is_the_overlay_too(tmp_path):
    policy = policy_from_text(f"version: 1\nextends: default\nfilesystem:\n  write: ['{WS}']\n", tmp_path)
    plan = plan_for(policy, workspace_mode="overlay")
    assert [k for k, t in mounts(plan) if t == WS] == ["rw"] and plan.overlay is not None


def test_overlay_under_gvisor_is_refused_with_the_reason():
    with pytest.raises(SandboxError) as info:
        plan_for(workspace_mode="overlay", backend="gvisor")
    assert "gVisor" in info.value.message and "--backend bwrap" in info.value.hint


def test_a_state_dir_inside_the_workspace_is_refused():
    """overlayfs cannot keep a layer inside its own lower directory (and the mask would hide it)."""
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named
    from tests.unit.test_plan import BASE_FILES, fake_facts

    invocation = Invocation(command=("true",), workspace=HOME, run_id="r1", workspace_mode="overlay")
    with pytest.raises(SandboxError) as info:
        build_plan(load_named("default").policy, invocation, fake_facts(BASE_FILES))
    assert "overlap" in info.value.message


def test_overlay_on_a_policy_without_workspace_asks_for_confirmation(tmp_path):
    policy = policy_from_text("version: 1\nextends: base\n", tmp_path)
    plan = plan_for(policy, workspace_mode="overlay")
    assert plan.overlay is not None
    assert any("--overlay shows the workspace" in c for c in plan.confirmations)
