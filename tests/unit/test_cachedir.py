"""The state dir's cache forgets entries unused for a month (sandboxctl/cachedir.py)."""

from __future__ import annotations

import os
import time

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
    entry = _cache_file(cache, str(root), ())
    aged(entry, 20)
    scan(str(root), (), cache)
    assert entry.stat().st_mtime > time.time() - 60
