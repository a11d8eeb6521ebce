"""Who else could change the bytes an exec record was read from: the caller's memory map, and kcmp.

The areas holding the path and argv must be private — anonymous, or a mapping of a file nobody in
the sandbox may write — for the record to be `verified` (supervise/exec_events.py says why). The
areas are asked of the kernel one by one (PROCMAP_QUERY, Linux 6.11), before that read from the
text of /proc/PID/maps; kcmp is what the listing of the sandbox's threads is compared with. Split
from exec_facts.py (reading the caller, resolving its target): this is the judgement of sharing.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
import threading
from collections.abc import Callable

from sandboxctl.supervise import fdops
from sandboxctl.supervise.exec_facts import read_proc

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

# PROCMAP_QUERY (Linux 6.11, include/uapi/linux/fs.h): one VMA of /proc/PID/maps by address, binary
_QUERY = struct.Struct("<QQQQQQQQQIIIIQQ")  # size, flags, addr, start, end, vma_flags, page size,
# offset, inode, dev major, dev minor, name size, build-id size, name address, build-id address
PROCMAP_QUERY = 0xC0000000 | (_QUERY.size << 16) | (ord("f") << 8) | 17  # _IOWR('f', 17, struct procmap_query)
QUERY_VMA_SHARED = 0x08  # VM_MAYSHARE: what /proc/PID/maps shows as "s"
NAME_BUFFER = 8192  # PATH_MAX and " (deleted)", with room to spare
_query_state = {"works": True}
_query_buffers = threading.local()


def shared_pages(pid: int, ranges: list[tuple[int, int]], judge_write: Callable[[str], Any]) -> str | None:
    """Why a byte the record was read from could change under another process's hand, or None.

    The areas the ranges touch are asked of the kernel one by one (PROCMAP_QUERY: a few ioctls
    instead of the text of every mapping the caller has); before Linux 6.11 one pass over the text
    of /proc/PID/maps, parsing only those areas. Both judge the same facts the same way."""
    spans: list[list[int]] = []
    for low, high in sorted((address, address + max(length, 1)) for address, length in ranges):
        if spans and low <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], high)
        else:
            spans.append([low, high])
    if _query_state["works"]:
        try:
            fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return f"the caller's memory map could not be read ({exc.strerror})"
        try:
            return _queried_risk(fd, spans, judge_write)
        except _NoQuery:
            _query_state["works"] = False  # this kernel has no PROCMAP_QUERY: the text, from now on
        finally:
            os.close(fd)
    return _text_risk(pid, spans, judge_write)


class _NoQuery(Exception):
    pass


def _queried_risk(fd: int, spans: list[list[int]], judge_write: Callable[[str], Any]) -> str | None:
    names = getattr(_query_buffers, "names", None)
    if names is None:
        import ctypes

        names = _query_buffers.names = ctypes.create_string_buffer(NAME_BUFFER)
        _query_buffers.address = ctypes.addressof(names)
        _query_buffers.string_at = ctypes.string_at
    string_at = _query_buffers.string_at
    area_start = area_stop = 0  # the last area asked about: judged safe (a risky one returned)
    for low, high in spans:
        while low < high:
            if area_start <= low < area_stop:  # in the area just asked about (argv and its strings
                low = area_stop                # mostly share one): the same answer, asked once
                continue
            query = bytearray(_QUERY.pack(_QUERY.size, 0, low, 0, 0, 0, 0, 0, 0, 0, 0, NAME_BUFFER, 0,
                                          _query_buffers.address, 0))
            try:
                fcntl.ioctl(fd, PROCMAP_QUERY, query, True)
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # no area covers this address
                    return "the exec's arguments are not in mapped memory"
                if exc.errno == errno.ENOTTY:  # before Linux 6.11
                    raise _NoQuery from None
                return f"the caller's memory map could not be read ({exc.strerror})"
            _size, _flags, _addr, start, stop, vma_flags, _page, _offset, inode, _major, _minor, name_size, \
                *_rest = _QUERY.unpack(query)
            if start > low:
                return "the exec's arguments are not in mapped memory"
            private = not vma_flags & QUERY_VMA_SHARED
            if not private or inode:  # a private anonymous area is safe whatever its name says
                # the name's bytes alone (`names.raw` would copy the whole 8 KiB buffer first)
                name = os.fsdecode(string_at(_query_buffers.address, name_size - 1)) if name_size > 1 else ""
                why = _risk(private, inode, name, judge_write)
                if why:
                    return why
            area_start, area_stop = start, stop
            low = stop  # the rest of this span must lie in the next area
    return None


def _text_risk(pid: int, spans: list[list[int]], judge_write: Callable[[str], Any]) -> str | None:
    """One pass over /proc/PID/maps (sorted by address), parsing only the areas the spans touch."""
    try:
        maps = read_proc(f"/proc/{pid}/maps", 1 << 16)  # 64 KiB reads: a 1 MiB buffer per exec costs more
    except OSError as exc:
        return f"the caller's memory map could not be read ({exc.strerror})"
    index = 0
    for line in maps.split(b"\n"):
        if index == len(spans):
            return None
        dash = line.find(b"-")
        if dash < 0:
            continue
        space = line.index(b" ", dash)
        start, stop = int(line[:dash], 16), int(line[dash + 1:space], 16)
        while index < len(spans) and stop > spans[index][0]:
            low, high = spans[index]
            if start > low:
                return "the exec's arguments are not in mapped memory"
            why = area_risk(line[space + 1:], judge_write)
            if why:
                return why
            if stop >= high:
                index += 1
            else:
                spans[index][0] = stop  # the rest of this span must be in the next area
                break
    return None if index == len(spans) else "the exec's arguments are not in mapped memory"


def area_risk(rest: bytes, judge_write: Callable[[str], Any]) -> str | None:
    """For one maps line after its address range ("perms offset dev inode name")."""
    fields = rest.split(None, 4)
    perms, inode = fields[0], int(fields[3])
    name = os.fsdecode(fields[4].strip()) if len(fields) > 4 else ""
    return _risk(perms[3:4] == b"p", inode, name, judge_write)


def _risk(private: bool, inode: int, name: str, judge_write: Callable[[str], Any]) -> str | None:
    """One area holding bytes of the record: private, and anonymous or a file nobody may write."""
    if not private:
        return f"the exec's arguments lie in shared memory ({name or 'anonymous'})"
    if inode:
        if name.endswith(" (deleted)") or not name.startswith("/"):
            return f"the exec's arguments lie in a mapping of a file that is gone ({name})"
        if judge_write(name).inside:
            return f"the exec's arguments lie in a mapping of a writable file ({name})"
    return None


@functools.cache
def kcmp() -> Callable[[int, int, int, int, int, int], int]:
    """kcmp(2) through libc's syscall(): call it as kcmp()(number, pid1, pid2, kind, 0, 0), its
    argument types declared once (no Python wrapper: it runs once per process of the sandbox at
    every exec); -1 on error."""
    ctypes, libc, _ = fdops._libc()
    return ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                            ctypes.c_long, ctypes.c_long, use_errno=True)(("syscall", libc))
