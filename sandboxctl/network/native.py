"""The few system calls the socket-call handler needs that Python's os module lacks, via ctypes.

Built once per supervisor, on the first trapped socket call (ctypes is not on the start-up path).
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


def read_memory(pid: int, address: int, size: int) -> bytes:
    """size bytes of the caller's memory (one process_vm_readv); a short read is EFAULT, as the
    kernel would answer for an address the caller cannot read either."""
    if size == 0:
        return b""
    buffer = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), size)
    remote = _Iovec(address, size)
    done = _libc().process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if done < 0:
        raise _fail()
    if done != size:
        raise OSError(14, "short read from the caller's memory")  # EFAULT
    return buffer.raw


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate of the caller's descriptor (the same open file: same socket, same flags)."""
    fd = _libc().syscall(ctypes.c_long(NR_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(target_fd),
                         ctypes.c_uint(0))
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
