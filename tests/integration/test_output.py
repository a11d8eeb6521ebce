"""What people read after a run: one row per distinct denial, escaped values, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys


def _sandboxctl(sandbox, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=sandbox.workspace,
                          env=sandbox.env(env), capture_output=True, text=True, timeout=60)


def test_identical_denials_are_one_row_with_a_count(sandbox, tmp_path):
    summary = tmp_path / "summary.json"
    script = ("exec 2>/dev/null; for i in 1 2 3 4 5 6; do echo x > /etc/same-place; done; "
              "echo x > '/etc/odd\x1b[2Jname'; exit 0")
    result = _sandboxctl(sandbox, "run", "-p", "default", "--approve", "deny", "--summary-json", str(summary),
                         "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    table = result.stderr
    assert "7 denied in run" in table
    rows = [line for line in table.splitlines() if "/etc/same-place" in line]
    assert len(rows) == 1 and rows[0].rstrip(" │|").endswith("6"), table
    assert "\x1b" not in table and "odd\\x1b[2Jname" in table  # the file name, shown escaped
    data = json.loads(summary.read_text())
    assert data["denied"] == 7
    [same] = [d for d in data["denials"] if d["target"].endswith("/etc/same-place")]
    assert same["count"] == 6 and same["kind"] == "file"
    [end] = [r for r in sandbox.records() if r["event"] == "run.end"]
    assert end["denied"] == 7


def test_log_for_an_unknown_run_is_one_line_and_exit_1(sandbox):
    assert sandbox.sh("true").returncode == 0
    for args in (("log", "--run", "nosuch"), ("log", "runs", "--run", "nosuch")):
        result = _sandboxctl(sandbox, *args)
        assert result.returncode == 1, result
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0].startswith("sandboxctl: error: no run nosuch in ") and "hint:" in lines[1], lines
        assert len(lines) == 2
