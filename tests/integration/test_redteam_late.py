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


# ------------------------------------------------------------------ mediate.py + mediate_calls.py, after the split
FLIP = r"""
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(64)
ok, bad = b"ok.txt\0", b".git/hooks/pre-commit\0"
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, bad, len(bad)); ctypes.memmove(buf, ok, len(ok))
threading.Thread(target=flip, daemon=True).start()
for _ in range(3000):
    fd = libc.open(buf, os.O_WRONLY | os.O_CREAT, 0o755)
    if fd >= 0:
        os.write(fd, b"#!/bin/sh\necho PWNED\n"); os.close(fd)
stop = True
print("end")
"""


def test_mediated_renames_links_and_races_keep_protected_paths(sandbox):
    """Under the default policy: a rename onto .envrc, a symlinked .claude, a hardlink of
    .git/config, and a racing thread flipping an open()'s path onto .git/hooks/pre-commit. Judged
    by the host's own files after the run."""
    from tests.integration.test_protected_paths import repo

    ws = repo(sandbox.workspace, sandbox.home)
    config = (ws / ".git" / "config").read_bytes()
    (ws / "flip.py").write_text(FLIP)
    script = ("echo 'echo PWNED' > t; mv t .envrc; mkdir decoy; ln -s decoy .claude; "
              "echo '{\"hooks\":1}' > .claude/settings.json; ln .git/config hl; echo '[core] x = 1' >> hl; "
              "mkdir d2; echo '{\"hooks\":1}' > d2/settings.json; mv d2 .claude; "
              "ln -s .git/hooks h; printf '#!/bin/sh\\necho PWNED\\n' > h/post-checkout; "
              "python3 flip.py; echo done")
    result = sandbox.sh(script, timeout=120)
    assert "done" in result.stdout, result.stderr
    assert not (ws / ".envrc").exists()
    assert not (ws / "decoy" / "settings.json").exists() and not (ws / ".claude" / "settings.json").exists()
    assert (ws / ".git" / "config").read_bytes() == config
    for name in ("pre-commit", "post-checkout"):
        hook = ws / ".git" / "hooks" / name
        assert not hook.exists() or b"PWNED" not in hook.read_bytes()
    assert (ws / "ok.txt").exists()  # the race really ran: its harmless side was written
