"""sandboxctl's own venv inside the workspace (`pip install sandboxctl` into the project's .venv):
whatever the sandbox does to it, the next supervisor — outside any sandbox — imports nothing it
planted or changed. The launch record of the venv is taken from inode, size, mtime and ctime
(nothing is hashed again unless one of them moved), so every attack here keeps as many of them
as it can: the same size, the mtime put back with utimensat, a rename over, a hardlink, a
symlink, a file made before the run that is another name for one in the venv (uv links venvs to
its cache). Everything is judged from outside: the venv's bytes, the log, and a canary file the
planted code would write when the next supervisor starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

import sandboxctl
from sandboxctl.protect import snapshot

PACKAGE_ROOT = Path(sandboxctl.__file__).resolve().parent.parent


class Venv:
    def __init__(self, sandbox, canary: Path):
        self.sandbox = sandbox
        self.canary = canary
        self.root = sandbox.workspace / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.root)], check=True, timeout=60)
        self.site = Path(subprocess.run([str(self.root / "bin" / "python"), "-c", "import sysconfig; "
                                         "print(sysconfig.get_paths()['purelib'])"], check=True, timeout=60,
                                        capture_output=True, text=True).stdout.strip())
        for dependency in Path(sysconfig.get_paths()["purelib"]).iterdir():  # this venv's, as symlinks
            if not dependency.name.endswith(".pth") and not dependency.name.startswith(("sandboxctl", "agent_")):
                (self.site / dependency.name).symlink_to(dependency)
        (self.site / "_sandboxctl_clone.pth").write_text(f"{PACKAGE_ROOT}\n")  # what pip -e writes
        # a .pth line that starts with "import" runs in every Python that starts from this venv
        self.evil = f"import os; open({str(canary)!r}, 'a').write('pth\\n')\n"
        self.original = "#" + " " * (len(self.evil) - 2) + "\n"  # the same size
        for name in ("victim.pth", "linked.pth"):
            (self.site / name).write_text(self.original)
        (sandbox.workspace / "cache").mkdir()
        os.link(self.site / "linked.pth", sandbox.workspace / "cache" / "linked.pth")  # made before the run
        subprocess.run(["chmod", "-R", "a+rX", str(sandbox.workspace)], check=True)

    def argv(self, *args: str) -> list[str]:
        """The supervisor started from the venv (sys.prefix is the venv, inside the workspace)."""
        return [str(self.root / "bin" / "python"), "-I", "-m", "sandboxctl", "run", "-q", "-p", "default", *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), cwd=self.sandbox.workspace, env=self.sandbox.env(),
                              capture_output=True, text=True, timeout=timeout)

    def protect_events(self) -> list[dict]:
        return [r for r in self.sandbox.records() if r["event"] == "protect"]

    def assert_next_supervisor_imports_nothing(self) -> None:
        second = self.run("--", "/bin/true")
        assert second.returncode == 0, second.stderr
        assert not self.canary.exists(), f"the next supervisor ran planted code: {self.canary.read_text()!r}"


@pytest.fixture
def venv(sandbox, tmp_path) -> Venv:
    return Venv(sandbox, tmp_path / "canary")


def _times(path: Path) -> str:
    """atime and mtime, as utimensat would put them back."""
    st = path.stat()
    return f"{st.st_atime_ns}, {st.st_mtime_ns}"


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def test_the_venv_is_protected_code_recorded_once(venv):
    plan = venv.run("--dry-run", "--", "/bin/true")
    assert plan.returncode == 0, plan.stderr
    assert f"ro        {venv.root}: protected" in plan.stdout
    assert f"{venv.site}: protected" not in plan.stdout  # the venv's bind holds it


def test_no_way_in_changes_the_venv_and_the_next_supervisor_imports_nothing(venv):
    """Under bubblewrap: the venv is a read-only bind, the workspace read-only to Landlock, and the
    supervisor refuses a change to the venv by any name, the hardlink made before the run too."""
    site, ws = venv.site, venv.sandbox.workspace
    times = _times(site / "linked.pth")
    before = _identity(site / "victim.pth")
    evil = venv.evil.replace("'", "'\\''")
    script = "; ".join([
        f"printf '%s' '{evil}' > evil.pth",
        f"printf '%s' '{evil}' > {site}/victim.pth",  # written over
        f"printf '%s' '{evil}' > {site}/sitecustomize.py",  # planted (site imports it)
        f"mv -f evil.pth {site}/victim.pth",  # renamed over
        f"ln -f {ws}/evil.pth {site}/victim.pth",  # a hardlink in its place
        f"ln -sf {ws}/evil.pth {site}/zz-evil.pth",  # a symlink beside it
        f"touch -d @0 {site}/victim.pth",  # utimensat
        f"printf '%s' '{evil}' > cache/linked.pth",  # the venv's file by the other name it had
        f"python3 -c \"import os; os.utime('cache/linked.pth', ns=({times}))\"",
        "echo done",
    ])
    first = venv.run("--", "/bin/sh", "-c", script)
    assert first.stdout.strip().endswith("done"), first.stderr
    assert (site / "victim.pth").read_text() == venv.original and _identity(site / "victim.pth") == before
    assert (site / "linked.pth").read_text() == venv.original
    assert (ws / "cache" / "linked.pth").read_text() == venv.original  # refused: it is the venv's file
    assert not (site / "sitecustomize.py").exists() and not os.path.lexists(site / "zz-evil.pth")
    assert venv.protect_events() == []  # nothing changed: nothing to put back
    venv.assert_next_supervisor_imports_nothing()


def test_a_change_made_outside_during_the_run_is_reported(venv):
    """The user (or an IDE) rewrites a venv file while the run goes on, keeping its size and mtime:
    the end-of-run check still reports it (the wall was whole: it is left as the user made it)."""
    ws = venv.sandbox.workspace
    victim = venv.site / "victim.pth"
    run = subprocess.Popen(venv.argv("--", "/bin/sh", "-c", "touch started; while [ ! -e go ]; do sleep 0.02; done"),
                           cwd=ws, env=venv.sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (ws / "started").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        st = victim.stat()
        replacement = "#" + "x" * (len(venv.original) - 2) + "\n"
        with open(victim, "r+") as handle:
            handle.write(replacement)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
        (ws / "go").touch()
        _out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    events = [(e["path"], e["change"], e["action"]) for e in venv.protect_events()]
    assert events == [(str(victim), "modified", "reported")]
    assert victim.read_text() == replacement


@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed: apt-get install runsc")
def test_under_gvisor_a_venv_file_changed_by_its_other_name_is_put_back(venv, tmp_path):
    """gVisor has neither Landlock nor the supervisor's mediation: the hardlink made before the run
    lets the sandbox rewrite the venv's file (same size, mtime put back). The end-of-run check
    finds it by its ctime and puts it back before any supervisor starts from the venv again."""
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="gv", dir="/tmp"))
    os.chmod(runtime, 0o700)
    linked = venv.site / "linked.pth"
    times = _times(linked)
    code = (f"import os; open('cache/linked.pth', 'r+').write({venv.evil!r}); "
            f"os.utime('cache/linked.pth', ns=({times})); print('written')")
    try:
        first = subprocess.run(venv.argv("--backend", "gvisor", "--", "python3", "-c", code),
                               cwd=venv.sandbox.workspace, env=venv.sandbox.env({"XDG_RUNTIME_DIR": str(runtime)}),
                               capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert first.returncode == 0 and first.stdout.strip() == "written", first.stderr
    assert linked.read_text() == venv.original  # put back
    events = [(e["path"], e["change"], e["action"]) for e in venv.protect_events()]
    assert events == [(str(linked), "modified", "restored")]
    kept = [e.get("kept") for e in venv.protect_events()]
    assert kept[0] and Path(kept[0]).read_text() == venv.evil  # what the sandbox left, kept aside
    venv.assert_next_supervisor_imports_nothing()


def test_a_killed_supervisor_leaves_a_journal_the_next_run_checks(venv):
    """The journal (marshal, written once and marked in place) of a killed supervisor is read by
    the next run, which compares the venv against it: a same-size rewrite with the mtime put back
    is found by its ctime (and reported: that run's wall was whole)."""
    ws = venv.sandbox.workspace
    victim = venv.site / "victim.pth"
    run = subprocess.Popen(venv.argv("--", "/bin/sh", "-c", "touch started; sleep 30"), cwd=ws,
                           env=venv.sandbox.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = venv.sandbox.state / "sandboxctl"
    try:
        deadline = time.monotonic() + 30
        while not (ws / "started").exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        (journal,) = snapshot.journals(state)
        data = snapshot.read_journal(journal)
        assert data["wall_whole"] is True and "taking" not in data
        assert data["entries"][str(venv.root)]["kind"] == "dir"
        st = victim.stat()
        victim.write_text("#" + "y" * (st.st_size - 2) + "\n")
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        run.kill()
        run.wait(timeout=30)
    second = venv.run("--", "/bin/true")
    assert second.returncode == 0, second.stderr
    events = [(e["path"], e["change"], e["action"]) for e in venv.protect_events()]
    assert events == [(str(victim), "modified", "reported")]
    assert not snapshot.journals(state)  # checked and forgotten
    assert not venv.canary.exists()


def test_a_venv_too_big_to_record_whole_still_refuses_its_other_names(venv):
    """A venv past the launch record's MAX_ENTRIES (torch, scipy…) is recorded in part: the files
    left out had no identity among the protected inodes, so cache/linked.pth (a hardlink made
    before the run, sorted after 20 500 filler files) was rewritten through and the next
    supervisor ran its .pth line (red team rt4). With the record cut short, the mediator writes
    no file of more than one name. Judged by the venv's bytes and the canary."""
    filler = venv.site / "aaa_filler"
    filler.mkdir()
    for n in range(snapshot.MAX_ENTRIES + 500):
        (filler / str(n)).touch()
    subprocess.run(["chmod", "-R", "a+rX", str(filler)], check=True)
    times = _times(venv.site / "linked.pth")
    code = (f"import os; open('cache/linked.pth', 'r+').write({venv.evil!r}); "
            f"os.utime('cache/linked.pth', ns=({times})); print('written')")
    result = venv.run("--", "python3", "-c", code, timeout=120)
    assert "written" not in result.stdout, result.stderr
    assert (venv.site / "linked.pth").read_text() == venv.original
    refused = [r for r in venv.sandbox.records() if r["event"] == "file" and r.get("decision") == "deny"]
    assert any("another name" in r.get("rule", "") for r in refused), refused
    venv.assert_next_supervisor_imports_nothing()
