"""protect/history.py's launch record: refs read without a git process."""

from __future__ import annotations

from pathlib import Path

from sandboxctl.protect import history

A, B = "a" * 40, "b" * 40


def _gitdir(tmp_path: Path) -> Path:
    gitdir = tmp_path / "ws" / ".git"
    (gitdir / "refs" / "heads").mkdir(parents=True)
    (gitdir / "HEAD").write_text("ref: refs/heads/main\n")
    (gitdir / "packed-refs").write_text(f"# pack-refs with: peeled\n{A} refs/heads/main\n^{B}\n{A} refs/replace/{B}\n")
    return gitdir


def test_loose_refs_win_over_packed_ones_and_head_is_kept_as_written(tmp_path: Path) -> None:
    gitdir = _gitdir(tmp_path)
    (gitdir / "refs" / "heads" / "main").write_text(B + "\n")
    refs = history.refs(str(gitdir), str(gitdir))
    assert refs is not None
    assert refs["refs/heads/main"] == B and refs[f"refs/replace/{B}"] == A and refs["HEAD"] == "ref: refs/heads/main"
    assert history._target(refs, refs["HEAD"]) == B
    assert history._target(refs, "ref: refs/heads/gone") is None and history._target(refs, "not-an-id") is None


def test_only_repositories_at_a_grant_root_are_recorded(tmp_path: Path) -> None:
    gitdir = _gitdir(tmp_path)
    nested = tmp_path / "ws" / "sub" / ".git"
    nested.mkdir(parents=True)
    out = history.record((str(tmp_path / "ws"),), (str(gitdir), str(nested)))
    assert list(out) == [str(tmp_path / "ws")]


def test_a_linked_worktree_reads_its_refs_from_the_common_directory(tmp_path: Path) -> None:
    main = _gitdir(tmp_path)
    admin = main / "worktrees" / "wt"
    admin.mkdir(parents=True)
    (admin / "HEAD").write_text(B + "\n")
    (admin / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {admin}\n")
    gitdir, common = history.gitdirs_of(str(worktree / ".git")) or ("", "")
    assert (gitdir, common) == (str(admin), str(main))
    refs = history.refs(gitdir, common)
    assert refs is not None and refs["HEAD"] == B and refs["refs/heads/main"] == A


def test_a_history_made_slow_to_read_cannot_hold_the_runs_end(tmp_path: Path, monkeypatch) -> None:
    """200 moved refs at 5 s a git call would hold the run's end for half an hour: every call of
    one check shares BUDGET_S, and what is left unread is said."""
    import time

    gitdir = _gitdir(tmp_path)
    root = str(tmp_path / "ws")
    before = history.record((root,), (str(gitdir),))
    for i in range(50):
        (gitdir / "refs" / "heads" / f"b{i}").write_text(f"{i:040x}\n")
    slow = tmp_path / "git"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(history, "_git_program", lambda roots: str(slow))
    monkeypatch.setattr(history, "BUDGET_S", 0.5)
    start = time.monotonic()
    changes = history.check(before, (), (root,), "r1")
    assert time.monotonic() - start < 3
    assert [c.action for c in changes] == [history.ACTION]
    assert "took more than 0.5 s to read: not all of it checked" in changes[0].path
