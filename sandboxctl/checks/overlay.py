"""`workspace: overlay` (run --overlay): can an overlay with its layer in the state dir work here?

Optional: the `default` policy does not need it, so a machine without it gets a warning. The
probe mounts an overlay exactly as a run would (workspace/mount.py) on a scratch tree in the
state dir, and checks that a deletion and a replaced directory read back as they must.
"""

from __future__ import annotations

import os

from sandboxctl.checks.common import OK, WARN, CheckResult, kernel_version


def assess_overlay(why: str | None, fs: str | None, kernel: str) -> CheckResult:
    where = f"the state dir is on {fs}" if fs else "the state dir's file system is unknown"
    if why is None:
        return CheckResult("overlay", OK, f"`workspace: overlay` works here: an overlayfs with its layer in the "
                           f"state dir mounts and records deletions and replaced directories ({where})")
    remedy = ("unprivileged overlayfs needs Linux 5.11 or later" if kernel_version(kernel) < (5, 11)
              else "put the state dir (XDG_STATE_HOME) on a local file system with user extended attributes: "
                   "ext4, xfs, btrfs, or tmpfs on Linux 6.6+")
    return CheckResult("overlay", WARN, f"`workspace: overlay` is unavailable: {why} ({where})", remedy)


def check_overlay() -> CheckResult:
    from sandboxctl.errors import SandboxError
    from sandboxctl.paths import ensure_private_dir, state_dir
    from sandboxctl.workspace import mount

    try:
        scratch = ensure_private_dir(state_dir())
        why, fs = mount.probe(str(scratch))
    except (OSError, SandboxError) as exc:
        why, fs = (exc.message if isinstance(exc, SandboxError) else exc.strerror or str(exc)), None
    return assess_overlay(why, fs, os.uname().release)
