"""Protected paths hold (SPEC principle 3), judged from outside: the host's own git, canaries, the
host file's content. Each numbered case of issue 13 is here, plus the normal git work that must
keep working inside, races, hardlinks, symlinks and the end-of-run check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest


def git(cwd: Path, *args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The host's own git, with a clean environment (the test's HOME, no system config)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "LANG": "C"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check)


def repo(path: Path, home: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", home=home)
    (path / "README").write_text("hello\n")
    git(path, "add", "README", home=home)
    git(path, "commit", "-qm", "init", home=home)
    return path


def hostile_config(canary: Path) -> str:
    """A git config whose core.fsmonitor runs on the next `git status` and leaves a canary."""
    return f'[core]\n\tfsmonitor = "touch {canary}; false"\n'


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "CANARY"


def files_under(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(path))] = p.read_bytes().hex()
    return out


def denials(sandbox) -> list[dict]:
    return [r for r in sandbox.records() if r.get("event") == "file" and r.get("decision") == "deny"]


# ------------------------------------------------------------------ 1. commondir
def test_commondir_cannot_point_git_at_a_hostile_copy(sandbox, canary):
    ws = repo(sandbox.workspace, sandbox.home)
    script = f"""cp -r .git evil && printf '%s' '{hostile_config(canary)}' > evil/config
echo ../evil > .git/commondir; echo "gitdir: evil" > .git/gitdir; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout
    assert not (ws / ".git" / "commondir").exists()
    git(ws, "status", home=sandbox.home)
    assert not canary.exists()
    assert any("commondir" in d["path"] for d in denials(sandbox))


# ------------------------------------------------------------------ 2. submodules and nested repositories
def test_submodule_and_nested_repository_metadata_stay_read_only(sandbox, canary, tmp_path):
    ws = repo(sandbox.workspace, sandbox.home)
    origin = repo(tmp_path / "sub-origin", sandbox.home)
    git(ws, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(origin), "sub", home=sandbox.home)
    git(ws, "commit", "-qm", "add sub", home=sandbox.home)
    repo(ws / "tools" / "nested", sandbox.home)
    before = {p: (ws / p).read_bytes() for p in (".git/modules/sub/config", "tools/nested/.git/config")}
    script = f"""printf '%s' '{hostile_config(canary)}' >> .git/modules/sub/config
printf '%s' '{hostile_config(canary)}' >> tools/nested/.git/config
echo 'touch {canary}' > tools/nested/.git/hooks/pre-commit; chmod +x tools/nested/.git/hooks/pre-commit
echo 'touch {canary}' > .git/modules/sub/hooks/post-checkout
mkdir -p .git/modules/other && echo x > .git/modules/other/config
echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout
    assert {p: (ws / p).read_bytes() for p in before} == before
    assert not (ws / "tools/nested/.git/hooks/pre-commit").exists()
    assert not (ws / ".git/modules/sub/hooks/post-checkout").exists()
    assert not (ws / ".git/modules/other").exists()
    git(ws, "status", home=sandbox.home)
    git(ws / "tools" / "nested", "status", home=sandbox.home)
    (ws / "tools/nested/n.txt").write_text("n")
    git(ws / "tools" / "nested", "add", "n.txt", home=sandbox.home)
    git(ws / "tools" / "nested", "commit", "-qm", "n", home=sandbox.home)
    assert not canary.exists()


def test_git_work_in_nested_repositories_and_submodules_still_works(sandbox, tmp_path):
    ws = repo(sandbox.workspace, sandbox.home)
    origin = repo(tmp_path / "sub-origin", sandbox.home)
    git(ws, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(origin), "sub", home=sandbox.home)
    git(ws, "commit", "-qm", "add sub", home=sandbox.home)
    repo(ws / "nested", sandbox.home)
    ident = "-c user.name=t -c user.email=t@t"
    result = sandbox.sh(f"""set -e
cd nested && echo x > x && git add x && git {ident} commit -qm x && cd ..
cd sub && echo y > y && git add y && git {ident} commit -qm y && cd ..
git status --short && git add sub && git {ident} commit -qm bump && echo ok""")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    assert git(ws / "nested", "log", "--oneline", home=sandbox.home).stdout.count("\n") == 2
    assert "bump" in git(ws, "log", "--oneline", home=sandbox.home).stdout


# ------------------------------------------------------------------ 3. core.hooksPath
@pytest.mark.parametrize("existing", [True, False])
def test_core_hooks_path_in_the_workspace_is_protected(sandbox, canary, existing):
    ws = repo(sandbox.workspace, sandbox.home)
    git(ws, "config", "core.hooksPath", ".husky", home=sandbox.home)
    if existing:
        (ws / ".husky").mkdir()
        (ws / ".husky" / "README").write_text("hooks\n")
    result = sandbox.sh(f"""mkdir -p .husky; echo 'touch {canary}' > .husky/pre-commit; chmod +x .husky/pre-commit
mkdir h2 && echo 'touch {canary}' > h2/pre-commit && chmod +x h2/pre-commit && mv h2 .husky; echo end""")
    assert "end" in result.stdout
    assert not (ws / ".husky" / "pre-commit").exists()
    (ws / "f").write_text("f")
    git(ws, "add", "f", home=sandbox.home)
    git(ws, "commit", "-qm", "f", home=sandbox.home)
    assert not canary.exists()


def test_an_included_config_file_in_the_workspace_is_protected(sandbox, canary):
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "shared.gitconfig").write_text("[user]\n\tname = t\n")
    git(ws, "config", "include.path", "../shared.gitconfig", home=sandbox.home)
    result = sandbox.sh(f"printf '%s' '{hostile_config(canary)}' >> shared.gitconfig; echo end")
    assert "end" in result.stdout
    assert (ws / "shared.gitconfig").read_text() == "[user]\n\tname = t\n"
    git(ws, "status", home=sandbox.home)
    assert not canary.exists()


# ------------------------------------------------------------------ 4. a protected name that is a symlink
def test_a_protected_name_that_is_a_symlink_holds_whatever_the_way_in(sandbox):
    ws = sandbox.workspace
    (ws / "decoy").mkdir()
    (ws / ".claude").symlink_to("decoy")
    hooks = '{"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": "touch /tmp/x"}]}]}}'
    script = f"""mkdir t1 && echo '{hooks}' > t1/settings.json
rm .claude; mv t1 .claude; mv -T t1 .claude; ln -sfn t1 .claude
echo '{hooks}' > decoy/settings.json; echo '{hooks}' > .claude/settings.json
mkdir v && echo '{{"tasks": []}}' > v/tasks.json && mv v .vscode; mkdir .vscode; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout
    assert (ws / ".claude").is_symlink() and os.readlink(ws / ".claude") == "decoy"
    assert list((ws / "decoy").iterdir()) == []
    assert not (ws / ".vscode").exists()


# ------------------------------------------------------------------ 5. two runs in one workspace
def _start(sandbox, script: str) -> subprocess.Popen:
    return subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=sandbox.workspace,
                            env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


ATTACK = """echo evil > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit
echo 'eval evil' > t && mv t .envrc; echo evil > t2 && mv t2 .git/hooks/pre-push; echo attacked > attacked"""


@pytest.mark.parametrize("first_ends_first", [True, False])
def test_overlapping_runs_each_keep_every_protection(sandbox, first_ends_first):
    ws = repo(sandbox.workspace, sandbox.home)
    hooks_before = sorted(os.listdir(ws / ".git" / "hooks"))
    # A starts, then B; one of them ends while the other is still running, then the survivor attacks
    wait = "echo {0} > {0}-up; while [ ! -e go-{0} ]; do sleep 0.05; done; "
    a = _start(sandbox, wait.format("a") + ATTACK.replace("attacked", "a-done"))
    _wait_for(ws / "a-up")
    b = _start(sandbox, wait.format("b") + ATTACK.replace("attacked", "b-done"))
    _wait_for(ws / "b-up")
    first, second = ("a", "b") if first_ends_first else ("b", "a")
    procs = {"a": a, "b": b}
    (ws / f"go-{first}").write_text("")
    procs[first].wait(timeout=60)
    (ws / f"go-{second}").write_text("")
    procs[second].wait(timeout=60)
    assert (ws / "a-done").exists() and (ws / "b-done").exists()
    assert sorted(os.listdir(ws / ".git" / "hooks")) == hooks_before
    assert not (ws / ".envrc").exists()
    assert git(ws, "status", "--porcelain", "--ignored", home=sandbox.home).stdout.splitlines() == [
        f"?? {n}" for n in sorted(["a-done", "a-up", "b-done", "b-up", "go-a", "go-b", "t", "t2"])]


# ------------------------------------------------------------------ 6. approvals never open protected paths
def test_approval_mode_allow_never_opens_a_protected_path(sandbox):
    ws = repo(sandbox.workspace, sandbox.home)
    (sandbox.home / ".gitconfig").write_text("[user]\n\tname = ann\n")
    (ws / ".vscode").mkdir()
    before = {str(p): p.read_bytes() for p in (ws / ".git" / "config", sandbox.home / ".gitconfig")}
    result = sandbox.run("--approve", "allow", "--", "/bin/sh", "-c",
                         "echo evil >> .git/config; echo evil > .git/hooks/pre-commit; echo x > .vscode/tasks.json;"
                         " echo evil >> ~/.gitconfig; echo end")
    assert "end" in result.stdout
    assert {p: Path(p).read_bytes() for p in before} == before
    assert not (ws / ".git" / "hooks" / "pre-commit").exists() and not (ws / ".vscode" / "tasks.json").exists()
    targets = {Path(d["path"]).name for d in denials(sandbox)}
    assert {"config", "pre-commit", "tasks.json", ".gitconfig"} <= targets
    approvals = [r for r in sandbox.records() if r.get("event") == "approval"]
    assert approvals == []  # never even offered


# ------------------------------------------------------------------ 7. start-up files and agent config of the workspace
NAMES = [".bashrc", ".zshrc", ".profile", ".bash_profile", ".zprofile", ".gitconfig", ".ripgreprc", ".envrc",
         ".mcp.json", ".aider.conf.yml", ".windsurfrules", ".npmrc", ".gitmodules", ".sandboxctl.yaml",
         ".devcontainer.json"]
DIRS = [".codex", ".cursor", ".gemini", ".continue", ".windsurf", ".claude", ".vscode", ".idea", ".devcontainer"]


def test_workspace_start_up_files_and_agent_config_cannot_be_planted(sandbox):
    ws = sandbox.workspace
    (ws / ".cursor").mkdir()  # one that exists: held too
    script = "".join(f"echo x > {n}; echo y > t && mv t {n}; " for n in NAMES)
    script += "".join(f"mkdir -p {d}/sub; echo x > {d}/config.json; mkdir m; mv m {d}; rmdir m; " for d in DIRS)
    result = sandbox.sh(script + "echo end")
    assert "end" in result.stdout
    assert sorted(p.name for p in ws.iterdir()) == [".cursor", "t"]
    assert list((ws / ".cursor").iterdir()) == []


def test_a_writable_home_gets_the_same_protections(sandbox):
    policy = sandbox.write_policy("home-rw.yaml", "version: 1\nextends: default\nfilesystem:\n  write: ['~']\n")
    (sandbox.home / ".bashrc").write_text("# mine\n")
    result = sandbox.run("--", "/bin/sh", "-c",
                         "echo evil >> ~/.bashrc; echo evil > ~/.zshrc; mkdir -p ~/.config/fish; echo ok > ~/notes",
                         policy=str(policy))
    assert (sandbox.home / "notes").read_text() == "ok\n", result.stderr
    assert (sandbox.home / ".bashrc").read_text() == "# mine\n"
    assert not (sandbox.home / ".zshrc").exists() and not (sandbox.home / ".config" / "fish").exists()


# ------------------------------------------------------------------ 8. masks at any depth
def test_dotenv_files_are_masked_at_any_depth(sandbox):
    ws = sandbox.workspace
    (ws / "sub" / "deeper").mkdir(parents=True)
    (ws / "sub" / ".env").write_text("API_KEY=sub-secret\n")
    (ws / "sub" / "deeper" / ".env.local").write_text("TOKEN=deep-secret\n")
    result = sandbox.sh("cat sub/.env sub/deeper/.env.local; mv sub/.env stolen; cp sub/.env copy; echo end")
    assert "end" in result.stdout
    assert "secret" not in result.stdout
    assert (ws / "sub" / ".env").read_text() == "API_KEY=sub-secret\n"
    assert not (ws / "stolen").exists()


# ------------------------------------------------------------------ 10. --yes never trusts a workspace policy
def test_yes_never_trusts_a_workspace_policy(sandbox):
    (sandbox.workspace / ".sandboxctl.yaml").write_text("version: 1\nextends: default\nnetwork:\n  mode: host\n")
    for env in ({}, {"CI": "true"}):
        result = sandbox.run("--yes", "--", "true", policy=None, env=env)
        assert result.returncode == 125
        assert "sandboxctl policy trust" in result.stderr and "--yes" not in result.stderr.split("hint:", 1)[-1]


# ------------------------------------------------------------------ 11. invisible: nothing shows in git status
def test_nothing_shows_in_git_status_inside_or_outside(sandbox):
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh("git status --porcelain --ignored; git add -A && git -c user.name=t -c user.email=t@t "
                        "commit -qm 'nothing' >/dev/null; echo rc=$?")
    assert result.stdout.splitlines()[0] == "rc=1", result.stdout  # nothing to commit, nothing listed
    assert git(ws, "status", "--porcelain", "--ignored", home=sandbox.home).stdout == ""
    assert sorted(p.name for p in ws.iterdir()) == [".git", "README"]


# ------------------------------------------------------------------ normal git work inside
def test_normal_git_work_inside(sandbox):
    ws = repo(sandbox.workspace, sandbox.home)
    ident = "-c user.name=t -c user.email=t@t"
    script = f"""set -e
git checkout -qb feature
echo one > one.txt && git add one.txt && git {ident} commit -qm one
echo change >> README && git stash -q && git stash pop -q && git {ident} commit -qam readme
git checkout -q main 2>/dev/null || git checkout -q master
echo two > two.txt && git add two.txt && git {ident} commit -qm two
git {ident} rebase -q feature
git {ident} merge -q --no-edit feature
git tag v1 && git {ident} tag -a v2 -m v2
git mv two.txt 2.txt && git {ident} commit -qm rename && git rm -q one.txt && git {ident} commit -qm rm
git gc -q --auto && git status --short && echo ok"""
    result = sandbox.sh(script)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    log = git(ws, "log", "--oneline", home=sandbox.home).stdout
    assert "rm" in log and "rename" in log
    assert git(ws, "tag", home=sandbox.home).stdout.split() == ["v1", "v2"]
    assert git(ws, "fsck", "--no-progress", home=sandbox.home).returncode == 0


def test_git_init_is_refused_with_the_reason_and_what_to_do(sandbox):
    argv = [a for a in sandbox.argv("--", "/bin/sh", "-c", "git init -q .; echo rc=$?") if a != "-q"]
    result = subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True)
    assert "rc=0" not in result.stdout
    assert not (sandbox.workspace / ".git").exists()
    assert "1 denied" in result.stderr and "protected" in result.stderr  # the denial table says why...
    [denial] = denials(sandbox)
    assert "a new one would run its config" in denial["rule"] and "git init" in denial["rule"]  # ...and what to do


def test_git_worktree_add_is_refused(sandbox, tmp_path):
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh("git worktree add -q ../wt 2>&1; git worktree add -q wt2 2>&1; echo end")
    assert "end" in result.stdout
    assert not (ws / ".git" / "worktrees").exists() and not (ws / "wt2" / ".git").exists()


# ------------------------------------------------------------------ attacks: races, hardlinks, symlinks
RACE = textwrap.dedent("""
    import ctypes, os, threading
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(64)
    good, bad = b"ok-file.txt", BAD
    stop = False
    def flip():
        while not stop:
            ctypes.memmove(buf, good + b"\\0", len(good) + 1)
            ctypes.memmove(buf, bad + b"\\0", len(bad) + 1)
    t = threading.Thread(target=flip); t.start()
    made = 0
    for _ in range(3000):
        fd = libc.open(buf, os.O_WRONLY | os.O_CREAT, 0o755)
        if fd >= 0:
            made += 1; os.close(fd)
        libc.mkdir(buf, 0o755); libc.rmdir(buf)
    stop = True; t.join()
    print("made", made)
""")


@pytest.mark.parametrize("bad", [".git/hooks/pre-commit", ".envrc", "sub/.git", ".git/config"])
def test_a_racing_thread_cannot_swap_a_path_onto_a_protected_one(sandbox, bad):
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "sub").mkdir()
    config = (ws / ".git" / "config").read_bytes()
    result = sandbox.py(RACE.replace("BAD", repr(bad.encode())), timeout=180)
    assert "made" in result.stdout, result.stderr
    assert int(result.stdout.split()[-1]) > 0 and (ws / "ok-file.txt").exists()  # the race really ran
    assert not (ws / ".git" / "hooks" / "pre-commit").exists()
    assert not (ws / ".envrc").exists() and not (ws / "sub" / ".git").exists()
    assert (ws / ".git" / "config").read_bytes() == config


def test_hardlinks_and_symlinks_do_not_lead_into_protected_paths(sandbox):
    ws = repo(sandbox.workspace, sandbox.home)
    os.link(ws / ".git" / "config", ws / "alias-made-on-host")  # another name, made before the run
    config = (ws / ".git" / "config").read_bytes()
    script = """ln .git/config hl; echo evil >> hl; echo evil >> alias-made-on-host
ln -s .git/hooks h; echo evil > h/pre-commit; ln -s .git/config c; echo evil >> c
ln -s .git/hooks/pre-commit pc; echo evil > pc; truncate -s 0 c; chmod 777 alias-made-on-host; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout
    assert (ws / ".git" / "config").read_bytes() == config
    assert os.stat(ws / ".git" / "config").st_mode & 0o777 != 0o777
    assert not (ws / ".git" / "hooks" / "pre-commit").exists()


# ------------------------------------------------------------------ the end-of-run check
def test_a_protected_path_changed_from_outside_during_the_run_is_reported_and_left(sandbox):
    """With the kernel wall whole the sandbox cannot write a protected path: a change found at the
    end was made outside (an IDE, the user's own git) and is reported, never undone."""
    ws = repo(sandbox.workspace, sandbox.home)
    config = (ws / ".git" / "config").read_bytes()
    proc = _start(sandbox, "echo up > up; while [ ! -e go ]; do sleep 0.05; done")
    _wait_for(ws / "up")
    (ws / ".git" / "config").write_bytes(config + b"[core]\n\tfsmonitor = from-the-host\n")
    (ws / ".envrc").write_text("# the user's own\n")
    (ws / "go").write_text("")
    _, err = proc.communicate(timeout=60)
    assert (ws / ".git" / "config").read_bytes().endswith(b"from-the-host\n")
    assert (ws / ".envrc").exists()
    events = [r for r in sandbox.records() if r.get("event") == "protect"]
    assert {(Path(e["path"]).name, e["change"], e["action"]) for e in events} >= {
        ("config", "modified", "reported"), (".envrc", "created", "reported")}
    assert "not put back, and left as it is" in err and ".git/config" in err


@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed")
def test_under_gvisor_a_changed_protected_path_is_put_back_and_kept_aside(sandbox):
    """gVisor has no mediation: a protected name that did not exist is not held during the run, so
    the end-of-run check removes what appeared (kept aside) and puts back what changed."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.run("--backend", "gvisor", "--", "/bin/sh", "-c", "echo 'eval evil' > .envrc; echo end")
    assert "end" in result.stdout, result.stderr
    assert not (ws / ".envrc").exists()
    [event] = [r for r in sandbox.records() if r.get("event") == "protect"]
    assert event["change"] == "created" and event["action"] == "removed"
    assert Path(event["kept"]).read_text() == "eval evil\n"


def test_a_killed_supervisor_leaves_the_check_to_the_next_run(sandbox):
    ws = repo(sandbox.workspace, sandbox.home)
    config = (ws / ".git" / "config").read_bytes()
    proc = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", "echo up > up; sleep 30"), cwd=ws,
                            env=sandbox.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(ws / "up")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    (ws / ".git" / "config").write_bytes(config + b"[alias]\n\tx = !the-users-own\n")  # after the death
    result = sandbox.run("--", "true")
    assert result.returncode == 0, result.stderr
    assert b"the-users-own" in (ws / ".git" / "config").read_bytes()  # the user's, not the sandbox's
    assert "whose supervisor was killed" in result.stderr and "left as it is" in result.stderr


def test_summary_json_lists_protected_changes(sandbox, tmp_path):
    ws = repo(sandbox.workspace, sandbox.home)
    proc = subprocess.Popen(sandbox.argv("--summary-json", str(tmp_path / "s.json"), "--", "/bin/sh", "-c",
                                         "echo up > up; while [ ! -e go ]; do sleep 0.05; done"),
                            cwd=ws, env=sandbox.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(ws / "up")
    (ws / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nthe user's\n")
    (ws / "go").write_text("")
    proc.wait(timeout=60)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [(c["path"], c["action"]) for c in summary["protected"]] == [
        (str(ws / ".git" / "hooks" / "pre-commit"), "reported")]


@pytest.mark.skipif(os.geteuid() != 0, reason="only a supervisor running as root could bypass file permissions")
def test_a_root_supervisor_writes_only_what_the_sandboxed_root_could(sandbox):
    ws = sandbox.workspace
    (ws / "ro.txt").write_text("ro\n")
    (ws / "ro.txt").chmod(0o444)
    other = ws / "other"
    other.mkdir()
    (other / "f").write_text("o\n")
    os.chown(other, 65534, 65534)
    os.chown(other / "f", 65534, 65534)
    result = sandbox.sh("echo x >> ro.txt; echo y >> other/f; echo z > other/new; mkdir other/d; "
                        "chmod 777 other/f; echo ok > mine.txt; echo end")
    assert "end" in result.stdout
    assert (ws / "ro.txt").read_text() == "ro\n" and (other / "f").read_text() == "o\n"
    assert sorted(p.name for p in other.iterdir()) == ["f"] and (other / "f").stat().st_mode & 0o777 == 0o644
    assert (ws / "mine.txt").read_text() == "ok\n"


def test_writes_outside_the_writable_set_that_are_not_opens_are_logged_denials(sandbox):
    result = sandbox.sh("mkdir /usr/x; mv /etc/hosts /etc/h2; rm /etc/hostname; chmod 777 /etc/hosts; "
                        "mkdir /tmp/fine && echo end")
    assert "end" in result.stdout
    ops = {(d["op"], d["path"]) for d in denials(sandbox)}
    assert {("mkdir", "/usr/x"), ("rename", "/etc/hosts"), ("unlink", "/etc/hostname"),
            ("chmod", "/etc/hosts")} <= ops
    assert not any(p == "/tmp/fine" for _, p in ops)


def test_files_made_by_the_supervisor_keep_the_callers_umask(sandbox):
    ws = sandbox.workspace
    result = sandbox.sh("umask 077; echo s > secret; mkdir private; umask 022; echo p > public; mkdir shared; "
                        "python3 -c \"import os; os.umask(0o027); open('py', 'w').close()\"; echo end")
    assert "end" in result.stdout
    modes = {name: (ws / name).stat().st_mode & 0o777 for name in ("secret", "private", "public", "shared", "py")}
    assert modes == {"secret": 0o600, "private": 0o700, "public": 0o644, "shared": 0o755, "py": 0o640}


def test_a_unix_socket_bound_in_the_workspace_is_made_by_the_supervisor_and_reachable(sandbox):
    code = ("import socket\ns = socket.socket(socket.AF_UNIX); s.bind('srv.sock'); s.listen(1)\n"
            "c = socket.socket(socket.AF_UNIX); c.connect('srv.sock'); a, _ = s.accept(); c.send(b'hi')\n"
            "print(a.recv(2).decode())\n"
            "for name in ('.envrc', '.git'):\n"
            "    try:\n        socket.socket(socket.AF_UNIX).bind(name)\n    except OSError as e:\n"
            "        print(name, e.errno)\n")
    result = sandbox.py(code)
    assert result.stdout.split() == ["hi", ".envrc", "13", ".git", "13"], result.stderr
    import stat as stat_module

    assert stat_module.S_ISSOCK((sandbox.workspace / "srv.sock").lstat().st_mode)
    assert not (sandbox.workspace / ".envrc").exists()


def test_no_setuid_file_is_left_in_the_workspace(sandbox):
    result = sandbox.sh("cp /bin/true t && chmod 4755 t && chmod g+s t; install -m 6755 /bin/true u; "
                        "mkdir -m 2775 shared; echo end")
    assert "end" in result.stdout, result.stderr
    for name in ("t", "u"):
        assert not (sandbox.workspace / name).stat().st_mode & 0o6000, name
    assert (sandbox.workspace / "shared").stat().st_mode & 0o2000  # a directory's setgid is only inheritance
