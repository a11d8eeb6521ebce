"""Credentials: nothing of the caller's environment leaks in; secrets arrive for one run only."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

CANARY = "canary-7f3a9b2c41"


@pytest.mark.parametrize("policy", ["base", "default", "ci", "offline", "claude-code", "codex", "aider"])
def test_caller_environment_does_not_leak(sandbox, policy):
    from sandboxctl.paths import expand
    from sandboxctl.policy.discover import load_named

    for grant in load_named(policy).policy.filesystem.write:  # agent policies need their state dirs
        path = expand(grant, workspace=str(sandbox.workspace), home=str(sandbox.home))
        if path.endswith(".json"):
            open(path, "a").close()
        else:
            os.makedirs(path, exist_ok=True)
    result = sandbox.run("--", "/bin/sh", "-c", "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
                         policy=policy, env={"SECRET_CANARY": CANARY, "AWS_SECRET_ACCESS_KEY": CANARY})
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout


def _policy(sandbox, body: str):
    return str(sandbox.write_policy("secrets.yaml", "version: 1\nextends: default\nsecrets:\n" + body))


def test_each_source_delivers_as_env_and_file(sandbox):
    (sandbox.home / "token.txt").write_text("from-file-value\n")
    policy = _policy(sandbox, "  A:\n    from: env:SRC_A\n    as: env\n"
                              "  B:\n    from: 'file:~/token.txt'\n    as: file\n"
                              "  C:\n    from: 'command:printf from-command-value'\n")
    result = sandbox.run("--", "/bin/sh", "-c", 'echo "$A"; cat "$B_FILE"; echo; cat "$C_FILE"; echo; '
                         'stat -c %a /run/secrets/B; echo "${B:-no B in env}"',
                         policy=policy, env={"SRC_A": "from-env-value"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["from-env-value", "from-file-value", "from-command-value"]
    assert lines[3] == "400" and lines[4] == "no B in env"


def test_missing_source_stops_the_run(sandbox):
    policy = _policy(sandbox, "  A:\n    from: env:NOT_SET_ANYWHERE\n")
    result = sandbox.run("--", "/bin/sh", "-c", "touch ran", policy=policy)
    assert result.returncode == 125 and "A" in result.stderr and "NOT_SET_ANYWHERE" in result.stderr
    assert not (sandbox.workspace / "ran").exists()


def test_failing_command_source_stops_the_run(sandbox):
    policy = _policy(sandbox, "  T:\n    from: 'command:false'\n")
    result = sandbox.run("--", "/bin/sh", "-c", "touch ran", policy=policy)
    assert result.returncode == 125 and "secret T" in result.stderr
    assert not (sandbox.workspace / "ran").exists()


def test_ttl_removes_the_file_while_the_command_runs(sandbox):
    policy = _policy(sandbox, "  T:\n    from: env:SRC\n    ttl: 2s\n")
    result = sandbox.run("--", "/bin/sh", "-c", 'cat "$T_FILE"; echo; sleep 3.5; '
                         'cat "$T_FILE" 2>/dev/null || echo gone', policy=policy, env={"SRC": "short-lived"})
    assert result.stdout.split() == ["short-lived", "gone"]
    actions = [(r["name"], r["action"]) for r in sandbox.records() if r["event"] == "secret"]
    assert actions == [("T", "inject"), ("T", "expire")]


# What the walk of /tmp leaves out, all of it older than the run and never written by a supervisor:
# pytest's own base directories (the sandbox's workspace, home and state, which lie there, are walked
# on their own) and this clone with its venv (CI clones into /tmp); tens of thousands of files there
# made this one test take 40 s.
_NOT_WALKED = {os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))}


def _files_under(*roots: str) -> set[str]:
    found = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not (folder == root and d.startswith("pytest-of-"))
                       and os.path.realpath(os.path.join(folder, d)) not in _NOT_WALKED]
            paths = (os.path.join(folder, f) for f in files)
            found.update(p for p in paths if _regular(p))  # opening someone's FIFO would wait forever
    return found


def _regular(path: str) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def test_secret_values_appear_in_no_log_line_dry_run_or_host_file(sandbox):
    policy = _policy(sandbox, "  T:\n    from: env:SRC\n  E:\n    from: env:SRC2\n    as: env\n")
    env = {"SRC": CANARY, "SRC2": CANARY + "-env"}
    before = _files_under("/tmp", "/dev/shm")
    run = sandbox.run("--", "/bin/sh", "-c", 'echo "$E" "$(cat $T_FILE)"; sleep 0.2', policy=policy, env=env)
    assert CANARY in run.stdout  # delivered ...
    assert CANARY not in sandbox.log_path.read_text()  # ... but never logged
    dry = sandbox.run("--dry-run", "--", "true", policy=policy, env=env)
    assert dry.returncode == 0 and CANARY not in dry.stdout + dry.stderr
    new_files = (_files_under("/tmp", "/dev/shm") - before) | _files_under(str(sandbox.home), str(sandbox.state),
                                                                          str(sandbox.workspace))
    leftovers = []
    for path in new_files:
        try:
            with open(path, "rb") as handle:
                if CANARY.encode() in handle.read():
                    leftovers.append(path)
        except OSError:
            pass
    assert not leftovers


def test_secret_value_is_not_on_any_command_line(sandbox):
    policy = _policy(sandbox, "  T:\n    from: env:SRC\n")
    proc = subprocess.Popen(sandbox.argv("--", "sleep", "2", policy=policy), cwd=sandbox.workspace,
                            env=sandbox.env({"SRC": CANARY}))
    try:
        time.sleep(1.2)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        assert CANARY.encode() not in handle.read()
                except OSError:
                    pass
    finally:
        proc.wait(timeout=10)


def test_descriptors_open_in_the_caller_do_not_reach_the_sandbox(sandbox, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text(CANARY)
    fd = os.open(secret, os.O_RDONLY)  # inheritable on purpose: a careless caller's descriptor
    os.set_inheritable(fd, True)
    try:
        result = subprocess.run(sandbox.argv("--", "/bin/sh", "-c", f"cat <&{fd}; ls /proc/self/fd"),
                                cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                                pass_fds=(fd,), timeout=60)
    finally:
        os.close(fd)
    assert CANARY not in result.stdout
    assert str(fd) not in result.stdout.split()


ENCODE_AND_LEAK = r"""
import base64, os, subprocess, urllib.parse
token = os.environ["TOKEN"]
data = token.encode()
words = ["/bin/true", token[:6], token[6:], base64.b64encode(b"user:" + data).decode(),
         base64.urlsafe_b64encode(data).decode().rstrip("="), base64.b32encode(data).decode().lower(),
         data.hex(), data.hex().upper(), urllib.parse.quote(token, safe="")]
subprocess.run(words, check=True)
try:
    open("/etc/" + data.hex(), "w")
except OSError:
    pass
"""


def test_split_and_encoded_secret_values_are_scrubbed_from_the_log(sandbox):
    """The command holds the secret and puts it, split and encoded, in argv and in a path."""
    import base64
    import urllib.parse

    token = "tok_" + "Q7x+/9aZ" * 3
    policy = _policy(sandbox, "  TOKEN:\n    from: env:SRC\n    as: env\n")
    result = sandbox.run("--", "python3", "-c", ENCODE_AND_LEAK, policy=policy, env={"SRC": token})
    assert result.returncode == 0, result.stderr
    text = sandbox.log_path.read_text()
    data = token.encode()
    forms = [token, token[:6] + '","' + token[6:], data.hex(), data.hex().upper(), urllib.parse.quote(token, safe="")]
    for encoded in (base64.b64encode(b"user:" + data), base64.urlsafe_b64encode(data), base64.b32encode(data)):
        middle = encoded.decode().rstrip("=")[8:-8]
        forms += [middle, middle.lower()]
    assert not [form for form in forms if form in text], [form for form in forms if form in text]
    [record] = [r for r in sandbox.records() if r["event"] == "exec" and r["path"] == "/bin/true"]
    assert record["argv"][0] == "/bin/true" and all("***" in word for word in record["argv"][1:]), record["argv"]
    [denied] = [r for r in sandbox.records() if r["event"] == "file" and r["path"].startswith("/etc/")]
    assert denied["path"] == "/etc/***"
