"""mediate_judge.LiveGitRefs: a git config file the host changes during a run makes its new targets held."""

from __future__ import annotations

import os
from pathlib import Path

from sandboxctl.protect.rules import Protection
from sandboxctl.supervise import mediate_judge as live


def _repository(tmp_path: Path) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n\tbare = false\n")
    return ws, ws / ".git"


def test_a_hooks_path_set_after_launch_is_found_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.0)
    monkeypatch.setattr(live, "SPACING", 0)
    ws, gitdir = _repository(tmp_path)
    watch = live.LiveGitRefs((str(gitdir),), (str(gitdir),), str(tmp_path / "home"))
    assert watch.poll() == []
    (gitdir / "config").write_text("[core]\n\tbare = false\n\thooksPath = .husky/_\n")
    found = watch.poll()
    assert [path for path, _ in found] == [str(ws / ".husky")]  # husky 9: all of .husky runs
    assert "core.hooksPath" in found[0][1]
    assert watch.poll() == []  # unchanged since: not read again


def test_polls_are_spaced(tmp_path: Path, monkeypatch) -> None:
    """Asked before every mediated call: many files (nested repositories) are statted at most
    once per POLL_S."""
    monkeypatch.setattr(live, "POLL_S", 3600.0)
    gitdirs = []
    for i in range(3):  # 3 x 2 config files and the 3 global ones: more than EVERY_CALL
        _, gitdir = _repository(tmp_path / f"r{i}")
        gitdirs.append(str(gitdir))
    watch = live.LiveGitRefs(tuple(gitdirs), tuple(gitdirs), str(tmp_path / "home"))
    assert len(watch.configs) > live.EVERY_CALL
    watch.next_poll = 0.0
    assert watch.poll() == []
    Path(gitdirs[0], "config").write_text("[core]\n\thooksPath = hooks-elsewhere\n")
    assert watch.poll() == []  # within POLL_S of the last look


def test_a_few_config_files_are_looked_at_before_every_call(tmp_path: Path, monkeypatch) -> None:
    """Review rev: spaced by POLL_S, a sandbox making calls all the time wrote the hook within the
    10 ms after the host set core.hooksPath. A repository's files and the global ones are few."""
    monkeypatch.setattr(live, "POLL_S", 3600.0)
    ws, gitdir = _repository(tmp_path)
    watch = live.LiveGitRefs((str(gitdir),), (str(gitdir),), str(tmp_path / "home"))
    watch.next_poll = 0.0
    assert watch.poll() == []
    (gitdir / "config").write_text("[core]\n\thooksPath = .husky\n")
    assert [path for path, _ in watch.poll()] == [str(ws / ".husky")]


def test_a_global_config_include_is_found(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.0)
    monkeypatch.setattr(live, "SPACING", 0)
    ws, gitdir = _repository(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    watch = live.LiveGitRefs((str(gitdir),), (str(gitdir),), str(home))
    (home / ".gitconfig").write_text(f"[include]\n\tpath = {ws}/team.gitconfig\n")
    assert (str(ws / "team.gitconfig"), f"protected: included by {home}/.gitconfig (git config)") in watch.poll()


def test_hold_protects_from_then_on_only_under_a_root(tmp_path: Path) -> None:
    rules = Protection(roots=("/ws",))
    assert rules.reason("/ws/.husky/pre-commit") is None
    assert rules.hold("/ws/.husky", "protected: core.hooksPath")
    assert rules.reason("/ws/.husky/pre-commit") == "protected: core.hooksPath"
    assert rules.blocks_move("/ws") is not None  # it holds a protected path now
    assert not rules.hold("/ws/.husky", "again") and not rules.hold("/elsewhere/hooks", "outside")


def test_a_slow_poll_is_spaced_by_its_own_cost(tmp_path: Path, monkeypatch) -> None:
    """Thousands of nested repositories: the stats of one poll must not take the supervisor's time."""
    monkeypatch.setattr(live, "POLL_S", 0.0)
    _, gitdir = _repository(tmp_path)
    watch = live.LiveGitRefs((str(gitdir),), (str(gitdir),), str(tmp_path / "home"))
    clock = iter([100.0, 100.5])  # the poll started at 100 s and took half a second
    monkeypatch.setattr(live.time, "monotonic", lambda: next(clock))
    watch.next_poll = 0.0
    watch.poll()
    assert watch.next_poll == 100.5 + 0.5 * live.SPACING


def test_each_root_glob_has_one_star_in_its_last_part() -> None:
    """names._glob_match compares strings: a glob it cannot answer must not slip in."""
    from sandboxctl.protect import names

    for glob in names.ROOT_GLOBS:
        *dirs, last = glob.split("/")
        assert last.count("*") == 1 and not any("*" in d for d in dirs) and len(dirs) <= 1, glob
        assert glob == names.fold_path(glob), glob


def test_a_fifo_a_config_includes_is_passed_over_without_waiting(tmp_path: Path) -> None:
    """Review rev: references() opened an included FIFO for reading and waited for a writer that
    never came — the supervisor's poll, and with it every mediated call of the run and its end."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "inc")
    (tmp_path / "other").write_text("[core]\n\thooksPath = /elsewhere/hooks\n")
    (tmp_path / "config").write_text(f"[include]\n\tpath = {tmp_path}/inc\n\tpath = {tmp_path}/other\n")
    code = ("import sys; from sandboxctl.protect import gitconfig; "
            "print(gitconfig.references(sys.argv[1], '/nowhere', None))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config")], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 0, done.stderr
    assert "/elsewhere/hooks" in done.stdout and f"{tmp_path}/inc" in done.stdout  # still held, never read


def test_a_change_of_an_included_file_is_seen(tmp_path: Path, monkeypatch) -> None:
    """Review rev: only the files named at launch were statted; ~/.gitconfig including
    ~/.gitconfig.local, the host's change of the latter (core.hooksPath) was never seen."""
    monkeypatch.setattr(live, "POLL_S", 0.0)
    monkeypatch.setattr(live, "SPACING", 0)
    ws, gitdir = _repository(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[include]\n\tpath = {home}/.gitconfig.local\n")
    (home / ".gitconfig.local").write_text("[user]\n\tname = x\n")
    watch = live.LiveGitRefs((str(gitdir),), (str(gitdir),), str(home))
    assert watch.poll() == []  # unchanged since launch: the planner's
    (home / ".gitconfig.local").write_text("[core]\n\thooksPath = .githooks\n")
    found = watch.poll()
    assert [path for path, _ in found] == [str(ws / ".githooks")], found
