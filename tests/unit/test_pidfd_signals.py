"""The supervisor signals sandbox processes through pidfds, never by a pid that may be reused.

bubblewrap is reaped by the supervisor and its namespace init by bubblewrap; after that their pids
may be any process's — a host process's, and the supervisor may be root. Real processes stand in:
a shell ("bubblewrap") whose child ("the init") sleeps; reuse is played by pointing the numbers at
other live processes once the originals are gone, as a reused pid would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from sandboxctl.supervise import processes
from sandboxctl.supervise.loop import Loop


class Supervisor(Loop):
    """The attributes of runner.Supervisor that Loop's signalling uses."""

    def __init__(self, bwrap: subprocess.Popen):
        self.bwrap_pid = bwrap.pid
        self.bwrap_pidfd = os.pidfd_open(bwrap.pid)
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None
        self.sandbox_pidns: tuple[int, int] | None = None
        self.pidfds_lock = threading.Lock()


def _sandbox() -> tuple[subprocess.Popen, int]:
    """A 'bubblewrap' and the pid of its only child."""
    bwrap = subprocess.Popen(["sh", "-c", "sleep 60 & wait; exec sleep 60"])
    assert processes.wait_for(lambda: processes.command_pids(bwrap.pid), timeout=10)
    return bwrap, processes.command_pids(bwrap.pid)[0]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_the_kill_goes_through_pidfds_and_ends_init_and_bwrap(monkeypatch):
    bwrap, init = _sandbox()
    supervisor = Supervisor(bwrap)
    assert supervisor._init_pid() == init and supervisor.init_pidfd is not None
    assert supervisor.sandbox_pidns == processes.pid_namespace(init, supervisor.init_pidfd)

    def by_number(*args):
        raise AssertionError("a signal by pid number")

    monkeypatch.setattr(os, "kill", by_number)
    monkeypatch.setattr(os, "killpg", by_number)
    supervisor._kill()
    assert bwrap.wait(10) == -signal.SIGKILL
    assert processes.wait_for(lambda: _gone(init), timeout=10)
    supervisor._close_pidfd("init_pidfd")
    supervisor._close_pidfd("bwrap_pidfd")


def test_no_signal_reaches_a_process_that_took_a_reaped_pid():
    """bwrap reaped, the init gone: their numbers now name two live host processes (and one of them
    has a child, as bwrap had). The kill reaches neither, and no init is looked up under bwrap's
    number — the old code SIGKILLed both by number."""
    bwrap, init = _sandbox()
    supervisor = Supervisor(bwrap)
    bwrap.kill()
    bwrap.wait(10)  # reaped: its pidfd stays, naming the gone process
    os.kill(init, signal.SIGKILL)
    assert processes.wait_for(lambda: _gone(init), timeout=10)
    host, host_child = _sandbox()  # "took" bwrap's pid: a process with a child
    try:
        supervisor.bwrap_pid = host.pid
        assert supervisor._init_pid() is None, "a child of bwrap's pid once bwrap is gone is not its init"
        supervisor.init_pid, supervisor.init_pidfd = host_child, None  # found before, its pidfd since closed
        supervisor._kill()
        time.sleep(0.2)
        assert host.poll() is None and not _gone(host_child)
    finally:
        host.kill()
        host.wait(10)
        supervisor._close_pidfd("bwrap_pidfd")


def test_an_init_found_before_it_exited_is_signalled_only_through_its_pidfd():
    bwrap, init = _sandbox()
    supervisor = Supervisor(bwrap)
    assert supervisor._init_pid() == init
    os.kill(init, signal.SIGKILL)  # it dies, bwrap's shell reaps it: its number is free
    assert processes.wait_for(lambda: _gone(init), timeout=10)
    host, _child = _sandbox()
    try:
        supervisor.init_pid = host.pid  # as if the number were reused by a host process
        supervisor._kill()
        assert bwrap.wait(10) == -signal.SIGKILL
        time.sleep(0.2)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait(10)
        supervisor._close_pidfd("init_pidfd")
        supervisor._close_pidfd("bwrap_pidfd")


def test_only_processes_of_the_sandboxs_pid_namespace_are_signalled():
    target = subprocess.Popen(["sleep", "60"])
    try:
        pidfd = os.pidfd_open(target.pid)
        ours = processes.pid_namespace(target.pid, pidfd)
        os.close(pidfd)
        assert ours is not None
        processes.signal_members([target.pid], (ours[0], ours[1] + 1), signal.SIGTERM)  # another namespace
        processes.signal_members([target.pid], None, signal.SIGTERM)  # none known: nothing is signalled
        time.sleep(0.2)
        assert target.poll() is None
        processes.signal_members([target.pid], ours, signal.SIGTERM)
        assert target.wait(10) == -signal.SIGTERM
    finally:
        target.kill()
        target.wait()


def test_the_gvisor_kill_never_signals_the_group_of_a_reaped_runsc(monkeypatch):
    """runsc leads its own process group: killpg by its pid is sound only until it is reaped."""
    from types import SimpleNamespace

    from sandboxctl.supervise.gvisor import GvisorSupervisor

    runsc = subprocess.Popen(["sleep", "60"], process_group=0)
    sent: list[int] = []
    real_killpg = os.killpg
    monkeypatch.setattr(os, "killpg", lambda pgid, signum: (sent.append(pgid), real_killpg(pgid, signum)))
    GvisorSupervisor._kill(SimpleNamespace(runsc_pid=runsc.pid))
    assert runsc.wait(10) == -signal.SIGKILL and sent == [runsc.pid]
    GvisorSupervisor._kill(SimpleNamespace(runsc_pid=runsc.pid))  # reaped: its pid may be anyone's now
    assert sent == [runsc.pid]


def test_whether_an_early_bubblewrap_still_runs_is_asked_without_reaping_it():
    """The head start's check (supervise/startup.py) must not reap: HeadStart.abort() then kills
    and waits for that pid, which a reaped child may already have left to another process."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert processes.running_child(child.pid)
    finally:
        child.kill()
    assert processes.wait_for(lambda: not processes.running_child(child.pid), timeout=10)
    pid, status = os.waitpid(child.pid, 0)  # still ours to reap: nothing reaped it
    assert pid == child.pid and os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    child.returncode = -signal.SIGKILL
    assert not processes.running_child(child.pid)  # reaped: not a child of ours any more


def _pid_ns(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/pid")
    return st.st_dev, st.st_ino


def _unshare(*argv: str) -> subprocess.Popen:
    """`unshare -Upf ...`: a user and PID namespace of its own (unprivileged, as a sandbox's)."""
    return subprocess.Popen(["unshare", "-Upf", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_process_in_a_pid_namespace_nested_in_the_sandboxs_is_signalled_but_no_outsider():
    """A "sandbox" PID namespace (ns1) holding a nested one (ns2, as `unshare -Upf` inside makes when
    the policy allows it): ns2's process is a member (it gets the SIGTERM); a sibling namespace's
    process and a host process are not, though each is one of the pids handed in."""
    sandbox = subprocess.Popen(["unshare", "-rpf", "sh", "-c", "unshare -Upf sh -c 'sleep 60 & wait' & exec sleep 60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sibling = _unshare("sleep", "60")
    host = subprocess.Popen(["sleep", "60"])
    try:
        def nested_sleep() -> int | None:
            for pid in processes.descendants(sandbox.pid):
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    is_sleep = handle.read().startswith(b"sleep")
                if is_sleep and _pid_ns(pid) != _pid_ns(processes.command_pids(sandbox.pid)[0]):
                    return pid
            return None

        assert processes.wait_for(lambda: nested_sleep() is not None, timeout=10), sandbox.stderr
        init = processes.command_pids(sandbox.pid)[0]  # ns1's init: the "sandbox init"
        inner = nested_sleep()
        assert processes.wait_for(lambda: processes.command_pids(sibling.pid), timeout=10)
        outsider = processes.command_pids(sibling.pid)[0]
        ns1 = _pid_ns(init)
        assert _pid_ns(inner) != ns1 and _pid_ns(outsider) not in (ns1, _pid_ns(inner))
        processes.signal_members([outsider, host.pid], ns1, signal.SIGTERM)
        time.sleep(0.2)
        assert host.poll() is None and processes.alive(outsider)
        assert processes.open_member(outsider, ns1) is None and processes.open_member(host.pid, ns1) is None
        processes.signal_members([inner], ns1, signal.SIGTERM)
        assert processes.wait_for(lambda: _gone(inner), timeout=10)  # ns2's (not its init): ended by it
    finally:
        for proc in (sandbox, sibling, host):
            proc.kill()
            proc.wait()
