"""Exec-record checks on real processes of this host (no sandbox): memory maps, path walks, and
the after-the-fact comparison of /proc/PID/exe with what a record claimed."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxctl.supervise import exec_facts, sandbox_paths
from sandboxctl.supervise.exec_events import ExecEvents, ExecTarget


class _Verdict:
    def __init__(self, inside: bool):
        self.inside = inside


def _judge(writable: str):
    return lambda path: _Verdict(path.startswith(writable))


def test_bytes_on_the_heap_are_private_but_shared_memory_is_not():
    private = ctypes.create_string_buffer(b"/usr/bin/true")
    assert exec_facts.shared_pages(os.getpid(), [(ctypes.addressof(private), 14)], _judge("/nowhere")) is None
    shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
    shared.write(b"/usr/bin/true\0")
    address = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    why = exec_facts.shared_pages(os.getpid(), [(address, 14)], _judge("/nowhere"))
    assert why and "shared memory" in why
    assert "not in mapped memory" in exec_facts.shared_pages(os.getpid(), [(8, 4)], _judge("/nowhere"))


def test_a_read_only_mapping_of_a_writable_file_is_not_trusted(tmp_path):
    path = tmp_path / "strings.bin"
    path.write_bytes(b"/usr/bin/true\0" + b"\0" * 4082)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    line = next(line for line in maps.splitlines() if line.endswith(str(path)))
    start = int(line.split("-")[0], 16)
    why = exec_facts.shared_pages(os.getpid(), [(start, 14)], _judge(str(tmp_path)))
    assert why and "writable file" in why
    assert exec_facts.shared_pages(os.getpid(), [(start, 14)], _judge("/nowhere")) is None
    mapped.close()


def test_walk_resolves_like_the_kernel_and_says_when_unsure(tmp_path):
    me = os.getpid()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("x")
    os.symlink("dir/file", tmp_path / "rel")
    os.symlink(str(tmp_path / "dir"), tmp_path / "abs")
    os.symlink("/proc/self/mem", tmp_path / "mem")
    assert sandbox_paths.walk(me, me, f"{tmp_path}/rel") == ("exists", 0, f"{tmp_path}/dir/file")
    assert sandbox_paths.walk(me, me, f"{tmp_path}/abs/file").text == f"{tmp_path}/dir/file"
    assert sandbox_paths.walk(me, me, f"{tmp_path}/nope/x") == ("absent", 2, "")
    assert sandbox_paths.walk(me, me, f"{tmp_path}/dir/file/x").error == 20  # ENOTDIR
    assert sandbox_paths.walk(me, me, f"{tmp_path}/mem").text == "/proc/self/mem"
    assert sandbox_paths.walk(me, me, "/dev/fd/../mem").text == "/proc/self/mem"


@pytest.mark.parametrize("path", ["/proc/self/mem", "/proc/thread-self/mem", "/proc/1/task/1/mem",
                                  "/dev/fd/../mem", "LINK", "/proc/self/fd/MEMFD"])
def test_every_way_to_name_process_memory_is_caught(tmp_path, path):
    me = os.getpid()
    os.symlink("/proc/self/mem", tmp_path / "link")
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        path = path.replace("LINK", f"{tmp_path}/link").replace("MEMFD", str(fd))
        assert sandbox_paths.process_memory_open(me, me, path), path
    finally:
        os.close(fd)


def test_ordinary_writes_are_not_process_memory(tmp_path):
    me = os.getpid()
    for path in (f"{tmp_path}/new-file", "/dev/null", "/proc/self/fd/1", "/dev/stdout", f"{tmp_path}/../x"):
        assert sandbox_paths.process_memory_open(me, me, path) is None, path


def _target_for(pid: int, claimed: str, expect: str) -> ExecTarget:
    st = os.stat(expect)
    return ExecTarget(claimed, (st.st_dev, st.st_ino), "elf", (st.st_dev, st.st_ino), None,
                      (0, 0), exec_facts.start_time(pid))


def test_after_the_fact_a_swapped_exec_is_tampering():
    logged: list[tuple[str, dict]] = []
    events = ExecEvents(-1, lambda event, **f: logged.append((event, f)), [], _judge("/nowhere"), lambda: [])
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        real = os.path.realpath(f"/proc/{sleeper.pid}/exe")
        events.claims[sleeper.pid] = _target_for(sleeper.pid, "/usr/bin/sleep", real)
        events.observe(sleeper.pid)
        assert logged == [] and sleeper.pid not in events.claims  # confirmed
        events.claims[sleeper.pid] = _target_for(sleeper.pid, "/usr/bin/true", os.path.realpath(sys.executable))
        events.observe(sleeper.pid)
        [(event, fields)] = logged
        assert event == "tamper" and fields["path"] == "/usr/bin/true" and fields["ran"] == real
        assert events.tampered and "but the process runs" in events.tampered[0]["rule"]
    finally:
        sleeper.kill()
        sleeper.wait()
