"""Red-team attacks on the protected-paths wall (issue 13), each judged from outside the sandbox:
the host's own git leaving a canary, the host file's bytes, a canary a binary would write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.test_exec_allow import CANARY_C
from tests.integration.test_protected_paths import _start, _wait_for, git, hostile_config, repo


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "CANARY"


def plant_commondir(canary: Path, how: str) -> str:
    """A copy of .git with a hostile config, and .git/commondir pointing the host's git at it."""
    return f"cp -r .git evil && printf '%s' '{hostile_config(canary)}' > evil/config && {how}; echo end"


# ------------------------------------------------------------------ the kernel wall under a tmpfs
def host_git_status_while_running(sandbox, attack: str, ws: Path, **kwargs) -> None:
    """Run the attack, then the host's git status while the sandbox still runs (a shell prompt or
    an editor runs it every few seconds), before the end-of-run check could put anything back."""
    proc = _start(sandbox, f"{attack}; echo planted > planted; while [ ! -e go ]; do sleep 0.05; done")
    try:
        _wait_for(ws / "planted", timeout=kwargs.get("timeout", 60))
        git(ws, "status", home=sandbox.home)
    finally:
        (ws / "go").write_text("")
        proc.communicate(timeout=60)


def test_a_magic_link_path_cannot_plant_git_commondir(sandbox, canary):
    """/proc/self/cwd/… fails the supervisor's RESOLVE_NO_MAGICLINKS resolution, so the call is
    continued to the kernel; Landlock does not hold the workspace read-only when it lies beneath a
    sandbox tmpfs (/tmp, HOME): the /tmp rule's write rights cover the bind mounted under it."""
    ws = repo(sandbox.workspace, sandbox.home)
    host_git_status_while_running(sandbox, plant_commondir(canary, "echo ../evil > /proc/self/cwd/.git/commondir"), ws)
    assert not canary.exists()


RACE = textwrap.dedent("""
    import ctypes, os, threading
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    good, bad = b"/tmp/decoy", os.getcwd().encode() + b"/.git/commondir"
    stop = False
    def flip():
        while not stop:
            ctypes.memmove(buf, good + b"\\0", len(good) + 1)
            ctypes.memmove(buf, bad + b"\\0", len(bad) + 1)
    t = threading.Thread(target=flip); t.start()
    for _ in range(20000):
        fd = libc.open(buf, os.O_WRONLY | os.O_CREAT, 0o644)
        if fd >= 0:
            os.write(fd, b"../evil\\n"); os.close(fd)
        if os.path.exists(".git/commondir"):
            break
    stop = True; t.join()
""")


def test_a_racing_thread_cannot_swap_a_tmp_path_onto_git_commondir(sandbox, canary):
    """A path in the sandbox's /tmp is continued to the kernel; a second thread swaps the buffer
    to the workspace before the kernel reads it. Only Landlock could refuse it there."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "race.py").write_text(RACE)
    host_git_status_while_running(sandbox, plant_commondir(canary, "python3 race.py"), ws, timeout=180)
    assert not canary.exists()


# ------------------------------------------------------------------ gVisor: absent git metadata is not held at all
@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed")
@pytest.mark.parametrize("how", ["echo ../evil > .git/commondir", "git init -q sub && cp evil/config sub/.git/config"])
def test_gvisor_cannot_plant_git_metadata_that_did_not_exist(sandbox, canary, how):
    """Under gVisor only existing protected entries are binds and only absent *root* names are
    checked at the end; an absent .git/commondir (config.worktree, objects/info/alternates, …)
    and a new repository beneath the workspace are neither."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.run("--backend", "gvisor", "--", "/bin/sh", "-c", plant_commondir(canary, how))
    assert "end" in result.stdout, result.stderr
    git(ws, "status", home=sandbox.home)
    if (ws / "sub").is_dir():
        git(ws / "sub", "status", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ a repository made without the name .git
SIGNED_COMMIT = ("tree %s\\nauthor a <a@a> 1 +0000\\ncommitter a <a@a> 1 +0000\\n"
                 "gpgsig -----BEGIN PGP SIGNATURE-----\\n x\\n -----END PGP SIGNATURE-----\\n\\nm\\n")


def test_a_new_bare_repository_in_a_subdirectory_cannot_be_planted(sandbox, canary):
    """git takes any directory holding HEAD, objects/ and refs/ for a (bare) repository and reads
    its config: the host's next `git log` run from docs/ runs gpg.program from it."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "docs").mkdir()
    script = f"""cd docs && git init -q --bare /tmp/b && cp -r /tmp/b/HEAD /tmp/b/objects /tmp/b/refs . &&
printf '#!/bin/sh\\ntouch {canary}\\n' > g.sh && chmod +x g.sh &&
printf '[core]\\n\\tbare = true\\n[log]\\n\\tshowSignature = true\\n[gpg]\\n\\tprogram = %s/g.sh\\n' "$PWD" > config &&
c=$(printf '{SIGNED_COMMIT}' $(git mktree </dev/null) | git hash-object -t commit -w --stdin) &&
git update-ref refs/heads/master $c; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    git(ws / "docs", "log", "-1", home=sandbox.home, check=False)
    assert not canary.exists()


HUSKY_H = '#!/bin/sh\nn=$(basename "$0")\ns=$(dirname "$(dirname "$0")")/$n\n[ ! -f "$s" ] && exit 0\nsh -e "$s" "$@"\n'


def test_husky_v9_hooks_are_protected_not_only_its_stubs(sandbox, canary):
    """husky 9 sets core.hooksPath = .husky/_, whose generated stubs run .husky/<hook>: only the
    stub directory is protected, and the user's .husky/pre-commit, which the stub runs on the
    host's next commit, is writable."""
    ws = repo(sandbox.workspace, sandbox.home)
    stubs = ws / ".husky" / "_"
    stubs.mkdir(parents=True)
    (stubs / "h").write_text(HUSKY_H)
    (stubs / "pre-commit").write_text('#!/bin/sh\n. "$(dirname "$0")/h"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    (ws / ".husky" / "pre-commit").write_text("npm test\n")
    git(ws, "config", "core.hooksPath", ".husky/_", home=sandbox.home)
    result = sandbox.sh(f"echo 'touch {canary}' > .husky/pre-commit; echo end")
    assert "end" in result.stdout, result.stderr
    (ws / "f").write_text("f")
    git(ws, "add", "f", home=sandbox.home)
    git(ws, "commit", "-qm", "f", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ exec.allow
EXEC_POLICY = "version: 1\nextends: default\nexec:\n  allow: [/usr/bin, /bin]\n"
CONSTRUCTOR_C = ('#include <stdio.h>\n#include <stdlib.h>\n__attribute__((constructor)) static void run(void) '
                 '{ char *c = getenv("CANARY"); if (c) fclose(fopen(c, "w")); }\n')


@pytest.mark.parametrize("how", ["LD_PRELOAD=./evil.so /usr/bin/true",
                                 "python3 -c 'import ctypes; ctypes.CDLL(\"./evil.so\")'"])
def test_exec_allow_holds_against_shared_objects_from_the_workspace(sandbox, how):
    """Landlock checks execute rights on execve only; the loader maps a preloaded or dlopen()ed
    file with PROT_EXEC on a read right alone, so native code from the workspace runs."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    (sandbox.workspace / "evil.c").write_text(CONSTRUCTOR_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(sandbox.workspace / "evil.so"),
                    str(sandbox.workspace / "evil.c")], check=True)
    policy = sandbox.write_policy("exec.yaml", EXEC_POLICY)
    ran = sandbox.workspace / "ran"
    sandbox.run("--", "/bin/sh", "-c", f"CANARY={ran} {how}", policy=str(policy))
    assert not ran.exists()


LOADER_PROBE = textwrap.dedent("""
    import ctypes, os, sys, threading
    binary, canary, how = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
    loader = [p for p in (b"/lib64/ld-linux-x86-64.so.2", b"/lib/ld-linux-aarch64.so.1") if os.path.exists(p)][0]
    if how == "non-utf8-name":  # the supervisor resolves /tmp/l\\ufffd, which does not exist
        os.symlink(loader, b"/tmp/l\\xff")
        os.execv(b"/tmp/l\\xff", [loader, binary, canary])
    if how == "proc-fd":  # a magic link: the guard's RESOLVE_NO_MAGICLINKS lookup fails, the exec goes on
        os.execv(f"/proc/self/fd/{os.open(loader, os.O_RDONLY)}", [loader, binary, canary])
    if how == "proc-root":
        os.execv(b"/proc/self/root" + loader, [loader, binary, canary])
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(300):  # race: the supervisor reads /usr/bin/true, the kernel the loader
        if os.path.exists(canary):
            break
        if os.fork() == 0:
            buf = ctypes.create_string_buffer(64)
            def flip():
                while True:
                    ctypes.memmove(buf, loader + b"\\0", len(loader) + 1)
                    ctypes.memmove(buf, b"/usr/bin/true\\0", 14)
            threading.Thread(target=flip, daemon=True).start()
            libc.execv(buf, (ctypes.c_char_p * 4)(loader, binary, canary, None))
            os._exit(1)
        os.wait()
""")


@pytest.mark.parametrize("how", ["non-utf8-name", "proc-fd", "proc-root", "race"])
def test_the_loader_refusal_holds(sandbox, how):
    """The exec guard reads the exec path from the caller's memory, resolves it and continues:
    a name that is not UTF-8 resolves to another (missing) name there, a path through a /proc
    magic link does not resolve at all (and counts as "not the loader"), and a second thread
    swaps the path between the guard's read and the kernel's."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    (sandbox.workspace / "c.c").write_text(CANARY_C)
    subprocess.run([cc, "-o", str(sandbox.workspace / "bin"), str(sandbox.workspace / "c.c")], check=True)
    (sandbox.workspace / "probe.py").write_text(LOADER_PROBE)
    ran = sandbox.workspace / "ran"
    policy = sandbox.write_policy("exec.yaml", EXEC_POLICY)
    sandbox.run("--", "python3", "probe.py", "./bin", str(ran), how, policy=str(policy), timeout=120)
    assert not ran.exists()


# ------------------------------------------------------------------ a writable HOME
HOME_RW = "version: 1\nextends: default\nfilesystem:\n  write: ['~']\n"
USER_SITE = f".local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
HOME_PLANTS = {  # (what /etc/skel must say, the attack, the host's command) from Debian's own skeleton
    "bash_aliases": (".bash_aliases", "echo 'touch {canary}' > ~/.bash_aliases", ["bash", "-i", "-c", "true"]),
    "local_bin": ("local/bin", "mkdir -p ~/.local/bin && printf '#!/bin/sh\\ntouch {canary}\\n' > ~/.local/bin/ls && "
                  "chmod +x ~/.local/bin/ls", ["bash", "-l", "-c", "ls"]),
    "python_pth": ("", f"mkdir -p ~/{USER_SITE} && echo 'import os; os.close(os.open(\"{{canary}}\", os.O_CREAT))' "
                   f"> ~/{USER_SITE}/x.pth", ["python3", "-c", "pass"]),
}


@pytest.mark.parametrize("plant", sorted(HOME_PLANTS))
def test_a_writable_home_cannot_plant_what_the_hosts_shell_or_python_runs(sandbox, canary, plant):
    """The protected names cover .bashrc and .profile but not what they source or put first in
    PATH (~/.bash_aliases, ~/.local/bin), nor Python's user site-packages (.pth files run at
    every start), systemd user units, XDG autostart, ~/.claude.json's MCP servers, …"""
    needs, attack, host_command = HOME_PLANTS[plant]
    skeleton = ""
    for name in (".bashrc", ".profile"):
        if Path("/etc/skel", name).exists():
            shutil.copy(Path("/etc/skel", name), sandbox.home / name)
            skeleton += (sandbox.home / name).read_text(errors="replace")
    if needs not in skeleton:
        pytest.skip(f"this system's /etc/skel never mentions {needs}")
    policy = sandbox.write_policy("home-rw.yaml", HOME_RW)
    result = sandbox.run("--", "/bin/sh", "-c", attack.format(canary=canary) + "; echo end", policy=str(policy))
    assert "end" in result.stdout, result.stderr
    subprocess.run(host_command, env={"HOME": str(sandbox.home), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
                   cwd=sandbox.home, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert not canary.exists()


def test_repositories_elsewhere_in_a_writable_home_keep_their_hooks(sandbox, canary, tmp_path):
    """Only the workspace is walked for repositories; other writable grants (a writable HOME) get
    their top level only. A `.git` anywhere is still held by name, but another repository's
    core.hooksPath (.husky) and a bare repository's hooks are not found, so they stay writable."""
    other = repo(sandbox.home / "other", sandbox.home)
    git(other, "config", "core.hooksPath", ".husky", home=sandbox.home)
    (other / ".husky").mkdir()
    bare = sandbox.home / "srv.git"
    git(sandbox.home, "clone", "-q", "--bare", str(other), str(bare), home=sandbox.home)
    policy = sandbox.write_policy("home-rw.yaml", HOME_RW)
    hook = f"printf '#!/bin/sh\\ntouch {canary}\\n' > %s && chmod +x %s"
    attack = " ; ".join(hook % (p, p) for p in ("~/other/.husky/pre-commit", "~/srv.git/hooks/pre-receive"))
    result = sandbox.run("--", "/bin/sh", "-c", attack + "; echo end", policy=str(policy))
    assert "end" in result.stdout, result.stderr
    (other / "f").write_text("f")
    git(other, "add", "f", home=sandbox.home)
    git(other, "commit", "-qm", "f", home=sandbox.home, check=False)
    git(other, "push", "-q", str(bare), "HEAD:refs/heads/x", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ a protected name two levels down
@pytest.mark.parametrize("shipped", [True, False])
def test_the_end_of_run_check_never_follows_a_symlinked_parent(sandbox, canary, shipped):
    """.config/git is protected, its parent .config is not: the sandbox puts a symlink to the
    user's real ~/.config in its place (moving a shipped .config away first). The end-of-run
    check then compares and "restores" through that symlink: with a .config/git/config shipped
    by the repository, that file lands in the user's ~/.config/git/config (read by every git
    command); with none, the user's ~/.config/git and ~/.config/nvim are "removed" as created."""
    ws = repo(sandbox.workspace, sandbox.home)
    if shipped:  # inert in a workspace
        (ws / ".config" / "git").mkdir(parents=True)
        (ws / ".config" / "git" / "config").write_text(hostile_config(canary))
    mine = sandbox.home / ".config" / "git" / "config"
    mine.parent.mkdir(parents=True)
    mine.write_text("[user]\n\tname = me\n")
    (sandbox.home / ".config" / "nvim").mkdir()
    (sandbox.home / ".config" / "nvim" / "init.lua").write_text("-- mine\n")
    result = sandbox.sh('mv .config moved; ln -s "$HOME/.config" .config; echo end')
    assert "end" in result.stdout, result.stderr
    assert mine.read_text() == "[user]\n\tname = me\n"
    assert (sandbox.home / ".config" / "nvim" / "init.lua").read_text() == "-- mine\n"
    git(sandbox.home, "status", home=sandbox.home, check=False)
    assert not canary.exists()


def test_a_directory_moved_into_place_cannot_plant_a_protected_sub_name(sandbox, canary):
    """rename checks the destination's own name, not what the moved directory holds: stage/git/
    moved to ~/.config plants ~/.config/git/config (under a writable HOME), live for the host's
    git while the run goes on; an empty .git/objects/info replaced the same way plants alternates."""
    ws = repo(sandbox.workspace, sandbox.home)
    policy = sandbox.write_policy("home-rw.yaml", HOME_RW)
    attack = (f"mkdir -p ~/stage/git && printf '%s' '{hostile_config(canary)}' > ~/stage/git/config && "
              "mv ~/.config ~/old-config 2>/dev/null; mv ~/stage ~/.config; "
              "mkdir info && echo /tmp/elsewhere > info/alternates && mv -T info .git/objects/info")
    proc = subprocess.Popen(sandbox.argv("-p", str(policy), "--", "/bin/sh", "-c",
                                         f"{attack}; echo planted > planted; while [ ! -e go ]; do sleep 0.05; done",
                                         policy=None), cwd=ws, env=sandbox.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ws / "planted")
        git(ws, "status", home=sandbox.home)
        assert not (ws / ".git" / "objects" / "info" / "alternates").exists()
    finally:
        (ws / "go").write_text("")
        proc.communicate(timeout=60)
    assert not canary.exists()


def test_a_writable_home_keeps_sandboxctls_own_log_and_state(sandbox):
    """sandboxctl's state dir (~/.local/state/sandboxctl: the action log, the trust store, the
    protect journal and blobs) is a protected path under a writable HOME, so it is recorded at
    launch; the supervisor itself writes it during the run, and the end-of-run check then moves
    the action log aside as 'modified' and removes its own journal and blobs as 'created'."""
    from sandboxctl.log.chain import verify_lines

    policy = sandbox.write_policy("home-rw.yaml", HOME_RW)
    state = sandbox.home / ".local" / "state"
    for _ in range(2):
        result = sandbox.run("--", "true", policy=str(policy), env={"XDG_STATE_HOME": str(state)})
        assert result.returncode == 0, result.stderr
        assert "protected path" not in result.stderr
    lines = (state / "sandboxctl" / "actions.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["event"] for line in lines].count("run.start") == 2
    assert verify_lines(iter(lines))[1] is None


# ------------------------------------------------------------------ the agents' own policies
AGENT_PLANTS = {  # policy: (file in HOME, what the sandbox writes there, what the host program then runs)
    "codex": (".codex/.env", "LD_PRELOAD=/tmp/x.so\n", "codex loads ~/.codex/.env into its environment"),
    "claude-code": (".claude.json", '{"mcpServers": {"x": {"command": "sh", "args": ["-c", "touch /tmp/x"]}}}',
                    "claude starts the user-scope MCP servers of ~/.claude.json"),
}


@pytest.mark.parametrize("policy", sorted(AGENT_PLANTS))
def test_agent_policies_do_not_let_the_agent_plant_what_it_runs_later_outside(sandbox, policy):
    """The agent policies grant the agent's own home writable, with a protect list; what each
    agent runs from there at its next start outside the sandbox must be on that list."""
    name, payload, why = AGENT_PLANTS[policy]
    target = sandbox.home / name
    for directory in (".codex", ".claude"):
        (sandbox.home / directory).mkdir(exist_ok=True)
    (sandbox.home / ".claude.json").write_text("{}")
    before = target.read_bytes() if target.exists() else None
    result = sandbox.run("--", "/bin/sh", "-c", f"printf '%s' '{payload}' > ~/{name}; echo end", policy=policy)
    assert "end" in result.stdout, result.stderr
    assert (target.read_bytes() if target.exists() else None) == before, why


def test_the_next_run_does_not_undo_what_the_user_did_after_a_killed_run(sandbox):
    """A killed supervisor's check is finished by the next run, against its launch record; but
    once the supervisor is dead nothing of its sandbox can write any more (the sandbox dies with
    it, and the writable grants are read-only to the kernel), so every change made since is the
    user's: a hook installed and a remote added, hours later, are reverted by the next run."""
    ws = repo(sandbox.workspace, sandbox.home)
    proc = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", "echo up > up; sleep 30"), cwd=ws,
                            env=sandbox.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(ws / "up")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    hook = ws / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexec pre-commit\n")  # the user's `pre-commit install`, later
    git(ws, "remote", "add", "origin", "https://example.com/r.git", home=sandbox.home)
    result = sandbox.run("--", "true")
    assert result.returncode == 0, result.stderr
    assert hook.exists()
    assert "origin" in git(ws, "remote", home=sandbox.home).stdout


def test_an_ide_writing_its_own_project_files_during_a_run_keeps_its_work(sandbox):
    """JetBrains IDEs rewrite .idea/workspace.xml (and add .idea/shelf/…) all the time while a
    project is open. A change to a protected path during a bubblewrap run can only come from
    outside (the sandbox is refused), yet the end-of-run check reverts it and moves the IDE's
    files aside: every agent run undoes the open IDE's state (shelved changes included)."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / ".idea").mkdir()
    (ws / ".idea" / "workspace.xml").write_text("<project version='1'/>\n")
    proc = _start(sandbox, "echo up > up; while [ ! -e go ]; do sleep 0.05; done")
    _wait_for(ws / "up")
    (ws / ".idea" / "workspace.xml").write_text("<project version='2'/>\n")  # the IDE, meanwhile
    (ws / ".idea" / "shelf").mkdir()
    (ws / ".idea" / "shelf" / "my_changes.patch").write_text("diff\n")
    (ws / "go").write_text("")
    proc.communicate(timeout=60)
    assert (ws / ".idea" / "workspace.xml").read_text() == "<project version='2'/>\n"
    assert (ws / ".idea" / "shelf" / "my_changes.patch").exists()


# ------------------------------------------------------------------ the mediator itself
def test_a_fifo_with_no_reader_does_not_stall_the_supervisor(sandbox):
    """The supervisor opens a FIFO for writing itself and blocks until a reader comes: every other
    trapped call (each exec) waits behind it, the run's --timeout never fires, SIGTERM does not
    end it. (A read lease taken by the sandbox on its own file stalls it the same way, for the
    kernel's lease-break-time, 45 s, per open.)"""
    fifo = sandbox.workspace / "f"
    try:
        sandbox.run("--timeout", "20s", "--", "/bin/sh", "-c", "mkfifo f; (echo x > f &); sleep 0.2; echo ok > ok",
                    timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung past its own --timeout")
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release a blocked writer
    assert (sandbox.workspace / "ok").exists()


NAMES_PROBE = textwrap.dedent("""
    import errno, os
    for name in (b"caf\\xe9.txt", b"d\\xff"):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644))
    os.rename(b"d\\xff", b"e\\xfe"); os.mkdir(b"dir\\xe9"); os.unlink(b"caf\\xe9.txt")
    path = os.getcwd()
    while len(path) < 3850:
        os.mkdir("a" * 200); os.chdir("a" * 200); path += "/" + "a" * 200
    try:  # over 4100 bytes: the kernel refuses any path of PATH_MAX (4096) or more
        os.open(path + "/" + "b" * 250, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        print(errno.errorcode[exc.errno])
""")


def test_the_supervisor_acts_on_the_callers_exact_bytes(sandbox):
    """Paths are read from the caller's memory as UTF-8 with errors replaced, and up to a page
    past 4096 bytes: the supervisor creates, renames and removes other names than the caller
    gave (dir\\ufffd; two different names become the same one), and creates a file through a
    path the kernel would refuse as too long."""
    result = sandbox.py(NAMES_PROBE)
    assert result.stdout.split() == ["ENAMETOOLONG"], result.stderr
    assert sorted(os.listdir(os.fsencode(sandbox.workspace))) == [b"a" * 200, b"dir\xe9", b"e\xfe"]
    assert [files for _, _, files in os.walk(sandbox.workspace / ("a" * 200)) if files] == []


def test_a_flood_of_refused_calls_does_not_grow_the_log_and_memory_without_bound(sandbox):
    """Each refused call is one JSON record (~360 bytes) and one dict kept in the supervisor:
    a loop refusing ~4000 calls a second grows the user's log by ~1.5 MB/s (5 GB an hour) and
    the supervisor's memory with it. Identical denials should be counted, not each kept."""
    repo(sandbox.workspace, sandbox.home)
    flood = "import os\nfor _ in range(20000):\n    try: os.open('.git/config', os.O_WRONLY)\n    except OSError: pass"
    sandbox.py(flood, timeout=120)
    records = sandbox.records()
    assert next(r for r in records if r["event"] == "run.end")["denied"] == 20000  # still counted...
    assert sum(r["event"] == "file" for r in records) < 1000  # ...not each one written
    assert sandbox.log_path.stat().st_size < 1 << 20


def test_truncate_performed_by_the_supervisor_keeps_the_file_size_limit(sandbox):
    """truncate(2) is carried out by the supervisor, under its own RLIMIT_FSIZE, not the
    sandbox's limits.file_size: the kernel would have refused it (EFBIG)."""
    policy = sandbox.write_policy("fsize.yaml", "version: 1\nextends: default\nlimits:\n  file_size: 1M\n")
    result = sandbox.run("--", "python3", "-c", "import os; os.truncate(open('big', 'w').name, 10 << 30)",
                         policy=str(policy))
    assert result.returncode != 0
    assert (sandbox.workspace / "big").stat().st_size == 0


EMPTY_PATHS = textwrap.dedent("""
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    file = os.open("f", os.O_RDONLY)
    os.chdir("sub")
    for call in (lambda: libc.rmdir(b""), lambda: libc.openat(file, b"", os.O_WRONLY | os.O_TRUNC),
                 lambda: libc.unlinkat(file, b"", 0)):
        ctypes.set_errno(0); print(call(), errno.errorcode.get(ctypes.get_errno(), "none"))
""")


def test_an_empty_path_names_nothing(sandbox):
    """The kernel answers ENOENT to an empty path (without AT_EMPTY_PATH); the supervisor took it
    for the caller's cwd or dirfd itself: rmdir("") removed the cwd, openat(fd, "", O_TRUNC)
    and unlinkat(fd, "") acted on the file behind a descriptor opened for reading."""
    (sandbox.workspace / "sub").mkdir()
    (sandbox.workspace / "f").write_text("keep\n")
    result = sandbox.py(EMPTY_PATHS)
    assert result.stdout.split() == ["-1", "ENOENT"] * 3, result.stderr
    assert (sandbox.workspace / "sub").is_dir() and (sandbox.workspace / "f").read_text() == "keep\n"


# ------------------------------------------------------------------ legitimate work that breaks
def test_a_fifo_written_before_its_reader_starts_works(sandbox):
    """The writer's open reaches the supervisor first and blocks it; the reader's exec (sleep,
    cat) is trapped too and waits for the supervisor: a deadlock of an ordinary shell idiom."""
    try:
        sandbox.sh("mkfifo p; (sleep 0.3; cat p > got) & echo hi > p; wait", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the run deadlocked")
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(sandbox.workspace / "p", os.O_RDONLY | os.O_NONBLOCK))
    assert (sandbox.workspace / "got").read_text() == "hi\n"


@pytest.fixture
def outside_tmp(sandbox):
    """A workspace where the sandbox has no tmpfs above it (not /tmp, not HOME), as most real
    workspaces outside HOME are: there Landlock really holds the workspace read-only, and what
    the supervisor does not carry out fails."""
    import pwd
    import tempfile

    base = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if not os.access(base, os.W_OK) or base.resolve().is_relative_to("/tmp"):
        pytest.skip(f"no writable directory outside /tmp to make a workspace in ({base})")
    path = Path(tempfile.mkdtemp(prefix=".sandboxctl-test-", dir=base))
    os.chmod(path, 0o755)
    yield type(sandbox)(path, sandbox.home, sandbox.state)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("work", [
    "sh -c 'echo e > /dev/stderr' 2>> got && test -s got",  # stderr redirected to a workspace file, reopened
    "python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"s\")' && touch got",  # a UNIX socket
])
def test_ordinary_work_in_a_workspace_outside_tmp(outside_tmp, work):
    """/dev/stdout and /dev/stderr are magic links: the supervisor cannot resolve them (no magic
    links) and hands the open to the kernel, which Landlock refuses; bind() is not trapped at all."""
    result = outside_tmp.sh(work)
    assert result.returncode == 0 and (outside_tmp.workspace / "got").exists(), result.stderr
