"""Interactive use: a real pseudo-terminal passes through; resizes and Ctrl-C reach the command."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _spawn_on_pty(sandbox, args: list[str], policy: str = "default", columns: int = 111):
    master, slave = os.openpty()
    _set_size(slave, 33, columns)

    def become_terminal_owner() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(sandbox.argv(*args, policy=policy), cwd=sandbox.workspace,
                            env={**sandbox.env(), "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=become_terminal_owner)
    os.close(slave)
    return proc, master


def _read_until(master: int, needle: bytes, timeout: float = 15.0) -> bytes:
    data = b""
    end = time.monotonic() + timeout
    while needle not in data and time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


RESIZE_PROBE = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGWINCH, lambda *a: got.append(os.get_terminal_size()))  # before the test may resize
print('size', os.get_terminal_size(), 'tty', os.isatty(0), os.environ.get('TERM'), flush=True)
try:
    for _ in range(200):
        time.sleep(0.05)
        if got:
            print('resized', got[-1], flush=True)
            break
    time.sleep(30)
except KeyboardInterrupt:
    print('got-ctrl-c', flush=True)
    sys.exit(42)
"""


def test_terminal_size_resize_and_ctrl_c_reach_the_command(sandbox):
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", RESIZE_PROBE])
    try:
        out = _read_until(master, b"tty True")
        assert b"columns=111, lines=33" in out and b"xterm" in out, out
        _set_size(master, 40, 132)
        os.killpg(os.getpgid(proc.pid), 28)  # the kernel sends SIGWINCH to the foreground group
        out = _read_until(master, b"resized")
        assert b"columns=132, lines=40" in out, out
        os.write(master, b"\x03")  # Ctrl-C typed on the terminal
        out = _read_until(master, b"got-ctrl-c")
        assert b"got-ctrl-c" in out, out
        assert proc.wait(timeout=10) == 42
    finally:
        proc.kill()
        os.close(master)


def test_full_screen_program_runs_on_the_terminal(sandbox):
    import shutil

    if not shutil.which("less"):
        import pytest

        pytest.skip("less is not installed")
    (sandbox.workspace / "text.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    proc, master = _spawn_on_pty(sandbox, ["--", "less", "text.txt"])
    try:
        out = _read_until(master, b"line 20")
        assert b"line 0" in out
        os.write(master, b"G")  # jump to the end
        out = _read_until(master, b"line 199")
        assert b"line 199" in out
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        os.close(master)


def _shell_on_pty(sandbox, script: str):
    """bash running `script` on a terminal of its own (its foreground group, as a script is)."""
    master, slave = os.openpty()
    _set_size(slave, 24, 80)

    def become_terminal_owner() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(["bash", "-c", script], cwd=sandbox.workspace, env={**sandbox.env(), "TERM": "xterm"},
                            stdin=slave, stdout=slave, stderr=slave, preexec_fn=become_terminal_owner)
    os.close(slave)
    return proc, master


def test_ctrl_c_stops_the_calling_script_as_it_would_without_the_sandbox(sandbox):
    """A shell goes on after a child that exited 130, and stops after one that died of SIGINT
    (wait-and-cooperative-exit): `for f in *; do sandboxctl run -- job "$f"; done` must stop at
    Ctrl-C as the bare loop would. A command that catches Ctrl-C and exits lets the script go on."""
    import shlex

    waits = ("import sys, time\ntry:\n    print('waiting', flush=True)\n    time.sleep(30)\n"
             "except KeyboardInterrupt:\n    sys.exit(42)\n")
    for command, catches in ((["python3", "-c", "import time; print('waiting', flush=True); time.sleep(30)"], False),
                             (["python3", "-c", waits], True)):
        script = f"{shlex.join(sandbox.argv('--', *command))}; echo went-on rc=$?"
        proc, master = _shell_on_pty(sandbox, script)
        try:
            out = _read_until(master, b"waiting")
            assert b"waiting" in out, out
            os.write(master, b"\x03")
            out = _read_until(master, b"went-on", timeout=5 if not catches else 15)
            status = proc.wait(timeout=15)
            if catches:
                assert b"went-on rc=42" in out and status == 0, (out, status)
            else:
                assert b"went-on" not in out and status == -2, (out, status)  # bash died of SIGINT
        finally:
            proc.kill()
            os.close(master)
