"""Red team rt8: link(2) as the kernel answers it, judged by the action log the host reads."""

from __future__ import annotations

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
