"""Reading a repository's refs, HEAD, pseudo-refs, rebase state and index identity for
protect/history.py: in the supervisor, from files the sandbox can write, so nothing here waits
for a writer, follows a device, recurses, or reads without a bound (red team rt11).
"""

from __future__ import annotations

import contextlib
import os

from sandboxctl.paths import open_regular

MAX_REFS = 20_000  # past that (a repository with that many loose tags) the refs are not recorded
MAX_PACKED = 64 << 20  # bytes of packed-refs read; past that, as past MAX_REFS
PSEUDO_REFS = ("ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")
# what `git rebase --abort`, `git cherry-pick --abort` and `git bisect reset` check out (red team rt11)
STATE_REFS = ("rebase-merge/orig-head", "rebase-merge/onto", "rebase-apply/orig-head", "sequencer/head",
              "BISECT_START")
# what `git rebase --continue` (and cherry-pick's) carries out: its picks, and its exec lines run on the host
TODO_FILES = ("rebase-merge/git-rebase-todo", "sequencer/todo")
TODO = "\0todo/"  # the key of a todo file's text among the refs
APPLY = "\0rebase-apply"  # the key of rebase-apply/'s identity: `git am --continue` applies the patches there
INDEX = "\0index"  # the key of the index's identity among the refs


def _read(path: str, limit: int = 1 << 16) -> str | None:
    """A regular file's first bytes, never blocking: the sandbox may leave a FIFO, a device or a
    link to one where a ref is (red team rt11: a FIFO in refs/heads held the run's end for ever)."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def gitdirs_of(repository: str) -> tuple[str, str] | None:
    """(the git directory, its common directory) of a work tree's `.git` entry (a directory, or a
    `gitdir:` file of a linked worktree)."""
    gitdir = repository
    if not os.path.isdir(repository):
        text = _read(repository, 4096) or ""
        if not text.startswith("gitdir:"):
            return None
        gitdir = os.path.normpath(os.path.join(os.path.dirname(repository), text[7:].strip()))
    common = (_read(os.path.join(gitdir, "commondir"), 4096) or "").strip()
    return gitdir, os.path.normpath(os.path.join(gitdir, common)) if common else gitdir


def refs(gitdir: str, common: str) -> dict[str, str] | None:
    """Every ref's value as written (a hex id or `ref: …`), HEAD's, and the index's identity."""
    out: dict[str, str] = {}
    packed = _read(os.path.join(common, "packed-refs"), MAX_PACKED + 1) or ""
    if len(packed) > MAX_PACKED:
        return None
    for line in packed.splitlines():
        if line and line[0] not in "#^":
            value, _, name = line.partition(" ")
            out[name] = value
    if len(out) > MAX_REFS:
        return None
    if not _loose_refs(common, out):
        return None
    out["HEAD"] = (_read(os.path.join(gitdir, "HEAD"), 512) or "").strip()
    for pseudo in (*PSEUDO_REFS, *STATE_REFS):  # what `git reset --hard ORIG_HEAD`, `git merge FETCH_HEAD` take
        value = _read(os.path.join(gitdir, pseudo), 512)
        if value:
            out[pseudo] = value.split(None, 1)[0] if value.split() else ""
    for todo in TODO_FILES:
        text = _read(os.path.join(gitdir, todo))
        if text:
            out[TODO + todo] = text
    patches = _identity_of_directory(os.path.join(gitdir, "rebase-apply"))
    if patches:
        out[APPLY] = patches
    with contextlib.suppress(OSError):
        st = os.stat(os.path.join(gitdir, "index"))
        out[INDEX] = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return out


def _identity_of_directory(path: str) -> str | None:
    """Its entries' names, inodes, sizes and change times (a change time no file can be given
    back), or None when it is not there; at most MAX_REFS entries, then a count."""
    try:
        with os.scandir(path) as listing:
            seen = []
            for count, entry in enumerate(listing):
                if count >= MAX_REFS:
                    seen.append("...")
                    break
                st = entry.stat(follow_symlinks=False)
                seen.append(f"{entry.name}:{st.st_ino}:{st.st_size}:{st.st_ctime_ns}")
    except OSError:
        return None
    return "\n".join(sorted(seen))


def _loose_refs(common: str, out: dict[str, str]) -> bool:
    """Add the loose refs under refs/ to out; False past MAX_REFS entries. Directories count too
    and the walk is a loop, not recursion: a tree of empty directories, or one nested deeper than
    Python's recursion limit, is no way to hold the run's end or crash it (red team rt11)."""
    stack, entries = [os.path.join(common, "refs")], 0
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_REFS:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    value = _read(entry.path, 512)
                    if value is not None:
                        out[os.path.relpath(entry.path, common)] = value.strip()
        except OSError:
            continue
    return True
