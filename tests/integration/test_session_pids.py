"""A session's records name the command a process belongs to — never a finished one.

A command's number is found from its process's session id inside the sandbox (the command's
first pid). Once a command has ended, the kernel may hand that pid to another process, which
may lead a session of its own: its records must not carry the finished command's number.
The reuse is forced from outside: the test enters the sandbox's user and PID namespaces (its
own, as the owner of the user namespace) and sets ns_last_pid; the judge is the action log.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

import pytest

from .test_sessions import cli, runtime, server_pid  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not shutil.which("nsenter"), reason="nsenter (util-linux) is not installed")

CHILD = """\
import os, sys
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    os.setsid()
    try:
        open("/etc/sandboxctl-reused-pid", "w")
    except OSError:
        pass
    os._exit(0)
os.waitpid(pid, 0)
print(pid, flush=True)
"""


NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace


def set_next_pid(host_pid: int, next_pid: int) -> None:
    """The next process forked in `host_pid`'s PID namespace gets `next_pid` (if it is free).
    ns_last_pid is written from inside that namespace, holding CAP_SYS_ADMIN in the user
    namespace that owns it (bubblewrap may nest another one below it: not that one)."""
    pidns = os.open(f"/proc/{host_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    owner = fcntl.ioctl(pidns, NS_GET_USERNS)
    try:
        subprocess.run(["nsenter", f"--user=/proc/self/fd/{owner}", f"--pid=/proc/self/fd/{pidns}",
                        "--preserve-credentials", "sh", "-c", f"echo {next_pid - 1} > /proc/sys/kernel/ns_last_pid"],
                       check=True, timeout=10, pass_fds=(owner, pidns))
    finally:
        os.close(owner)
        os.close(pidns)


def test_a_finished_commands_pid_taken_by_another_process_is_not_that_command(cli):  # noqa: F811
    name = cli.start("t-pid-reuse")
    first = cli("exec", name, "--", "python3", "-c", "import os; print(os.getpid())")
    assert first.returncode == 0, first.stderr
    finished_pid = int(first.stdout)
    second = subprocess.Popen([sys.executable, "-m", "sandboxctl", "exec", name, "--", "python3", "-c", CHILD],
                              cwd=cli.sandbox.workspace, env=cli.env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline() == "ready\n"
        set_next_pid(server_pid(cli.info(name)["pid"]), finished_pid)
        out, err = second.communicate("go\n", timeout=30)
    finally:
        second.kill()
    assert int(out.split()[-1]) == finished_pid, (out, err)  # the reuse happened: the test means something
    run = cli.info(name)["run"]
    mine = [r for r in cli.sandbox.records() if r["run"] == run]
    [denial] = [r for r in mine if r["event"] == "file" and r.get("path") == "/etc/sandboxctl-reused-pid"]
    assert denial["decision"] == "deny"
    assert denial.get("command_id") == 2, denial  # its parent's command, not the finished command 1
    ends = {r["command_id"]: r["denied"] for r in mine if r["event"] == "command.end"}
    assert ends == {1: 0, 2: 1}
