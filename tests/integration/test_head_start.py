"""The head start (launch/headstart.py): a repeated command line starts bubblewrap before the plan,
and the sandbox is used only if the fresh plan launches exactly it. Judged from outside: the
log's run.start, the host's files, stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


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
    """The sandbox's environment is the fresh run's: judged by what the command wrote to the host."""
    out = sandbox.workspace / "greeting.txt"
    command = ("--env", "GREETING", "--", "/bin/sh", "-c", "echo $GREETING > greeting.txt")
    sandbox.run(*command, env={"GREETING": "one"})
    assert out.read_text() == "one\n"
    sandbox.run(*command, env={"GREETING": "two"})
    assert out.read_text() == "two\n"
    sandbox.run(*command, env={"GREETING": "two"})
    assert out.read_text() == "two\n"
    assert [s.get("head_start") for s in starts(sandbox)] == [None, None, True]
    json.dumps(starts(sandbox))


def test_a_different_directory_runs_in_that_directory(sandbox, tmp_path):
    """The same arguments from another directory (the default workspace): the command runs in,
    and may write to, the fresh run's directory only, never the remembered run's."""
    other = tmp_path / "other"
    other.mkdir()
    argv = sandbox.argv("--", "/bin/sh", "-c", "pwd >> here.txt")
    for cwd in (sandbox.workspace, sandbox.workspace, other):
        done = subprocess.run(argv, cwd=cwd, env=sandbox.env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert (sandbox.workspace / "here.txt").read_text() == f"{sandbox.workspace}\n" * 2
    assert (other / "here.txt").read_text() == f"{other}\n"
    assert [(s["workspace"], s.get("head_start")) for s in starts(sandbox)] == \
        [(str(sandbox.workspace), None), (str(sandbox.workspace), True), (str(other), None)]


def test_a_workspace_policy_that_appeared_is_applied_not_the_remembered_launch(sandbox):
    """The remembered launch was the built-in default; then a trusted .sandboxctl.yaml hides a
    file. The same command line must run under the workspace policy: the file is not copied."""
    (sandbox.workspace / "secret.txt").write_text("s3cret\n")
    copy = sandbox.workspace / "copy.txt"
    command = ("--", "/bin/sh", "-c", "cat secret.txt > copy.txt 2>/dev/null; echo ran")
    for _ in range(2):
        assert sandbox.run(*command, policy=None).returncode == 0
        assert copy.read_text() == "s3cret\n"
        copy.unlink()
    policy = sandbox.workspace / ".sandboxctl.yaml"
    policy.write_text('version: 1\nname: mine\nextends: default\nfilesystem:\n  deny: ["{workspace}/secret.txt"]\n')
    trusted = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "trust", str(policy)],
                             cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True)
    assert trusted.returncode == 0, trusted.stderr
    third = sandbox.run(*command, policy=None)
    assert third.returncode == 0 and "ran" in third.stdout, third.stderr
    assert not copy.exists() or "s3cret" not in copy.read_text()
    assert [(s["policy"], s.get("head_start")) for s in starts(sandbox)] == \
        [("default", None), ("default", True), ("mine", None)]
    for _ in range(2):  # a workspace policy is never remembered: never started early
        sandbox.run(*command, policy=None)
    assert [s.get("head_start") for s in starts(sandbox)][-2:] == [None, None]


def test_concurrent_runs_of_one_command_line_each_get_their_own_sandbox(sandbox, tmp_path):
    """Two runs of a remembered command line at once: each adopts a sandbox of its own (its own
    run id inside, its own walls), both end, nothing of either survives."""
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n")
    script = f"echo x > {outside}; echo $SANDBOXCTL_RUN >> runs.txt; sleep 1"
    sandbox.sh(script)
    sandbox.sh(script)
    (sandbox.workspace / "runs.txt").unlink()
    both = [subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=sandbox.workspace,
                             env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for proc in both:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert outside.read_text() == "host\n"
    ids = (sandbox.workspace / "runs.txt").read_text().split()
    late = starts(sandbox)[2:]
    assert sorted(ids) == sorted(s["run"] for s in late) and len(set(ids)) == 2
    assert [s.get("head_start") for s in late] == [True, True]
    ends = [r["run"] for r in sandbox.records() if r["event"] == "run.end"]
    assert set(ids) <= set(ends)
    time.sleep(0.2)
    leftover = subprocess.run(["pgrep", "-f", script], capture_output=True, text=True)
    assert leftover.stdout == ""


def test_a_tampered_cache_is_never_executed(sandbox, tmp_path):
    """The remembered entry is run before any check: one the user's others could write (a
    group-writable cache directory) is never used, so its argv never runs on the host."""
    canary = tmp_path / "canary"
    script = "echo fine"
    sandbox.sh(script)
    cache = sandbox.state / "sandboxctl" / "cache"
    [entry] = list(cache.glob("headstart-*.marshal"))
    import marshal

    data = marshal.loads(entry.read_bytes())
    data["argv"] = ["/bin/sh", "-c", f"touch {canary}"]  # what a writer of the cache would put there
    entry.write_bytes(marshal.dumps(data))
    cache.chmod(0o770)
    try:
        assert "fine" in sandbox.sh(script).stdout
    finally:
        cache.chmod(0o700)
    assert not canary.exists()
    assert starts(sandbox)[-1].get("head_start") is None


def test_a_passed_value_is_never_written_to_the_cache(sandbox):
    """A token passed from the caller (--env NAME) reaches the sandbox on every run, head start
    included, and is never written to the state dir (the remembered launch holds a mark)."""
    token = "tok-" + "5e1f0b8a" * 4
    command = ("--env", "API_TOKEN", "--", "/bin/sh", "-c", "printf %s \"$API_TOKEN\" > seen.txt")
    for _ in range(2):
        assert sandbox.run(*command, env={"API_TOKEN": token}).returncode == 0
        assert (sandbox.workspace / "seen.txt").read_text() == token
    assert [s.get("head_start") for s in starts(sandbox)] == [None, True]
    cache = sandbox.state / "sandboxctl" / "cache"
    assert list(cache.glob("headstart-*"))
    for path in cache.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


FORK_BOMB = ("import os, time\nkids = 0\ntry:\n    while kids < 500:\n        if os.fork() == 0:\n"
             "            time.sleep(3); os._exit(0)\n        kids += 1\nexcept OSError as e:\n"
             "    print('stopped at', kids, e.errno)\n")


def _cgroups_of_dead_supervisors() -> set[str]:
    from sandboxctl.supervise.cgroups import PREFIX, detect
    from sandboxctl.supervise.processes import alive

    layout = detect()
    found = set()
    for parent in layout.parents.values():
        for entry in os.listdir(parent):
            owner = entry.removeprefix(PREFIX).split("-", 1)[0]
            if entry.startswith(PREFIX) and owner.isdigit() and not alive(int(owner)):
                found.add(f"{parent}/{entry}")
    return found


def test_the_cgroup_a_head_start_makes_early_gets_the_fresh_plans_limits(sandbox):
    """The head start makes the run's cgroup as bubblewrap starts (its first move is slow), with no
    limit in it: the supervisor writes the fresh plan's before the command may start. A pids limit
    lowered between two identical command lines binds the adopted sandbox; no cgroup is left."""
    from sandboxctl.supervise.cgroups import detect

    if detect() is None:
        pytest.skip("no writable cgroup tree: limits use rlimits here")
    before = _cgroups_of_dead_supervisors()
    policy = sandbox.write_policy("pids.yaml", "version: 1\nextends: default\nlimits:\n  pids: 200\n")
    first = sandbox.run("--", "python3", "-c", FORK_BOMB, policy=str(policy), timeout=60)
    assert "stopped at" in first.stdout, first.stdout + first.stderr
    assert 30 < int(first.stdout.split()[2]) < 200
    policy.write_text("version: 1\nextends: default\nlimits:\n  pids: 30\n")
    second = sandbox.run("--", "python3", "-c", FORK_BOMB, policy=str(policy), timeout=60)
    assert [s.get("head_start") for s in starts(sandbox)] == [None, True]  # the same launch: adopted
    assert [s["limits"]["pids_method"] for s in starts(sandbox)] == ["cgroup", "cgroup"]
    assert "stopped at" in second.stdout, second.stdout + second.stderr
    assert int(second.stdout.split()[2]) < 30
    assert _cgroups_of_dead_supervisors() <= before


def test_a_head_start_that_is_not_adopted_leaves_no_cgroup(sandbox):
    """Its early cgroup held only the killed sandbox: removed, whether the run goes on from a fresh
    launch (a changed grant) or never starts (a policy that no longer parses)."""
    from sandboxctl.supervise.cgroups import detect

    if detect() is None:
        pytest.skip("no writable cgroup tree: limits use rlimits here")
    before = _cgroups_of_dead_supervisors()
    policy = sandbox.write_policy("p.yaml", "version: 1\nextends: default\n")
    command = ("--", "/bin/true")
    assert sandbox.run(*command, policy=str(policy)).returncode == 0
    policy.write_text(f"version: 1\nextends: default\nfilesystem:\n  read: [{sandbox.home}]\n")
    assert sandbox.run(*command, policy=str(policy)).returncode == 0
    policy.write_text("version: 1\nextends: [default\n")
    broken = sandbox.run(*command, policy=str(policy))
    assert broken.returncode == 125 and "Traceback" not in broken.stderr
    assert [s.get("head_start") for s in starts(sandbox)] == [None, None]
    assert _cgroups_of_dead_supervisors() <= before


def test_protected_names_that_appear_between_two_runs_are_protected_in_the_next(sandbox):
    """The remembered launch knew a workspace without .git or .envrc; then the host's own git makes
    a repository and the user writes an .envrc. The same command line (its sandbox possibly started
    early from the old launch) must guard the new files: judged by the host's files afterwards."""
    attack = ("echo evil >> .envrc; echo '[core] hooksPath = /tmp' >> .git/config; "
              "mkdir -p .git/hooks; echo evil > .git/hooks/pre-commit; echo end")
    for _ in range(2):
        assert "end" in sandbox.sh(attack).stdout
    assert not (sandbox.workspace / ".envrc").exists() and not (sandbox.workspace / ".git").exists()
    envrc = sandbox.workspace / ".envrc"
    envrc.write_text("export FROM_HOST=1\n")
    subprocess.run(["git", "init", "-q", str(sandbox.workspace)], check=True, env=sandbox.env())
    config = (sandbox.workspace / ".git" / "config").read_text()
    third = sandbox.sh(attack)
    assert "end" in third.stdout
    assert envrc.read_text() == "export FROM_HOST=1\n"
    assert (sandbox.workspace / ".git" / "config").read_text() == config
    assert not (sandbox.workspace / ".git" / "hooks" / "pre-commit").exists()
    assert [s.get("head_start") for s in starts(sandbox)][:2] == [None, True]
    protect = starts(sandbox)[-1]["layers"]["protect"]
    assert protect["wall_whole"] is True and protect["git_directories"] == 1


def test_a_signal_the_caller_ignores_stays_ignored_first_run_and_head_start(sandbox):
    """A caller that ignores SIGINT (a background job of a script, nohup-like wrappers): the command
    keeps it ignored, in a first run as in a head start (whose launch must then be the fresh one)."""
    import signal

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    masks = []
    for _ in range(2):
        done = subprocess.run(sandbox.argv("--", "/bin/sh", "-c", "grep SigIgn /proc/self/status"),
                              cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                              timeout=60, preexec_fn=ignore_sigint)
        assert done.returncode == 0, done.stderr
        masks.append(int(done.stdout.split()[1], 16))
    assert all(mask & (1 << (signal.SIGINT - 1)) for mask in masks), [hex(m) for m in masks]
    assert [s.get("head_start") for s in starts(sandbox)] == [None, True]
