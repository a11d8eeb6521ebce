"""paths.others_control: whether a user other than us and root could change what a path names.

Real directories under tmp_path (ours, private); another user's symlink only when the test runs
as root (lchown needs it).
"""

from __future__ import annotations

import os

import pytest

from sandboxctl import paths
from sandboxctl.supervise import session_registry as registry


def test_a_private_chain_and_a_sticky_tmp_are_nobody_elses(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert paths.others_control(str(tmp_path / "a" / "b")) is None
    assert paths.others_control(str(tmp_path / "a" / "not-yet" / "c")) is None  # ours to make
    assert paths.others_control("/tmp") is None  # world-writable, but sticky


def test_a_directory_others_may_write_anywhere_on_the_way_is_named(tmp_path):
    (tmp_path / "shared" / "mine").mkdir(parents=True)
    (tmp_path / "shared").chmod(0o777)
    try:
        assert paths.others_control(str(tmp_path / "shared" / "mine")) == f"{tmp_path}/shared may be written by others"
        # through a symlink of ours, or "..": the directory it leads through is judged all the same
        (tmp_path / "link").symlink_to(tmp_path / "shared" / "mine")
        assert "shared may be written by others" in paths.others_control(str(tmp_path / "link"))
        (tmp_path / "ours").mkdir()
        assert "shared may be written by others" in paths.others_control(str(tmp_path / "link" / ".." / "mine"))
        assert paths.others_control(str(tmp_path / "ours" / ".." / "ours")) is None
    finally:
        (tmp_path / "shared").chmod(0o755)


def test_a_directory_writable_by_our_own_private_group_only_is_ours(tmp_path):
    """umask 002 with a user private group leaves ~/.local group-writable: that group is us."""
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid())
    others = [p.pw_name for p in pwd.getpwall() if p.pw_gid == group.gr_gid and p.pw_name != me]
    if group.gr_name != me or not set(group.gr_mem) <= {me} or others:
        pytest.skip("this user's primary group is not a private one")
    (tmp_path / "local" / "state").mkdir(parents=True)
    (tmp_path / "local").chmod(0o775)
    assert paths.others_control(str(tmp_path / "local" / "state")) is None
    (tmp_path / "local").chmod(0o777)
    assert paths.others_control(str(tmp_path / "local" / "state")) == f"{tmp_path}/local may be written by others"
    (tmp_path / "local").chmod(0o755)


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's symlink needs root")
def test_another_users_symlink_is_named(tmp_path):
    (tmp_path / "target").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    os.lchown(link, 65534, 65534)
    assert paths.others_control(str(link / "x")) == f"{link} is another user's symlink"


def test_a_relative_or_shared_tmpdir_is_never_the_runtime_dirs_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for tmpdir in ("rel", "./x", "../up"):
        monkeypatch.setenv("TMPDIR", tmpdir)
        assert paths.runtime_dir() == registry.runtime_dir() == f"/tmp/sandboxctl-{os.getuid()}"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        monkeypatch.setenv("TMPDIR", str(shared))
        assert paths.runtime_dir() == f"/tmp/sandboxctl-{os.getuid()}"
        private = shared / "rt"
        private.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(private))
        assert paths.runtime_dir() == f"/tmp/sandboxctl-{os.getuid()}"
    finally:
        shared.chmod(0o755)


def test_a_runtime_dir_written_with_dots_is_spelt_as_the_directory_it_names(monkeypatch, tmp_path):
    private = tmp_path / "rt"
    private.mkdir(mode=0o700)
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", f"{tmp_path}/other/../rt/")
    assert paths.runtime_dir() == registry.runtime_dir() == f"{os.path.realpath(private)}/sandboxctl"


def test_the_head_start_cache_is_refused_behind_a_shared_directory(monkeypatch, tmp_path):
    from sandboxctl.launch import headstart

    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(shared / "state"))
    assert headstart.cache_dir() == f"{shared}/state/sandboxctl/cache"
    shared.chmod(0o777)
    try:
        assert headstart.cache_dir() is None
    finally:
        shared.chmod(0o755)


def test_a_group_another_user_has_as_primary_group_is_not_ours(tmp_path, monkeypatch):
    """`useradd -g me mate`: mate's primary group is our private one, yet gr_mem lists only
    supplementary members; a 0775 directory of ours was judged ours, and mate renamed its entries."""
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid())
    private = grp.struct_group((me.pw_name, "x", os.getgid(), []))
    monkeypatch.setattr(grp, "getgrgid", lambda gid: private)
    mate = pwd.struct_passwd(("mate", "x", 4242, os.getgid(), "", "/nonexistent", "/bin/sh"))
    (tmp_path / "local" / "state").mkdir(parents=True)
    (tmp_path / "local").chmod(0o775)
    try:
        monkeypatch.setattr(pwd, "getpwall", lambda: [me])
        assert paths.others_control(str(tmp_path / "local" / "state")) is None
        monkeypatch.setattr(pwd, "getpwall", lambda: [me, mate])
        assert paths.others_control(str(tmp_path / "local" / "state")) == f"{tmp_path}/local may be written by others"
    finally:
        (tmp_path / "local").chmod(0o755)
