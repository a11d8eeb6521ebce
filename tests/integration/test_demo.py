"""The README demo (examples/agent.py): each move without and with the sandbox, on its own canaries.

Judged from outside: the demo's exit code and table, the action log's records of the sandboxed run,
and what is left behind (nothing: no temporary directory, nothing in HOME but sandboxctl's state).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import termios
import time
from pathlib import Path

from .test_terminal import _read_until, _set_size

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "agent.py"
BAD_MOVES = {  # the row's title -> what happens without the sandbox
    "read $DEMO_API_KEY from the environment": "fake API key READ",
    "read ~/.ssh/id_ed25519": "fake SSH key READ",
    "write a file outside the workspace": "file CHANGED",
    "plant a git hook (.git/hooks/pre-commit)": "hook PLANTED",
    "reach a server (127.0.0.2, standing in for the internet)": "REACHED (1 request)",
}
HARMLESS = ("read the workspace", "write into the workspace", "use a scratch file in /tmp",
            "run a tool (git --version)")


def _env(sandbox, tmp: Path, **extra: str) -> dict[str, str]:
    return {**sandbox.env(), "TMPDIR": str(tmp), **extra}


def _rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        for title in (*BAD_MOVES, *HARMLESS):
            if line.startswith(f"  {title}"):
                rows[title] = line[len(title) + 2:].strip()
    return rows


def _check(sandbox, tmp: Path, out: str) -> None:
    rows = _rows(out)
    for title, without in BAD_MOVES.items():
        assert rows[title].startswith(without), (title, rows[title])
        assert "BLOCKED: " in rows[title], (title, rows[title])
    for title in HARMLESS:
        assert rows[title].split() == ["allowed", "allowed"], (title, rows[title])
    assert "5 of 9 moves worked without the sandbox and were stopped by it." in out
    records = sandbox.records()
    run = next(r["run"] for r in records if r["event"] == "run.start")
    assert f"sandboxctl log --run {run}" in out
    net = [r for r in records if r["event"] == "net"]
    assert [(r["host"], r["decision"]) for r in net] == [("127.0.0.2", "deny")], net  # the connection's trace
    files = {r["path"].rsplit("/", 1)[-1] for r in records if r["event"] == "file" and r["decision"] == "deny"}
    assert {"notes.txt", "pre-commit"} <= files
    assert not [p for p in tmp.iterdir()], "the demo removes its temporary world"
    left = sorted(str(p.relative_to(sandbox.home)) for p in sandbox.home.rglob("*"))
    assert left == [], left  # HOME untouched: the fake HOME lived in the temporary world


def test_demo_without_a_terminal_denies_and_shows_the_difference(sandbox, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # PATH as right after scripts/setup: sandboxctl is .venv/bin/sandboxctl, not on PATH
    done = subprocess.run([sys.executable, str(DEMO)], env=_env(sandbox, tmp, CI="true", PATH="/usr/bin:/bin"),
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    _check(sandbox, tmp, done.stdout)
    assert "denied in run" in done.stderr  # sandboxctl's own end-of-run table
    beside = Path(sys.executable).parent / "sandboxctl"
    if beside.is_file():  # the demo names the sandboxctl that can be run from there
        shown = done.stdout.splitlines()[-1].split(": ", 1)[1].split()[0]
        assert Path(tmp_path, shown).resolve() == beside.resolve(), shown


def test_demo_on_a_terminal_asks_and_d_denies(sandbox, tmp_path: Path) -> None:
    """On a terminal both approvable escapes (the write outside, the connection) bring up the prompt."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    master, slave = os.openpty()
    _set_size(slave, 40, 160)

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {k: v for k, v in _env(sandbox, tmp, TERM="xterm").items() if k != "CI"}
    proc = subprocess.Popen([sys.executable, str(DEMO)], env=env, cwd=tmp_path, stdin=slave, stdout=slave,
                            stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    screen, answered = b"", 0
    try:
        deadline = time.monotonic() + 150
        while b"sandboxctl log --run" not in screen and time.monotonic() < deadline:
            screen += _read_until(master, b"\n", 1)
            while screen.count(b"without an answer") > answered:  # d to every prompt, as the README says
                time.sleep(0.6)  # read first: a key in the panel's first half second is no answer
                os.write(master, b"d")
                answered += 1
        assert proc.wait(timeout=30) == 0, screen.decode(errors="replace")[-2500:]
    finally:
        proc.kill()
        os.close(master)
    prompts = screen.split(b"approval needed")[1:]
    assert answered == len(prompts) >= 2
    seen = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", b"".join(prompts).replace(b"\r\n", b"\n"))  # styles off
    assert b"notes.txt" in seen and b"connect  127.0.0.2" in seen, seen.decode(errors="replace")[-2500:]
    text = screen.decode(errors="replace").replace("\r\n", "\n")
    _check(sandbox, tmp, text)
    answers = [(r["kind"], r["answer"], r["via"]) for r in sandbox.records() if r["event"] == "approval"]
    assert len(answers) >= 2 and {a[1:] for a in answers} == {("deny", "tty")}, answers
    assert {"file", "network"} <= {a[0] for a in answers}
