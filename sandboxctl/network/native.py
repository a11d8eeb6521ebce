"""The few system calls the socket-call handler needs that Python's os module lacks, via ctypes.

Imported on the first trapped socket call (or at launch, to find the listed sockets): ctypes is
not on the start-up path of a run that makes none.
Each returns a value or raises OSError with the kernel's errno, except connect, whose errno *is*
the answer the sandboxed caller gets.
"""

from __future__ import annotations

import ctypes
import functools
import os

NR_OPENAT2 = 437  # the same number on every architecture that has them
NR_PIDFD_GETFD = 438
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    libc.process_vm_readv.argtypes = (ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                                      ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong)
    libc.connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    return libc


def _fail() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


class MemoryReader:
    """Reads a few bytes of a caller's memory with one process_vm_readv, through buffers made once
    (this runs for every trapped connect). One reader per thread."""

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self.buffer = ctypes.create_string_buffer(capacity)
        self.local = _Iovec(ctypes.cast(self.buffer, ctypes.c_void_p), capacity)
        self.remote = _Iovec(0, 0)
        self.call = _libc().process_vm_readv
        self.local_ref, self.remote_ref = ctypes.byref(self.local), ctypes.byref(self.remote)

    def read(self, pid: int, address: int, size: int) -> bytes:
        """size bytes at address; a short read is EFAULT, as the kernel would answer for an address
        the caller cannot read either."""
        if size <= 0:
            return b""
        if size > self.capacity:
            raise OSError(22, "longer than any socket address")  # EINVAL, as the kernel says
        self.local.len = size
        self.remote.base, self.remote.len = address, size
        done = self.call(pid, self.local_ref, 1, self.remote_ref, 1, 0)
        if done != size:
            raise _fail() if done < 0 else OSError(14, "short read from the caller's memory")  # EFAULT
        return self.buffer.raw[:size]


PIDFD_THREAD = os.O_EXCL  # Linux 6.9: a pidfd of this very thread, not of its thread group
_thread_pidfds = True


def pidfd_of_thread(tid: int) -> int:
    """A pidfd for the thread that made the call (notifications name threads). Its descriptor table
    is the one the call uses, even for a thread made without CLONE_FILES. Before Linux 6.9 only a
    thread-group leader has a pidfd: its group's leader is used, whose table a thread shares
    unless it was made without CLONE_FILES (then the descriptor got is the leader's; what is
    connected is still only an address that was checked)."""
    global _thread_pidfds
    if _thread_pidfds:
        try:
            return os.pidfd_open(tid, PIDFD_THREAD)
        except OSError as exc:
            if exc.errno != 22:  # EINVAL: the flag is unknown here
                raise
            _thread_pidfds = False
    try:
        return os.pidfd_open(tid)
    except OSError as exc:
        if exc.errno != 22:  # EINVAL: a thread that is not its group's leader
            raise
    with open(f"/proc/{tid}/status") as status:
        leader = next(int(line.split()[1]) for line in status if line.startswith("Tgid:"))
    return os.pidfd_open(leader)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of the caller's descriptor (the same open file: same socket, same flags)."""
    fd = _libc().syscall(NR_PIDFD_GETFD, pidfd, target_fd, 0)
    if fd < 0:
        raise _fail()
    return fd


def open_in_root(root_fd: int, path: bytes) -> int:
    """O_PATH descriptor of `path` resolved as the sandbox sees it: `..` and absolute symlinks stay
    inside root_fd (RESOLVE_IN_ROOT), and no /proc magic link is followed."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc().syscall(ctypes.c_long(NR_OPENAT2), ctypes.c_long(root_fd), ctypes.c_char_p(path),
                         ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise _fail()
    return fd


def connect(fd: int, sockaddr: bytes) -> int:
    """connect(2) with a raw sockaddr, exactly as the caller passed it: 0 or the errno."""
    if _libc().connect(fd, sockaddr, len(sockaddr)) == 0:
        return 0
    return ctypes.get_errno()
