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


def test_destroy_kills_every_process_naming_the_run_and_waits_for_them(tmp_path):
    """Judged from /proc: every process naming the run (and the one each forked, as runsc's do)
    is gone when destroy returns, and the directory with it; one naming another is left alone."""
    import subprocess
    import sys
    import time

    run = tmp_path / "g-1-r"
    (run / "state").mkdir(parents=True)
    code = "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nos.fork()\ntime.sleep(60)\n"
    ours = [subprocess.Popen([sys.executable, "-c", code, str(run)]) for _ in range(2)]
    bystander = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "other")])
    try:
        deadline = time.monotonic() + 10
        other = str(tmp_path / "other")
        while (len(runsc.pids_using(str(run))) < 4 or len(runsc.pids_using(other)) < 2) \
                and time.monotonic() < deadline:  # two and their forks, and the bystander and its fork
            time.sleep(0.01)
        assert len(runsc.pids_using(str(run))) == 4 and len(runsc.pids_using(other)) == 2
        runsc.destroy(run)
        assert runsc.pids_using(str(run)) == [] and not run.exists()
        assert [proc.wait(timeout=5) for proc in ours] == [-9, -9]
        assert bystander.poll() is None and len(runsc.pids_using(other)) == 2
    finally:
        for proc in [*ours, bystander]:
            proc.kill()
            proc.wait()
        runsc.destroy(tmp_path / "other")  # the bystander's fork
