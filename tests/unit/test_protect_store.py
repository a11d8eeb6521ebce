"""The protected paths' hash cache stays small: every run loads all of it before its command runs
(it was unbounded, and 30 000 hashes cost ~20 ms twice a run)."""

from __future__ import annotations

import json
import marshal
import os

from sandboxctl.protect import snapshot


def fill(state, count: int) -> None:
    (state / "protect").mkdir(parents=True)
    (state / "protect" / "hashes.marshal").write_bytes(
        marshal.dumps({(1, n, 10, n, n): f"{n:064x}" for n in range(count)}))


def test_an_oversized_cache_is_trimmed_oldest_first_keeping_what_this_run_used(tmp_path):
    state = tmp_path / "state"
    fill(state, snapshot.MAX_CACHED + 5000)
    hook = tmp_path / "pre-commit"
    hook.write_text("#!/bin/sh\n")
    store = snapshot.Store(state)
    digest = store.digest(str(hook), os.stat(hook))
    store.save()
    kept = marshal.loads((state / "protect" / "hashes.marshal").read_bytes())
    assert len(kept) == snapshot.MAX_CACHED * 3 // 4  # room before the next trim
    st = os.stat(hook)
    assert kept[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)] == digest
    assert (1, 0, 10, 0, 0) not in kept  # the oldest went first
    n = snapshot.MAX_CACHED + 4999
    assert kept[(1, n, 10, n, n)] == f"{n:064x}"  # the newest stayed


def test_a_cache_within_its_bound_is_not_rewritten(tmp_path):
    state = tmp_path / "state"
    fill(state, 10)
    before = os.stat(state / "protect" / "hashes.marshal").st_mtime_ns
    snapshot.Store(state).save()
    assert os.stat(state / "protect" / "hashes.marshal").st_mtime_ns == before


def test_one_snapshot_loads_the_cache_once(tmp_path, monkeypatch):
    state = tmp_path / "state"
    hook = tmp_path / "hooks" / "pre-commit"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\n")
    loads = []
    real = snapshot.Store.__init__

    def counting(self, where):
        loads.append(where)
        real(self, where)

    monkeypatch.setattr(snapshot.Store, "__init__", counting)
    snap = snapshot.Snapshot(state, "r1")
    snap.take((str(hook.parent),), ())
    hook.write_text("#!/bin/sh\nevil\n")
    changes = snap.check()
    assert [c.change for c in changes] == ["modified"]
    assert len(loads) == 1


def test_blobs_no_cache_entry_or_pending_journal_names_are_collected_after_their_grace(tmp_path):
    state = tmp_path / "state"
    fill(state, snapshot.MAX_CACHED + 1)
    blobs = state / "protect" / "blobs"
    blobs.mkdir()
    old = os.path.getmtime(blobs) - snapshot.BLOB_GRACE_S - 60
    names = {"orphan": "a" * 64, "young": "b" * 64, "journal": "c" * 64, "cached": f"{snapshot.MAX_CACHED:064x}"}
    for label, name in names.items():
        (blobs / name).write_bytes(label.encode())
        if label != "young":
            os.utime(blobs / name, (old, old))
    (state / "protect" / "pending").mkdir()
    (state / "protect" / "pending" / "1-r.json").write_text(json.dumps(
        {"run": "r", "entries": {"/w/.git/hooks": {"kind": "dir", "children": {
            "pre-commit": {"kind": "file", "sha256": names["journal"]}}}}}))
    snapshot.Store(state).save()  # over the bound: trimmed, then collected
    assert not (blobs / names["orphan"]).exists()
    assert all((blobs / names[label]).exists() for label in ("young", "journal", "cached"))


def test_a_cache_hit_marks_its_blob_used_so_it_outlives_the_grace(tmp_path):
    state = tmp_path / "state"
    hook = tmp_path / "pre-commit"
    hook.write_text("#!/bin/sh\n")
    store = snapshot.Store(state)
    digest = store.digest(str(hook), os.stat(hook))
    store.save()
    blob = state / "protect" / "blobs" / digest
    old = blob.stat().st_mtime - snapshot.BLOB_GRACE_S
    os.utime(blob, (old, old))
    assert snapshot.Store(state).digest(str(hook), os.stat(hook)) == digest
    assert blob.stat().st_mtime > old + snapshot.BLOB_GRACE_S / 2
