"""A bare `sandboxctl discard` acts on the workspace's latest overlay run only: run twice, the second
refuses and names the older runs that still hold changes, instead of dropping one unseen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandboxctl.workspace import seal
from sandboxctl.workspace.layer import Layer
from tests.unit.workspace_helpers import make_layer, write

OLDER, NEWER = "20260101T000000-aaaaaa", "20260101T000100-bbbbbb"


def held(state: Path, ws: Path, run: str) -> Layer:
    layer = make_layer(state, ws, run)
    write(layer.upper / f"{run}.txt", "made by the run\n")
    seal.seal(layer)
    assert layer.state == "held"
    return layer


def now(layer: Layer) -> str:
    """The layer's state as its record on disk says now (another process changed it)."""
    return Layer(layer.path).state


def discard(xdg: Path, ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(xdg)}
    return subprocess.run([sys.executable, "-m", "sandboxctl", "discard", "-w", str(ws), *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_second_bare_discard_keeps_the_older_run_and_names_it(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    xdg = tmp_path / "xdg"
    older, newer = held(xdg / "sandboxctl", ws, OLDER), held(xdg / "sandboxctl", ws, NEWER)
    first = discard(xdg, ws)
    assert first.returncode == 0, first.stderr
    assert now(newer) == "discarded" and now(older) == "held"
    second = discard(xdg, ws)
    assert second.returncode == 125
    assert now(older) == "held" and (older.upper / f"{OLDER}.txt").exists()  # judged on disk: still there
    lines = second.stderr.splitlines()
    assert len(lines) == 2 and f"{NEWER}, was discarded already" in lines[0], lines
    assert f"{OLDER} (held)" in lines[1] and f"discard {OLDER}" in lines[1], lines
    named = discard(xdg, ws, OLDER)  # named on purpose: it goes
    assert named.returncode == 0 and now(older) == "discarded" and not older.upper.exists()
    last = discard(xdg, ws)
    assert last.returncode == 125 and "nothing is left to discard" in last.stderr


def test_a_bare_discard_does_not_pass_over_an_applied_latest_run(tmp_path: Path) -> None:
    """The latest run applied: discard's own refusal (undo first, or --force), not the older held run."""
    from sandboxctl.workspace.apply import apply

    ws = tmp_path / "ws"
    ws.mkdir()
    xdg = tmp_path / "xdg"
    older, newer = held(xdg / "sandboxctl", ws, OLDER), held(xdg / "sandboxctl", ws, NEWER)
    apply(newer)
    result = discard(xdg, ws)
    assert result.returncode == 125 and "was applied" in result.stderr
    assert now(older) == "held" and now(newer) == "applied"
