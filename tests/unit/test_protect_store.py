"""The protected paths' hash cache and launch record: small and cheap on every run (every run loads
the cache before its command runs; it was unbounded, and 30 000 hashes cost ~20 ms twice a run),
yet large enough for a venv inside the workspace, and a change is never mistaken for no change."""

from __future__ import annotations

import json
import marshal
import os
import shutil

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

    def counting(self, where, *args):
        loads.append(where)
        real(self, where, *args)

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
    store = snapshot.Store(state)
    assert len(store.cache) > snapshot.MAX_CACHED  # read (by a run that hashes a file): over the bound
    store.save()  # trimmed, then collected
    assert not (blobs / names["orphan"]).exists()
    assert all((blobs / names[label]).exists() for label in ("young", "journal", "cached"))


def test_a_launch_reading_the_cache_holds_off_collection_until_its_journal_names_its_blobs(tmp_path):
    """A cache hit stats nothing but the file: the blob it names may be old. Another run trimming
    the cache (it does not use that hash) must not collect the blob while this launch, which has
    read the cache, has not yet written the journal that names it."""
    state = tmp_path / "state"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text("#!/bin/sh\n")
    first = snapshot.Snapshot(state, "r0")
    first.take((str(hooks),), ())
    first.check()
    digest = first.entries[str(hooks)]["children"]["pre-commit"]["sha256"]
    blob = state / "protect" / "blobs" / digest
    old = blob.stat().st_mtime - snapshot.BLOB_GRACE_S - 60
    os.utime(blob, (old, old))
    launch = snapshot.Snapshot(state, "r1")
    launch.store = snapshot.Store(state, launch._claim)
    st = os.stat(hooks / "pre-commit")
    assert launch.store.digest(str(hooks / "pre-commit"), st) == digest  # a hit, from the cache on disk
    assert snapshot.read_journal(launch.journal)["taking"] is True
    other = snapshot.Store(state)
    other.cache = {(1, n, 10, n, n): f"{n:064x}" for n in range(snapshot.MAX_CACHED + 1)}  # not this hash
    other.dirty = True
    other.save()  # trimmed: would collect
    assert blob.exists()
    os.unlink(launch.journal)
    other.collect()
    assert blob.exists()  # the record kept for the next launch of these paths names it
    shutil.rmtree(state / "protect" / "records")
    other.collect()
    assert not blob.exists()  # nothing names it any more: collected (the test's control)


def test_a_recorded_set_larger_than_the_bound_stays_cached_whole(tmp_path, monkeypatch):
    """A venv inside the workspace holds more files than MAX_CACHED: the cache grows to hold what
    a run used (with room for other workspaces), or every run would hash the venv again."""
    from sandboxctl.protect import store as store_module

    monkeypatch.setattr(store_module, "MAX_CACHED", 8)
    state = tmp_path / "state"
    venv = tmp_path / "venv"
    venv.mkdir()
    for n in range(30):
        (venv / f"m{n}.py").write_text(f"x = {n}\n")
    snapshot.Snapshot(state, "r0").take((str(venv),), ())
    cached = marshal.loads((state / "protect" / "hashes.marshal").read_bytes())
    assert len(cached) == 30
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    snapshot.Snapshot(state, "r1").take((str(venv),), ())
    assert not [p for p in opened if p.startswith(str(venv))]  # the second run hashed nothing


def test_the_journal_is_encoded_once_and_marked_in_place(tmp_path):
    state = tmp_path / "state"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text("#!/bin/sh\n")
    snap = snapshot.Snapshot(state, "r1")
    snap.take((str(hooks),), (str(tmp_path / ".envrc"),))
    taken = snapshot.read_journal(snap.journal)
    snap.mark(True)
    marked = snapshot.read_journal(snap.journal)
    assert taken["wall_whole"] is False and marked["wall_whole"] is True
    assert marked["entries"] == taken["entries"] == snap.entries
    assert marked["run"] == "r1" and "taking" not in marked and marked["version"] == snapshot.JOURNAL_VERSION


def test_a_journal_of_the_previous_version_is_still_recovered(tmp_path):
    """A supervisor of the previous version killed mid-run left JSON: the next run still puts back
    what its sandbox changed."""
    state = tmp_path / "state"
    hook = tmp_path / "hooks" / "pre-commit"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\n")
    snap = snapshot.Snapshot(state, "r1")
    snap.take((str(hook.parent),), ())
    old = {"run": "r1", "entries": {p: {k: v for k, v in e.items() if k != "ctime"} for p, e in snap.entries.items()},
           "wall_whole": False, "json_patterns": {}, "json_values": {}}
    for child in old["entries"][str(hook.parent)]["children"].values():
        child.pop("ctime", None)
        child.pop("mtime", None)
    os.unlink(snap.journal)
    (state / "protect" / "pending" / "999999999-r1.json").write_text(json.dumps(old))
    hook.write_text("#!/bin/sh\nevil\n")
    changes = snapshot.recover(state, lambda pid: False)
    assert [(c.path, c.change, c.action) for c in changes] == [(str(hook), "modified", "restored")]
    assert hook.read_text() == "#!/bin/sh\n"


def test_a_kept_record_is_reused_where_unchanged_and_redone_where_not(tmp_path, monkeypatch):
    """The next launch of the same paths reuses the last record entry by entry (one stat each):
    an unchanged file is not hashed, a changed one is, and the record kept is the new one."""
    from sandboxctl.protect import store as store_module

    state = tmp_path / "state"
    venv = tmp_path / "venv"
    (venv / "pkg").mkdir(parents=True)
    for n in range(5):
        (venv / "pkg" / f"m{n}.py").write_text(f"x = {n}\n")
    first = snapshot.Snapshot(state, "r0")
    first.take((str(venv),), ())
    first.check()
    (venv / "pkg" / "m3.py").write_text("x = 'changed'\n")
    hashed = []
    real = snapshot.Store.digest

    def counting(self, path, st):
        hashed.append(os.path.basename(path))
        return real(self, path, st)

    monkeypatch.setattr(snapshot.Store, "digest", counting)
    second = snapshot.Snapshot(state, "r1")
    second.take((str(venv),), ())
    assert hashed == ["m3.py"]
    kept = store_module.load_kept(state / "protect", (str(venv),))
    assert kept[str(venv)]["children"]["pkg"]["children"]["m3.py"]["sha256"] == \
        second.entries[str(venv)]["children"]["pkg"]["children"]["m3.py"]["sha256"]
    (venv / "pkg" / "m1.py").write_text("x = 'evil'\n")
    assert [(c.path, c.change) for c in second.check()] == [(str(venv / "pkg" / "m1.py"), "modified")]
    assert (venv / "pkg" / "m1.py").read_text() == "x = 1\n"
