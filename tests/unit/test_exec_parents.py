"""The vfork parent's /proc files, held open from one exec to the next (ExecEvents._parent_files).

Judged on real processes of this host: a held descriptor shows the process as it is at each look
(a thread started since is counted), never a process that is gone, and at most MAX_PARENTS
parents' files are held.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandboxctl.supervise import exec_events, exec_sharers
from sandboxctl.supervise.exec_events import ExecEvents
from sandboxctl.supervise.processes import descendants

LATER_THREAD = """
import sys, threading, time
sys.stdin.readline()
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("two", flush=True)
time.sleep(60)
"""


def _events() -> ExecEvents:
    return ExecEvents(-1, lambda event, **fields: None, [], lambda path: None, lambda: [])


def _threads(stat_line: bytes) -> int:
    return int(stat_line.rsplit(b")", 1)[1].split()[17])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_held_parent_is_seen_as_it_is_now_and_a_gone_one_is_not_seen():
    events = _events()
    before = _open_fds()
    child = subprocess.Popen([sys.executable, "-c", LATER_THREAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        stat_line, syscall_line, _sched = events._parent_files(child.pid)
        assert _threads(stat_line) == 1 and syscall_line.split()
        held = events.parents[child.pid]
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "two\n"
        stat_line, _syscall, _sched = events._parent_files(child.pid)
        assert events.parents[child.pid] == held  # the same descriptors, read afresh
        assert _threads(stat_line) == 2  # so a parent that started a thread is never taken for a lone waiter
        assert not events._waits_for_vfork(child.pid, 1, child.pid)
    finally:
        child.kill()
        child.wait()
    assert events._parent_files(child.pid) is None  # gone: nothing shown, nothing held
    child.stdin.close()
    child.stdout.close()
    assert child.pid not in events.parents and _open_fds() == before  # its three descriptors are closed
    events.close()


def test_at_most_max_parents_are_held_and_close_lets_them_all_go():
    events = _events()
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(exec_events.MAX_PARENTS + 3)]
    try:
        before = _open_fds()
        for sleeper in sleepers:
            assert events._parent_files(sleeper.pid) is not None
        assert len(events.parents) == exec_events.MAX_PARENTS
        assert list(events.parents) == [s.pid for s in sleepers[3:]]  # the oldest looked at go first
        assert _open_fds() == before + 3 * exec_events.MAX_PARENTS  # the evicted ones' are closed
        # a sleeping process is in no vfork: it is never taken for a waiting parent
        assert not events._waits_for_vfork(sleepers[-1].pid, 1, sleepers[-1].pid)
        events.close()
        assert not events.parents and _open_fds() == before
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


@pytest.mark.parametrize("size", [10, 8191, 8192, 20000])
def test_pread_line_reads_a_file_whole_however_long(tmp_path, size):
    from sandboxctl.supervise import exec_facts

    path = tmp_path / "line"
    path.write_bytes(b"x" * (size - 1) + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert exec_facts.pread_line(fd) == path.read_bytes()
        assert exec_facts.pread_line(fd) == path.read_bytes()  # from offset 0 again
    finally:
        os.close(fd)


def test_memory_writers_are_what_the_policy_gives_back():
    from sandboxctl.plan.syscalls import apply_policy, baseline_rules

    def writers(deny: tuple[str, ...], allow: tuple[str, ...]) -> tuple[str, ...]:
        return exec_events.memory_writers(apply_policy(baseline_rules(), deny, allow))

    assert writers((), ()) == ()
    assert writers((), ("ptrace",)) == ("ptrace", "process_vm_writev")
    assert writers((), ("process_vm_writev",)) == ("process_vm_writev",)
    assert writers((), ("io_uring",)) == ("io_uring_setup",)  # IORING_OP_OPENAT opens /proc/PID/mem unseen
    assert writers(("ptrace", "process_vm_writev"), ("ptrace",)) == ()  # a deny of its own puts them back


def test_a_sharer_made_while_the_processes_were_looked_at_is_judged_too(monkeypatch):
    """The excused vfork parent may have vforked another child after the listing, and wait for
    it rather than for the caller: that child runs in the caller's memory. The processes are
    listed again, and the new one is judged (here it shares the memory and is not blocked)."""
    caller, parent, late = 1000, 1001, 1002
    listings = iter([[caller, parent], [caller, parent, late], [caller, parent, late]])
    events = ExecEvents(-1, lambda event, **fields: None, [], lambda path: None, lambda: next(listings))
    events._kcmp_nr = 312
    monkeypatch.setattr(exec_sharers.exec_sharing, "kcmp", lambda: lambda nr, a, b, kind, x, y: 0)  # everyone shares
    monkeypatch.setattr(events, "_waits_for_vfork", lambda other, child, child_parent=0: other == parent)
    why = events._sharer(caller, caller, [exec_events.KCMP_VM], parent)
    assert why == f"process {late} shares the caller's memory"


def test_an_excused_parent_with_nothing_new_leaves_the_call_verified(monkeypatch):
    caller, parent = 1000, 1001
    events = ExecEvents(-1, lambda event, **fields: None, [], lambda path: None, lambda: [caller, parent])
    events._kcmp_nr = 312
    monkeypatch.setattr(exec_sharers.exec_sharing, "kcmp", lambda: lambda nr, a, b, kind, x, y: 0)
    monkeypatch.setattr(events, "_waits_for_vfork", lambda other, child, child_parent=0: other == parent)
    assert events._sharer(caller, caller, [exec_events.KCMP_VM], parent) is None


@pytest.mark.parametrize(("state", "excused"), [(b"D", True), (b"R", False), (b"S", False)])
def test_only_a_blocked_vfork_parent_is_excused(monkeypatch, state, excused):
    """In clone() but still running ('R'), a parent may not have made its child yet: a child made
    after the checks would run unseen in the shared memory."""
    events = _events()
    events._vfork_calls = {58: "vfork"}
    stat_line = b"1001 (sh) " + state + b" " + b" ".join([b"0"] * 16) + b" 1 0 0"
    monkeypatch.setattr(events, "_parent_files", lambda parent: (stat_line, b"58 0x0 0x0", b"1 2 3\n"))
    monkeypatch.setattr(exec_events.os, "sched_yield", lambda: None)
    assert events._waits_for_vfork(1001, 1000, 1001) is excused


def test_the_process_walk_names_every_thread_when_asked():
    """Exec records judge threads, not processes: a thread of a process whose leader exited
    still runs in the memory the zombie leader no longer names (supervise/listener.py)."""
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(30,)).start()\nprint(flush=True)\n"
                              "time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        tasks = {int(t) for t in os.listdir(f"/proc/{child.pid}/task")}
        assert len(tasks) == 2
        assert child.pid in descendants(os.getpid()) and not tasks - {child.pid} & set(descendants(os.getpid()))
        assert tasks <= set(descendants(os.getpid(), threads=True))
    finally:
        child.kill()
        child.wait()


def test_an_excused_parent_that_ran_since_is_no_excuse(monkeypatch):
    """The parent blocked in a vfork may wait for another child than the caller (the caller its
    clone(CLONE_VM) child): that child exits while we look and the parent runs on. Looked at
    once more after the last listing, a parent that is no longer blocked, or was scheduled at
    all since it was excused (schedstat), leaves the call unverified."""
    caller, parent = 1000, 1001
    events = ExecEvents(-1, lambda event, **fields: None, [], lambda path: None, lambda: [caller, parent])
    events._kcmp_nr, events._vfork_calls = 312, {58: "vfork"}
    monkeypatch.setattr(exec_sharers.exec_sharing, "kcmp", lambda: lambda nr, a, b, kind, x, y: 0)
    blocked = b"1001 (sh) D " + b" ".join([b"0"] * 16) + b" 1 0 0\n"
    looks = {"stat": blocked, "sched": b"5 6 7\n"}
    monkeypatch.setattr(events, "_parent_files", lambda p: (looks["stat"], b"58 0x0 0x0", looks["sched"]))
    monkeypatch.setattr(exec_sharers.facts, "pread_line", lambda fd: looks["stat"] if fd == 10 else looks["sched"])
    events.parents[parent] = (10, 11, 12)
    try:
        assert events._sharer(caller, caller, [exec_events.KCMP_VM], parent) is None  # blocked throughout
        looks["sched"] = b"5 6 8\n"
        monkeypatch.setattr(events, "_parent_files", lambda p: (looks["stat"], b"58 0x0 0x0", b"5 6 7\n"))
        assert "ran while the exec was examined" in events._sharer(caller, caller, [exec_events.KCMP_VM], parent)
        looks["sched"], looks["stat"] = b"5 6 7\n", blocked.replace(b" D ", b" R ")
        monkeypatch.setattr(events, "_parent_files", lambda p: (blocked, b"58 0x0 0x0", b"5 6 7\n"))
        assert "ran while the exec was examined" in events._sharer(caller, caller, [exec_events.KCMP_VM], parent)
    finally:
        events.parents.clear()
