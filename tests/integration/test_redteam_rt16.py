"""rt16: the terminal freeze attacked from inside, judged from outside (canary files, the pty)."""

from __future__ import annotations

import os
import time

from .test_approvals import _policy
from .test_freeze import _size
from .test_redteam_rt13 import BOTTOM_RIGHT, FakeTerminal, _approvals
from .test_terminal import _spawn_on_pty

# `held` is stopped by the command (the freeze leaves it alone: not its to continue). A sentinel
# comes after it in the freeze's order, then fillers, then a watcher: the moment the sentinel is
# stopped, `held` has been passed over, and the watcher (not stopped yet) continues `held`.
# Without a re-check of what was found stopped, `held` ticks through the whole panel.
CONTINUES_THE_LEFT_ONE = r"""
import os, signal, subprocess, sys, time
py = sys.executable
held = subprocess.Popen([py, "-c",
    "import os, time\nwhile True:\n    open('held-ticks', 'a').write('t')\n    time.sleep(0.02)"])
time.sleep(0.3)
os.kill(held.pid, signal.SIGSTOP)
sentinel = subprocess.Popen([py, "-c", "import time; time.sleep(60)"])
fillers = [subprocess.Popen(["sleep", "60"]) for _ in range(40)]
watcher = subprocess.Popen([py, "-c",
    "import os, signal, sys\n"
    "held, sentinel = int(sys.argv[1]), int(sys.argv[2])\n"
    "path = '/proc/%d/stat' % sentinel\n"
    "while True:\n"
    "    if open(path).read().rsplit(')', 1)[1].split()[0] == 'T':\n"
    "        os.kill(held, signal.SIGCONT)\n"
    "        break\n"
    "import time\ntime.sleep(60)\n", str(held.pid), str(sentinel.pid)])
time.sleep(0.5)
try:
    open(sys.argv[1], "w")
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
for p in [held, sentinel, watcher] + fillers:
    p.kill()
print("\r\nall done", flush=True)
"""


def test_a_process_found_stopped_and_continued_by_another_is_stopped_again(sandbox, outside):
    ticks = sandbox.workspace / "held-ticks"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", CONTINUES_THE_LEFT_ONE, str(outside / "x")],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(0.3)
        before = _size(ticks)
        time.sleep(1.0)
        during = _size(ticks) - before
        terminal.type(b"d")
        assert terminal.wait_for(b"all done", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert during == 0, f"a process of the sandbox ticked {during} times while the panel waited"
    assert [a["answer"] for a in _approvals(sandbox)] == ["deny"]
