"""CI mode: no TTY means escapes are denied without waiting; GitHub Actions gets annotations."""

from __future__ import annotations

import json
import time


def test_ci_run_with_many_escapes_finishes_without_waiting(sandbox, tmp_path):
    summary = tmp_path / "summary.json"
    step = tmp_path / "step.md"
    script = "for i in $(seq 20); do echo x > /etc/escape$i; done; curl -s http://example.com/ >/dev/null; exit 0"
    started = time.monotonic()
    result = sandbox.run("--summary-json", str(summary), "--", "/bin/sh", "-c", script, policy="ci",
                         env={"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step)})
    assert time.monotonic() - started < 30
    assert result.returncode == 0
    data = json.loads(summary.read_text())
    assert data["exit_code"] == 0 and len(data["denials"]) >= 20
    assert {d["kind"] for d in data["denials"]} >= {"file"}
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning ")]
    assert len(warnings) == len(data["denials"])
    assert "/etc/escape1" in warnings[0]
    text = step.read_text()
    assert "sandboxctl" in text and "| file |" in text and "exit code **0**" in text
