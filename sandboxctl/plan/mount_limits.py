"""Mounts bubblewrap can really make: no more options than it takes, no target it cannot reach.

A plan that bubblewrap refuses half-way is a failed launch with a confusing message; these
checks change the plan where a mount is redundant (and say so in its notes) or fail it before
anything starts.
"""

from __future__ import annotations

from collections.abc import Callable

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Mount, ProtectPlan

BWRAP_MAX_ARGS = 9000  # bubblewrap's own limit on its options (MAX_ARGS in bubblewrap.c)
BWRAP_FIXED_WORDS = 64  # more than launch/bwrap.render puts around the mounts
BWRAP_WORDS = {"proc": 2, "dev": 2, "tmpfs": 2, "ro": 3, "rw": 3, "symlink": 3, "mask-dir": 6,
               "mask-file": 3, "data-file": 5, "secret-file": 5}  # launch/bwrap.mount_args, per kind


def reachable_guards(mounts: list[Mount], closed_to_sandbox: Callable[[str], bool], notes: list[str]) -> list[Mount]:
    """Masks and protected binds below a directory closed to the sandbox are left out: they hide
    or hold nothing it could reach, and the mount itself would fail to reach its target (root
    running in a /tmp that holds other users' private directories)."""
    closed = {m for m in mounts if (m.kind in ("mask-file", "mask-dir") or m.reason == "protected")
              and closed_to_sandbox(m.target)}
    if not closed:
        return mounts
    notes.append(f"{len(closed)} masks and protected binds are left out: they lie below directories "
                 "the sandbox's user cannot enter (another user's private directories)")
    return [m for m in mounts if m not in closed]


def masks_cover_every_spelling(mounts: list[Mount], spelt_otherwise: Callable[[str], str | None]) -> None:
    """A mask hides an entry by mounting over its dentry; where another spelling of it has a
    dentry of its own (a case-insensitive FUSE file system: `.ENV` for a masked `.env`; NTFS's
    DOS name `ENV~1` under ntfs-3g, even mounted case-sensitively), the
    sandbox would read it through that spelling. No mount can cover every spelling, so such a
    plan fails before anything starts (fail closed: never a secret left readable)."""
    for mount in mounts:
        if mount.kind not in ("mask-file", "mask-dir"):
            continue
        other = spelt_otherwise(mount.target)
        if other:
            raise SandboxError(
                f"{mount.target} is hidden inside ({mount.reason}), but it lies on a case-insensitive file system "
                f"where {other} reaches it past any mount",
                "move it out of the granted directories, or grant less (a narrower workspace, -w DIR)")


def bwrap_words(mounts: list[Mount]) -> int:
    return BWRAP_FIXED_WORDS + sum(BWRAP_WORDS[m.kind] for m in mounts)


def within_bwrap_limit(mounts: list[Mount], protect: ProtectPlan, landlock: str, notes: list[str]) -> list[Mount]:
    """bubblewrap refuses more than BWRAP_MAX_ARGS options, and a workspace holding thousands
    of repositories plans three protected binds for each. Where Landlock is required and the
    supervisor performs every change, those binds are a third wall and may be left out (said in
    the plan); otherwise the run cannot be built, and says so before anything starts."""
    if bwrap_words(mounts) <= BWRAP_MAX_ARGS:
        return mounts
    protected = [m for m in mounts if m.reason == "protected"]
    kept = [m for m in mounts if m.reason != "protected"]
    if protected and protect.mediated and landlock == "required" and bwrap_words(kept) <= BWRAP_MAX_ARGS:
        notes.append(f"protected paths: their {len(protected)} read-only binds are left out (bubblewrap takes at "
                     f"most {BWRAP_MAX_ARGS} arguments); Landlock (ABI 3 at least: truncation) keeps the workspace "
                     "read-only to the kernel and the supervisor performs and checks every change")
        return kept
    raise SandboxError(
        f"this sandbox needs {bwrap_words(mounts)} bubblewrap arguments ({len(mounts)} mounts, {len(protected)} "
        f"of them for the protected paths of {len(protect.gitdirs)} git directories), more than "
        f"bubblewrap's limit of {BWRAP_MAX_ARGS}",
        "run in a narrower workspace (-w DIR)" + ("" if landlock == "required" else
                                                  ", or with `landlock: required` so the binds can be left out"))
