"""Exec records are `verified` only when nobody else can write what was read, judged from the log.

The cases a faster check must never take for a lone caller: a vfork parent that started a
second thread since its last exec (its /proc files are held open from one exec to the next), a
process that shares the caller's memory without being a thread or a waiting vfork parent
(clone(CLONE_VM)), and a path and argv in MAP_SHARED memory. Each spawns with posix_spawn (vfork:
the child shares its parent's memory) and tells the records apart by argv[0] markers.
"""

from __future__ import annotations

SPAWN = r"""
import ctypes, mmap, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
envp = (ctypes.c_char_p * 1)(None)

def spawn(marker, path=b"/usr/bin/true"):
    buf = ctypes.create_string_buffer(path)
    argv = (ctypes.c_char_p * 2)(marker, None)
    pid = ctypes.c_int()
    assert libc.posix_spawn(ctypes.byref(pid), buf, None, None, argv, envp) == 0
    os.waitpid(pid.value, 0)
"""

THREAD_LATER = SPAWN + r"""
for _ in range(3):
    spawn(b"alone")  # the supervisor now holds this process's stat and syscall files
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
for _ in range(3):
    spawn(b"threaded")
"""

CLONE_VM = SPAWN + r"""
import signal
stack = ctypes.create_string_buffer(1 << 16)
top = (ctypes.addressof(stack) + (1 << 16) - 256) & ~15
libc.clone.restype = ctypes.c_int
libc.clone.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
spawn(b"before")
# a process of its own (no CLONE_THREAD, no CLONE_VFORK) that shares this memory and waits in pause()
sharer = libc.clone(ctypes.cast(libc.pause, ctypes.c_void_p), top, 0x100 | signal.SIGCHLD, None)
assert sharer > 0, ctypes.get_errno()
print("sharer", sharer, flush=True)
for _ in range(3):
    spawn(b"shared")
os.kill(sharer, signal.SIGKILL)
os.waitpid(sharer, 0)
"""

MAP_SHARED = SPAWN + r"""
area = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)  # another process could hold it too
area[:14] = b"/usr/bin/true\0"
area[64:78] = b"shared-marker\0"
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
argv = (ctypes.c_void_p * 2)(base + 64, None)
pid = ctypes.c_int()
assert libc.posix_spawn(ctypes.byref(pid), ctypes.c_char_p(base), None, None, argv, envp) == 0
os.waitpid(pid.value, 0)
spawn(b"private-marker")
"""


def _execs(sandbox, marker: str) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == "exec" and r["argv"][:1] == [marker]]


def test_a_vfork_parent_that_starts_a_thread_is_no_longer_a_lone_waiter(sandbox):
    result = sandbox.py(THREAD_LATER)
    assert result.returncode == 0, result.stderr
    alone, threaded = _execs(sandbox, "alone"), _execs(sandbox, "threaded")
    assert len(alone) == 3 and all(r["verified"] is True for r in alone), alone
    assert len(threaded) == 3 and all(r["verified"] is False for r in threaded), threaded
    assert all("shares the caller's memory" in r["unverified"] for r in threaded), threaded


def test_a_clone_vm_process_sharing_the_callers_memory_is_found(sandbox):
    result = sandbox.py(CLONE_VM)
    assert result.returncode == 0, result.stderr
    sharer_line = [line for line in result.stdout.splitlines() if line.startswith("sharer")]
    assert sharer_line, result.stdout
    before, shared = _execs(sandbox, "before"), _execs(sandbox, "shared")
    assert len(before) == 1 and before[0]["verified"] is True, before
    assert len(shared) == 3 and all(r["verified"] is False for r in shared), shared
    assert all("shares the caller's memory" in r["unverified"] for r in shared), shared


def test_a_path_and_argv_in_shared_memory_are_not_verified(sandbox):
    result = sandbox.py(MAP_SHARED)
    assert result.returncode == 0, result.stderr
    shared, private = _execs(sandbox, "shared-marker"), _execs(sandbox, "private-marker")
    assert len(shared) == 1 and shared[0]["path"] == "/usr/bin/true", shared
    assert shared[0]["verified"] is False and "shared memory" in shared[0]["unverified"], shared
    assert len(private) == 1 and private[0]["verified"] is True, private


def test_with_ptrace_allowed_no_record_is_verified(sandbox):
    """`syscalls.allow: [ptrace]` also gives back process_vm_writev (RELEASE_GROUPS): any process
    of the sandbox can then rewrite another's pending exec path, thread or not."""
    policy = sandbox.write_policy("ptrace.yaml", "version: 1\nextends: default\nsyscalls:\n  allow: [ptrace]\n")
    result = sandbox.run("--yes", "--", "python3", "-c", SPAWN + "\nspawn(b'calm')\nos.system('/usr/bin/true')",
                         policy=str(policy))
    assert result.returncode == 0, result.stderr
    execs = [r for r in sandbox.records() if r["event"] == "exec"]
    assert len(execs) >= 3 and _execs(sandbox, "calm"), execs
    assert all(r["verified"] is False and "process_vm_writev" in r["unverified"] for r in execs), execs


def test_with_io_uring_allowed_no_record_is_verified(sandbox):
    """`syscalls.allow: [io_uring]`: IORING_OP_OPENAT is an open seccomp never sees, so another
    process of the sandbox opens /proc/PID/mem for writing past the supervisor's refusal and
    rewrites a pending exec path (proven with a canary: the log named one program, another ran)."""
    policy = sandbox.write_policy("uring.yaml", "version: 1\nextends: default\nsyscalls:\n  allow: [io_uring]\n")
    result = sandbox.run("--yes", "--", "python3", "-c", SPAWN + "\nspawn(b'calm')", policy=str(policy))
    assert result.returncode == 0, result.stderr
    execs = [r for r in sandbox.records() if r["event"] == "exec"]
    assert len(execs) >= 2 and _execs(sandbox, "calm"), execs
    assert all(r["verified"] is False and "io_uring_setup" in r["unverified"] for r in execs), execs
