"""`workspace: overlay` for real: the command changes a copy-on-write view, the host's workspace
is judged from outside — untouched until `apply`, equal to what the run saw after it, back to
the start after `undo` — as root and as an unprivileged user."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.workspace_helpers import snapshot, write

# the workspace as the command sees it, printed from inside (the expected result of apply)
SNAPSHOT = r"""
import hashlib, json, os, stat
out = {}
for d, dirs, files in os.walk('.', followlinks=False):
    for n in dirs + files:
        p = os.path.join(d, n); r = os.path.relpath(p, '.'); st = os.lstat(p); m = stat.S_IMODE(st.st_mode)
        if r == '.git' or r.startswith('.git/'): continue
        if stat.S_ISLNK(st.st_mode): out[r] = ['symlink', os.readlink(p)]
        elif stat.S_ISDIR(st.st_mode): out[r] = ['dir', m]
        else: out[r] = ['file', m, hashlib.sha256(open(p, 'rb').read()).hexdigest()]
    dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
print(json.dumps(out))
"""

AGENT = r"""
set -e
rm -rf src
echo new > new.txt
mv notes.txt notes.md
mv docs manual
ln manual/guide.md hardlink.md
chmod +x run.sh
mkdir links && ln -s ../README links/readme && ln -s /etc/passwd links/out
printf '\000\001\002\377' > blob.bin
rm -rf build && echo 'now a file' > build
rm conf && mkdir conf && echo inner > conf/inner
echo more >> README
if echo hook > .git/hooks/pre-commit 2>/dev/null; then echo HOOK-WRITTEN; fi
if mkdir -p .vscode 2>/dev/null; then echo VSCODE-MADE; fi
"""


def _project(ws: Path) -> None:
    write(ws / "src/main.py", "print('hi')\n")
    write(ws / "src/lib/util.py", "X = 1\n")
    write(ws / "README", "readme\n")
    write(ws / "notes.txt", "notes\n")
    write(ws / "run.sh", "#!/bin/sh\necho run\n", 0o644)
    write(ws / "build/out.o", b"\x7fELF")
    write(ws / "conf", "k=v\n")
    write(ws / "docs/guide.md", "# guide\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)


def _host(ws: Path) -> dict:
    return {k: list(v) for k, v in snapshot(ws).items() if k != ".git" and not k.startswith(".git/")}


def _cli(sandbox, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=sandbox.workspace,
                          env=sandbox.env(env), capture_output=True, text=True, timeout=60)


def _layers(sandbox) -> list[Path]:
    """The runs' layers, in the order the runs started (ids of one second sort at random)."""
    found = (sandbox.state / "sandboxctl" / "workspaces").glob("*")
    return sorted(found, key=lambda p: json.loads((p / "meta.json").read_text())["started_ns"])


def test_overlay_run_apply_and_undo(sandbox):
    ws = sandbox.workspace
    _project(ws)
    start = _host(ws)
    git_before = snapshot(ws / ".git")
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c", AGENT + f"python3 -c {shlex.quote(SNAPSHOT)}")
    assert result.returncode == 0, result.stderr
    # protected paths are as protected in the overlay as in rw mode: changes there are refused
    assert "HOOK-WRITTEN" not in result.stdout and "VSCODE-MADE" not in result.stdout
    seen = json.loads(result.stdout.splitlines()[-1])
    assert _host(ws) == start and snapshot(ws / ".git") == git_before  # nothing landed yet

    listed = json.loads(_cli(sandbox, "changes", "--json").stdout)
    by_path = {c["path"]: c["change"] for c in listed["changes"]}
    assert by_path == {
        "README": "modified", "blob.bin": "added",
        "build": "type-changed", "conf": "type-changed", "conf/inner": "added", "links": "added",
        "links/out": "added", "links/readme": "added", "new.txt": "added", "notes.md": "added",
        "notes.txt": "deleted", "run.sh": "mode-changed", "src": "deleted", "docs": "deleted",
        "manual": "added", "manual/guide.md": "added", "hardlink.md": "added"}
    assert not [c for c in listed["changes"] if c["protected"] or c["conflict"]]

    patch = _cli(sandbox, "changes", "-p")
    assert "+more" in patch.stdout and "Binary files" not in patch.stdout.split("blob.bin")[0][-200:]
    assert "deleted       src/  (3 entries)" in patch.stdout

    applied = _cli(sandbox, "apply")
    assert applied.returncode == 0, applied.stderr
    assert _host(ws) == seen  # the tree the run saw
    assert os.readlink(ws / "links/out") == "/etc/passwd" and os.access(ws / "run.sh", os.X_OK)
    assert os.stat(ws / "hardlink.md").st_ino != os.stat(ws / "manual/guide.md").st_ino  # copies, not links

    undone = _cli(sandbox, "undo")
    assert undone.returncode == 0, undone.stderr
    assert _host(ws) == start and snapshot(ws / ".git") == git_before

    events = [r for r in sandbox.records() if r["event"] == "workspace"]
    assert [(r["action"], r["state"]) for r in events] == [("apply", "applied"), ("undo", "undone")]
    runs = json.loads(_cli(sandbox, "log", "runs", "--json").stdout.splitlines()[-1])
    assert runs["changes"] == "undone"


def test_protected_paths_cannot_be_planted_in_the_overlay_either(sandbox):
    """The layer never holds a protected path: the supervisor refuses the change in the sandbox's
    view, as in rw mode (apply's own check of protected paths is a second wall: unit tests)."""
    ws = sandbox.workspace
    write(ws / "src/a.py", "a\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c",
                         "echo 'export PATH=/evil' > .envrc; echo evil > .git/hooks/pre-commit; "
                         "mv .git .git-moved; echo b > src/b.py; echo done")
    assert result.stdout.strip() == "done", result.stderr
    layer = _layers(sandbox)[0]
    assert sorted(p.name for p in (layer / "upper").iterdir()) == ["src"]
    listed = json.loads(_cli(sandbox, "changes", "--json").stdout)
    assert [c["path"] for c in listed["changes"]] == ["src/b.py"]


def test_conflicts_are_listed_and_not_applied(sandbox):
    ws = sandbox.workspace
    write(ws / "README", "start\n")
    write(ws / "other", "o\n")
    assert sandbox.run("--overlay", "--", "/bin/sh", "-c", "echo run > README; echo run > other").returncode == 0
    (ws / "README").write_text("edited by the human meanwhile\n")
    applied = _cli(sandbox, "apply")
    assert applied.returncode == 1
    assert "README" in applied.stderr and "changed on the host since the run started" in applied.stderr
    assert (ws / "README").read_text() == "edited by the human meanwhile\n"
    assert (ws / "other").read_text() == "run\n"
    forced = _cli(sandbox, "apply", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (ws / "README").read_text() == "run\n"


def test_two_overlay_runs_of_one_workspace_are_independent(sandbox):
    ws = sandbox.workspace
    write(ws / "shared", "start\n")
    assert sandbox.run("--overlay", "--", "/bin/sh", "-c", "echo first > shared; echo 1 > one").returncode == 0
    assert sandbox.run("--overlay", "--", "/bin/sh", "-c", "cat shared; echo second > shared; echo 2 > two"
                       ).stdout == "start\n"  # the second run does not see the first's held changes
    first, second = (p.name for p in _layers(sandbox))
    assert _cli(sandbox, "apply", first).returncode == 0
    result = _cli(sandbox, "apply", second)
    assert result.returncode == 1 and "shared" in result.stderr  # the first's apply came after it started
    assert (ws / "shared").read_text() == "first\n" and (ws / "two").read_text() == "2\n"
    assert _cli(sandbox, "discard", second).returncode == 125  # partly applied: undo would be lost
    assert _cli(sandbox, "discard", "--force", second).returncode == 0
    assert not (_layers(sandbox)[1] / "upper").exists()


def test_the_layer_is_invisible_and_unwritable_from_inside(sandbox):
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c", "echo via-overlay > f; echo $SANDBOXCTL_RUN")
    layer = _layers(sandbox)[0]
    script = (f"ls -A {sandbox.state}/sandboxctl; ls {layer}/upper; echo planted > {layer}/upper/planted; "
              f"echo planted > {layer}/manifest.json; echo done")
    attack = sandbox.run("--overlay", "--", "/bin/sh", "-c", script)
    assert attack.stdout.strip().splitlines()[-1] == "done"
    assert "via-overlay" not in attack.stdout and "f" not in attack.stdout.split()[:-1]
    assert sorted(os.listdir(layer / "upper")) == ["f"]  # only what came through the overlay
    assert _cli(sandbox, "changes", "--json", layer.name).returncode == 0
    assert json.loads(_cli(sandbox, "changes", "--json", layer.name).stdout)["tampered"] == []
    assert result.returncode == 0


def test_held_changes_survive_a_killed_supervisor(sandbox):
    ws = sandbox.workspace
    proc = subprocess.Popen(sandbox.argv("--overlay", "--", "/bin/sh", "-c", "echo kept > kept.txt; sleep 60"),
                            cwd=ws, env=sandbox.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(sandbox.state.glob("sandboxctl/workspaces/*/upper/kept.txt")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (ws / "kept.txt").exists()
    runs = json.loads(_cli(sandbox, "log", "runs", "--json").stdout.splitlines()[-1])
    assert runs["changes"] == "held" and runs["status"] == "running/crashed"
    listed = _cli(sandbox, "changes")
    assert "added         kept.txt" in listed.stdout and "sealed after the run" in listed.stdout
    assert _cli(sandbox, "apply").returncode == 0
    assert (ws / "kept.txt").read_text() == "kept\n"


def test_ci_summary_lists_the_held_changes(sandbox, tmp_path):
    write(sandbox.workspace / "a", "a\n")
    summary = tmp_path / "summary.json"
    result = sandbox.run("--overlay", "--summary-json", str(summary), "--", "/bin/sh", "-c", "rm a; echo b > b",
                         env={"CI": "true"})
    assert result.returncode == 0, result.stderr
    held = json.loads(summary.read_text())["changes"]
    assert held["state"] == "held" and held["counts"] == {"added": 1, "deleted": 1}
    assert [(c["path"], c["change"]) for c in held["list"]] == [("a", "deleted"), ("b", "added")]
    record = [r for r in sandbox.records() if r["event"] == "run.end"][-1]
    assert record["changes"]["counts"] == {"added": 1, "deleted": 1}


def test_the_run_says_what_it_holds(sandbox):
    argv = [a for a in sandbox.argv("--overlay", "--", "/bin/sh", "-c", "echo x > x") if a != "-q"]
    result = subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                            timeout=60)
    assert "holds 1 change (1 added); the workspace is untouched" in result.stderr
    assert "sandboxctl changes" in result.stderr and "sandboxctl apply" in result.stderr
    assert _cli(sandbox, "changes").stdout.splitlines()[-1] == "1 change"


def test_the_run_counts_its_changes_in_the_plural(sandbox):
    argv = [a for a in sandbox.argv("--overlay", "--", "/bin/sh", "-c", "echo x > x; echo y > y") if a != "-q"]
    result = subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                            timeout=60)
    assert "holds 2 changes (2 added)" in result.stderr
    assert _cli(sandbox, "changes").stdout.splitlines()[-1] == "2 changes"


def test_root_overlay_copies_up_another_users_file(sandbox):
    """As root the overlay is mounted in the host's user namespace: any owner is copied up."""
    if os.getuid() != 0:
        pytest.skip("as root only (a user's overlay is mounted in its own user namespace)")
    (sandbox.workspace / "theirs.txt").write_text("lower\n")
    os.chmod(sandbox.workspace / "theirs.txt", 0o666)
    os.chown(sandbox.workspace / "theirs.txt", 12345, 12345)
    argv = [a for a in sandbox.argv("--overlay", "--", "/bin/sh", "-c", "echo x > theirs.txt") if a != "-q"]
    result = subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "note:" not in result.stderr, result.stderr
    assert "holds 1 change (1 modified)" in result.stderr
    assert (sandbox.workspace / "theirs.txt").read_text() == "lower\n"


def test_a_file_overlayfs_cannot_copy_up_is_explained(sandbox):
    """A user's overlay lives in its user namespace, which maps its own uid and gid only: a file of
    a secondary group cannot be copied up, and the run says why (the command sees EOVERFLOW)."""
    others = [g for g in os.getgroups() if g != os.getgid()]
    if os.getuid() == 0 or not others:
        pytest.skip("an unprivileged user with a secondary group only (.ci/run gives its user one)")
    name = "shared\x1b[2Jgroup.txt"
    path = sandbox.workspace / name
    path.write_text("lower\n")
    os.chown(path, -1, others[0])
    ids = f"group {others[0]}"
    argv = [a for a in sandbox.argv("--overlay", "--", "/bin/sh", "-c",
                                    f"echo more >> '{name}'; echo x > '{name}'; echo rc=$?") if a != "-q"]
    result = subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True,
                            timeout=60)
    assert "rc=2" in result.stdout, result  # what the kernel answers: EOVERFLOW
    assert "Value too large" in result.stderr
    note = [line for line in result.stderr.splitlines() if line.startswith("sandboxctl: note: the overlay")]
    ours = [line for line in result.stderr.splitlines() if line.startswith(("sandboxctl:", "  hint:"))]
    assert len(note) == 1 and not any("\x1b" in line for line in ours), result.stderr  # the command's own may
    assert "shared\\x1b[2Jgroup.txt" in note[0] and ids in note[0] and "(2 call(s) failed" in note[0], note
    assert f"maps only uid {os.getuid()} and gid {os.getgid()}" in note[0]
    assert (sandbox.workspace / name).read_text() == "lower\n"
    end = [r for r in sandbox.records() if r["event"] == "run.end"][-1]
    assert end["changes"]["not_copied"]["count"] == 2
    assert [p["path"] for p in end["changes"]["not_copied"]["paths"]] == [str(sandbox.workspace / name)]


def test_write_approvals_outside_the_workspace_are_unaffected(sandbox, tmp_path):
    outside = tmp_path / "granted"
    outside.mkdir()
    os.chmod(tmp_path, 0o755)
    write(sandbox.workspace / ".git/config", "[core]\n")
    result = sandbox.run("--overlay", "--approve", "allow", "--allow-read", str(outside), "--", "/bin/sh", "-c",
                         f"echo approved > {outside}/f; echo held > w; echo x >> .git/config; echo done")
    assert result.stdout.strip() == "done", result.stderr
    assert (outside / "f").read_text() == "approved\n"  # an approved write outside lands at once
    assert not (sandbox.workspace / "w").exists()        # the workspace's are held
    assert (sandbox.workspace / ".git/config").read_text() == "[core]\n"
    denied = [r for r in sandbox.records() if r["event"] == "file" and r["decision"] == "deny"]
    # refused as in rw mode, even with --approve allow: protected paths are never approvable
    assert [r["rule"] for r in denied if r["path"].endswith(".git/config")] == [
        "protected: .git/config: git config: core.fsmonitor, core.hooksPath, aliases and filters run programs"]


def test_names_with_escapes_are_inert_in_changes(sandbox):
    result = sandbox.run("--overlay", "--", "python3", "-c",
                         "open('evil\\n\\x1b[2J\\x1b[31mred', 'w').write('x\\n')")
    assert result.returncode == 0, result.stderr
    shown = _cli(sandbox, "changes", "-p")
    assert "\x1b" not in shown.stdout and "\\x1b[2J" in shown.stdout
    assert all(line.startswith(("run ", "  ", "1 change")) for line in shown.stdout.splitlines())
    assert "\x1b" not in _cli(sandbox, "apply").stderr


def test_doctor_says_overlay_works(sandbox):
    report = json.loads(_cli(sandbox, "doctor", "--json").stdout)
    overlay = next(c for c in report["checks"] if c["name"] == "overlay")
    assert overlay["status"] == "ok", overlay


# ---------------------------------------------------------------------- a small file system of our own
def _in_own_namespace(sandbox, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a user+mount namespace of our own (as root or not), where it may mount
    a small tmpfs: sandboxctl runs inside it as the same user, and the judge too."""
    if not shutil.which("unshare"):
        pytest.skip("util-linux unshare is not installed")
    env = sandbox.env({"PY": sys.executable, "ROOT": str(Path(__file__).resolve().parents[2])})
    return subprocess.run(["unshare", "--user", "--map-current-user", "--mount", "--keep-caps", "/bin/sh", "-ec",
                           script], cwd=sandbox.workspace, env=env, capture_output=True, text=True, timeout=timeout)


JUDGE = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.unit.workspace_helpers import snapshot
print(json.dumps(snapshot(Path(sys.argv[2]))))
"""


AGENT_BIG = ("head -c 1500000 /dev/zero > big.txt; echo new > keep.txt; echo n > d/x; echo add > added.txt; "
             "head -c 300000 /dev/zero > second.bin")
AGENT_FILLS_LAYER = 'echo new > f.txt; head -c 3000000 /dev/zero > big.bin; echo "write rc=$?"'


def test_a_full_disk_while_applying_leaves_every_file_old_or_new(sandbox, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
mount -t tmpfs -o size=3m none {small}
mkdir {small}/ws && cd {small}/ws
printf 'old\\n' > keep.txt; printf 'old\\n' > big.txt; mkdir -p d; printf 'old\\n' > d/x
$PY -m sandboxctl run -q --overlay -- /bin/sh -c '{AGENT_BIG}'
$PY -c '{JUDGE}' "$ROOT" {small}/ws > {tmp_path}/start.json
head -c 2300000 /dev/zero > {small}/filler
set +e
$PY -m sandboxctl apply > {tmp_path}/apply1.out 2> {tmp_path}/apply1.err; echo "rc1=$?"
$PY -c '{JUDGE}' "$ROOT" {small}/ws > {tmp_path}/partial.json
rm {small}/filler
$PY -m sandboxctl apply 2> {tmp_path}/apply2.err; echo "rc2=$?"
$PY -c '{JUDGE}' "$ROOT" {small}/ws > {tmp_path}/applied.json
$PY -m sandboxctl undo 2> {tmp_path}/undo.err; echo "rc3=$?"
$PY -c '{JUDGE}' "$ROOT" {small}/ws > {tmp_path}/undone.json
"""
    result = _in_own_namespace(sandbox, script)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.split() == ["rc1=1", "rc2=0", "rc3=0"], list(tmp_path.glob("*.err"))
    start, partial, applied, undone = (json.loads((tmp_path / f"{n}.json").read_text())
                                       for n in ("start", "partial", "applied", "undone"))
    failed = (tmp_path / "apply1.err").read_text()
    assert "no space left on the device" in failed
    for path, entry in partial.items():  # every file is the old one or the new one, never half
        assert path.startswith(".sandboxctl-") is False
        assert entry == start.get(path) or entry == applied.get(path), path
    not_applied = [p for p in applied if partial.get(p) != applied[p]]
    assert not_applied and all(p in failed for p in not_applied)  # the error names each one
    assert undone == start


def test_a_full_disk_while_writing_the_layer_leaves_the_workspace_untouched(sandbox, tmp_path):
    small = tmp_path / "state-small"
    small.mkdir()
    script = f"""
mount -t tmpfs -o size=1m none {small}
export XDG_STATE_HOME={small}
printf 'old\\n' > f.txt
set +e
$PY -m sandboxctl run --overlay -- /bin/sh -c '{AGENT_FILLS_LAYER}' > {tmp_path}/run.out 2> {tmp_path}/run.err
echo "run rc=$?"
set -e
cat f.txt; test ! -e big.bin && echo host-untouched
mount -o remount,size=8m {small}
$PY -m sandboxctl changes > {tmp_path}/changes.out
$PY -m sandboxctl apply 2> {tmp_path}/apply.err; echo "apply rc=$?"
cat f.txt
"""
    result = _in_own_namespace(sandbox, script)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[:3] == ["run rc=0", "old", "host-untouched"]  # the run's full layer never reached the host
    assert "write rc=1" in (tmp_path / "run.out").read_text()  # the command saw the full disk
    assert "big.bin" in (tmp_path / "changes.out").read_text()
    assert "apply rc=0" in result.stdout and lines[-1] == "new"


def test_an_overlay_that_cannot_be_mounted_refuses_with_125(sandbox, tmp_path):
    """A layer on overlayfs itself cannot be an upper layer: the run refuses, nothing runs."""
    base = tmp_path / "o"
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir(parents=True)
    canary = sandbox.workspace / "canary"
    script = f"""
mount -t overlay overlay -o lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work {base}/merged
export XDG_STATE_HOME={base}/merged
set +e
$PY -m sandboxctl run -q --overlay -- /bin/sh -c 'echo ran > {canary}'
echo "rc=$?"
ls {base}/merged/sandboxctl/workspaces | wc -l
"""
    result = _in_own_namespace(sandbox, script)
    assert "rc=125" in result.stdout, result.stderr + result.stdout
    assert "overlayfs refused the run's layer" in result.stderr and "XDG_STATE_HOME" in result.stderr
    assert result.stdout.split()[-1] == "0"  # the failed run's layer is gone
    assert not canary.exists()


def test_the_library_holds_an_overlay_run_too(sandbox, monkeypatch):
    """Sandbox(overlay=True) is `run --overlay`: the same plan, the same layer."""
    from sandboxctl import Sandbox
    from sandboxctl.paths import state_dir
    from sandboxctl.workspace.apply import apply
    from sandboxctl.workspace.layer import find

    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    write(sandbox.workspace / "a.txt", "a\n")
    result = Sandbox("default", sandbox.workspace, overlay=True).run(["/bin/sh", "-c", "echo b > a.txt; echo c > c"])
    assert result.exit_code == 0, result.stderr
    assert (sandbox.workspace / "a.txt").read_text() == "a\n" and not (sandbox.workspace / "c").exists()
    layer = find(state_dir(), result.run_id, None)
    assert [c.path for c in apply(layer).applied] == ["a.txt", "c"]
    assert (sandbox.workspace / "a.txt").read_text() == "b\n"


def test_entries_the_command_made_unreadable_stop_the_review_with_a_way_on(sandbox):
    """A command can chmod 000 what it made (or copied up): the layer is read as you, without
    privilege, so the review cannot read it. It must say so in one line with a way on — never
    apply what it could not read — and the way on must work."""
    ws = sandbox.workspace
    write(ws / "a.txt", "a\n")
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c", "echo secret > locked.txt && chmod 000 locked.txt "
                         "&& mkdir -p box/in && echo x > box/in/f && chmod 000 box && chmod 000 a.txt")
    assert result.returncode == 0, result.stderr
    listed = _cli(sandbox, "changes")
    if os.getuid() != 0:  # root reads the layer whatever its modes
        assert listed.returncode == 125 and "Permission denied" in listed.stderr, listed.stderr
        assert "Traceback" not in listed.stderr and "chmod -R u+rwX " in listed.stderr
        refused = _cli(sandbox, "apply")
        assert refused.returncode == 125 and not (ws / "locked.txt").exists()  # nothing applied unread
        upper = listed.stderr.split("chmod -R u+rwX ")[1].split("`")[0]
        subprocess.run(["chmod", "-R", "u+rwX", upper], check=True)
        listed = _cli(sandbox, "changes")
    assert listed.returncode == 0, listed.stderr
    assert "locked.txt" in listed.stdout and "box/in/f" in listed.stdout
    applied = _cli(sandbox, "apply")
    assert applied.returncode == 0, applied.stderr
    os.chmod(ws / "locked.txt", 0o600)
    assert (ws / "locked.txt").read_text() == "secret\n" and (ws / "a.txt").read_text() == "a\n"
