"""Other names for an entry, which the name rules cannot see in the name itself.

protect/names folds every name (case, Unicode case folding, trailing dots and spaces), so on a
case-insensitive directory `.GIT/config` is judged as the `.git/config` the kernel opens. Two
ways in are left where the spelling says nothing, and the supervisor checks both on the entry it
resolved (supervise/mediate.py):

- an 8.3 short name (FAT's `GIT~1` for `.git`, NTFS's DOS names): the file system resolves it to
  the long name's entry, and the kernel may even name our descriptor by it. A component shaped
  like one is accepted only where its parent directory lists it: readdir gives long names, so a
  short alias is never listed (and a file really named `A~1` is);
- any aliasing not modelled here: the parent directory the supervisor resolved is compared by
  identity (device, inode) with the protected directories recorded at launch (Mediator).
"""

from __future__ import annotations

import os

from sandboxctl import lazyre
from sandboxctl.protect.names import fold_name
from sandboxctl.supervise import fdops

SHORT_NAME = lazyre.Pattern(r"^[^~/]{1,8}~[0-9]{1,7}(?:\.[^./]{0,3})?$")  # BASE~N.EXT, as FAT and NTFS make them


def short_alias(root_fd: int, path: str, root: str) -> str | None:
    """The first existing component of `path` (beneath the writable root `root`, in the sandbox's
    view) that is a short name its directory does not list, if any."""
    if "~" not in path:
        return None
    base = root.rstrip("/") or "/"
    for part in path[len(root.rstrip("/")) + 1:].split("/"):
        if part and SHORT_NAME.match(part) and not _listed(root_fd, base, part):
            return f"{base.rstrip('/')}/{part}"
        base = f"{base.rstrip('/')}/{part}"
    return None


def _listed(root_fd: int, directory: str, name: str) -> bool:
    """Whether `directory` lists `name` (folded); True when there is no such entry (a name being
    created is what it says). A directory that cannot be listed counts as not listing it (refused:
    fail closed, for a name nobody on Linux uses for real work)."""
    try:
        fd = fdops.openat2(root_fd, directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                           fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_MAGICLINKS)
    except OSError:
        return False
    try:
        try:
            os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return True
        folded = fold_name(name)
        with os.scandir(fd) as entries:
            return any(fold_name(entry.name) == folded for entry in entries)
    except OSError:
        return False
    finally:
        os.close(fd)
