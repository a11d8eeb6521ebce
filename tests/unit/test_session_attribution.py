"""A session's attribution holds running commands only, and never answers from a stale call.

Real processes: this test's own (its session id stands for a command's), and children that
have exited (a command whose first process is gone).
"""

from __future__ import annotations

import os
import subprocess
import threading

from sandboxctl.supervise.session_attribution import Attribution


def own_pidfd() -> int:
    return os.pidfd_open(os.getpid())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_finished_commands_are_dropped_with_their_pidfds():
    attribution = Attribution()
    before = open_fds()
    for number in range(1, 201):
        attribution.started(100000 + number, number, own_pidfd())
    for number in range(1, 201):
        attribution.finished(number)
    assert attribution.leaders == {}
    assert open_fds() == before


def test_a_command_counts_while_its_first_process_lives():
    attribution = Attribution()
    sid = os.getsid(0)
    attribution.started(sid, 7, own_pidfd())
    assert attribution.begin(os.getpid()) == 7
    attribution.started(sid, 8, _exited_pidfd())
    assert attribution.begin(os.getpid()) is None  # its first process is gone: its session id may be another's
    attribution.close()
    assert attribution.leaders == {}


def _exited_pidfd() -> int:
    """A pidfd of a child that has exited (and been reaped)."""
    child = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(child.pid)
    child.kill()
    child.wait()
    return pidfd


def test_each_call_is_looked_up_afresh_and_only_its_own_thread_reuses_it():
    attribution = Attribution()
    sid = os.getsid(0)
    attribution.started(sid, 1, own_pidfd())
    assert attribution.begin(os.getpid()) == 1
    attribution.finished(1)
    assert attribution.command_of(os.getpid()) == 1  # the call being answered: its later records
    assert attribution.begin(os.getpid()) is None  # the next call from the same pid: never the cached answer
    attribution.started(sid, 2, own_pidfd())
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.append(attribution.command_of(os.getpid())))
    thread.start()
    thread.join()
    assert seen == [2]  # another thread has no call of its own: it looks up
    attribution.close()
