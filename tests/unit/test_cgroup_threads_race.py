"""RunCgroup.threads() racing remove(): the listing of a cgroup being removed is the run's own list,
or an OSError the listener falls back from; never another directory's "cgroup.threads" read through
a recycled descriptor number, never a traceback of another kind, never a descriptor left open.

The interleaving is forced, not hoped for: a profile hook stops threads() at the very open(2) that
uses the held directory, and there runs remove() on another thread and takes the descriptor number
it frees with a directory of the test's own (where a sandbox could have written that file name)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from sandboxctl.supervise import cgroups
from sandboxctl.supervise.cgroups import CgroupLayout, RunCgroup


def fake_cgroup(directory: Path) -> RunCgroup:
    """A RunCgroup over a plain directory (no cgroup tree needed): what __init__ sets, without its mkdirs."""
    cgroup = object.__new__(RunCgroup)
    cgroup.layout = CgroupLayout("v2", {"pids": str(directory.parent), "memory": str(directory.parent)})
    cgroup.dirs = [str(directory)]
    cgroup._mover, cgroup._move_error, cgroup._switch_interval = None, None, 0.005
    cgroup._listing_dir = None
    if hasattr(cgroups, "threading"):  # the lock that orders threads() and remove()
        cgroup._listing_lock = cgroups.threading.Lock()
    else:  # before it: the code as it was (the test fails on what it reads, not on setting up)
        cgroup._listing_lock = None
    return cgroup


def test_a_listing_raced_by_remove_never_reads_another_directory(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "cgroup.threads").write_text("101\n102\n")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "cgroup.threads").write_text("999999\n")
    monkeypatch.setattr(cgroups.time, "sleep", lambda _s: None)  # remove()'s rmdir retries (a file is in it)
    cgroup = fake_cgroup(run)
    assert cgroup.threads() == [101, 102]  # the directory is held from here on
    held = cgroup._listing_dir
    taken: list[int] = []
    remover = threading.Thread(target=cgroup.remove)

    def hook(frame, event, arg) -> None:
        if event == "c_call" and arg is os.open and frame.f_code.co_name == "threads" and not taken:
            sys.setprofile(None)
            remover.start()
            remover.join(timeout=0.5)  # with the lock, remove() waits for this listing to end
            if not remover.is_alive():  # it closed the held descriptor: take its number
                fd = os.open(decoy, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                taken.append(fd)
            else:
                taken.append(-1)

    sys.setprofile(hook)
    try:
        try:
            listed: list[int] | OSError = cgroup.threads()
        except OSError as exc:
            listed = exc
    finally:
        sys.setprofile(None)
        remover.join(timeout=10)
        for fd in taken:
            if fd >= 0:
                os.close(fd)
    assert taken, "the hook never ran: threads() no longer opens through the held directory"
    assert not isinstance(listed, list) or listed == [101, 102], f"read another directory's list: {listed}"
    assert not remover.is_alive()
    if taken[0] != held:  # the held descriptor was closed by remove(), not left open
        with pytest.raises(OSError):
            os.fstat(held)
    with pytest.raises(OSError):  # removed: no listing, and no descriptor opened again
        cgroup.threads()
    assert cgroup._listing_dir is None


def test_threads_after_remove_opens_nothing(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "cgroup.threads").write_text("7\n")
    monkeypatch.setattr(cgroups.time, "sleep", lambda _s: None)
    cgroup = fake_cgroup(run)
    assert cgroup.threads() == [7]
    cgroup.remove()  # the directory is still there (rmdir failed): the listing must not come back
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        cgroup.threads()
    assert len(os.listdir("/proc/self/fd")) == before and cgroup._listing_dir is None
