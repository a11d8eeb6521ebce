"""The state dir's cache forgets entries unused for a month (sandboxctl/cachedir.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandboxctl import cachedir


def aged(path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when))


def test_entries_unused_for_a_month_go_and_the_rest_stay(tmp_path):
    names = {"tree-old.marshal": 40, "tree-new.marshal": 2, "policy-old.marshal": 31, ".tree-x.marshal.1.tmp": 45,
             "seccomp-static-old.bpf": 60, "shim-old.pyc": 90, "headstart-old.marshal": 90, "other": 90}
    for name, days in names.items():
        (tmp_path / name).write_bytes(b"x")
        aged(tmp_path / name, days)
    cachedir.prune_daily(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".pruned", "tree-new.marshal", "shim-old.pyc", "headstart-old.marshal", "other"])


def test_pruning_runs_once_a_day(tmp_path):
    cachedir.prune_daily(tmp_path)
    (tmp_path / "tree-old.marshal").write_bytes(b"x")
    aged(tmp_path / "tree-old.marshal", 40)
    cachedir.prune_daily(tmp_path)  # the stamp is fresh: nothing is listed
    assert (tmp_path / "tree-old.marshal").exists()
    aged(tmp_path / ".pruned", 2)
    cachedir.prune_daily(tmp_path)
    assert not (tmp_path / "tree-old.marshal").exists()


def test_a_used_entry_is_marked_at_most_once_a_day(tmp_path):
    entry = tmp_path / "tree-a.marshal"
    entry.write_bytes(b"x")
    aged(entry, 0.5)
    before = entry.stat().st_mtime
    cachedir.mark_used(entry, before)
    assert entry.stat().st_mtime == before  # used within the day: no write
    aged(entry, 20)
    cachedir.mark_used(entry, entry.stat().st_mtime)
    assert entry.stat().st_mtime > time.time() - 60


def test_the_tree_index_marks_its_cache_entry_used(tmp_path):
    from sandboxctl.protect.index import _cache_file, scan

    root = tmp_path / "ws"
    (root / "a").mkdir(parents=True)
    cache = tmp_path / "cache"
    scan(str(root), (), cache)
    entry = Path(_cache_file(cache, str(root), ()))  # a str: the run path has no pathlib
    aged(entry, 20)
    scan(str(root), (), cache)
    assert entry.stat().st_mtime > time.time() - 60


def test_by_count_the_least_recently_used_go_and_nothing_else(tmp_path):
    """The head start's rule (launch/headstart.py): at most MAX_ENTRIES remembered launches."""
    from sandboxctl.launch import headstart

    keep = headstart.MAX_ENTRIES
    for number in range(keep + 3):
        entry = tmp_path / f"{headstart.PREFIX}{number:03}.marshal"
        entry.write_bytes(b"x")
        aged(entry, 100 - number)  # 000 is the oldest
    for name in ("tree-old.marshal", "policy-old.marshal", "other"):
        (tmp_path / name).write_bytes(b"x")
        aged(tmp_path / name, 200)
    cachedir.prune(tmp_path, (headstart.PREFIX,), keep=keep)
    left = sorted(p.name for p in tmp_path.iterdir())
    launches = [name for name in left if name.startswith(headstart.PREFIX)]
    assert launches == [f"{headstart.PREFIX}{number:03}.marshal" for number in range(3, keep + 3)]
    assert {"tree-old.marshal", "policy-old.marshal", "other"} <= set(left)  # not the head start's to prune
    cachedir.prune(tmp_path, (headstart.PREFIX,), keep=keep)  # at the limit: nothing goes
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(headstart.PREFIX)]) == keep


def test_both_rules_at_once_and_a_link_is_judged_by_itself(tmp_path):
    """A symlink in the cache is removed by its own age, never followed: its target stays."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, days in {"tree-a": 1, "tree-b": 2, "tree-c": 3, "tree-d": 40}.items():
        (cache / name).write_bytes(b"x")
        aged(cache / name, days)
    link = cache / "tree-link"
    link.symlink_to(outside)
    when = time.time() - 50 * 86400
    os.utime(link, (when, when), follow_symlinks=False)
    aged(outside, 0)  # fresh: a prune that followed the link would keep it
    cachedir.prune(cache, ("tree-",), keep=4, unused_before=time.time() - 30 * 86400)  # count: the link; age: d
    assert sorted(p.name for p in cache.iterdir()) == ["tree-a", "tree-b", "tree-c"]
    assert outside.read_bytes() == b"precious"


def test_a_cache_dir_that_is_not_there_is_no_error(tmp_path):
    cachedir.prune(tmp_path / "absent", ("tree-",), keep=1)
    cachedir.prune_daily(tmp_path / "absent")
