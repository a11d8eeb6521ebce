"""What the supervisor learns about an exec's caller and target, from outside the sandbox.

/proc reads (in as few system calls as possible: this runs for every exec record), the target
resolved in the caller's root and its format (ELF or #! script). Who else could change the bytes
a record was read from (the caller's memory map, kcmp) is judged in exec_sharing.py. Used by
supervise/exec_events.py.
"""

from __future__ import annotations

import errno
import os
import struct

from sandboxctl.record import Record
from sandboxctl.supervise import notify, sandbox_paths

AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = 0x1000, 0x100
MAX_ARG_BYTES = 4096  # per argv string read for the record (longer ones are cut and marked)
ARGV_BATCH = 32  # argv pointers unpacked at a time


# ---------------------------------------------------------------------- reading the caller

def read_argv(memory: notify.ProcessMemory, address: int,
              known: tuple[int, bytes, bool] | None = None,
              reads: list[tuple[int, bytes]] | None = None) -> tuple[list[str], bool, list[tuple[int, int]]]:
    """argv (raw, undecodable bytes kept by surrogateescape), whether it was cut, the ranges read.
    The pointer array is read a page at a time (one pread, not one per pointer). `known`: a string
    already read in this notification (the path: address, bytes, complete), taken as it was read
    when argv points at it too (`execve(path, [path, ...])`, as shells call it), not read twice.
    `reads`: given, it gets every (address, bytes) the argv was made of (see changed_since_read)."""
    argv: list[str] = []
    ranges: list[tuple[int, int]] = []
    truncated = False
    pointers: list[int] = []
    while address:
        if len(argv) >= notify.MAX_ARGS:
            truncated = True
            break
        if not pointers:  # the rest of this page, at most what MAX_ARGS still allows (with the NULL),
            # ARGV_BATCH at a time (its words come from the same read: unpacking a page's 512 cost more)
            count = min(notify.MAX_ARGS - len(argv) + 1, (4096 - address % 4096) // 8 or 1, ARGV_BATCH) or 1
            seen = memory.first_chunk  # the path's first read: a shell's argv array is a few bytes on
            if seen is not None and 0 <= address - seen[0] <= len(seen[1]) - 8 * count:
                pointers = list(struct.unpack_from(f"<{count}Q", seen[1], address - seen[0]))
            else:
                pointers = memory.words(address, count)
        pointer = pointers.pop(0)
        ranges.append((address, 8))
        if reads is not None:
            reads.append((address, pointer.to_bytes(8, "little")))
        if not pointer:
            break
        if known is not None and pointer == known[0]:
            data, complete = known[1], known[2]
        else:
            data, complete = memory.cstring(pointer, MAX_ARG_BYTES)
        ranges.append((pointer, len(data) + 1 if complete else len(data)))
        if reads is not None:
            reads.append((pointer, data + b"\0" if complete else data))
        truncated = truncated or not complete
        argv.append(os.fsdecode(data))
        address += 8
    return argv, truncated, ranges


def changed_since_read(memory: notify.ProcessMemory, reads: list[tuple[int, bytes]]) -> bool:
    """Whether any byte a record was made of reads differently now (or cannot be read again).

    The checks that nobody else can write the caller's memory come after the first read: a
    thread or a CLONE_VM process that wrote the path just after it and then exited is gone by
    the time the processes are listed. Once the checks found nobody, nothing can write the
    memory any more (a new sharer is made only by one already there), so a second read after
    them that matches the first proves the first is what the kernel will read. Overlapping reads
    (argv[0] is often the path) are merged into spans, one pread each; two reads of the same
    bytes that differ are a change.

    When every read lies within the path's first chunk (a shell's exec: its path, argv array and
    strings on one page) and each still matches that chunk, the whole stretch from the first to
    the last byte read is read again at once and compared with the chunk: the bytes between the
    reads are compared too, so nothing less is checked (one pread instead of one per span)."""
    seen = memory.first_chunk
    if seen is not None and reads:
        base, chunk = seen
        low = min(address for address, _data in reads)
        high = max(address + len(data) for address, data in reads)
        if base <= low and high <= base + len(chunk) and all(
                chunk[address - base:address - base + len(data)] == data for address, data in reads):
            try:
                return os.pread(memory.fd, high - low, low) != chunk[low - base:high - base]
            except OSError:
                return True
    spans: list[tuple[int, bytearray]] = []
    for address, data in sorted(reads):
        if spans and address <= spans[-1][0] + len(spans[-1][1]):
            start, held = spans[-1]
            overlap = held[address - start:address - start + len(data)]
            if overlap != data[:len(overlap)]:
                return True
            held += data[len(overlap):]
        else:
            spans.append((address, bytearray(data)))
    try:
        return any(os.pread(memory.fd, len(held), start) != held for start, held in spans)
    except OSError:
        return True


def read_proc(path: str, size: int = 8192, one_line: bool = False) -> bytes:
    """A small /proc file in as few system calls as possible (no buffered file object).

    /proc files are seq_files: a read may stop short of the end, only b"" means the end. A
    one-line file (stat, syscall) is produced whole by one show() and handed over whole to a read
    larger than it, so one_line stops at its newline instead of asking for the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, size):
            chunks.append(chunk)
            if one_line and len(chunks) == 1 and len(chunk) < size and chunk.endswith(b"\n"):
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def pread_line(fd: int) -> bytes:
    """A one-line /proc file (stat, syscall) read afresh through a descriptor held open: a read
    from offset 0 makes the kernel show the file again (seq_file), and a line shorter than the
    read is whole (see read_proc)."""
    data = os.pread(fd, 8192, 0)
    if len(data) < 8192 and data.endswith(b"\n"):
        return data
    chunks = [data]
    while chunk := os.pread(fd, 8192, sum(len(c) for c in chunks)):
        chunks.append(chunk)
    return b"".join(chunks)


class Caller(Record):
    threads: int  # 0: unknown
    tgid: int
    started: str  # starttime: with the pid, which process this is
    parent: int = 0  # ppid (0: unknown)


def caller_of(pid: int) -> Caller:
    """Threads and start time from one read of /proc/PID/stat; the thread group id from status
    only for a multi-threaded caller (a single thread is its own group)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # read_proc, inlined: every exec
        try:
            line = os.read(fd, 8192)
            if len(line) == 8192 or not line.endswith(b"\n"):  # not one whole line: to the end
                line += b"".join(iter(lambda: os.read(fd, 8192), b""))
        finally:
            os.close(fd)
        fields = line.rsplit(b")", 1)[1].split()
        threads, started, parent = int(fields[17]), fields[19].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return Caller(0, pid, "")
    tgid = pid
    if threads != 1:
        try:
            text = read_proc(f"/proc/{pid}/status")
            start = text.index(b"\nTgid:") + 6
            tgid = int(text[start:text.index(b"\n", start)])
        except (OSError, ValueError):
            pass
    return Caller(threads, tgid, started, parent)


def start_time(pid: int) -> str:
    return caller_of(pid).started if os.path.exists(f"/proc/{pid}") else ""


def exe_ident(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def absolute(pid: int, dirfd: int, path: str, flags: int, anchor: int | None = None) -> str:
    """The path as the sandbox sees it (what the record names); a relative one from `anchor`."""
    if anchor is not None and anchor >= 0:
        base = readlink(f"/proc/self/fd/{anchor}")  # the same text as /proc/PID/cwd or fd/N gives
        return base if not path else os.path.normpath(os.path.join(base, path))
    if not path and flags & AT_EMPTY_PATH:
        return readlink(f"/proc/{pid}/fd/{dirfd}")
    if path[:1] == "/" and "//" not in path and "/." not in path and (path[-1] != "/" or path == "/"):
        return path  # no empty, "." or ".." component and no trailing slash: normpath gives it back
    return notify.Dispatcher._absolute(pid, dirfd, path)


def _start_of(pid: int, dirfd: int, path: str) -> str:
    return f"/proc/{pid}/cwd" if dirfd == notify.AT_FDCWD and path else f"/proc/{pid}/fd/{dirfd}"


def anchor(pid: int, dirfd: int, path: str, flags: int) -> int | None:
    """What a relative path starts from (the caller's working directory, or dirfd), or the file
    AT_EMPTY_PATH names, held by an O_PATH descriptor: None for an absolute path (it depends on
    neither), -1 when it cannot be held (see moved)."""
    if path.startswith("/") or (not path and not flags & AT_EMPTY_PATH):
        return None
    try:
        return os.open(_start_of(pid, dirfd, path), os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1


def moved(pid: int, dirfd: int, path: str, held: int) -> bool:
    """Whether the caller's working directory (or dirfd) is no longer the one `held` since the
    record's path was made from it. A process sharing it (CLONE_FS, CLONE_FILES) may chdir or
    dup2 just after and exit before kcmp looks; once the checks found nobody, it stays put."""
    if held < 0:
        return True
    try:
        now, then = os.stat(_start_of(pid, dirfd, path)), os.fstat(held)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


# ---------------------------------------------------------------------- resolving in the sandbox

def open_target(pid: int, tgid: int, dirfd: int, path: str, absolute: str, flags: int,
                root: int | None = None) -> int:
    """An O_PATH descriptor of the file the exec names, resolved in the caller's root (`root`:
    the sandbox's, held open by the caller of this; see sandbox_paths.openat2_in_root)."""
    if not path and flags & AT_EMPTY_PATH:
        return os.open(f"/proc/{pid}/fd/{dirfd}", os.O_PATH | os.O_CLOEXEC)
    proc = through_proc_self(pid, tgid, absolute)
    if proc is not None:  # /proc/self/exe and friends: magic links, opened from our own /proc
        return os.open(proc, os.O_PATH | os.O_CLOEXEC)
    if not absolute.startswith("/"):
        raise OSError(errno.ENOENT, "the caller's working directory is unknown")
    nofollow = os.O_NOFOLLOW if flags & AT_SYMLINK_NOFOLLOW else 0
    return sandbox_paths.openat2_in_root(pid, absolute, os.O_PATH | nofollow, root)


def through_proc_self(pid: int, tgid: int, absolute: str) -> str | None:
    if not absolute.startswith(("/proc/", "/dev/fd/")):
        return None
    for prefix, host in (("/proc/self/", f"/proc/{tgid}/"), ("/proc/thread-self/", f"/proc/{tgid}/task/{pid}/"),
                         ("/dev/fd/", f"/proc/{tgid}/fd/")):
        if absolute.startswith(prefix):
            return host + absolute[len(prefix):]
    return None


class Formats:
    """file_format, remembered per file version: (device, inode, size, mtime, ctime) — a write
    changes the mtime and any change the ctime, which nobody can set back — so an exec of a
    program already seen reads nothing. Bounded: forgotten all at once past MAX_FORMATS."""

    MAX_FORMATS = 4096

    def __init__(self) -> None:
        self.known: dict[tuple[int, int, int, int, int], tuple[str, str | None]] = {}

    def of(self, fd: int, st: os.stat_result) -> tuple[str, str | None]:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        found = self.known.get(key)
        if found is None:
            found = file_format(fd)
            if found[0] != "unknown":  # unreadable now is no answer for later
                if len(self.known) >= self.MAX_FORMATS:
                    self.known.clear()
                self.known[key] = found
        return found


def file_format(fd: int) -> tuple[str, str | None]:
    """elf | script (with its #! line) | other | unknown (not readable by the supervisor)."""
    try:
        readable = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return "unknown", None
    try:
        head = os.pread(readable, 256, 0)  # BINPRM_BUF_SIZE: all the kernel reads of a #! line
    except OSError:
        return "unknown", None
    finally:
        os.close(readable)
    if head.startswith(b"\x7fELF"):
        return "elf", None
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].strip(b" \t")
        return "script", os.fsdecode(line) if line else None
    return "other", None


def interpreter_ident(pid: int, tgid: int, interpreter: str, root: int | None = None,
                      formats: Formats | None = None) -> tuple[int, int] | None:
    absolute = notify.Dispatcher._absolute(pid, notify.AT_FDCWD, interpreter)
    try:
        fd = open_target(pid, tgid, notify.AT_FDCWD, interpreter, absolute, 0, root)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (formats.of(fd, st) if formats is not None else file_format(fd))[0] != "elf":
            return None  # an interpreter that is itself a script: exe names its own interpreter
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)
