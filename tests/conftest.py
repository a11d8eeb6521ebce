"""Shared fixtures: every test gets its own HOME, state dir and workspace, so nothing of the
developer's machine is read or written, and runs never share a log by accident."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Started in the background of a shell without job control (`cmd &` in a script), the suite
    inherits SIGINT and SIGQUIT ignored, and every process it starts would too: the Ctrl-C tests
    then tested nothing of ours. They are put back to the defaults a terminal's job would have."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return path


@pytest.fixture
def workspace(tmp_path: Path, home: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    os.chmod(tmp_path, 0o755)
    return path
