"""Freezing the sandbox while a terminal prompt waits, so that nothing the command writes reaches
the screen between the panel and the answer.

The command shares the terminal, and a process that ignores SIGTTOU writes to it whatever its
foreground group: while it runs, it can move the cursor back over the panel and draw another
target where the real one is. So before a panel is drawn, every process of the sandbox is
stopped (SIGSTOP through a pidfd, parents before children) and the prompt waits, within a bound,
until no thread of theirs runs: each is stopped (T, t), gone (Z, X) or asleep in the kernel
uninterruptibly (D: the thread whose call is asked about, held in its seccomp notification;
a vfork parent), which returns to user space only through the pending stop. Everything they
wrote before that point is ahead of the panel in the terminal's one byte stream; nothing after.

Why signals and not the cgroup freezer: every run has a PID namespace, not every run a cgroup of
its own (an unprivileged user without a delegated one; a host on cgroup v1, as the one this was
measured on), and the cgroup v2 freezer counts a task as frozen only once it reaches the freezer
trap on its way to user space (kernel/cgroup/freezer.c), which the asking thread, asleep killable
in its notification, never does: `cgroup.events` could not say "frozen" while a request waits
(read from the kernel source, not measured here).

The stop must not cost the request: without SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV a stopped
caller leaves its notification (the kernel interrupts the wait, the supervisor's answer finds
nothing, the call is made again after SIGCONT). The shim asks for the flag (Linux 5.19) and the
freeze is used only when the kernel granted it (launch/shim.py; run.start's layers say which).

A process found already stopped (by the command itself, or a tracer) is left alone and never
continued, but looked at again every round: one continued by a process not stopped yet is stopped
then like any other (rt16: it ticked through a whole panel); only what was stopped here is
continued (children before parents), and `release` runs in a `finally` of the prompt's thread.
If the supervisor dies, bubblewrap's --die-with-parent kills the sandbox, stopped processes
included (SIGKILL needs no continue).
"""

from __future__ import annotations

import _signal
import contextlib
import os
import threading
import time

from sandboxctl.supervise import processes

FREEZE_BOUND = 2.0  # s to wait for every process to stop; past it the request is denied
DRAIN_BOUND = 0.25  # s at most for the calls already made to be received before the stop
STILL = frozenset(b"TtDZXxI")  # thread states that run no user code until continued


class Freeze:
    """The sandbox's processes stopped by `hold` and continued by `release` (idempotent)."""

    def __init__(self, init_pid: int, namespace: tuple[int, int], listener: int | None = None):
        self.init_pid = init_pid
        self.namespace = namespace
        self.listener = listener  # the seccomp listener: calls made but not yet received (drain)
        self.stopped: dict[int, int] = {}  # pid -> pidfd, in the order they were stopped
        self.left: dict[int, int] = {}  # pid -> pidfd found stopped already: not ours to continue
        self.holding = False
        self.lock = threading.Lock()
        self.last_wait_s = 0.0  # how long the last hold took (the log's approval records)

    def hold(self, bound: float = FREEZE_BOUND) -> bool:
        """Stop every process of the sandbox; True once no thread of theirs runs. A process forked
        meanwhile is found by the next listing: done when a listing made after every known process
        had stopped finds none new. False (everything continued again) past `bound`."""
        start = time.monotonic()
        with self.lock:
            try:
                if not self.holding:
                    self._drain(start + DRAIN_BOUND)
                while True:
                    still = self._all_still()
                    fresh = self._stop_new()
                    if still and not fresh:
                        self.holding = True
                        self.last_wait_s = time.monotonic() - start
                        return True
                    if time.monotonic() - start > bound:
                        break
                    time.sleep(0.001)
            except BaseException:
                self._release()
                raise
            self._release()
            return False

    def _drain(self, until: float) -> None:
        """Let the notification thread receive the calls already made before the stop: a call the
        supervisor has not received yet is interrupted by SIGSTOP (only received ones wait through
        it) and made again after SIGCONT, a new request a round later. Measured: a flood of 300
        unanswered writes took 84 s in rounds of a few requests without this, against ~5 s with it.
        The listener polls readable while a call waits to be received (seccomp_notify_poll)."""
        if self.listener is None:
            return
        import select

        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        while time.monotonic() < until:
            try:
                if not poller.poll(0):
                    return
            except OSError:
                return
            time.sleep(0.002)

    def release(self) -> None:
        with self.lock:
            self._release()

    def _release(self) -> None:
        """Continue what was stopped here, children before parents (a parent continued first could
        see its child stopped, as a shell's job control does, and act on it)."""
        for pidfd in reversed(list(self.stopped.values())):
            processes.send(pidfd, _signal.SIGCONT)
            with contextlib.suppress(OSError):
                os.close(pidfd)
        self.stopped.clear()
        for pidfd in self.left.values():
            with contextlib.suppress(OSError):
                os.close(pidfd)
        self.left.clear()
        self.holding = False

    def _stop_new(self) -> bool:
        """SIGSTOP each process of the sandbox not met yet; whether any was met (stopped or not)."""
        fresh = False
        for pid in processes.descendants(self.init_pid):
            if pid in self.stopped or pid in self.left:
                continue
            fresh = True
            pidfd = processes.open_member(pid, self.namespace)
            if pidfd is None:
                # gone between the listing and here, maybe after a fork: its child is in no listing
                # made so far, so list once more (rt16: chains of fork-and-exit ran through the panel)
                continue
            if _stopped_already(pid):
                self.left[pid] = pidfd
                continue
            self.stopped[pid] = pidfd
            processes.send(pidfd, _signal.SIGSTOP)
        return fresh

    def _all_still(self) -> bool:
        """Whether no thread of what was stopped runs. A thread still running is sent a stop of its
        own: the kernel hands a process-wide SIGSTOP to one thread, the main one when it may take
        it, and the main thread asleep in its notification (killable only) takes it only when it
        wakes, while the others go on (measured: the rt13 writer's second thread kept writing)."""
        still = True
        for pid, pidfd in list(self.left.items()):
            # found stopped, then continued by a process not stopped yet (rt16): ours to stop now
            if not processes.exited(pidfd) and not _stopped_already(pid):
                del self.left[pid]
                self.stopped[pid] = pidfd
                processes.send(pidfd, _signal.SIGSTOP)
                still = False
        for pid, pidfd in self.stopped.items():
            moving = [tid for tid, state in _states(pid).items() if state not in STILL]
            if moving and not processes.exited(pidfd):  # pidfd held and not exited: pid (and its threads) are its own
                still = False
                for tid in moving:
                    _tgkill(pid, tid, _signal.SIGSTOP)
        return still


def _states(pid: int) -> dict[int, int]:
    """The state letter of each thread of `pid` (none once it is gone)."""
    states = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as handle:
                states[int(task)] = handle.read().rsplit(b")", 1)[1].split()[0][0]
        except (OSError, IndexError, ValueError):
            continue
    return states


def _stopped_already(pid: int) -> bool:
    """Stopped before we came (every thread T or t): the command's own business, left stopped."""
    states = _states(pid).values()
    return bool(states) and all(state in b"Tt" for state in states)


_libc = None


def _tgkill(tgid: int, tid: int, signum: int) -> None:
    """tgkill(2): a signal to one thread, and only if it is still of thread group `tgid`."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall(TGKILL.get(os.uname().machine, 234), tgid, tid, signum)


TGKILL = {"x86_64": 234, "aarch64": 131, "riscv64": 131, "ppc64le": 250, "s390x": 241}
