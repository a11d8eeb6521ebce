"""Exec-record checks on real processes of this host (no sandbox): memory maps, path walks, and
the after-the-fact comparison of /proc/PID/exe with what a record claimed."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxctl.supervise import exec_facts, exec_sharing, sandbox_paths
from sandboxctl.supervise.exec_events import ExecEvents, ExecTarget


class _Verdict:
    def __init__(self, inside: bool):
        self.inside = inside


def _judge(writable: str):
    return lambda path: _Verdict(path.startswith(writable))


@pytest.fixture(params=["query", "text"], autouse=True)
def maps_reading(request, monkeypatch):
    """Every memory-map test runs twice: PROCMAP_QUERY (Linux 6.11) and the text of /proc/PID/maps."""
    monkeypatch.setitem(exec_sharing._query_state, "works", request.param == "query")
    return request.param


def _libc_mmap():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    return libc


def test_a_string_straddling_a_private_and_a_shared_page_is_not_trusted(maps_reading):
    """Two adjacent areas: the first private, the second MAP_SHARED (mapped over it, MAP_FIXED).
    A path that starts in the private page and ends in the shared one could be rewritten there."""
    libc = _libc_mmap()
    prot, private, shared, anonymous, fixed = mmap.PROT_READ | mmap.PROT_WRITE, 0x02, 0x01, 0x20, 0x10
    base = libc.mmap(None, 8192, prot, private | anonymous, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        assert exec_sharing.shared_pages(os.getpid(), [(base + 4090, 20)], _judge("/nowhere")) is None
        assert libc.mmap(base + 4096, 4096, prot, shared | anonymous | fixed, -1, 0) == base + 4096
        why = exec_sharing.shared_pages(os.getpid(), [(base + 4090, 20)], _judge("/nowhere"))
        assert why and "shared memory" in why, (maps_reading, why)
        assert exec_sharing.shared_pages(os.getpid(), [(base + 100, 20)], _judge("/nowhere")) is None
        libc.munmap(base + 4096, 4096)  # a hole after the private page: the rest is not mapped at all
        why = exec_sharing.shared_pages(os.getpid(), [(base + 4090, 20)], _judge("/nowhere"))
        assert why and "not in mapped memory" in why, (maps_reading, why)
    finally:
        libc.munmap(base, 8192)


def test_the_kernel_query_and_the_maps_text_judge_alike(tmp_path):
    """PROCMAP_QUERY and the text parser on the same ranges of this process: the same answers."""
    if not exec_sharing._query_state["works"]:
        pytest.skip("only once")
    if tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit()) < (6, 11):
        pytest.skip("PROCMAP_QUERY needs Linux 6.11")
    path = tmp_path / "strings.bin"
    path.write_bytes(b"/usr/bin/true\0" + b"\0" * 8178)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 8192, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    start = int(next(line for line in Path(f"/proc/{os.getpid()}/maps").read_text().splitlines()
                     if line.endswith(str(path))).split("-")[0], 16)
    heap = ctypes.create_string_buffer(b"/usr/bin/true")
    shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
    shared_at = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    cases = [[(ctypes.addressof(heap), 14)], [(shared_at, 14)], [(8, 4)], [(start, 14)], [(start + 4090, 20)],
             [(start, 14), (ctypes.addressof(heap), 5)], [(ctypes.addressof(heap), 5), (shared_at, 3)],
             # two ranges in one area (asked once), then one in shared memory: still found
             [(ctypes.addressof(heap), 3), (ctypes.addressof(heap) + 8, 3), (shared_at, 3)],
             [(start, 3), (start + 64, 3), (start + 4096, 3), (shared_at, 3)]]
    try:
        for writable in ("/nowhere", str(tmp_path)):
            for ranges in cases:
                spans = [[low, low + max(length, 1)] for low, length in sorted(ranges)]
                queried = exec_sharing.shared_pages(os.getpid(), ranges, _judge(writable))
                assert queried == exec_sharing._text_risk(os.getpid(), spans, _judge(writable)), (ranges, writable)
        assert exec_sharing._query_state["works"], "PROCMAP_QUERY is in this kernel (6.11+)"
    finally:
        del heap
        shared.close()
        mapped.close()


def test_bytes_on_the_heap_are_private_but_shared_memory_is_not():
    private = ctypes.create_string_buffer(b"/usr/bin/true")
    assert exec_sharing.shared_pages(os.getpid(), [(ctypes.addressof(private), 14)], _judge("/nowhere")) is None
    shared = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
    shared.write(b"/usr/bin/true\0")
    address = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    why = exec_sharing.shared_pages(os.getpid(), [(address, 14)], _judge("/nowhere"))
    assert why and "shared memory" in why
    assert "not in mapped memory" in exec_sharing.shared_pages(os.getpid(), [(8, 4)], _judge("/nowhere"))


def test_a_read_only_mapping_of_a_writable_file_is_not_trusted(tmp_path):
    path = tmp_path / "strings.bin"
    path.write_bytes(b"/usr/bin/true\0" + b"\0" * 4082)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    line = next(line for line in maps.splitlines() if line.endswith(str(path)))
    start = int(line.split("-")[0], 16)
    why = exec_sharing.shared_pages(os.getpid(), [(start, 14)], _judge(str(tmp_path)))
    assert why and "writable file" in why
    assert exec_sharing.shared_pages(os.getpid(), [(start, 14)], _judge("/nowhere")) is None
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



def test_a_directory_the_supervisor_may_not_search_is_refused_and_says_so(tmp_path, monkeypatch):
    """A write open through a directory the supervisor may not search (EACCES): still refused
    (its mode may be changed back before the kernel walks it), but the rule says why, not that
    /proc was involved. (os.stat stands in for a mode 000 directory: root searches any.)"""
    me = os.getpid()
    (tmp_path / "locked").mkdir()
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if path == "x":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(sandbox_paths.os, "stat", stat)

    def openat2_in_root(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sandbox_paths, "openat2_in_root", openat2_in_root)
    assert sandbox_paths.walk(me, me, f"{tmp_path}/locked/x/../../y") == ("unsure", errno.EACCES, "")
    why = sandbox_paths.process_memory_open(me, me, f"{tmp_path}/locked/x/../../../proc/self/mem")
    assert why and "may not search a directory" in why


def test_dotdot_after_a_magic_link_is_walked_from_its_target(tmp_path):
    """/proc/self/root/../proc/self/mem is the caller's own memory (root's `..` is the root): normpath
    made it /proc/self/proc/self/mem and the write-intent open was let through as no process memory."""
    me = os.getpid()
    for path in ("/proc/self/root/../proc/self/mem", "/proc/self/root/../../proc/thread-self/mem",
                 f"/proc/self/cwd/{'../' * 40}proc/self/mem"):
        assert sandbox_paths.process_memory_open(me, me, path), path
    assert sandbox_paths.walk(me, me, "/proc/self/root/../proc/self/mem").text == "/proc/self/mem"
    assert sandbox_paths.process_memory_open(me, me, f"/proc/self/root/..{tmp_path}/x") is None
