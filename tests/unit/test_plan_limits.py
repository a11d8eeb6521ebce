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
    plan = plan_for(files=repositories(1100))
    assert not any(m.reason == "protected" for m in plan.mounts)
    assert plan.protect.mediated and len(plan.protect.gitdirs) == 1100
    assert len(plan.protect.record) >= 3300  # the end-of-run check still covers every entry
    assert any("3300 read-only binds are left out" in note for note in plan.notes)
    assert build.bwrap_words(list(plan.mounts)) <= build.BWRAP_MAX_ARGS


def test_binds_left_out_need_landlock_to_refuse_truncation(tmp_path):
    """Without the binds, a truncate(2) or O_TRUNC open the supervisor continued (a racing thread
    rewrites its path) is refused by Landlock alone, which handles truncation from ABI 3."""
    plan = plan_for(files=repositories(1100))
    assert plan.protect.binds_left_out and plan.landlock.minimum_abi >= 3
    small = plan_for(files=repositories(10))
    assert not small.protect.binds_left_out and small.landlock.minimum_abi == 1


def test_acls_decide_whether_a_directory_is_closed(tmp_path):
    """A 0700 directory of another user is open to us when its ACL names our uid or group; one
    naming another uid, or denying our group, stays closed (facts._acl_searches, the kernel's order)."""
    import os
    import struct

    from sandboxctl.plan.facts import _acl_searches

    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    st = os.stat(directory)

    def acl(*entries):
        os.setxattr(directory, "system.posix_acl_access", struct.pack("<I", 2) + b"".join(
            struct.pack("<HHI", tag, perm, who) for tag, perm, who in sorted(entries)))

    none = 0xFFFFFFFF
    base = ((1, 7, none), (4, 0, none), (0x20, 0, none))
    assert _acl_searches(str(directory), st, 4242, {4242}) is None  # no ACL: the mode bits say
    acl(*base, (2, 5, 4242), (0x10, 5, none))
    assert _acl_searches(str(directory), st, 4242, {1}) is True
    assert _acl_searches(str(directory), st, 4243, {1}) is False
    acl(*base, (2, 5, 4242), (0x10, 4, none))  # the mask takes the search bit away
    assert _acl_searches(str(directory), st, 4242, {1}) is False
    acl(*base, (8, 1, 77), (0x10, 7, none))
    assert _acl_searches(str(directory), st, 4243, {77}) is True
    acl((1, 7, none), (4, 0, none), (8, 0, 77), (0x10, 7, none), (0x20, 1, none))  # a group entry denies
    assert _acl_searches(str(directory), st, 4243, {77}) is False
    assert _acl_searches(str(directory), st, 4243, {78}) is True  # others may


def test_truncate_is_granted_with_write_only():
    """Landlock's rule is the inode's: TRUNCATE on a read-only bind would reach a hardlink of a bound
    file on a writable mount, or the same directory through a host bind, where no mount refuses it."""
    plan = plan_for(files={**repositories(1), "/home/ann/.gitconfig": "file"})
    from sandboxctl.launch import landlock_rights

    rights = {r.path: r.access for r in plan.landlock.paths}
    assert rights["/usr"] == ("read", "execute")
    assert f"{WS}/r0/.git/config" in rights
    truncate, write = landlock_rights.FS["TRUNCATE"][0], landlock_rights.FS["WRITE_FILE"][0]
    for path, mask in landlock_rights.shim_config(plan.landlock)["paths"]:
        assert not mask & truncate or mask & write, path


def test_a_directory_of_our_own_is_never_closed(tmp_path):
    """Whatever its mode: the sandbox, its owner, may chmod it open, so what lies below keeps its masks."""
    from sandboxctl.plan.facts import _closed_to_sandbox

    shut = tmp_path / "shut"
    shut.mkdir(mode=0o000)
    try:
        assert not _closed_to_sandbox()(f"{shut}/.env")
    finally:
        shut.chmod(0o700)


def test_xattr_calls_are_refused_and_the_newest_are_known_by_number():
    from sandboxctl.launch import seccomp
    from sandboxctl.plan.syscalls import baseline_rules

    refused = {r.syscall for r in baseline_rules() if r.action == "errno:EOPNOTSUPP"}
    assert {"setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr", "fremovexattr",
            "removexattrat"} <= refused
    pyseccomp = pytest.importorskip("pyseccomp")
    assert seccomp.syscall_number(pyseccomp, "setxattrat") == 463
    assert seccomp.syscall_number(pyseccomp, "removexattrat") == 466
    assert seccomp.syscall_number(pyseccomp, "open_tree_attr") == 467
    assert "open_tree_attr" in {r.syscall for r in baseline_rules() if r.action == "errno:EPERM"}
    assert seccomp.syscall_number(pyseccomp, "setxattr") == pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "setxattr")


def test_a_mask_another_spelling_passes_fails_the_plan():
    masks = [Mount("mask-file", "/ws/.env", reason="filesystem.deny"), Mount("rw", "/ws", "/ws", "workspace")]
    build.masks_cover_every_spelling(masks, lambda path: None)
    seen = []
    build.masks_cover_every_spelling(masks[1:], lambda path: seen.append(path) or "/ws/.ENV")
    assert seen == []  # only masks are asked about
    with pytest.raises(SandboxError, match=r"case-insensitive file system where /ws/\.ENV reaches it"):
        build.masks_cover_every_spelling(masks, lambda path: "/ws/.ENV" if path == "/ws/.env" else None)


def test_inode_flags_are_refused_by_request_and_file_setattr_by_number():
    """chattr's requests (FS_IOC_SETFLAGS in both sizes, FS_IOC_FSSETXATTR) and file_setattr: +F
    would make a directory case-insensitive, where .GIT names .git."""
    import os

    from sandboxctl.launch import seccomp
    from sandboxctl.plan.syscalls import LOW32, baseline_rules, file_attribute_requests

    assert set(file_attribute_requests("x86_64")) == {0x40086602, 0x40046602, 0x401C5820}
    assert set(file_attribute_requests("ppc64le")) == {0x80086602, 0x80046602, 0x801C5820}
    rules = baseline_rules()
    refused = {r.conditions[0].value for r in rules if r.syscall == "ioctl" and r.action == "errno:EOPNOTSUPP"
               and r.conditions[0].arg == 1 and r.conditions[0].mask == LOW32}
    assert refused == set(file_attribute_requests(os.uname().machine))
    assert "file_setattr" in {r.syscall for r in rules if r.action == "errno:EOPNOTSUPP"}
    pyseccomp = pytest.importorskip("pyseccomp")
    assert seccomp.syscall_number(pyseccomp, "file_setattr") == 469


def test_without_required_landlock_the_binds_are_the_kernel_wall_and_the_plan_fails(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nlandlock: best-effort\n", tmp_path)
    with pytest.raises(SandboxError) as caught:
        plan_for(policy, files=repositories(1100))
    assert "more than bubblewrap's limit of 9000" in str(caught.value)
    assert "1100 git directories" in str(caught.value)
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
