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
