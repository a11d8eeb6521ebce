"""`sandboxctl log runs` uses the terminal it really has: as wide as it is, and when no table fits
(80 columns with overlay runs), whole lines rather than a column cut away; through a pipe nothing
is cut at all."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from sandboxctl.log.writer import ActionLog

LONG = "print('a fairly long command line that no table of 80 columns holds, nor one cut at sixty')"
RUN_A, RUN_B = "20240101T000000-aaaaaa", "20240101T000100-bbbbbb"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "xdg" / "sandboxctl" / "actions.jsonl"
    for run, argv, applied in ((RUN_A, ["python3", "-c", LONG], "partly applied"), (RUN_B, ["make", "test"], None)):
        with ActionLog(str(path), run) as log:
            log.write("run.start", argv=argv, workspace="/w", policy="claude-code", policy_sha256="ab" * 32,
                      layers={"workspace": {"mode": "overlay"}}, limits={})
            log.write("run.end", exit_code=0, signal=None, duration_s=1.25, denied=3, timed_out=False)
            if applied:
                log.write("workspace", action="apply", state=applied)
    return tmp_path / "xdg"


def on_terminal(xdg: Path, columns: int) -> str:
    """`log runs` with stdout on a terminal of `columns` columns (no COLUMNS to go by): what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"XDG_STATE_HOME": str(xdg)}
    proc = subprocess.Popen([sys.executable, "-m", "sandboxctl", "log", "runs"], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return re.sub(r"\x1b\[[0-9;]*m", "", out.decode()).replace("\r\n", "\n")


def test_a_wide_terminal_shows_the_whole_command_on_one_line(state: Path) -> None:
    out = on_terminal(state, 220)
    line = next(line for line in out.splitlines() if line.startswith(RUN_A))
    assert LONG.replace("'", "\\'") in line and line.rstrip().endswith("partly applied"), out


def test_80_columns_with_overlay_runs_cut_no_column(state: Path) -> None:
    out = on_terminal(state, 80)
    text = " ".join(out.split())  # the terminal wrapped the lines: nothing is lost
    assert f"{RUN_A} " in text and "partly applied" in text and "held" in text, out
    assert LONG.replace("'", "\\'") in text and "make test" in text, out
    assert "…" not in out


def test_through_a_pipe_the_command_is_whole(state: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "runs"], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    lines = out.splitlines()
    assert len(lines) == 3 and LONG.replace("'", "\\'") in lines[1] and lines[1].endswith("partly applied"), out
