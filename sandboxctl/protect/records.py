"""The last launch record of a set of protected paths, kept so the next launch reuses it.

A venv inside the workspace is thousands of entries; a launch that built each one's record anew
(listing, sorting, a dict per entry, a hash-cache lookup per file) spent ~20 ms on it. The record
of the same set of paths is kept in the private state dir, and each entry of it is reused where
its identity and times are unchanged (store._reuse: one stat per entry, no listing), which is
sound for the same reason the hash cache is: no unprivileged process sets a ctime back.

Its blobs are kept while a kept record names them (store.collect). A record nobody used for
UNUSED_S is removed when another is written.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
import time
from pathlib import Path

from sandboxctl import cachedir
from sandboxctl.digest import sha256

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

RECORD_VERSION = 1  # the format of an entry's record (store._entry): bumped, older records are not read


def _file(root: Path, paths: tuple[str, ...]) -> Path:
    key = sha256("\0".join((str(RECORD_VERSION), *paths)).encode()).hexdigest()[:24]
    return root / "records" / f"{key}.marshal"


def load(root: Path, paths: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The kept record of exactly these paths, or {} (none, another version, not ours)."""
    path = _file(root, paths)
    try:
        st = path.lstat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return {}
        version, kept_paths, entries = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if version != RECORD_VERSION or kept_paths != paths or not isinstance(entries, dict):
        return {}
    cachedir.mark_used(path, st.st_mtime)
    return entries


def save(root: Path, paths: tuple[str, ...], entries: dict[str, dict[str, Any]]) -> None:
    path = _file(root, paths)
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(marshal.dumps((RECORD_VERSION, paths, entries)))
        os.replace(tmp, path)
        _prune(path.parent)


def _prune(directory: Path) -> None:
    cutoff = time.time() - cachedir.UNUSED_S
    with contextlib.suppress(OSError), os.scandir(directory) as listing:
        for entry in listing:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)


def kept(root: Path) -> list[dict[str, dict[str, Any]]]:
    """Every kept record's entries (what store.collect must not take the blobs of)."""
    found = []
    with contextlib.suppress(OSError), os.scandir(root / "records") as listing:
        for entry in listing:
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
                _version, _paths, entries = marshal.loads(Path(entry.path).read_bytes())
                if isinstance(entries, dict):
                    found.append(entries)
    return found
