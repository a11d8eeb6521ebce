"""A short scheduler slice for the thread that answers seccomp notifications, while it does.

Every trapped call waits, stopped, for this thread: when the sandbox keeps the CPUs busy (a
build, pip, a second process of its own), the thread woken by a notification would otherwise
wait for whatever runs on its CPU to use up a default slice (~1.4 ms here on two CPUs) before it
may answer. Linux 6.12's EEVDF takes sched_attr.sched_runtime as a task's own slice: a short one
gives an earlier deadline, so the woken supervisor runs first and then sleeps again. Its share of
CPU (its weight, the nice value) is unchanged; only when it runs within it. Older kernels ignore
the field for normal tasks; any refusal leaves the thread as it was (best effort, never a wall).

Only a thread with a normal or batch policy is changed, and only its slice: policy, nice and
flags are written back as read. It lasts while the loop answers: `restore` puts the slice read at
the start back when the loop ends (tear-down and the end-of-run checks are CPU work that a short
slice would only cut up; and the library runs the supervisor in its caller's thread). A slice left
at the default comes back as a fixed one of the same length. Threads and processes this thread
starts meanwhile inherit the short slice (the proxy's threads: latency-bound too); the sandbox
was started before, and keeps its own.
"""

from __future__ import annotations

import os
import struct

SLICE_NS = 100_000  # the shortest the kernel accepts (0.1 ms)
# sched_setattr, sched_getattr per machine (include/uapi/asm-generic/unistd.h for the generic ones)
_CALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275), "ppc64le": (355, 356),
          "s390x": (345, 346)}
_ATTR = struct.Struct("<IIQiIQQQII")  # size policy flags nice priority runtime deadline period util_min util_max
SCHED_NORMAL, SCHED_BATCH = 0, 3
SCHED_FLAG_RESET_ON_FORK = 0x01  # kept as it was (only CAP_SYS_NICE may clear it); no other flag is sent


class ShortSlice:
    """with-less on purpose: `start()` where the loop begins to answer, `restore()` when it ends."""

    def __init__(self) -> None:
        self.saved: tuple[int, ...] | None = None

    def start(self) -> bool:
        """Give the calling thread SLICE_NS; True if the kernel took it."""
        calls = _CALLS.get(os.uname().machine)
        if calls is None or self.saved is not None:
            return False
        try:
            saved = _get(calls[1])
        except OSError:
            return False
        _size, policy, flags, nice, priority, _runtime, *_rest = saved
        if policy not in (SCHED_NORMAL, SCHED_BATCH):
            return False  # idle, real-time or deadline: the user's choice, left alone
        if not _set(calls[0], policy, flags & SCHED_FLAG_RESET_ON_FORK, nice, priority, SLICE_NS):
            return False
        self.saved = saved
        return True

    def restore(self) -> None:
        calls = _CALLS.get(os.uname().machine)
        if self.saved is None or calls is None:
            return
        _size, policy, flags, nice, priority, runtime, *_rest = self.saved
        self.saved = None
        _set(calls[0], policy, flags & SCHED_FLAG_RESET_ON_FORK, nice, priority, runtime)


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _get(number: int) -> tuple[int, ...]:
    ctypes, libc = _libc()
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(ctypes.c_long(number), ctypes.c_long(0), buffer, ctypes.c_uint(_ATTR.size),
                    ctypes.c_uint(0)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return _ATTR.unpack(buffer.raw)


def _set(number: int, policy: int, flags: int, nice: int, priority: int, runtime: int) -> bool:
    ctypes, libc = _libc()
    buffer = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, policy, flags, nice, priority, runtime, 0, 0, 0, 0),
                                         _ATTR.size)
    return libc.syscall(ctypes.c_long(number), ctypes.c_long(0), buffer, ctypes.c_uint(0)) == 0
