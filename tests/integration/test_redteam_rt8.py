"""Red team rt8: link(2) as the kernel answers it, judged by the action log the host reads."""

from __future__ import annotations

import os

LINK_MISSING = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir('d')
for source in (b'missing', b'd/missing', b'nodir/missing', b'/tmp/missing'):
    ok = libc.link(source, b'new')
    print(source.decode(), 'ok' if ok == 0 else errno.errorcode[ctypes.get_errno()])
"""


def test_a_link_of_a_missing_source_is_enoent_not_a_denial(sandbox):
    """`ln missing new` in the workspace: the kernel says ENOENT (ENOTDIR, …) and nothing was
    refused; the supervisor answered EPERM and logged a denial ("the link's source could not be
    resolved"), so a build probing with link() filled the denial table and `policy suggest`."""
    result = sandbox.py(LINK_MISSING, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["missing", "ENOENT", "d/missing", "ENOENT", "nodir/missing", "ENOENT",
                                     "/tmp/missing", "ENOENT"], result.stdout
    denied = [r for r in sandbox.records() if r.get("event") == "file" and r.get("decision") == "deny"]
    assert [r for r in denied if r.get("op") == "link"] == [], denied
    assert not (sandbox.workspace / "new").exists()


# ------------------------------------------------------------------ link(2) raced by another run
LINKER = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
while not os.path.exists('go'):
    time.sleep(0.01)
end, i = time.monotonic() + 4, 0
while time.monotonic() < end:
    i += 1
    name = f'l{i}'.encode()
    if libc.link(b'src', name) == 0 and os.lstat(name).st_ino != os.stat('.git/config').st_ino:
        os.unlink(name)  # a name of the plain file: dropped; one of .git/config's is left for the host
print('linker', i)
"""

SWAPPER = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
open('go', 'w').close()
end, swaps = time.monotonic() + 4, 0
while time.monotonic() < end:
    swaps += libc.renameat2(-100, b'hl', -100, b'src', 2) == 0  # RENAME_EXCHANGE: one atomic swap
print('swapper', swaps)
assert swaps
"""


def test_a_link_raced_by_another_runs_swap_never_names_a_protected_file(sandbox):
    """Two runs in one workspace holding a hardlink of .git/config made before them (`hl`). One
    links `src` (a plain file) again and again; the other swaps `hl` and `src` (RENAME_EXCHANGE:
    neither name is protected). The supervisor looked at `src`, judged the plain file, then
    linked by name what `src` was by then: .git/config got names the rules refuse (hundreds in
    4 s). Judged on the host: .git/config keeps its two names, and the refusals are logged."""
    import subprocess

    from tests.integration.test_protected_paths import repo

    ws = repo(sandbox.workspace, sandbox.home)
    (ws / "src").write_text("plain\n")
    os.link(ws / ".git" / "config", ws / "hl")
    config = (ws / ".git" / "config").read_bytes()
    procs = [subprocess.Popen(sandbox.argv("--", "python3", "-c", code), cwd=ws, env=sandbox.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in (LINKER, SWAPPER)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "linker" in outs[0][0] and "swapper" in outs[1][0], outs
    names = sorted(p.name for p in ws.iterdir() if p.stat(follow_symlinks=False).st_ino
                   == (ws / ".git" / "config").stat().st_ino)
    assert names == ["hl"] or names == ["src"], names  # the swap may end either way
    assert (ws / ".git" / "config").stat().st_nlink == 2
    assert (ws / ".git" / "config").read_bytes() == config
    refused = [r for r in sandbox.records() if r.get("event") == "file" and r.get("op") == "link"
               and r.get("decision") == "deny" and "another name for a protected file" in r.get("rule", "")]
    assert refused, "the runs never met: the linker never saw .git/config at src"


# ------------------------------------------------------------------ a repository made by two runs at once
MARKER = r"""
import os, sys, time
make, undo, other = {
    'refs': (lambda: os.mkdir('refs'), lambda: os.rmdir('refs'), 'HEAD'),
    'HEAD': (lambda: os.write(os.open('HEAD', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), b'ref: refs/heads/m\n'),
             lambda: os.unlink('HEAD'), 'refs'),
}[sys.argv[1]]
os.chdir('docs')
open(sys.argv[1] + '.ready', 'w').close()
while not os.path.exists(other + '.ready'):
    time.sleep(0.01)
end, tries = time.monotonic() + 5, 0
while time.monotonic() < end:
    tries += 1
    try:
        make()
    except OSError:
        continue
    if os.path.exists('HEAD') and os.path.isdir('refs'):
        break  # both made: left for the host's git
    undo()
print('tries', tries)
"""


def test_two_runs_cannot_make_a_repository_between_them(sandbox):
    """docs/ holds objects/ and a config; one run makes refs/ (HEAD absent: allowed), the other
    HEAD (refs/ absent: allowed), again and again. Each supervisor looked at the other markers,
    then made its own: both passed, and docs/ was a repository whose config the host's next git
    command there reads (core.fsmonitor, gpg.program: commands). Judged by the host's git."""
    import subprocess

    from tests.integration.test_protected_paths import git, repo

    ws = repo(sandbox.workspace, sandbox.home)
    docs = ws / "docs"
    (docs / "objects").mkdir(parents=True)
    (docs / "config").write_text("[core]\n\tbare = true\n\tfsmonitor = false\n")
    procs = [subprocess.Popen(sandbox.argv("--", "python3", "-c", MARKER, which), cwd=ws, env=sandbox.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for which in ("refs", "HEAD")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    inside = git(docs, "rev-parse", "--absolute-git-dir", home=sandbox.home, check=False)
    assert inside.stdout.strip() != str(docs), (inside.stdout, outs)
    assert not ((docs / "HEAD").exists() and (docs / "refs").is_dir())
    met = [r for r in sandbox.records() if r.get("event") == "file" and r.get("decision") == "deny"
           and "git repository" in r.get("rule", "")]
    assert met, "the runs never met: neither saw the other's marker"
