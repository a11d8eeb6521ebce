"""The head start (launch/headstart.py): a repeated command line starts bubblewrap before the plan,
and the sandbox is used only if the fresh plan launches exactly it. Judged from outside: the
log's run.start, the host's files, stderr."""

from __future__ import annotations

import json


def starts(sandbox) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == "run.start"]


def test_a_repeated_command_line_is_adopted_and_walls_hold(sandbox, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n")
    script = f"cat {outside} 2>&1; echo x > {outside}; echo done"
    first = sandbox.sh(script)
    second = sandbox.sh(script)
    assert first.returncode == second.returncode == 0
    assert "done" in second.stdout and "host" not in second.stdout  # not visible inside
    assert outside.read_text() == "host\n"  # never written
    assert [s.get("head_start") for s in starts(sandbox)] == [None, True]
    assert second.stderr == ""


def test_a_changed_policy_is_not_launched_from_the_old_one(sandbox, tmp_path):
    """The same command line after the policy file changed: the early sandbox (the old grants)
    is dropped, and the run has exactly the new policy's walls."""
    secret_dir = tmp_path / "readable"
    secret_dir.mkdir()
    (secret_dir / "note.txt").write_text("was readable\n")
    policy = sandbox.write_policy("p.yaml", "version: 1\nextends: default\n"
                                            f"filesystem:\n  read: [{secret_dir}]\n")
    command = ("--", "/bin/sh", "-c", f"cat {secret_dir}/note.txt 2>&1 || echo refused")
    assert "was readable" in sandbox.run(*command, policy=str(policy)).stdout
    assert "was readable" in sandbox.run(*command, policy=str(policy)).stdout
    policy.write_text("version: 1\nextends: default\n")  # the grant is gone
    third = sandbox.run(*command, policy=str(policy))
    assert "was readable" not in third.stdout and "refused" in third.stdout
    assert third.stderr == ""  # the dropped early sandbox says nothing
    assert [s.get("head_start") for s in starts(sandbox)] == [None, True, None]


def test_a_mount_point_that_went_away_is_never_made_on_the_host(sandbox):
    """bubblewrap creates a missing mount point; beneath the writable workspace that would be a
    new file on the host. A masked .env deleted between two identical runs stays deleted."""
    dotenv = sandbox.workspace / ".env"
    dotenv.write_text("TOKEN=1\n")
    for _ in range(2):
        result = sandbox.sh("cat .env 2>&1 | head -1; echo end")
        assert "TOKEN" not in result.stdout and "end" in result.stdout
    dotenv.unlink()
    third = sandbox.sh("cat .env 2>&1 | head -1; echo end")
    assert "end" in third.stdout
    assert not dotenv.exists()
    assert starts(sandbox)[-1].get("head_start") is None


def test_a_different_environment_is_another_launch(sandbox):
    sandbox.run("--env", "GREETING", "--", "/bin/sh", "-c", "echo $GREETING", env={"GREETING": "one"})
    second = sandbox.run("--env", "GREETING", "--", "/bin/sh", "-c", "echo $GREETING", env={"GREETING": "two"})
    assert second.stdout.strip() == "two"
    third = sandbox.run("--env", "GREETING", "--", "/bin/sh", "-c", "echo $GREETING", env={"GREETING": "two"})
    assert third.stdout.strip() == "two"
    assert [s.get("head_start") for s in starts(sandbox)] == [None, None, True]
    json.dumps(starts(sandbox))
