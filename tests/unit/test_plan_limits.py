"""Plans bubblewrap could not run: too many options for it (thousands of repositories), mounts
whose targets the sandbox's user cannot reach. Either the plan changes and says so, or it fails
before anything starts; never a launch that dies half-way."""

from __future__ import annotations

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.launch import bwrap
from sandboxctl.plan import mount_limits as build
from sandboxctl.plan.model import Mount
from tests.unit.test_plan import BASE_FILES, WS, fake_facts, plan_for, policy_from_text


def repositories(count: int) -> dict[str, str]:
    files = {}
    for n in range(count):
        git_dir = f"{WS}/r{n}/.git"
        files.update({f"{WS}/r{n}": "dir", git_dir: "dir", f"{git_dir}/config": "file",
                      f"{git_dir}/hooks": "dir", f"{git_dir}/info": "dir"})
    return files


@pytest.mark.parametrize("mount", [
    Mount("proc", "/proc"), Mount("dev", "/dev"), Mount("tmpfs", "/t"), Mount("ro", "/a", "/b"),
    Mount("rw", "/a", "/b"), Mount("symlink", "/l", "usr/l"), Mount("mask-dir", "/d"), Mount("mask-file", "/f"),
    Mount("data-file", "/x", "ca"), Mount("secret-file", "/run/secrets/k", "secret:k"),
])
def test_the_planners_word_count_is_what_bwrap_renders(mount):
    assert build.BWRAP_WORDS[mount.kind] == len(bwrap.mount_args(mount, "/empty", {"k": 5}, {"/x": 6}))
    assert set(build.BWRAP_WORDS) == {"proc", "dev", "tmpfs", "ro", "rw", "symlink", "mask-dir", "mask-file",
                                      "data-file", "secret-file"}


def test_the_words_around_the_mounts_fit_the_allowance():
    plan = plan_for()
    fds = bwrap.LaunchFds(seccomp=10, control=11, stderr=12, empty_file="/empty", secrets={}, data={})
    around = len(bwrap.render(plan, fds)) - sum(len(bwrap.mount_args(m, "/empty")) for m in plan.mounts)
    assert around < build.BWRAP_FIXED_WORDS


def test_a_few_hundred_repositories_keep_their_binds():
    plan = plan_for(files=repositories(300))
    assert sum(m.reason == "protected" for m in plan.mounts) == 900
    assert not any("left out" in note for note in plan.notes)


def test_thousands_of_repositories_leave_the_binds_out_and_say_so():
    plan = plan_for(files=repositories(3000))
    assert not any(m.reason == "protected" for m in plan.mounts)
    assert plan.protect.mediated and len(plan.protect.gitdirs) == 3000
    assert len(plan.protect.record) >= 9000  # the end-of-run check still covers every entry
    assert any("9000 read-only binds are left out" in note for note in plan.notes)
    assert build.bwrap_words(list(plan.mounts)) <= build.BWRAP_MAX_ARGS


def test_without_required_landlock_the_binds_are_the_kernel_wall_and_the_plan_fails(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nlandlock: best-effort\n", tmp_path)
    with pytest.raises(SandboxError) as caught:
        plan_for(policy, files=repositories(3000))
    assert "more than bubblewrap's limit of 9000" in str(caught.value)
    assert "3000 git directories" in str(caught.value)
    assert "landlock: required" in (caught.value.hint or "")


def test_masks_and_binds_the_sandbox_cannot_reach_are_left_out():
    files = {**BASE_FILES, f"{WS}/theirs": "dir", f"{WS}/theirs/p": "dir", f"{WS}/theirs/p/.git": "dir",
             f"{WS}/theirs/p/.git/hooks": "dir", f"{WS}/mine": "dir", f"{WS}/mine/.git": "dir",
             f"{WS}/mine/.git/hooks": "dir"}
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.policy.discover import load_named

    facts = fake_facts(files)._replace(closed_to_sandbox=lambda path: path.startswith(f"{WS}/theirs/"))
    plan = build_plan(load_named("default").policy, Invocation(command=("true",), workspace=WS, run_id="r1"),
                      facts)
    targets = {m.target for m in plan.mounts}
    assert f"{WS}/mine/.git/hooks" in targets
    assert not any(t.startswith(f"{WS}/theirs/") for t in targets)
    assert not any(r.path.startswith(f"{WS}/theirs/") for r in plan.landlock.paths)
    assert any("cannot enter" in note for note in plan.notes)
