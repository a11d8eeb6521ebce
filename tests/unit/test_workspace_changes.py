"""Reading a layer and comparing it with the host: every kind of change, overlayfs' markers,
conflicts, protected paths, and layers crafted to mislead."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sandboxctl.workspace import seal, tree
from tests.unit.workspace_helpers import later, make_layer, opaque, whiteout, write


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    write(root / "src/a.py", "a\n")
    write(root / "src/pkg/b.py", "b\n")
    write(root / "README", "readme\n")
    write(root / "run.sh", "#!/bin/sh\n", 0o644)
    write(root / "build/out.o", "obj")
    write(root / "conf", "k=v\n")
    write(root / "same.txt", "same\n")
    (root / "link").symlink_to("README")
    return root


def changes_of(layer):
    seal.seal(layer)
    return {c.path: c for c in seal.review(layer).changes}


def test_every_kind_of_change_and_a_deleted_directory_is_one_line(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    up = layer.upper
    whiteout(up / "src")                                    # rm -rf src
    write(up / "README", "readme\nmore\n")                  # modified
    write(up / "run.sh", "#!/bin/sh\n", 0o755)              # chmod +x
    write(up / "build", "now a file\n")                     # dir -> file
    write(up / "conf/inner", "i\n")                         # file -> dir
    write(up / "new.txt", "new\n")                          # added
    write(up / "same.txt", "same\n")                        # rewritten with the same bytes: no change
    (up / "link").symlink_to("run.sh")                      # symlink retargeted
    found = changes_of(layer)
    assert {p: c.change for p, c in found.items()} == {
        "src": "deleted", "README": "modified", "run.sh": "mode-changed", "build": "type-changed",
        "conf": "type-changed", "conf/inner": "added", "new.txt": "added", "link": "modified"}
    assert found["src"].entries == 3  # a.py, pkg, pkg/b.py — but one line
    assert (found["build"].old.kind, found["build"].new.kind) == ("dir", "file")
    assert (found["run.sh"].old.mode, found["run.sh"].new.mode) == (0o644, 0o755)
    assert not any(c.conflict or c.protected for c in found.values())


def test_an_opaque_directory_deletes_what_it_does_not_hold(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    opaque(layer.upper / "src")                              # rm -rf src && mkdir src && ...
    write(layer.upper / "src/a.py", "a\n")                  # the same file again: no change
    write(layer.upper / "src/c.py", "c\n")
    found = changes_of(layer)
    assert {p: c.change for p, c in found.items()} == {"src/c.py": "added", "src/pkg": "deleted"}


def test_a_non_opaque_directory_keeps_the_lower_entries(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "src/c.py", "c\n")
    assert {p: c.change for p, c in changes_of(layer).items()} == {"src/c.py": "added"}


def test_xattr_whiteouts_are_deletions(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    marker = write(layer.upper / "conf", b"")
    os.setxattr(marker, "user.overlay.whiteout", b"")
    assert {p: c.change for p, c in changes_of(layer).items()} == {"conf": "deleted"}


@pytest.mark.skipif(os.getuid() != 0, reason="trusted.* xattrs can be set by root only")
def test_trusted_markers_of_a_privileged_mount_are_read_too(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    opaque(layer.upper / "src", "trusted")
    assert {p: c.change for p, c in changes_of(layer).items()} == {"src/a.py": "deleted", "src/pkg": "deleted"}


def test_a_metacopy_file_in_a_crafted_layer_is_never_applied(tmp_path, ws):
    """Its bytes would come from the lower layer: read from the layer it is a hole, so it is listed
    as what it is and left alone."""
    layer = make_layer(tmp_path / "state", ws)
    fake = write(layer.upper / "README", b"")
    os.truncate(fake, 4096)
    os.setxattr(fake, "user.overlay.metacopy", b"")
    found = changes_of(layer)
    assert found["README"].new.kind == "metacopy" and not found["README"].applicable


def test_a_path_the_host_changed_after_the_run_started_is_a_conflict(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "README", "the run's\n")
    whiteout(layer.upper / "src")
    write(layer.upper / "conf", "run\n")
    later()
    write(ws / "README", "the host's\n")            # both changed it
    write(ws / "src/pkg/b.py", "host edit\n")        # changed inside a directory the run deleted
    found = changes_of(layer)
    assert found["README"].conflict == "changed on the host since the run started"
    assert "src/pkg/b.py" in found["src"].conflict
    assert found["conf"].conflict is None


def test_renaming_a_host_file_over_one_the_run_changed_is_a_conflict(tmp_path, ws):
    """rename(2) updates the inode's ctime: a file moved into place is as new as a file written."""
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "conf", "run\n")
    later()
    os.rename(ws / "same.txt", ws / "conf")
    assert changes_of(layer)["conf"].conflict


def test_protected_paths_are_flagged_also_inside_a_deleted_directory(tmp_path, ws):
    write(ws / "vendor/lib/.git/config", "[core]\n")
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / ".git/hooks/pre-commit", "evil\n")
    write(layer.upper / ".vscode/tasks.json", "{}")
    whiteout(layer.upper / "vendor")
    found = changes_of(layer)
    assert "git" in found[".git/hooks/pre-commit"].protected
    assert found[".vscode/tasks.json"].protected
    assert "vendor/lib/.git" in found["vendor"].protected


def test_notes_for_what_apply_will_not_do_as_asked(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "suid", "x", 0o4755)
    (layer.upper / "escape").symlink_to("/etc/passwd")
    (layer.upper / "up").symlink_to("../../outside")
    (layer.upper / "inside").symlink_to("src/a.py")
    os.mkfifo(layer.upper / "fifo")
    found = changes_of(layer)
    assert "setuid/setgid bits are not applied" in found["suid"].notes
    assert "the link points outside the workspace" in found["escape"].notes
    assert "the link points outside the workspace" in found["up"].notes
    assert not found["inside"].notes
    assert not found["fifo"].applicable


def test_a_symlinked_directory_in_a_crafted_layer_is_a_symlink_not_a_way_out(tmp_path, ws):
    outside = tmp_path / "outside"
    write(outside / "secret", "s\n")
    layer = make_layer(tmp_path / "state", ws)
    (layer.upper / "src").symlink_to(outside)  # would list (and hash) outside if followed
    found = changes_of(layer)
    assert {p: c.change for p, c in found.items()} == {"src": "type-changed"}
    assert found["src"].new.kind == "symlink"


def test_the_seal_catches_a_layer_changed_afterwards(tmp_path, ws):
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "new.txt", "reviewed\n")
    seal.seal(layer)
    assert seal.review(layer).tampered == []
    write(layer.upper / "new.txt", "swapped\n")
    write(layer.upper / "extra", "x")
    assert seal.review(layer).tampered == ["extra: added to the layer", "new.txt: changed in the layer"]
    layer.manifest_path.unlink()
    assert "manifest" in seal.review(layer).tampered[0]


def test_open_parent_never_follows_a_symlink_and_refuses_dot_dot(tmp_path, ws):
    (ws / "out").symlink_to(tmp_path)
    root = tree.open_root(str(ws))
    try:
        with pytest.raises(OSError) as info:
            tree.open_parent(root, "out/ws/README")
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
        for bad in ("../x", "src/../../x", "", "src/"):
            with pytest.raises(OSError):
                tree.open_parent(root, bad)
    finally:
        os.close(root)
