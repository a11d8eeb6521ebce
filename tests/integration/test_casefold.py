"""Protected paths on case-insensitive file systems, judged from outside: the host's own git (a
planted core.fsmonitor or hook leaves a canary when it runs), the host files' content.

On a case-insensitive directory the kernel (or the FUSE server) resolves `.GIT/config` and
`.git/CONFIG` to the real `.git/config`, and an 8.3 short name (`GIT~1`) to `.git`. Under FUSE
each spelling is a dentry of its own, so the read-only binds of protected entries do not hold for
another spelling: Landlock's read-only workspace and the supervisor's rules are the walls there,
which is what these attacks test. The images are mounted by the test (root: a loop device;
FUSE's exFAT and NTFS drivers, since this kernel has neither vfat/exfat nor CONFIG_UNICODE).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Sandbox
from tests.integration.test_protected_paths import denials, git, hostile_config

IMAGE_TOOLS = {
    "exfat": (("mkfs.exfat",), "mount.exfat-fuse", "apt-get install exfatprogs exfat-fuse"),
    "ntfs": (("mkntfs", "-q", "-F", "-f"), "lowntfs-3g", "apt-get install ntfs-3g"),
    "ntfs-posix": (("mkntfs", "-q", "-F", "-f"), "ntfs-3g", "apt-get install ntfs-3g"),  # case-sensitive
}


def _mounted_image(tmp_path: Path, kind: str) -> Iterator[Path]:
    """A 64 MiB image of `kind`, on a loop device, mounted case-insensitively by its FUSE driver."""
    mkfs, driver, remedy = IMAGE_TOOLS[kind]
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {driver} mounts a block device (a loop device), and an unprivileged FUSE "
                    "mount of it needs user_allow_other in /etc/fuse.conf")
    if not all(shutil.which(tool) for tool in (mkfs[0], driver, "losetup", "fusermount3")):
        pytest.skip(f"{kind} tools are not installed ({remedy} fuse3)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine (a container without the FUSE device)")
    image = tmp_path / f"{kind}.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if loop.returncode:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    mountpoint = tmp_path / kind
    mountpoint.mkdir()
    try:
        options = ["-o", "ignore_case"] if kind == "ntfs" else []
        mounted = subprocess.run([driver, *options, device, str(mountpoint)], capture_output=True, text=True)
        assert mounted.returncode == 0, mounted.stderr
        try:
            os.chmod(mountpoint, 0o755)
            yield mountpoint
        finally:
            _unmount(mountpoint)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def _unmount(mountpoint: Path) -> None:
    """A FUSE file system may be busy for a moment after the last run (its server flushing):
    retry, then detach it lazily, so no mount outlives the test."""
    for _attempt in range(50):
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _sandbox_on(mountpoint: Path, tmp_path: Path, home: Path) -> Sandbox:
    workspace = mountpoint / "ws"
    workspace.mkdir()
    return Sandbox(workspace, home, tmp_path / "state")


@pytest.fixture
def exfat(tmp_path: Path, home: Path) -> Iterator[Sandbox]:
    for mountpoint in _mounted_image(tmp_path, "exfat"):
        yield _sandbox_on(mountpoint, tmp_path, home)


@pytest.fixture
def ntfs(tmp_path: Path, home: Path) -> Iterator[Sandbox]:
    for mountpoint in _mounted_image(tmp_path, "ntfs"):
        yield _sandbox_on(mountpoint, tmp_path, home)


@pytest.fixture
def ntfs_posix(tmp_path: Path, home: Path) -> Iterator[Sandbox]:
    for mountpoint in _mounted_image(tmp_path, "ntfs-posix"):
        yield _sandbox_on(mountpoint, tmp_path, home)


def repo(path: Path, home: Path) -> Path:
    """A repository with one commit, its names in lower case (lowntfs-3g's ignore_case lists every
    name in lower case, which git would take for another file)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", home=home)
    (path / "readme").write_text("hello\n")
    git(path, "add", "readme", home=home)
    git(path, "commit", "-qm", "init", home=home)
    return path


def _hook(canary: Path) -> str:
    return f"#!/bin/sh\ntouch {canary}\n"


def _host_git_runs_nothing(ws: Path, home: Path, canary: Path) -> None:
    """The host's git, in the workspace: status (core.fsmonitor runs) and a commit (pre-commit runs)."""
    git(ws, "status", home=home, check=False)
    git(ws, "commit", "-q", "--allow-empty", "-m", "after", home=home, check=False)
    assert not canary.exists(), "a program planted inside ran on the host's git"


@pytest.mark.parametrize("fs", ["exfat", "ntfs"])
def test_another_spelling_of_git_metadata_cannot_be_written(request, fs, tmp_path):
    """.GIT/config, .git/CONFIG, .Git/hooks/pre-commit, .GIT/Commondir and a hook spelt with a
    KELVIN SIGN name the repository's real files on a case-insensitive file system: refused."""
    sandbox: Sandbox = request.getfixturevalue(fs)
    ws = repo(sandbox.workspace, sandbox.home)
    canary = tmp_path / "CANARY"
    config_before = (ws / ".git" / "config").read_bytes()
    evil = hostile_config(canary)
    script = f"""printf '%s' '{evil}' >> .GIT/config; printf '%s' '{evil}' >> .git/CONFIG
printf '%s' '{_hook(canary)}' > .Git/hooks/pre-commit; chmod +x .Git/hooks/pre-commit
printf '%s' '{_hook(canary)}' > .git/hoo\u212as/pre-commit
cp -r .git evil && printf '%s' '{evil}' > evil/config; echo ../evil > .GIT/Commondir
mv .GIT gone; echo ok > normal.txt; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    assert (ws / "normal.txt").read_text() == "ok\n"  # the workspace itself stays writable
    assert (ws / ".git" / "config").read_bytes() == config_before
    assert not os.path.lexists(ws / ".git" / "hooks" / "pre-commit")
    assert not os.path.lexists(ws / ".git" / "commondir") and not (ws / "gone").exists()
    _host_git_runs_nothing(ws, sandbox.home, canary)
    refused = {d["path"].rsplit("/ws/", 1)[-1] for d in denials(sandbox)}
    assert {".GIT/config", ".git/CONFIG", ".Git/hooks/pre-commit", ".GIT/Commondir"} <= refused


@pytest.mark.parametrize("fs", ["exfat", "ntfs"])
def test_a_nested_repository_cannot_be_made_under_another_spelling(request, fs, tmp_path):
    """`sub/.GIT` is `sub/.git` to the host's git, and `head`, `Objects`, `Refs` are HEAD, objects
    and refs: neither makes a repository whose config the host's git would run."""
    sandbox: Sandbox = request.getfixturevalue(fs)
    ws = repo(sandbox.workspace, sandbox.home)
    canary = tmp_path / "CANARY"
    evil = hostile_config(canary)
    script = f"""git init -q /tmp/r && printf '%s' '{evil}' >> /tmp/r/config
mkdir -p sub && cp -r /tmp/r sub/.GIT; mkdir -p sub2 && cd sub2 && mkdir Objects Refs
cp -r /tmp/r/objects/. Objects/; cp -r /tmp/r/refs/. Refs/; cp /tmp/r/config Config
cp /tmp/r/HEAD head; cd ..; echo end"""
    result = sandbox.sh(script)
    assert "end" in result.stdout, result.stderr
    assert not os.path.lexists(ws / "sub" / ".git")
    for sub in ("sub", "sub2"):
        if (ws / sub).is_dir():
            top = git(ws / sub, "rev-parse", "--show-toplevel", home=sandbox.home, check=False)
            assert top.stdout.strip() == str(ws), (sub, top.stdout, top.stderr)  # the outer repository
            git(ws / sub, "status", home=sandbox.home, check=False)
    assert not canary.exists()


def test_an_8_3_short_name_of_git_cannot_be_written(ntfs, tmp_path):
    """NTFS keeps DOS (8.3) names for Windows; lowntfs-3g resolves `GIT~1` to `.git` (Windows gives
    `.git` one such name when it makes it). Through it: the config, a hook, and a commondir that
    does not exist yet (no identity to compare: the short name itself is refused)."""
    ws = repo(ntfs.workspace, ntfs.home)
    subprocess.run(["setfattr", "-n", "system.ntfs_dos_name", "-v", "GIT~1", str(ws / ".git")], check=True)
    assert (ws / "GIT~1" / "config").exists()  # the alias works on this file system
    canary = tmp_path / "CANARY"
    config_before = (ws / ".git" / "config").read_bytes()
    evil = hostile_config(canary)
    script = f"""printf '%s' '{evil}' >> GIT~1/config; printf '%s' '{_hook(canary)}' > GIT~1/hooks/pre-commit
chmod +x GIT~1/hooks/pre-commit; cp -r .git evil && printf '%s' '{evil}' > evil/config
echo ../evil > git~1/commondir; mkdir GIT~1/worktrees; echo ok > plain~1.txt; echo end"""
    result = ntfs.sh(script)
    assert "end" in result.stdout, result.stderr
    assert (ws / "plain~1.txt").read_text() == "ok\n"  # a long name shaped like a short one is its own
    assert (ws / ".git" / "config").read_bytes() == config_before
    assert not os.path.lexists(ws / ".git" / "hooks" / "pre-commit")
    assert not os.path.lexists(ws / ".git" / "commondir") and not os.path.lexists(ws / ".git" / "worktrees")
    _host_git_runs_nothing(ws, ntfs.home, canary)


def test_a_git_directory_spelt_GIT_on_disk_is_found_bound_and_held(exfat, tmp_path):
    """A repository whose git directory is `.GIT` on disk (made on a case-insensitive system) is a
    repository to the host's git: the planner finds it, binds and records its config, hooks and
    info, and every spelling of them is refused."""
    ws = repo(exfat.workspace, exfat.home)
    os.rename(ws / ".git", ws / "moving")
    os.rename(ws / "moving", ws / ".GIT")
    assert ".GIT" in os.listdir(ws)
    plan = exfat.run("--dry-run", "--", "true")
    assert plan.returncode == 0, plan.stderr
    for entry in ("config", "hooks", "info"):
        assert f"{ws}/.GIT/{entry}: protected" in plan.stdout, plan.stdout
    canary = tmp_path / "CANARY"
    evil = hostile_config(canary)
    script = f"""printf '%s' '{evil}' >> .git/config; printf '%s' '{evil}' >> .GIT/config
printf '%s' '{_hook(canary)}' > .git/hooks/pre-commit; echo end"""
    result = exfat.sh(script)
    assert "end" in result.stdout, result.stderr
    assert b"fsmonitor" not in (ws / ".GIT" / "config").read_bytes()
    _host_git_runs_nothing(ws, exfat.home, canary)


def test_git_work_inside_still_works_on_a_case_insensitive_file_system(exfat):
    """What git writes in normal work stays writable there: add, commit, branch, stash."""
    ws = repo(exfat.workspace, exfat.home)
    script = """export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
echo two > b.txt && git add b.txt && git commit -qm two && git checkout -qb topic && echo three > c.txt \
&& git add c.txt && git stash -q && git stash pop -q && echo end"""
    result = exfat.sh(script)
    assert "end" in result.stdout, result.stderr
    assert git(ws, "log", "--format=%s", "-1", home=exfat.home).stdout == "two\n"
    assert git(ws, "branch", "--show-current", home=exfat.home).stdout == "topic\n"
    assert (ws / "c.txt").read_text() == "three\n"


def test_names_spelt_otherwise_are_refused_on_case_sensitive_file_systems_too(sandbox, tmp_path):
    """Fail closed: `.GIT`, `.git/CONFIG` and `.Git/Hooks` are refused wherever they are made,
    since the rules cannot know which directories fold (and nothing real names them so)."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh("mkdir sub && mkdir sub/.GIT; echo x > .git/CONFIG; mkdir .git/Hooks; "
                        "echo x > .ENVRC; echo ok > fine.txt; echo end")
    assert "end" in result.stdout, result.stderr
    assert (ws / "fine.txt").read_text() == "ok\n"
    for name in ("sub/.GIT", ".git/CONFIG", ".git/Hooks", ".ENVRC"):
        assert not os.path.lexists(ws / name), name


def test_with_the_binds_left_out_the_rules_alone_still_hold(ntfs, tmp_path):
    """BIG (1100) repositories: their read-only binds are left out (bubblewrap's option limit), so no
    mount holds `hooks/` whatever its spelling; the supervisor's rules (folded names, the parent's
    identity, short names) are all that stands between, and they hold."""
    from tests.integration.test_big_workspace import BIG, fake_repositories

    ws = ntfs.workspace
    fake_repositories(ws, BIG)
    real = repo(ws / "real", ntfs.home)
    subprocess.run(["setfattr", "-n", "system.ntfs_dos_name", "-v", "GIT~1", str(real / ".git")], check=True)
    plan = ntfs.run("--dry-run", "--", "true")
    assert plan.returncode == 0, plan.stderr
    assert "read-only binds are left out" in plan.stdout
    canary = tmp_path / "CANARY"
    evil = hostile_config(canary)
    script = f"""cd real; printf '%s' '{_hook(canary)}' > GIT~1/hooks/pre-commit; chmod +x GIT~1/hooks/pre-commit
printf '%s' '{_hook(canary)}' > .Git/hooks/post-commit; printf '%s' '{evil}' >> GIT~1/config
printf '%s' '{evil}' >> .GIT/Config; mkdir .GIT/info/x; cd ..; printf '%s' '{evil}' >> r7/.GIT/config
printf '%s' '{_hook(canary)}' > r7/.git/HOOKS/pre-commit; echo end"""
    result = ntfs.sh(script, timeout=300)
    assert "end" in result.stdout, result.stderr
    for hook in ("pre-commit", "post-commit"):
        assert not os.path.lexists(real / ".git" / "hooks" / hook)
    assert not os.path.lexists(real / ".git" / "info" / "x")
    assert not os.path.lexists(ws / "r7" / ".git" / "hooks" / "pre-commit")
    assert b"fsmonitor" not in (real / ".git" / "config").read_bytes() + (ws / "r7" / ".git" / "config").read_bytes()
    _host_git_runs_nothing(real, ntfs.home, canary)


FS_IOC_GETFLAGS = 0x80086601  # x86_64/aarch64 encoding: the test runs where CI does
FS_NODUMP_FL, FS_CASEFOLD_FL = 0x40, 0x40000000
SET_ATTRIBUTES = r"""
import ctypes, errno, fcntl, os, struct
FS_IOC_SETFLAGS, FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR = 0x40086602, 0x801c581f, 0x401c5820
FS_NODUMP_FL, FS_XFLAG_NODUMP = 0x40, 0x80
libc = ctypes.CDLL(None, use_errno=True)

def setflags(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_NODUMP_FL))
    finally:
        os.close(fd)

def fssetxattr(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, struct.pack("I", FS_XFLAG_NODUMP) + bytes(24))
    finally:
        os.close(fd)

def file_setattr(path):  # Linux 6.17: file_setattr(dirfd, path, struct file_attr *, size, flags)
    attr = struct.pack("QIIII", FS_XFLAG_NODUMP, 0, 0, 0, 0)
    if libc.syscall(469, -100, path.encode(), attr, len(attr), 0):
        raise OSError(ctypes.get_errno(), "")

for how in (setflags, fssetxattr, file_setattr):
    for kind in ("f", "d"):
        try:
            how(f"{kind}-{how.__name__}")
            print(kind, how.__name__, "done")
        except OSError as exc:
            print(kind, how.__name__, "EOPNOTSUPP" if exc.errno == errno.EOPNOTSUPP else exc.errno)
"""
CALLS = ("setflags", "fssetxattr", "file_setattr")


def _inode_flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
    finally:
        os.close(fd)


def test_inode_flags_cannot_be_set_inside(sandbox):
    """chattr (FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR and file_setattr, a call newer than this
    libseccomp) is answered as a file system without flags: inside a workspace on a casefold-capable
    file system, `chattr +F` on an empty directory would make `.GIT` name `.git` there. Judged by
    the flags the host reads back (nodump here: this kernel has no casefold to set)."""
    if os.uname().machine not in ("x86_64", "aarch64", "riscv64", "s390x"):
        pytest.skip("the test's ioctl numbers are the generic encoding")
    ws = sandbox.workspace
    for call in CALLS:
        (ws / f"f-{call}").write_text("x")
        (ws / f"d-{call}").mkdir()
    result = sandbox.run("--", "python3", "-c", SET_ATTRIBUTES)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"{k} {c} EOPNOTSUPP" for k in "fd" for c in CALLS)
    for call in CALLS:
        for kind in "fd":
            assert not _inode_flags(ws / f"{kind}-{call}") & FS_NODUMP_FL, (kind, call)


def _casefold_tmpfs(where: Path) -> bool:
    """Mount a casefolding tmpfs at `where` (root), or say why not."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "casefold", "tmpfs", str(where)], capture_output=True,
                             text=True)
    return mounted.returncode == 0


def test_a_directory_cannot_be_made_case_insensitive_inside(tmp_path, home):
    """On a casefold-capable tmpfs the sandbox's `chattr +F` on an empty directory of its own is
    refused: the host reads no casefold flag back, and its git sees no repository spelt `.GIT`."""
    where = tmp_path / "cf"
    where.mkdir()
    if os.geteuid() != 0:
        probe = subprocess.run(["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "casefold", "tmpfs", str(where)],
                               capture_output=True, text=True)
        if probe.returncode:
            pytest.skip(f"no casefold tmpfs even in a user namespace: {probe.stderr.strip()[-120:]}")
        pytest.skip("casefold tmpfs mounts only in a user namespace of its own here, which the judge cannot see")
    if not _casefold_tmpfs(where):
        pytest.skip("this kernel has no casefold tmpfs (built without CONFIG_UNICODE)")
    try:
        ws = where / "ws"
        ws.mkdir()
        subprocess.run(["chattr", "-F", str(ws)], check=False, capture_output=True)  # a case-sensitive workspace
        sandbox = Sandbox(ws, home, tmp_path / "state")
        repo(ws, home)
        result = sandbox.sh("mkdir d && chattr +F d; mkdir d/.GIT; echo end")
        assert "end" in result.stdout, result.stderr
        assert not _inode_flags(ws / "d") & FS_CASEFOLD_FL
        assert not os.path.lexists(ws / "d" / ".GIT") and not os.path.lexists(ws / "d" / ".git")
    finally:
        _unmount(where)


def test_a_mask_that_another_spelling_would_pass_fails_the_run_before_it_starts(exfat, tmp_path):
    """A masked `.env` (filesystem.deny) is a mount over its dentry; on a case-insensitive FUSE
    file system `.ENV` is a dentry of its own that the mount does not cover, so the secret would
    be read through it. The run fails with 125 before anything starts, naming the path."""
    ws = exfat.workspace
    (ws / ".env").write_text("SECRET=hunter2\n")
    result = exfat.sh("cat .ENV .Env > leaked; touch ran")
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    assert "case-insensitive file system" in result.stderr and f"{ws}/.env" in result.stderr
    assert not (ws / "ran").exists() and not (ws / "leaked").exists()
    (ws / ".env").unlink()
    result = exfat.sh("touch ran")  # without a secret to hide, the same workspace runs
    assert result.returncode == 0, result.stderr
    assert (ws / "ran").exists()


def test_a_mask_that_a_dos_name_would_pass_fails_the_run_before_it_starts(ntfs_posix):
    """NTFS keeps a DOS (8.3) name for Windows (`ENV~1` for `.env`, made by Windows or set through
    ntfs-3g's system.ntfs_dos_name), and ntfs-3g resolves it even mounted case-sensitively, where
    `.ENV` is nothing: a dentry of its own that the mask over `.env` does not cover (proven: the
    secret was read and copied out through it). The run fails with 125 before anything starts."""
    ws = ntfs_posix.workspace
    (ws / ".env").write_text("SECRET=hunter2\n")
    result = ntfs_posix.sh("cat .ENV 2>/dev/null; echo end")  # case-sensitive here, and one name: it runs
    assert result.returncode == 0 and result.stdout == "end\n", (result.stdout, result.stderr)
    subprocess.run(["setfattr", "-n", "system.ntfs_dos_name", "-v", "ENV~1", str(ws / ".env")], check=True)
    assert (ws / "ENV~1").read_text() == "SECRET=hunter2\n"  # the alias works on this file system
    result = ntfs_posix.sh("cp ENV~1 leaked; touch ran")
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    assert f"{ws}/ENV~1 reaches it" in result.stderr, result.stderr
    assert not (ws / "ran").exists() and not (ws / "leaked").exists()


def test_a_masked_directory_that_a_dos_name_would_pass_fails_the_run(ntfs_posix, tmp_path):
    """The same for a masked directory (filesystem.deny): ntfs-3g is path-based, so `SECRE~1` is
    another inode to the kernel than `secrets`, and `SECRE~1/key` read the masked key (proven)."""
    ws = ntfs_posix.workspace
    (ws / "secrets").mkdir()
    (ws / "secrets" / "key").write_text("TOKEN=abc\n")
    subprocess.run(["setfattr", "-n", "system.ntfs_dos_name", "-v", "SECRE~1", str(ws / "secrets")], check=True)
    assert (ws / "SECRE~1" / "key").read_text() == "TOKEN=abc\n"
    policy = tmp_path / "deny.yaml"
    policy.write_text(f"version: 1\nextends: default\nfilesystem:\n  deny: [{ws}/secrets]\n")
    result = ntfs_posix.run("--", "/bin/sh", "-c", "cp SECRE~1/key leaked; touch ran", policy=str(policy))
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    assert f"{ws}/SECRE~1 reaches it" in result.stderr, result.stderr
    assert not (ws / "ran").exists() and not (ws / "leaked").exists()


def test_a_mask_on_a_case_sensitive_file_system_runs(sandbox):
    """The same workspace on a case-sensitive file system: `.ENV` is nothing there, the run goes."""
    (sandbox.workspace / ".env").write_text("SECRET=hunter2\n")
    result = sandbox.sh("cat .env 2>/dev/null; cat .ENV 2>/dev/null; echo end")
    assert result.returncode == 0 and result.stdout == "end\n", (result.stdout, result.stderr)
