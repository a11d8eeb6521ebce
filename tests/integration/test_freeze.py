"""The sandbox is stopped while a terminal panel waits (supervise/freeze.py), judged from outside:
the pty master's bytes, the state of the sandbox's threads in the host's /proc, canary files the
command writes, and the action log."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sandboxctl.supervise import processes

from .test_approvals import _policy
from .test_redteam_rt13 import BOTTOM_RIGHT, FakeTerminal, _approvals
from .test_terminal import _spawn_on_pty


def _sandbox_threads(supervisor: int) -> dict[int, str]:
    """tid -> state of every thread of the sandbox's processes but its PID-namespace init (the
    host's view; the supervisor's own helpers are in the host's namespace and not counted)."""
    own = os.stat("/proc/self/ns/pid").st_ino
    found = {}
    for pid in processes.descendants(supervisor):
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == own:
                continue
            nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
            if nspid[-1] == "1":
                continue
            for task in os.listdir(f"/proc/{pid}/task"):
                found[int(task)] = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
    return found


def _with_marker(marker: str) -> list[int]:
    """Host pids whose last argument is `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0").endswith(b"\0" + marker.encode()):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# A child ticks into a file of the workspace; a thread of the command's writes to the terminal
# every 50 ms; the main thread writes outside the writable set (asked).
TICKING_WRITER = r"""
import os, subprocess, sys, threading, time
ticker = subprocess.Popen([sys.executable, "-c",
    "import time\nwhile True:\n    open('ticks', 'a').write('t')\n    time.sleep(0.02)"])
def chatter():
    while True:
        os.write(1, b"<chatter>")
        time.sleep(0.05)
threading.Thread(target=chatter, daemon=True).start()
time.sleep(0.5)
for path in sys.argv[1:]:
    try:
        with open(path, "w") as handle:
            handle.write("written in the sandbox")
        print("\r\nwrote", path, flush=True)
    except OSError as exc:
        print("\r\nrefused", path, exc.errno, flush=True)
time.sleep(0.5)
ticker.kill()
print("\r\nall done", flush=True)
"""


def test_every_process_is_stopped_while_the_panel_waits_and_goes_on_after(sandbox, outside):
    target = outside / "authorized_keys"
    ticks = sandbox.workspace / "ticks"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", TICKING_WRITER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        before = _size(ticks)
        states = _sandbox_threads(proc.pid)
        time.sleep(1.0)
        assert _size(ticks) == before > 0, "the ticker ran while the panel waited"
        # the asking thread sleeps in its call (D); every other thread is stopped
        assert sorted(states.values()).count("D") == 1 and set(states.values()) <= {"T", "D"}, states
        terminal.type(b"d")
        assert terminal.wait_for(b"all done", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert _size(ticks) > before, "the ticker was not continued"
    screen = terminal.screen
    panel = screen.index(b"approval needed")
    answered = screen.index(b"-> denied")
    assert b"<chatter>" in screen[:panel] and b"<chatter>" in screen[answered:]
    assert b"<chatter>" not in screen[panel:answered], screen[panel:answered]
    assert not target.exists() and [a["answer"] for a in _approvals(sandbox)] == ["deny"]
    start = next(r for r in sandbox.records() if r["event"] == "run.start")
    assert start["layers"]["approvals"]["terminal_freeze"]["enforced"] is True


def _settled_at(record: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def _two_panels(sandbox, outside: Path, attempt: int) -> tuple[bool, bool]:
    """One run asking two writes; (whether the second was asked before the first was answered,
    whether the ticker stood still from the first panel to the second answer)."""
    first, second = outside / f"one{attempt}", outside / f"two{attempt}"
    two_threads = TICKING_WRITER.replace(
        "for path in sys.argv[1:]:", "both = threading.Barrier(2)\ndef write(path):\n    both.wait()").replace(
        "time.sleep(0.5)\nticker.kill()",
        "threads = [threading.Thread(target=write, args=(p,)) for p in sys.argv[1:]]\n"
        "[t.start() for t in threads]\n[t.join() for t in threads]\ntime.sleep(0.5)\nticker.kill()")
    ticks = sandbox.workspace / "ticks"
    ticks.unlink(missing_ok=True)
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", two_threads, str(first), str(second)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(0.2)
        before = _size(ticks)
        time.sleep(0.8)
        terminal.type(b"o")
        with terminal.lock:
            shown = terminal.screen.find(b"approval needed")
        assert terminal.wait_for(b"approval needed", 10, after=shown + 1), terminal.screen[-2000:]
        time.sleep(1.0)
        still = _size(ticks) == before
        terminal.type(b"d")
        assert terminal.wait_for(b"all done", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert _size(ticks) > before
    records = [a for a in _approvals(sandbox) if a["target"] in (str(first), str(second))]
    assert sorted(a["answer"] for a in records) == ["deny", "once"], records
    once, deny = sorted(records, key=lambda a: a["answer"] != "once")
    return _settled_at(deny) - deny["waited_s"] < _settled_at(once), still


def test_one_freeze_holds_across_queued_panels(sandbox, outside):
    """Two writes asked at once: when the second is asked before the first is answered, the ticker
    stays still from the first panel to the second answer (no continue between queued panels).
    The second thread may be stopped before it made its call: then it asks after the first answer,
    and the run is tried again (at most 4 times)."""
    for attempt in range(4):
        both_queued, still = _two_panels(sandbox, outside, attempt)
        if both_queued:
            assert still, "the sandbox ran between two queued panels"
            return
    pytest.fail("in 4 runs the second call was never asked before the first answer")


# The command stops a child of its own before it asks; after the answer that child is still stopped.
STOPS_ITS_OWN = r"""
import os, signal, subprocess, sys, time
held = subprocess.Popen([sys.executable, "-c",
    "import time\nwhile True:\n    open('held-ticks', 'a').write('t')\n    time.sleep(0.02)", "held-by-the-command"])
time.sleep(0.3)
os.kill(held.pid, signal.SIGSTOP)
time.sleep(0.2)
try:
    open(sys.argv[1], "w")
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
time.sleep(1.0)
print("\r\nafter", flush=True)
time.sleep(1.0)
held.kill()
print("\r\nall done", flush=True)
"""


def test_a_process_the_command_stopped_stays_stopped_after_the_prompt(sandbox, outside):
    ticks = sandbox.workspace / "held-ticks"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", STOPS_ITS_OWN, str(outside / "x")],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(0.8)
        terminal.type(b"\x03")  # Ctrl-C during the prompt: deny
        assert terminal.wait_for(b"after", 15), terminal.screen[-3000:]
        stopped = _size(ticks)
        time.sleep(0.5)
        assert _size(ticks) == stopped, "the prompt continued a process the command had stopped"
        assert terminal.wait_for(b"all done", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert [a["answer"] for a in _approvals(sandbox)] == ["deny"]


# On SIGTERM the command leaves a canary: it could take the signal, so it was continued first.
TERM_CANARY = r"""
import signal, sys, time
def term(*_):
    open("got-term", "w").write("x")
    sys.exit(3)
signal.signal(signal.SIGTERM, term)
try:
    open(sys.argv[1], "w")
except OSError:
    pass
time.sleep(30)
"""


def test_the_run_timeout_ends_a_frozen_run_and_the_command_takes_its_sigterm(sandbox, outside):
    proc, master = _spawn_on_pty(sandbox, ["--timeout", "3s", "--", "python3", "-c", TERM_CANARY,
                                           str(outside / "x")],
                                 policy=_policy(sandbox, outside, timeout="60s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        started = time.monotonic()
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert code == 124 and took < 10, (code, took, terminal.screen[-2000:])
    assert (sandbox.workspace / "got-term").exists(), "the command was killed stopped, never given its SIGTERM"
    assert [a["answer"] for a in _approvals(sandbox)] == ["deny"]


def test_killing_the_supervisor_kills_the_frozen_sandbox(sandbox, outside):
    marker = f"frozen-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    script = ("import subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
              "time.sleep(0.3)\nopen(sys.argv[1], 'w')\n")
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", script, str(outside / "x")],
                                 policy=_policy(sandbox, outside, timeout="60s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        found = _with_marker(marker)
        assert found and all(_sandbox_threads(proc.pid).get(pid) == "T" for pid in found), found
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert processes.wait_for(lambda: not _with_marker(marker), 10), "a stopped process outlived the supervisor"
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
