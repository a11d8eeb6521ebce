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


def _git(*args: str, cwd: Path) -> str:
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "a",
           "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_a_commit_git_cannot_read_is_said_not_passed_as_holding_nothing(tmp_path: Path) -> None:
    """A ref moved to an object the host's git cannot read made ls-tree fail with no output, which
    read as "no protected names": the check passed in silence."""
    root = tmp_path / "ws"
    root.mkdir()
    _git("init", "-q", cwd=root)
    (root / "f").write_text("x\n")
    _git("add", "f", cwd=root)
    _git("commit", "-qm", "one", cwd=root)
    gitdir = root / ".git"
    before = history.record((str(root),), (str(gitdir),))
    (gitdir / "refs" / "heads" / "elsewhere").write_text("c" * 40 + "\n")
    changes = history.check(before, (), (str(root),), "r1")
    assert [c.action for c in changes] == [history.ACTION]
    assert "the host's git could not read it (`git ls-tree` exited 128" in changes[0].path
    assert changes[0].path.endswith("not all of it checked for commits bringing protected names in)")


def test_a_partial_clones_missing_tree_is_never_fetched_to_check_it(tmp_path: Path, monkeypatch) -> None:
    """A git older than GIT_NO_LAZY_FETCH (2.44; 2.39.4 and the other security releases) ignores
    it, played here by a git that never sees it: the check's ls-tree fetched a missing tree from
    the promisor remote (a network call the host made for the sandbox). Now no transport is
    allowed, the object stays missing, and the commit is said as not checked."""
    old_git = tmp_path / "old-git"
    old_git.write_text('#!/bin/sh\nunset GIT_NO_LAZY_FETCH\nexec /usr/bin/git "$@"\n')
    old_git.chmod(0o755)
    monkeypatch.setattr(history, "_git_program", lambda roots: str(old_git))
    src = tmp_path / "src"
    (src / ".claude").mkdir(parents=True)
    (src / "f").write_text("x\n")
    _git("init", "-q", cwd=src)
    _git("add", "f", cwd=src)
    _git("commit", "-qm", "one", cwd=src)
    (src / ".claude" / "settings.json").write_text("{}\n")
    _git("add", ".claude", cwd=src)
    _git("commit", "-qm", "two", cwd=src)
    _git("config", "uploadpack.allowFilter", "true", cwd=src)
    _git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=src)
    second = _git("rev-parse", "HEAD", cwd=src)
    _git("clone", "-q", "--no-checkout", "--filter=tree:0", f"file://{src}", "ws", cwd=tmp_path)
    root, gitdir = tmp_path / "ws", tmp_path / "ws" / ".git"
    _git("update-ref", "refs/heads/master", f"{second}~1", cwd=root)
    _git("update-ref", "refs/heads/main", f"{second}~1", cwd=root)
    before = history.record((str(root),), (str(gitdir),))
    tree = _git("rev-parse", f"{second}^{{tree}}", cwd=src)
    (gitdir / "refs" / "heads" / "main").write_text(second + "\n")
    changes = history.check(before, (), (str(root),), "r1")
    assert any("could not read it" in c.path for c in changes), [c.path for c in changes]
    import subprocess

    missing = subprocess.run(["git", "-C", str(root), "cat-file", "-e", tree],
                             env={"PATH": "/usr/bin:/bin", "GIT_NO_LAZY_FETCH": "1", "GIT_ALLOW_PROTOCOL": ""},
                             capture_output=True)
    assert missing.returncode != 0, "the check fetched the missing tree from the promisor remote"
