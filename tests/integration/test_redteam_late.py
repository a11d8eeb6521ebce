"""Red team (late changes): the per-user runtime dir in /tmp, judged from outside (a canary, the
registry's own listing), and the mediated calls after the mediate.py split."""

from __future__ import annotations

import json
import os

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import session_registry


@pytest.fixture
def tmp_runtime(tmp_path, monkeypatch):
    """No XDG_RUNTIME_DIR: the runtime dir is $TMPDIR/sandboxctl-UID, as on a bare login."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path / f"sandboxctl-{os.getuid()}"


def _plant(sessions, canary):
    """What another user leaves in a sessions dir while it is writable by others: a symlink at
    every name the next write's temporary file can have, a live-looking entry, a forged ending."""
    for pid in {os.getpid(), *range(1, 400)}:
        os.symlink(canary, sessions / f"demo.json.{pid}.tmp")
    (sessions / "evil.json").write_text(json.dumps({"run": "x", "pid": 1, "policy": "EVIL", "workspace": "/them"}))
    (sessions / "ghost.ended").write_text(json.dumps({"reason": "forged by another user", "run": "zzz"}))


@pytest.mark.parametrize("writable", ["runtime", "sessions"])
def test_a_runtime_dir_others_could_write_is_refused_not_adopted(tmp_runtime, tmp_path, writable):
    """A victim's own dir that was group/other-writable (a loose umask, a hand-made dir) may hold
    another user's plants; chmod 0700 closes it but keeps them. It is refused, and nothing planted
    is ever written through, listed, or shown."""
    sessions = tmp_runtime / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_runtime, 0o700)
    os.chmod(tmp_runtime if writable == "runtime" else sessions, 0o777)
    canary = tmp_path / "canary"
    canary.write_text("ORIGINAL")
    _plant(sessions, canary)
    with pytest.raises(SandboxError, match="others"):
        session_registry.claim("demo")
    with pytest.raises(SandboxError):
        session_registry.sessions_dir(create=True)
    assert canary.read_text() == "ORIGINAL"
    assert [i for i in session_registry.running() if i.get("policy") == "EVIL"] == []


def test_a_session_record_is_never_written_through_a_planted_symlink(tmp_runtime, tmp_path):
    """The record's temporary file is created afresh (O_EXCL|O_NOFOLLOW, an unguessable name): a
    symlink already at a pid-named path is never followed into one of the user's own files."""
    sessions = tmp_runtime / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_runtime, 0o700)
    canary = tmp_path / "canary"
    canary.write_text("ORIGINAL")
    os.symlink(canary, sessions / f"demo.json.{os.getpid()}.tmp")
    session_registry.write_info("demo", {"run": "r", "pid": os.getpid()})
    assert canary.read_text() == "ORIGINAL"
    assert json.loads((sessions / "demo.json").read_text())["run"] == "r"
