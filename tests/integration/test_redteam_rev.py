"""Review rev (red team of rt14's live git-config watch and the mediator's walk), judged from
outside: the host's own git running what the sandbox wrote, and the bytes on the host's disk."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.integration.test_protected_paths import git, repo

HOOK = "#!/bin/sh\ntrue\n"


def _hidden_hooks(ws: Path) -> None:
    (ws / "hidden").mkdir()
    (ws / "hidden" / "pre-commit").write_text(HOOK)
    (ws / "hidden" / "pre-commit").chmod(0o755)


def test_a_hooks_path_through_a_symlink_is_held_where_it_leads(sandbox, tmp_path: Path) -> None:
    """`.husky -> hidden` (a symlink a repository may carry) with core.hooksPath = .husky: only the
    name .husky was held, the write landed in hidden/pre-commit (judged there, unprotected), and
    the host's next commit ran it."""
    canary = tmp_path / "CANARY"
    ws = repo(sandbox.workspace, sandbox.home)
    _hidden_hooks(ws)
    (ws / ".husky").symlink_to("hidden")
    git(ws, "config", "core.hooksPath", ".husky", home=sandbox.home)
    result = sandbox.sh(f"printf '#!/bin/sh\\ntouch {canary}\\n' > .husky/pre-commit; "
                        f"printf '#!/bin/sh\\ntouch {canary}\\n' > hidden/pre-commit; echo ok > fine; echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), result.stdout + result.stderr
    assert (ws / "hidden" / "pre-commit").read_text() == HOOK
    assert (ws / "fine").exists()  # the rest of the workspace stays the command's


def test_a_hooks_path_the_host_sets_through_a_planted_symlink_is_held_where_it_leads(sandbox, tmp_path: Path) -> None:
    """The sandbox planted `.husky -> hidden` while nothing ran it; the host then set
    core.hooksPath = .husky during the run (LiveGitRefs): the symlink's target was not held."""
    canary = tmp_path / "CANARY"
    ws = repo(sandbox.workspace, sandbox.home)
    _hidden_hooks(ws)
    script = ("ln -s hidden .husky && echo > ready; i=0; while ! grep -q hooksPath .git/config; do i=$((i+1)); "
              "[ $i -gt 400 ] && exit 3; sleep 0.05; done; "
              f"printf '#!/bin/sh\\ntouch {canary}\\n' > hidden/pre-commit; echo rc=$?")
    process = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=ws, env=sandbox.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        if (ws / "ready").exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    git(ws, "config", "core.hooksPath", ".husky", home=sandbox.home)
    out, err = process.communicate(timeout=60)
    assert "rc=" in out, err  # the sandbox saw the change and tried
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), out + err
    assert (ws / "hidden" / "pre-commit").read_text() == HOOK



def test_a_relative_global_hooks_path_is_held_in_each_worktree(sandbox, tmp_path: Path) -> None:
    """`git config --global core.hooksPath .githooks` (a team's convention): git takes it from
    each repository's top; it was held as ~/.githooks, and the sandbox's .githooks/pre-commit ran at
    the host's next commit."""
    canary = tmp_path / "CANARY"
    ws = repo(sandbox.workspace, sandbox.home)
    git(ws, "config", "--global", "core.hooksPath", ".githooks", home=sandbox.home)
    (ws / ".githooks").mkdir()
    result = sandbox.sh(f"printf '#!/bin/sh\\ntouch {canary}\\n' > .githooks/pre-commit; "
                        "chmod +x .githooks/pre-commit; echo ok > fine; echo end")
    assert "end" in result.stdout, result.stderr
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), result.stderr
    assert not (ws / ".githooks" / "pre-commit").exists()
    assert (ws / "fine").exists()


def test_a_linked_worktrees_own_hooks_path_is_held_in_that_worktree(sandbox, tmp_path: Path) -> None:
    """A linked worktree's config.worktree (extensions.worktreeConfig) with a relative
    core.hooksPath: git takes it from that worktree's top, it was held beneath
    .git/worktrees/NAME, and the sandbox's wt/.husky/pre-commit ran at the host's next commit there."""
    canary = tmp_path / "CANARY"
    ws = repo(sandbox.workspace, sandbox.home)
    git(ws, "worktree", "add", "-q", "wt", home=sandbox.home)
    git(ws, "config", "extensions.worktreeConfig", "true", home=sandbox.home)
    git(ws / "wt", "config", "--worktree", "core.hooksPath", ".husky", home=sandbox.home)
    (ws / "wt" / ".husky").mkdir()
    result = sandbox.sh(f"printf '#!/bin/sh\\ntouch {canary}\\n' > wt/.husky/pre-commit; "
                        "chmod +x wt/.husky/pre-commit; echo end")
    assert "end" in result.stdout, result.stderr
    git(ws / "wt", "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), result.stderr
    assert not (ws / "wt" / ".husky" / "pre-commit").exists()


RACE = """
import os, time
seen = os.stat('.git/config').st_mtime_ns
open('ready', 'w').close()
end = time.time() + 20
while time.time() < end:
    with open('junk', 'w'):  # a judged call all the time: the supervisor polled at most every 10 ms
        pass
    if os.stat('.git/config').st_mtime_ns != seen:
        try:
            with open('.husky/pre-commit', 'w') as hook:
                hook.write('#!/bin/sh\\ntouch {canary}\\n')
            print('WROTE')
        except OSError as exc:
            print('REFUSED', exc)
        break
"""


def test_the_moment_after_the_host_sets_hooks_path_is_no_window(sandbox, tmp_path: Path) -> None:
    """A sandbox making calls all the time and watching .git/config wrote .husky/pre-commit within
    the 10 ms after the host set core.hooksPath (LiveGitRefs' spacing), 5 times in 5."""
    for attempt in range(3):
        canary = tmp_path / f"CANARY{attempt}"
        ws = repo(sandbox.workspace / f"r{attempt}", sandbox.home)
        (ws / ".husky").mkdir()
        (ws / ".husky" / "pre-commit").write_text(HOOK)
        (ws / ".husky" / "pre-commit").chmod(0o755)
        process = subprocess.Popen(sandbox.argv("-w", str(ws), "--", "python3", "-c", RACE.format(canary=canary)),
                                   cwd=ws, env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        for _ in range(400):
            if (ws / "ready").exists() or process.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(0.2)
        git(ws, "config", "core.hooksPath", ".husky", home=sandbox.home)
        out, err = process.communicate(timeout=60)
        assert "REFUSED" in out, out + err
        git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
        assert not canary.exists()
        assert (ws / ".husky" / "pre-commit").read_text() == HOOK

# ------------------------------------------------------------------ the prompt's terminal, the supervisor killed
def test_a_supervisor_killed_during_a_prompt_leaves_the_terminal_as_it_was(sandbox, tmp_path: Path) -> None:
    """The supervisor SIGKILLed while its tty prompt waited (the OOM killer, a `kill -9`): the
    terminal stayed with no echo, no line editing and no Ctrl-C, and its foreground group was the
    key helper's, dead — the program that ran sandboxctl (not a job-control shell, which takes the
    terminal back itself) was then stopped at its next read. Judged from the pty's master side."""
    import fcntl
    import select
    import signal
    import termios

    master, slave = os.openpty()
    before = termios.tcgetattr(master)
    pidfile = tmp_path / "supervisor.pid"
    argv = sandbox.argv("--approve", "ask", "--", "/bin/sh", "-c", "echo x > /etc/rev-canary")
    env = sandbox.env({"TERM": "xterm"})
    child = os.fork()
    if child == 0:  # a session of its own on the pty, running sandboxctl in its own process group
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.chdir(sandbox.workspace)
            supervisor = os.fork()
            if supervisor == 0:
                os.execve(argv[0], argv, env)
            pidfile.write_text(str(supervisor))
            os.waitpid(supervisor, 0)
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(slave)
    try:
        seen, deadline = b"", time.monotonic() + 30
        while b"llow" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        assert b"llow" in seen, seen
        time.sleep(0.3)
        asked = termios.ICANON | termios.ECHO | termios.ISIG
        assert termios.tcgetattr(master)[3] & asked != before[3] & asked  # the prompt's own mode
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (os.tcgetpgrp(master) != child
                                                or termios.tcgetattr(master)[3] & asked != before[3] & asked):
            time.sleep(0.05)
        assert os.tcgetpgrp(master) == child  # the group that ran sandboxctl has its terminal back
        assert termios.tcgetattr(master)[3] & asked == before[3] & asked
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(master)


# ------------------------------------------------------------------ the mediator's magic links, a thread's own
THREAD_CWD = """
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
os.chdir("leader")
def thread():
    assert libc.unshare(0x200) == 0, ctypes.get_errno()  # CLONE_FS: a cwd of its own
    os.chdir("../thread")
    os.close(os.open("/proc/self/cwd/made", os.O_CREAT | os.O_WRONLY, 0o644))
    print("made")
worker = threading.Thread(target=thread)
worker.start()
worker.join()
"""


def test_proc_self_in_a_thread_with_a_cwd_of_its_own_is_the_processs(sandbox) -> None:
    """/proc/self names the process, whose cwd is its leader's; the mediator read the calling
    thread's own (/proc/TID/cwd) and created the file in the thread's cwd, where the kernel
    creates it in the leader's (as it does outside any sandbox). Judged by the host's disk."""
    ws = sandbox.workspace
    (ws / "leader").mkdir()
    (ws / "thread").mkdir()
    result = sandbox.py(THREAD_CWD)
    assert "made" in result.stdout, result.stderr
    assert (ws / "leader" / "made").exists(), result.stderr
    assert not (ws / "thread" / "made").exists()
