"""The placeholder journal: a killed supervisor's placeholders go, the user's own files stay."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sandboxctl.supervise.placeholders import CLOCK_SLACK_NS, sweep


def test_sweep_removes_what_a_killed_supervisor_made_and_only_that(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".idea").mkdir()  # the user's own empty directory, there before the run
    (ws / ".vscode").mkdir()  # a placeholder whose inode the supervisor recorded
    time.sleep(2 * CLOCK_SLACK_NS / 1e9)
    after = time.time_ns() - CLOCK_SLACK_NS
    (ws / ".envrc").touch()  # created after the intent, killed before recording its inode
    journal = tmp_path / "placeholders"
    journal.mkdir()
    dead = 2 ** 22 + 12345  # beyond pid_max on most machines: a supervisor that is gone
    entries = [{"path": str(ws / ".idea"), "after": after}, {"path": str(ws / ".envrc"), "after": after},
               {"path": str(ws / ".vscode"), "ino": os.lstat(ws / ".vscode").st_ino}]
    (journal / f"{dead}-run.json").write_text(json.dumps(entries))
    sweep(journal)
    assert sorted(p.name for p in ws.iterdir()) == [".idea"]
    assert list(journal.iterdir()) == []
