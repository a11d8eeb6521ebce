"""Red team 15: what the action log shows of an exec is what ran.

Judged from outside: canary files the payloads write say what really ran; the host-side log
and `sandboxctl log` say what the supervisor recorded.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys


def test_a_scripts_interpreter_is_in_its_exec_record(sandbox):
    """`./build.sh` whose #! line names a binary the sandbox wrote: the kernel runs that binary,
    which no execve names. The record (and the human view) must say so, not only "build.sh"."""
    ws = sandbox.workspace
    payload = ws / "payload"
    shutil.copy("/bin/sh", payload)  # any ELF the command could have written
    payload.chmod(payload.stat().st_mode | stat.S_IXUSR)
    script = ws / "build.sh"
    script.write_text(f"#!{payload}\necho ran > {ws}/canary\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = sandbox.run("--", "python3", "-c", "import os; os.execv('./build.sh', ['./build.sh'])")
    assert result.returncode == 0, result.stderr
    assert (ws / "canary").read_text() == "ran\n", "the payload ran (judged from outside)"
    records = [r for r in sandbox.records() if r["event"] == "exec" and r["path"] == str(script)]
    assert len(records) == 1, sandbox.records()
    assert records[0]["interpreter"] == str(payload), records[0]
    shown = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--event", "exec"],
                           env=sandbox.env({"COLUMNS": "300"}), capture_output=True, text=True, timeout=60)
    line = next(text for text in shown.stdout.splitlines() if "build.sh" in text and "python3" not in text)
    assert str(payload) in line, shown.stdout
