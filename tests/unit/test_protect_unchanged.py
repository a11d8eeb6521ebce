"""The end-of-run check trusts identity and times (inode, size, mtime, ctime) to skip hashing and
listing what did not change (a venv inside the workspace is 5 000 entries twice a run). Every way
of changing a recorded file that keeps some of those the same must still be found — and put back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxctl.protect import snapshot
from sandboxctl.protect.store import unchanged

ORIGINAL = "import os\nVALUE = 1\n"
EVIL = "import os\nVALUE = 2\n"  # the same size


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    site = tmp_path / "ws" / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "mod.py").write_text(ORIGINAL)
    (site / "pkg").mkdir()
    (site / "pkg" / "__init__.py").write_text("")
    return tmp_path / "ws" / ".venv"


@pytest.fixture(params=["fresh", "reused"])
def launches(request) -> int:
    """A first launch records everything; a later one reuses the kept record (store.load_kept)."""
    return 1 if request.param == "fresh" else 2


def _take(tmp_path: Path, venv: Path, launches: int = 2) -> snapshot.Snapshot:
    for n in range(launches):
        snap = snapshot.Snapshot(tmp_path / "state", f"r{n}")
        snap.take((str(venv),), ())
        if n < launches - 1:
            assert snap.check() == []
    return snap


def _same_times(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # utimensat: mtime back; the ctime is now


def _check(snap: snapshot.Snapshot, mod: Path) -> list[tuple[str, str, str]]:
    changes = snap.check()
    return [(c.path, c.change, c.action) for c in changes if c.path == str(mod)]


def rewrite_in_place(mod: Path) -> None:
    st = mod.stat()
    with open(mod, "r+") as handle:
        handle.write(EVIL)
    _same_times(mod, st)


def rename_over(mod: Path) -> None:
    st = mod.stat()
    other = mod.with_name("other.py")
    other.write_text(EVIL)
    _same_times(other, st)
    os.replace(other, mod)


def replace_reusing_the_inode(mod: Path) -> None:
    """unlink, then a new file (ext4 and tmpfs hand the freed inode number out again)."""
    st = mod.stat()
    mod.unlink()
    mod.write_text(EVIL)
    _same_times(mod, st)


def hardlink_swap(mod: Path) -> None:
    st = mod.stat()
    outside = mod.parent.parent.parent.parent / "evil.py"
    outside.write_text(EVIL)
    _same_times(outside, st)
    mod.unlink()
    os.link(outside, mod)


def write_through_a_hardlink(mod: Path) -> None:
    """A hardlink made before the run elsewhere (uv links venvs to its cache): written there."""
    st = mod.stat()
    with open(mod.parent.parent.parent.parent / "cache-link.py", "r+") as handle:
        handle.write(EVIL)
    _same_times(mod, st)


def symlink_in_place(mod: Path) -> None:
    outside = mod.parent.parent.parent.parent / "evil.py"
    outside.write_text(EVIL)
    mod.unlink()
    mod.symlink_to(outside)


def chmod_only(mod: Path) -> None:
    mod.chmod(0o777)


@pytest.mark.parametrize("attack", [rewrite_in_place, rename_over, replace_reusing_the_inode, hardlink_swap,
                                    write_through_a_hardlink, symlink_in_place, chmod_only])
def test_a_changed_file_is_found_and_put_back(tmp_path, venv, attack, launches):
    mod = venv / "lib" / "site-packages" / "mod.py"
    os.link(mod, tmp_path / "ws" / "cache-link.py")
    mod.chmod(0o644)
    snap = _take(tmp_path, venv, launches)
    attack(mod)
    kind = "replaced" if attack is symlink_in_place else "modified"
    assert _check(snap, mod) == [(str(mod), kind, "restored")]
    assert mod.read_text() == ORIGINAL and not mod.is_symlink()
    assert mod.stat().st_mode & 0o777 == 0o644


def test_a_file_planted_in_a_directory_is_found_even_if_the_directory_times_are_touched_back(tmp_path, venv,
                                                                                            launches):
    snap = _take(tmp_path, venv, launches)
    pkg = venv / "lib" / "site-packages" / "pkg"
    st = pkg.stat()
    (pkg / "planted.py").write_text("print('owned')\n")
    _same_times(pkg, st)
    changes = [(c.path, c.change, c.action) for c in snap.check()]
    assert (str(pkg / "planted.py"), "created", "removed") in changes
    assert not (pkg / "planted.py").exists()


def test_a_directory_renamed_away_and_made_again_is_found(tmp_path, venv, launches):
    snap = _take(tmp_path, venv, launches)
    pkg = venv / "lib" / "site-packages" / "pkg"
    pkg.rename(tmp_path / "away")
    pkg.mkdir()
    (pkg / "__init__.py").write_text("print('owned')\n")
    changes = {(c.path, c.change) for c in snap.check()}
    assert (str(pkg / "__init__.py"), "modified") in changes
    assert (pkg / "__init__.py").read_text() == ""


def test_nothing_changed_is_nothing_reported_and_nothing_hashed(tmp_path, venv, monkeypatch, launches):
    snap = _take(tmp_path, venv, launches)
    hashed = []
    monkeypatch.setattr(snap.store, "digest", lambda path, st: hashed.append(path))
    assert snap.check() == []
    assert hashed == []


def test_unchanged_needs_every_field_and_a_record_of_this_version():
    st = os.stat(__file__)
    record = {"kind": "file", "mode": st.st_mode & 0o7777, "dev": st.st_dev, "ino": st.st_ino,
              "ctime": st.st_ctime_ns, "size": st.st_size, "mtime": st.st_mtime_ns}
    assert unchanged(record, st)
    for key, value in (("ctime", 1), ("size", 0), ("mtime", 1), ("ino", 1), ("dev", 1), ("mode", 0o777),
                       ("kind", "dir"), ("kind", "symlink")):
        assert not unchanged({**record, key: value}, st), key
    assert not unchanged({k: v for k, v in record.items() if k != "ctime"}, st)  # an older journal: compared


@pytest.mark.parametrize("attack", [rewrite_in_place, replace_reusing_the_inode, write_through_a_hardlink,
                                    symlink_in_place])
def test_a_change_between_launches_is_recorded_afresh_not_taken_from_the_kept_record(tmp_path, venv, attack):
    """The user changes the venv between two runs (pip install): the next launch records the new
    content (it is what the run must find again), and its check puts back no stale one."""
    mod = venv / "lib" / "site-packages" / "mod.py"
    os.link(mod, tmp_path / "ws" / "cache-link.py")
    _take(tmp_path, venv, 1).check()
    attack(mod)
    now = mod.read_text()
    snap = _take(tmp_path, venv, 1)
    assert snapshot.Snapshot(tmp_path / "state", "r9").check() == []  # (nothing recorded: nothing to find)
    st = mod.stat()
    mod.unlink()
    mod.write_text("#" * (st.st_size - 1) + "\n")  # the run changes it (same size, same times)
    _same_times(mod, st)
    assert [c.path for c in snap.check()] == [str(mod)]
    assert mod.read_text() == now  # what the user had made before the run, not the older kept record


@pytest.mark.parametrize("launches", [1, 2])
def test_a_record_cut_short_says_so_and_a_whole_one_does_not(tmp_path, venv, monkeypatch, launches):
    """Past MAX_ENTRIES a protected tree is recorded in part; incomplete() tells the mediator,
    which then writes no file of more than one name (mediate_judge: the left-out files have no
    identity in inodes()). On a fresh and on a reused record."""
    assert not _take(tmp_path / "whole", venv, launches).incomplete()
    for n in range(8):
        (venv / "lib" / "site-packages" / f"extra{n}.py").write_text("")
    monkeypatch.setattr(snapshot, "MAX_ENTRIES", 5)
    cut = _take(tmp_path / "cut", venv, launches)
    assert cut.incomplete()
    assert len(cut.inodes()) < 5 + 8 + 4


def test_a_second_run_never_puts_back_what_it_recorded_while_another_run_had_changed_it(tmp_path):
    """Red team rt4: run A (gVisor: the sandbox can write) changes .git/config; run B launches
    then, so B's record holds A's change; A puts the original back at its end; B then found the
    file "modified" and restored A's hostile bytes. What an earlier live run recorded otherwise
    is now taken from its record: B compares with the state before A, and finds nothing."""
    config = tmp_path / "ws" / ".git" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("[core]\n")
    hooks = config.parent / "hooks"
    hooks.mkdir()
    state = tmp_path / "state"
    first = snapshot.Snapshot(state, "a")
    first.take((str(config), str(hooks)), ())
    config.write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")  # A's sandbox
    (hooks / "pre-commit").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    second = snapshot.Snapshot(state, "b")
    second.take((str(config), str(hooks)), ())
    assert second.contested == {str(config), str(hooks / "pre-commit")}
    assert {(c.path, c.action) for c in first.check()} >= {(str(config), "restored"),
                                                           (str(hooks / "pre-commit"), "removed")}
    assert config.read_text() == "[core]\n"
    assert second.check() == []  # the state before the first run: what B took from A's record
    assert config.read_text() == "[core]\n" and not (hooks / "pre-commit").exists()


def test_a_run_alone_still_puts_back_what_its_sandbox_changed(tmp_path):
    """The rule above reads only live runs' journals: alone, or after the other run ended, a
    change is put back as before."""
    config = tmp_path / "ws" / ".git" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("[core]\n")
    state = tmp_path / "state"
    done = snapshot.Snapshot(state, "a")
    done.take((str(config),), ())
    assert done.check() == []
    run = snapshot.Snapshot(state, "b")
    run.take((str(config),), ())
    assert run.contested == set()
    config.write_text("[core]\n\tfsmonitor = x\n")
    assert [(c.path, c.action) for c in run.check()] == [(str(config), "restored")]
    assert config.read_text() == "[core]\n"


def test_a_file_left_out_of_a_record_cut_short_with_another_name_is_found(tmp_path, venv, monkeypatch):
    """gVisor mediates nothing: a left-out file with another name (a hardlink) beneath a writable
    grant could be rewritten through it, unseen by a check that never recorded it (red team rt5),
    so the launch refuses it (lifecycle). Found at any depth of what was left out; a left-out file
    of one name, a recorded hardlink, or a whole record find nothing."""
    site = venv / "lib" / "site-packages"
    deep = site / "zzz" / "deeper"
    deep.mkdir(parents=True)
    for n in range(8):
        (site / f"extra{n}.py").write_text("")
    (deep / "linked.pth").write_text("")
    monkeypatch.setattr(snapshot, "MAX_ENTRIES", 5)
    assert _take(tmp_path / "none", venv, 1).left_out_linked() is None  # left out, but of one name each
    os.link(deep / "linked.pth", tmp_path / "cache-link")
    assert _take(tmp_path / "cut", venv, 1).left_out_linked() == str(deep / "linked.pth")
    monkeypatch.setattr(snapshot, "MAX_ENTRIES", 20_000)
    whole = _take(tmp_path / "whole", venv, 1)
    assert not whole.incomplete() and whole.left_out_linked() is None


def _two_runs(tmp_path):
    gitdir = tmp_path / "ws" / ".git"
    gitdir.mkdir(parents=True)
    (gitdir / "config").write_text("[core]\n")
    state = tmp_path / "state"
    paths = ((str(gitdir / "config"),), (str(gitdir / "commondir"),))
    return gitdir, state, paths


@pytest.mark.parametrize("again", ["same bytes", "other bytes"])
def test_what_the_first_run_put_away_the_second_runs_sandbox_cannot_make_again(tmp_path, again):
    """Red team rt5 (two gVisor runs, reproduced as root: the host's git ran the planted config):
    A's sandbox makes .git/commondir (a name that did not exist: nothing holds it under gVisor);
    B launches; A removes it at its end; B's sandbox makes it again. B's check only reported what
    A had recorded otherwise — and found nothing at all when it was made byte for byte again — so
    it stayed. B now puts back the state before A: commondir is removed."""
    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    first = snapshot.Snapshot(state, "a")
    first.take(existing, absent)
    (gitdir / "commondir").write_text("../evil\n")  # A's sandbox
    second = snapshot.Snapshot(state, "b")
    second.take(existing + absent, ())  # B's plan found commondir: an existing entry to record
    assert [(c.path, c.action) for c in first.check()] == [(str(gitdir / "commondir"), "removed")]
    (gitdir / "commondir").write_text("../evil\n" if again == "same bytes" else "../other\n")  # B's sandbox
    assert [(c.path, c.action) for c in second.check()] == [(str(gitdir / "commondir"), "removed")]
    assert not (gitdir / "commondir").exists()


def test_a_run_killed_takes_the_earlier_record_into_its_recovery(tmp_path):
    """B's journal holds what it took from A: killed, B's recovery puts back the state before A."""
    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    first = snapshot.Snapshot(state, "a")
    first.take(existing, absent)
    (gitdir / "commondir").write_text("../evil\n")
    second = snapshot.Snapshot(state, "b")
    second.take(existing + absent, ())
    first.check()
    (gitdir / "commondir").write_text("../evil\n")  # B's sandbox, then B's supervisor is killed
    changes = snapshot.recover(state, lambda pid: False)
    assert [(c.path, c.action, c.run) for c in changes] == [(str(gitdir / "commondir"), "removed", "b")]


def test_what_changed_under_an_earlier_runs_whole_wall_is_not_taken_from_it(tmp_path):
    """An earlier run whose kernel wall was whole (bubblewrap) could not change what it recorded:
    what differs was changed outside (the user's own git config), and a later gVisor run keeps its
    own record of it — puts back the user's version, not the older one."""
    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    config = gitdir / "config"
    first = snapshot.Snapshot(state, "a")
    first.take(existing, absent)
    first.mark(wall_whole=True)
    config.write_text("[core]\n[remote \"origin\"]\n\turl = x\n")  # the user, outside
    second = snapshot.Snapshot(state, "b")
    second.take(existing, absent)
    assert second.contested == set()
    config.write_text("[core]\n\tfsmonitor = x\n")  # B's sandbox (gVisor)
    assert [(c.path, c.action) for c in second.check()] == [(str(config), "restored")]
    assert "origin" in config.read_text()
    assert [(c.path, c.action) for c in first.check()] == [(str(config), "reported")]


def test_two_runs_protected_json_keys_end_as_before_the_first(tmp_path):
    """Red team rt5 (two claude-code runs under bubblewrap, reproduced as root): A's sandbox adds
    an MCP server to ~/.claude.json (writable: no kernel wall holds the keys); B launches and
    records it; A puts mcpServers back; B then "restored" A's server, which claude would start
    outside. B now takes A's record of the keys: the server is gone, and the other keys stay."""
    import json

    claude = tmp_path / "home" / ".claude.json"
    claude.parent.mkdir()
    claude.write_text(json.dumps({"mcpServers": {}, "other": 1}))
    state = tmp_path / "state"
    keys = ((str(claude), "mcpServers"), (str(claude), "projects.*.mcpServers"))
    first = snapshot.Snapshot(state, "a")
    first.take((), (), keys)
    first.mark(wall_whole=True)  # bubblewrap: the keys are still writable
    evil = {"mcpServers": {"evil": {"command": "sh"}}, "projects": {"/w": {"mcpServers": {"x": {}}}}, "other": 2}
    claude.write_text(json.dumps(evil))  # A's sandbox
    second = snapshot.Snapshot(state, "b")
    second.take((), (), keys)
    second.mark(wall_whole=True)
    assert first.check() and json.loads(claude.read_text())["mcpServers"] == {}
    assert second.check() == []
    assert json.loads(claude.read_text()) == {"mcpServers": {}, "projects": {"/w": {}}, "other": 2}


def _reused(journal: Path) -> None:
    """The journal's pid is another process now (a killed supervisor's pid reused: pid_max may be
    32 768): this process stands in for the new owner, so the journal's start is made another."""
    import marshal

    data = marshal.loads(journal.read_bytes())
    data["owner_start"] += 1
    journal.write_bytes(marshal.dumps(data))


def test_a_killed_runs_journal_whose_pid_was_reused_is_recovered_and_never_taken(tmp_path):
    """Red team rt5 (as root, the pid taken with ns_last_pid): A's supervisor was killed while its
    sandbox's change was in place, and its pid went to another process; processes.alive said A
    lived, so no launch recovered A's journal, and every launch took A's old record as an earlier
    run's (a claude-code run then removed an MCP server the user had added since). A journal's
    owner is now its pid *and* that process's start time."""
    from sandboxctl.supervise.processes import alive

    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    first = snapshot.Snapshot(state, "a")
    first.take(existing, absent)
    (gitdir / "commondir").write_text("../evil\n")  # A's sandbox; then A's supervisor is killed
    _reused(Path(first.journal))
    second = snapshot.Snapshot(state, "b")
    second.take(existing + absent, ())
    assert second.contested == set()  # a dead run's record is not an earlier live run's
    changes = snapshot.recover(state, alive)
    assert [(c.path, c.action, c.run) for c in changes] == [(str(gitdir / "commondir"), "removed", "a")]
    assert not os.path.exists(first.journal)


def test_a_live_runs_journal_is_neither_recovered_nor_left_untaken(tmp_path):
    """The same start time: the owner is the run itself, alive; its journal stays pending."""
    from sandboxctl.supervise.processes import alive

    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    first = snapshot.Snapshot(state, "a")
    first.take(existing, absent)
    (gitdir / "commondir").write_text("../evil\n")
    assert snapshot.recover(state, alive) == [] and os.path.exists(first.journal)
    second = snapshot.Snapshot(state, "b")
    second.take(existing + absent, ())
    assert second.contested == {str(gitdir / "commondir")}


def test_a_supervisor_killed_during_its_own_check_is_finished_by_the_next(tmp_path, monkeypatch):
    """Red team rt5: the supervisor killed inside its end-of-run check — here right after it moved
    the changed config aside and before it wrote the original back (the path is missing then), with
    a planted commondir still to remove. The journal stays (it is forgotten only after the check),
    and the next launch's recovery puts back both: the config from its blob, commondir removed."""
    from sandboxctl.protect import restore

    gitdir, state, (existing, absent) = _two_runs(tmp_path)
    run = snapshot.Snapshot(state, "a")
    run.take(existing, absent)
    (gitdir / "config").write_text("[core]\n\tfsmonitor = x\n")  # the sandbox (gVisor: the wall is not whole)
    (gitdir / "commondir").write_text("../evil\n")

    def killed(*args, **kwargs):
        raise SystemExit("SIGKILL")

    with monkeypatch.context() as patch:
        patch.setattr(restore, "_restore", killed)
        with pytest.raises(SystemExit):
            run.check()
    assert not (gitdir / "config").exists() and os.path.exists(run.journal)  # moved aside, not yet written back
    changes = snapshot.recover(state, lambda pid: False)
    assert {(c.path, c.action) for c in changes} == {(str(gitdir / "config"), "restored"),
                                                     (str(gitdir / "commondir"), "removed")}
    assert (gitdir / "config").read_text() == "[core]\n" and not (gitdir / "commondir").exists()
