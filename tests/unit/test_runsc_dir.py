"""launch/runsc.py's own file helpers (written so that a gvisor run imports no shutil): a run
directory is removed completely and only it, and runsc is found as shutil.which finds it."""

from __future__ import annotations

import os
import shutil
import socket

from sandboxctl.launch import runsc


def test_remove_tree_removes_everything_and_follows_no_link(tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    canary = outside / "sub" / "canary"
    canary.write_text("keep")
    run = tmp_path / "g-1-r"
    (run / "rootfs" / "usr").mkdir(parents=True)
    (run / "empty-dir").mkdir(mode=0o555)
    secret = run / "secrets" / "TOKEN"
    secret.parent.mkdir()
    secret.write_text("s")
    secret.chmod(0o400)
    (run / "rootfs" / "bin").symlink_to("usr/bin")  # dangling
    (run / "rootfs" / "out").symlink_to(outside)  # a link to a directory elsewhere
    (run / "state").mkdir()
    (run / "state" / "file").symlink_to(canary)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(run / "proxy.sock"))
    listener.close()
    runsc.remove_tree(run)
    assert not os.path.lexists(run)
    assert canary.read_text() == "keep" and (outside / "sub").is_dir()
    runsc.remove_tree(run)  # gone already: no error, as shutil.rmtree(ignore_errors=True)


def test_find_is_shutil_which(tmp_path, monkeypatch):
    bin_dir, other = tmp_path / "bin", tmp_path / "other"
    bin_dir.mkdir()
    other.mkdir()
    (other / "runsc").mkdir()  # a directory of that name is not it
    (bin_dir / "runsc").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", f"{other}:{bin_dir}")
    assert runsc.find() is None  # not executable
    (bin_dir / "runsc").chmod(0o755)
    assert runsc.find() == str(bin_dir / "runsc") == shutil.which("runsc")
    monkeypatch.setenv("PATH", str(other))
    assert runsc.find() is None and shutil.which("runsc") is None
