"""The shortcuts taken on the notification path (issue 20) hold what the long way held.

Judged on real processes and the supervisor's own thread: the capabilities a root supervisor acts
with (kept per thread after the first read), and an exec's argv read once where it points at the path.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import threading

import pytest

from sandboxctl.supervise import exec_facts, fdops
from sandboxctl.supervise.notify import ProcessMemory

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are dropped only by a root supervisor")


def _can_read(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        return False
    return True


@root_only
def test_a_root_supervisor_acts_without_its_file_capabilities_at_every_entry(tmp_path):
    """The first entry reads the thread's sets; later entries reuse them: every one still drops
    CAP_DAC_OVERRIDE (a mode-000 file of another user stays closed), and leaving gives it back."""
    secret = tmp_path / "secret"
    secret.write_text("x")
    os.chown(secret, 65534, 65534)
    os.chmod(secret, 0)
    permissions = fdops.CallerPermissions()
    assert _can_read(str(secret))
    for _ in range(3):
        with permissions:
            assert not _can_read(str(secret))
            with permissions:  # nested: the inner exit keeps the outer's lowered set
                assert not _can_read(str(secret))
            assert not _can_read(str(secret))
        assert _can_read(str(secret))


@root_only
def test_each_thread_keeps_its_own_capabilities(tmp_path):
    """Capabilities are per thread: one thread inside the block never lowers (or restores) another's."""
    secret = tmp_path / "secret"
    secret.write_text("x")
    os.chown(secret, 65534, 65534)
    os.chmod(secret, 0)
    permissions = fdops.CallerPermissions()
    inside, outside_seen, done = threading.Event(), [], threading.Event()

    def other() -> None:
        with permissions:
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    outside_seen.append(_can_read(str(secret)))  # this thread never entered: still root's
    with permissions:
        outside_seen.append(_can_read(str(secret)))
    outside_seen.append(_can_read(str(secret)))
    done.set()
    thread.join()
    assert outside_seen == [True, False, True]
    assert stat.S_IMODE(secret.stat().st_mode) == 0


def test_argv_pointing_at_the_path_is_taken_as_the_path_was_read():
    path = ctypes.create_string_buffer(b"/usr/bin/true")
    array = (ctypes.c_uint64 * 3)(ctypes.addressof(path), 0, 0)
    other = ctypes.create_string_buffer(b"--version")
    array[1] = ctypes.addressof(other)
    memory = ProcessMemory(os.getpid())
    try:
        raw, complete = memory.cstring(ctypes.addressof(path), exec_facts.MAX_ARG_BYTES)
        argv, truncated, ranges = exec_facts.read_argv(memory, ctypes.addressof(array),
                                                       (ctypes.addressof(path), raw, complete))
        assert argv == ["/usr/bin/true", "--version"] and not truncated
        # every byte the record rests on is still in the ranges the memory-map check looks at
        assert (ctypes.addressof(path), len(raw) + 1) in ranges
        assert (ctypes.addressof(other), len(b"--version") + 1) in ranges
        # a pointer elsewhere is read from memory, never taken from what was known
        argv, _truncated, _ranges = exec_facts.read_argv(memory, ctypes.addressof(array),
                                                         (ctypes.addressof(other) + 2, b"forged", True))
        assert argv == ["/usr/bin/true", "--version"]
    finally:
        memory.close()


def test_an_argv_array_on_the_paths_page_comes_from_the_paths_read():
    """A shell's execve(path, argv): the array a few bytes after the path is unpacked from the
    path's first read (one pread less), and is the same as a read of its own would give; an
    array beyond that read is read as before."""
    block = ctypes.create_string_buffer(4096 * 3)
    base = (ctypes.addressof(block) + 4095) & ~4095  # a page of our own inside the buffer
    path_at, argv_at, other_at = base + 16, base + 64, base + 128
    ctypes.memmove(path_at, b"/usr/bin/true\0", 14)
    ctypes.memmove(other_at, b"--help\0", 7)
    ctypes.memmove(argv_at, struct.pack("<3Q", path_at, other_at, 0), 24)
    memory = ProcessMemory(os.getpid())
    try:
        raw, complete = memory.cstring(path_at, exec_facts.MAX_ARG_BYTES)
        assert memory.first_chunk[0] == path_at and len(memory.first_chunk[1]) == 4096 - 16
        own_read = memory.words(argv_at, 3)
        memory.words = None  # a separate read of the array now fails the test
        argv, truncated, ranges = exec_facts.read_argv(memory, argv_at, (path_at, raw, complete))
        assert argv == ["/usr/bin/true", "--help"] and not truncated
        assert own_read == [path_at, other_at, 0]
        assert (argv_at, 8) in ranges and (argv_at + 16, 8) in ranges and (other_at, 7) in ranges
    finally:
        memory.close()
    memory = ProcessMemory(os.getpid())
    try:  # the array on another page than the path: read on its own
        raw, complete = memory.cstring(path_at, exec_facts.MAX_ARG_BYTES)
        far = base + 4096 + 8
        ctypes.memmove(far, struct.pack("<2Q", other_at, 0), 16)
        argv, _truncated, _ranges = exec_facts.read_argv(memory, far, (path_at, raw, complete))
        assert argv == ["--help"]
    finally:
        memory.close()


def test_a_second_read_tells_a_change_after_the_first():
    """changed_since_read: the bytes a record was made of, read again after the checks. Reads
    that overlap (argv[0] is the path) are one span, and two reads of it that differ are a change."""
    path = ctypes.create_string_buffer(b"/usr/bin/true\0--help\0", 32)
    address = ctypes.addressof(path)
    memory = ProcessMemory(os.getpid())
    try:
        reads: list[tuple[int, bytes]] = [(address, b"/usr/bin/true\0")]
        array = (ctypes.c_uint64 * 3)(address, address + 14, 0)
        argv, _truncated, _ranges = exec_facts.read_argv(memory, ctypes.addressof(array),
                                                         (address, b"/usr/bin/true", True), reads)
        assert argv == ["/usr/bin/true", "--help"]
        assert (address + 14, b"--help\0") in reads and (ctypes.addressof(array) + 16, bytes(8)) in reads
        assert not exec_facts.changed_since_read(memory, reads)
        ctypes.memmove(address + 5, b"X", 1)  # /usr/Xin/true: what the kernel would now read
        assert exec_facts.changed_since_read(memory, reads)
        ctypes.memmove(address + 5, b"b", 1)
        array[1] = address + 15  # the pointer itself rewritten
        assert exec_facts.changed_since_read(memory, reads)
        array[1] = address + 14
        assert not exec_facts.changed_since_read(memory, reads)
        assert exec_facts.changed_since_read(memory, [(address, b"/usr/bin/true\0"), (address + 9, b"tree")])
        assert exec_facts.changed_since_read(memory, [(8, b"x")])  # unreadable now: not the same
    finally:
        memory.close()



def test_the_one_pread_of_the_paths_chunk_tells_every_change_the_reads_would():
    """A shell's exec: path, argv strings and array on one page, all within the path's first chunk,
    so changed_since_read compares them in one pread of the whole stretch (memory.first_chunk).
    Every byte the record was made of is still compared: a string, a pointer, the terminating NULL."""
    page = (ctypes.c_char * 8192)()
    base = (ctypes.addressof(page) + 4095) // 4096 * 4096  # a page of our own, the path at its start
    ctypes.memmove(base, b"/usr/bin/true\0--help\0", 21)
    array_at = base + 64
    array = (ctypes.c_uint64 * 3).from_address(array_at)
    array[0], array[1], array[2] = base, base + 14, 0
    memory = ProcessMemory(os.getpid())
    try:
        raw, complete = memory.cstring(base, exec_facts.MAX_ARG_BYTES)
        reads: list[tuple[int, bytes]] = [(base, raw + b"\0")]
        argv, _truncated, _ranges = exec_facts.read_argv(memory, array_at, (base, raw, complete), reads)
        assert argv == ["/usr/bin/true", "--help"]
        first_base, first = memory.first_chunk
        assert first_base == base and all(base <= a and a + len(d) <= base + len(first) for a, d in reads)
        assert not exec_facts.changed_since_read(memory, reads)
        for address, byte in ((base + 5, b"X"), (base + 16, b"X"), (array_at + 8, b"\x0f"), (array_at + 16, b"\x01"),
                              (array_at + 23, b"\x80")):
            saved = ctypes.string_at(address, 1)
            ctypes.memmove(address, byte, 1)
            assert exec_facts.changed_since_read(memory, reads), hex(address - base)
            ctypes.memmove(address, saved, 1)
            assert not exec_facts.changed_since_read(memory, reads)
    finally:
        memory.close()
