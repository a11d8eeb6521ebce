"""rt16: the terminal freeze attacked from inside, judged from outside (canary files, the pty)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.integration.test_protected_paths import git, repo
from tests.integration.test_redteam_rev import HOOK, _hidden_hooks

from .test_approvals import _policy
from .test_freeze import _sandbox_threads, _size
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


def test_a_hardlink_planted_before_the_host_sets_hooks_path_is_no_way_in(sandbox, tmp_path: Path) -> None:
    """The sandbox made `alias`, a hardlink of hidden/pre-commit, while nothing ran it; the host then
    set core.hooksPath = hidden (LiveGitRefs): hidden/ was held by name only, the write through
    `alias` landed in the hook, and the host's next commit ran it."""
    canary = tmp_path / "CANARY"
    ws = repo(sandbox.workspace, sandbox.home)
    _hidden_hooks(ws)
    script = ("ln hidden/pre-commit alias && echo > ready; i=0; while ! grep -q hooksPath .git/config; do "
              "i=$((i+1)); [ $i -gt 400 ] && exit 3; sleep 0.05; done; "
              f"printf 'touch {canary}\\n' >> alias; echo rc=$?")
    process = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=ws, env=sandbox.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        if (ws / "ready").exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    git(ws, "config", "core.hooksPath", "hidden", home=sandbox.home)
    out, err = process.communicate(timeout=60)
    assert "rc=" in out, err  # the sandbox saw the change and tried
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), out + err
    assert (ws / "hidden" / "pre-commit").read_text() == HOOK


# The #! line's argument and a memfd's name carry terminal controls, bidi overrides, invalid UTF-8
# and a long run; the exec records' `interpreter` and `resolved` hold them.
HOSTILE = b"\x1b]0;owned\x07\x1b[2J\x1b[H\r\nFAKE approval\xe2\x80\xae\xff\xfe" + b"A" * 200
MEMFD_EXEC = r"""
import os, sys
hostile = bytes.fromhex(sys.argv[1])
fd = os.memfd_create(hostile.decode("utf-8", "surrogateescape")[:240], 0)  # 249 bytes at most
os.write(fd, open("/bin/true", "rb").read())
if os.fork() == 0:
    os.execv(f"/proc/self/fd/{fd}", ["innocent"])
os.wait()
if os.fork() == 0:
    os.execv("./hostile.sh", ["./hostile.sh"])
os.wait()
"""


def test_hostile_interpreter_and_memfd_names_are_inert_in_the_log(sandbox):
    import json
    import subprocess as sp
    import sys

    script = sandbox.workspace / "hostile.sh"
    script.write_bytes(b"#!/bin/true " + HOSTILE + b"\nexit 0\n")
    script.chmod(0o755)
    result = sandbox.run("--", "python3", "-c", MEMFD_EXEC, HOSTILE.hex())
    assert result.returncode == 0, result.stderr
    execs = [r for r in sandbox.records() if r["event"] == "exec"]
    assert any("interpreter" in r for r in execs) and any("memfd" in r.get("resolved", "") for r in execs), execs
    shown = sp.run([sys.executable, "-m", "sandboxctl", "log", "--event", "exec"],
                   env=sandbox.env({"COLUMNS": "300"}), capture_output=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for bad in (b"\x1b", b"\x07", b"\r", "\u202e".encode(), b"\xff", b"FAKE approval\n"):
        assert bad not in out, (bad, out[-3000:])
    assert len(out.splitlines()) < 40, out[-3000:]
    assert b"FAKE approval" in out and b"owned" in out, out[-3000:]  # shown, escaped
    for line in sandbox.log_path.read_bytes().splitlines():  # every record is one JSON line
        json.loads(line)
    verify = sp.run([sys.executable, "-m", "sandboxctl", "log", "--verify"], env=sandbox.env(),
                    capture_output=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# Six chains of fork-and-exit (each process forks and exits at once) and a ticker; then the ask.
WALKERS = r"""
import os, subprocess, sys, time
ticker = subprocess.Popen([sys.executable, "-c",
    "import time\nwhile True:\n    open('ticks', 'a').write('t')\n    time.sleep(0.02)"])
walk = "import os, time\nend = time.time() + 6\nwhile time.time() < end:\n    if os.fork():\n        os._exit(0)\n"
walkers = [subprocess.Popen([sys.executable, "-c", walk]) for _ in range(6)]
time.sleep(0.5)
try:
    open(sys.argv[1], "w")
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
time.sleep(0.5)
print("\r\nafter", flush=True)
time.sleep(7)
ticker.kill()
print("\r\nall done", flush=True)
"""


def test_fork_and_exit_chains_never_run_through_a_panel(sandbox, outside):
    """A process listed by the freeze and gone before its pidfd was opened (it forked and exited)
    counted as nothing new: its child was in no listing, and the panel was drawn with six
    sandbox processes running. Either the panel shows over a still sandbox, or the ask is denied
    within the freeze's bound; after it, nothing is left stopped."""
    ticks = sandbox.workspace / "ticks"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", WALKERS, str(outside / "x")],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    running: dict[int, str] = {}
    try:
        if terminal.wait_for(BOTTOM_RIGHT, 5):
            running = {tid: s for tid, s in _sandbox_threads(proc.pid).items() if s not in "TDZX"}
            terminal.type(b"d")
        assert terminal.wait_for(b"after", 25), terminal.screen[-3000:]  # the prompt's own 20 s at most
        states = _sandbox_threads(proc.pid)
        before = _size(ticks)
        time.sleep(0.5)
        grew = _size(ticks) > before
        assert terminal.wait_for(b"all done", 30), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not running, f"the panel was drawn while sandbox threads ran: {running}"
    assert grew and "T" not in states.values(), states
    assert [a["answer"] for a in _approvals(sandbox)] == ["deny"]
