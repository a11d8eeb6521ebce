"""The state dir (trust store, action log, remembered approvals) is held to paths.others_control as
the runtime dir is: one reached through a directory another user may change is refused, one line
and a hint, exit 125, and nothing is made or written there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl import paths
from sandboxctl.errors import SandboxError


def test_ensure_private_dir_refuses_a_path_through_a_directory_others_may_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        with pytest.raises(SandboxError) as info:
            paths.ensure_private_dir(str(shared / "state" / "sandboxctl"))
        assert f"{shared} may be written by others" in info.value.message and info.value.hint
        assert not (shared / "state").exists()  # nothing made there
        (shared / "state" / "sandboxctl").mkdir(parents=True, mode=0o700)  # already there: refused all the same
        with pytest.raises(SandboxError):
            paths.ensure_private_dir(str(shared / "state" / "sandboxctl"))
    finally:
        shared.chmod(0o755)
    assert paths.ensure_private_dir(str(shared / "state" / "sandboxctl"))  # closed again: ours


@pytest.mark.skipif(os.getuid() != 0, reason="a directory of another user needs root to make")
def test_a_state_dir_under_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(SandboxError) as info:
        paths.ensure_private_dir(str(theirs / "sandboxctl"))
    assert f"{theirs} belongs to another user" in info.value.message


def test_a_run_with_such_a_state_dir_does_not_start(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    canary = tmp_path / "ran"
    try:
        env = {**os.environ, "XDG_STATE_HOME": str(shared / "state"), "HOME": str(tmp_path)}
        result = subprocess.run([sys.executable, "-m", "sandboxctl", "run", "-p", "base", "--", "/bin/sh", "-c",
                                 f"echo > {canary}"], env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert result.returncode == 125
        lines = result.stderr.splitlines()
        assert len(lines) == 2 and "may be written by others" in lines[0] and lines[1].startswith("  hint: ")
        assert "Traceback" not in result.stderr
        assert not (shared / "state").exists() and not canary.exists()
    finally:
        shared.chmod(0o755)


@pytest.mark.skipif(os.getuid() == 0, reason="as root, unshare --map-current-user maps root: nothing is unmapped")
def test_in_a_user_namespace_without_root_the_systems_directories_are_not_another_users(tmp_path: Path) -> None:
    """unshare --user: / and /home are the overflow uid there (root unmapped). Counted as root's,
    else no run could start in a rootless container; a directory others may write is still refused."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    shared = tmp_path / "shared"
    shared.mkdir()
    code = ("import sys; from sandboxctl import paths; from sandboxctl.errors import SandboxError\n"
            "assert paths._root_unmapped(), open('/proc/self/uid_map').read()\n"
            f"paths.ensure_private_dir({str(tmp_path / 'mine' / 'sandboxctl')!r})\n"
            "try:\n"
            f"    paths.ensure_private_dir({str(shared / 'state')!r})\n"
            "except SandboxError as exc:\n"
            "    print(exc.message); sys.exit(3)\n")
    map_option = "--map-current-user"
    shared.chmod(0o777)
    try:
        probe = subprocess.run(["unshare", "--user", map_option, "true"], capture_output=True, timeout=30)
        if probe.returncode:
            pytest.skip(f"no user namespace here: {probe.stderr.decode(errors='replace').strip()}")
        result = subprocess.run(["unshare", "--user", map_option, sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    finally:
        shared.chmod(0o755)
    assert result.returncode == 3, result.stdout + result.stderr  # the private one made, the shared one refused
    assert "may be written by others" in result.stdout and (tmp_path / "mine" / "sandboxctl").is_dir()
