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


def test_fail_on_denial_turns_a_successful_command_with_denials_into_a_failed_step(sandbox, tmp_path):
    """The CI gate (exit 123, errors.EXIT_DENIED): the command exits 0, the sandbox denied a write;
    the step fails, stderr and the GitHub annotations and summary say which."""
    summary, step = tmp_path / "summary.json", tmp_path / "step.md"
    env = {"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step)}
    result = sandbox.run("--fail-on-denial", "--summary-json", str(summary), "--", "/bin/sh", "-c",
                         "echo x > /etc/planted 2>/dev/null; exit 0", policy="ci", env=env)
    assert result.returncode == 123, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sandboxctl: error:")]
    assert errors == ["sandboxctl: error: the command succeeded, but 1 action(s) were denied: the run fails on "
                      "denials (exit 123)"], result.stderr
    assert "sandboxctl policy suggest --run" in result.stderr
    data = json.loads(summary.read_text())
    assert (data["exit_code"], data["command_exit_code"], data["failed_on_denial"]) == (123, 0, True)
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert len(annotations) == 1 and annotations[0].startswith("::error title=sandboxctl denied file::")
    assert "/etc/planted" in annotations[0]
    text = step.read_text()
    assert "**Failed on denials**: the command itself exited 0" in text and "/etc/planted" in text
    assert "exit code **123**" in text and "policy suggest --run" in text
    end = [r for r in sandbox.records() if r["event"] == "run.end"][-1]
    assert end["exit_code"] == 0 and end["failed_on_denial"] is True and end["denied"] == 1


def test_the_gate_needs_a_denial_and_keeps_a_failing_commands_own_code(sandbox, tmp_path):
    clean = sandbox.run("--fail-on-denial", "--", "true", policy="ci", env={"CI": "true"})
    assert clean.returncode == 0, clean.stderr
    failing = sandbox.run("--fail-on-denial", "--", "/bin/sh", "-c", "echo x > /etc/planted 2>/dev/null; exit 3",
                          policy="ci", env={"CI": "true"})
    assert failing.returncode == 3  # the command's own failure is the news; the gate adds nothing
    assert "the run fails on denials" not in failing.stderr


def test_the_policy_key_ci_fail_on_denial(sandbox, tmp_path):
    policy = sandbox.write_policy("gate.yaml", "version: 1\nname: gate\nextends: ci\nci:\n  fail_on_denial: true\n")
    result = sandbox.run("--", "/bin/sh", "-c", "echo x > /etc/planted 2>/dev/null; exit 0", policy=str(policy),
                         env={"CI": "true"})
    assert result.returncode == 123, result.stderr
    assert sandbox.run("--", "true", policy=str(policy), env={"CI": "true"}).returncode == 0
