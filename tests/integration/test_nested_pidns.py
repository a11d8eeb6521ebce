"""A policy that gives back unshare/clone lets the command make nested user and PID namespaces; their
processes get the timeout's SIGTERM and a forwarded SIGTERM as every other process of the sandbox
(before, they were left out and only died with the init's SIGKILL). Judged from the host: the file
each one's SIGTERM handler writes in the workspace."""

from __future__ import annotations

import signal
import subprocess
import time

POLICY = "version: 1\nextends: default\nsyscalls:\n  allow: [unshare, clone]\n"

# writes TERM to argv[1] on SIGTERM (after a pause, so a parent's end cannot pass for it), READY first
TRAP = r"""
import os, signal, sys, time
def on_term(signum, frame):
    with open(sys.argv[1], "w") as out:
        out.write(f"TERM {os.getpid()}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""

# the top-level command: starts `unshare -Upf python3 trap.py` and kills that unshare, so its nested
# PID namespace's init (the trap) is left at the sandbox's top level, as the command's sibling
ORPHAN = r"""
import os, signal, subprocess, sys, time
child = subprocess.Popen(["unshare", "-Upf", sys.executable, sys.argv[1], sys.argv[2]])
while not os.path.exists(sys.argv[2] + ".ready"):
    time.sleep(0.02)
child.kill()
child.wait()
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))  # the trap gets its turn first
open(sys.argv[2] + ".orphaned", "w").close()
time.sleep(60)
"""


def _wait(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_the_timeouts_sigterm_reaches_a_nested_pid_namespace(sandbox):
    policy = sandbox.write_policy("nested.yaml", POLICY)
    (sandbox.workspace / "trap.py").write_text(TRAP)
    out = sandbox.workspace / "out"
    result = sandbox.run("--yes", "--timeout", "3s", "--", "unshare", "-Upf", "python3", "trap.py", str(out),
                         policy=str(policy))
    assert result.returncode == 124, result.stderr
    assert (sandbox.workspace / "out.ready").exists(), "the nested namespace was made and its trap ran"
    assert out.read_text().startswith("TERM 1\n"), "its init (pid 1 in its own namespace) got the SIGTERM"


def test_a_forwarded_sigterm_reaches_a_nested_namespace_left_at_the_top(sandbox):
    policy = sandbox.write_policy("nested.yaml", POLICY)
    (sandbox.workspace / "trap.py").write_text(TRAP)
    (sandbox.workspace / "orphan.py").write_text(ORPHAN)
    out = sandbox.workspace / "out"
    proc = subprocess.Popen(sandbox.argv("--yes", "--", "python3", "orphan.py", "trap.py", str(out),
                                         policy=str(policy)),
                            cwd=sandbox.workspace, env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert _wait(lambda: (sandbox.workspace / "out.orphaned").exists()), proc.stderr.read() \
            if proc.poll() is not None else "no orphan"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert out.read_text().startswith("TERM 1\n"), "the nested init at the top level got the forwarded SIGTERM"
