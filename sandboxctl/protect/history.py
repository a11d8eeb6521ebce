"""Commits and index entries the run left that bring a protected name in through the host's git.

The sandbox may write a repository's objects, refs and index: that is git's normal work (add,
commit, checkout -b, stash). A commit whose tree holds `.envrc` or `.claude/settings.json` at the
root is content, which no wall on files sees; but the host's own `git reset --hard`, `checkout`,
`restore`, `stash pop` or `pull` then writes that file into the workspace, where the sandbox itself
could not (red team rt10: a commit moved onto main, or a replace ref planted through packed-refs,
and the user's `git reset --hard` wrote a .claude/settings.json whose hook ran in the next
session). So for each repository whose work tree is the root of a writable grant, the refs and the
index are recorded at launch (a read of refs/, packed-refs and HEAD: no git process), and at the
end of a run that changed them, the host's git lists the protected names each changed ref's
commit holds that its launch commit did not, and the index entries for them that differ from the
file on disk. Each is reported (a `protect` event and a line on stderr): the refs are the agent's
work, so nothing is moved back.
"""

from __future__ import annotations

import functools
import os

from sandboxctl.paths import open_regular, within
from sandboxctl.protect import names
from sandboxctl.protect.history_refs import (  # re-exported: the check's callers and tests read them here
    APPLY,
    INDEX,
    MAX_PACKED,
    MAX_REFS,
    TODO,
    TODO_FILES,
    gitdirs_of,
    refs,
)

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from sandboxctl.protect.restore import Change

MAX_CHANGED = 200  # refs whose commits are listed at the end; past that the run says so (git per ref)
MAX_OUTPUT = 4 << 20  # bytes of one git call's output read; past that the rest is said, not read
MAX_REPORTED = 100  # protected paths said one by one per repository; past that, how many more
CALL_S = 5.0  # one git call's share of it
BUDGET_S = 10.0  # every git call of one run's check together: a history made slow to read cannot hold the run's end
ACTION = "left in git"  # Change.action of these: reported, never put back (the refs are the agent's work)


def record(roots: tuple[str, ...], repositories: tuple[str, ...]) -> dict[str, tuple[str, str, dict[str, str] | None]]:
    """{work tree: (git directory, common directory, refs)} of the repositories at a grant's root."""
    out: dict[str, tuple[str, str, dict[str, str] | None]] = {}
    for repository in repositories:
        root = os.path.dirname(repository)
        if root not in roots or not names.is_git_name(os.path.basename(repository)):
            continue
        dirs = gitdirs_of(repository)
        if dirs:  # refs None: too many to record, said at the end (red team rt11: a run after the one
            out[root] = (dirs[0], dirs[1], refs(*dirs))  # that made 20 001 refs was not checked, silently)
    return out


def _git_program(roots: tuple[str, ...]) -> str | None:
    """The host's git from PATH, never from a directory the sandbox could write."""
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isabs(directory) or any(within(directory, root) for root in roots):
            continue
        candidate = os.path.join(directory, "git")
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


class NotRead(Exception):
    """What the host's git was asked is not known: said as not checked, never taken as nothing."""


class OutOfTime(NotRead):
    """The check's time (BUDGET_S) is spent: what is left is said, not read."""


def _git(program: str, root: str, gitdir: str, *args: str, deadline: float) -> list[str]:
    """git's NUL-separated output; OutOfTime past the budget or past MAX_OUTPUT bytes (red team
    rt11: a tree of 200 000 entries under .claude/ was read whole, and each was said on stderr);
    NotRead when git fails: a commit whose tree is missing (a partial clone's, never fetched here,
    that the host's next checkout fetches) or damaged listed nothing and passed as holding nothing."""
    import select
    import subprocess
    import time

    end = min(time.monotonic() + CALL_S, deadline)
    if end <= time.monotonic():
        raise OutOfTime

    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LANG": "C", "GIT_DIR": gitdir,
           "GIT_WORK_TREE": root, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "GIT_NO_REPLACE_OBJECTS": "1",
           # a partial clone's missing object is never fetched: GIT_NO_LAZY_FETCH from git 2.44 (and 2.39.4's
           # security releases), and for a git older still no transport allowed (it fetched from the promisor)
           "GIT_NO_LAZY_FETCH": "1", "GIT_ALLOW_PROTOCOL": ""}  # pathspecs say :(literal)
    try:
        process = subprocess.Popen([program, "-c", "core.fsmonitor=false", *args], cwd=root, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    chunks, size = [], 0
    try:
        while True:
            wait = end - time.monotonic()
            if wait <= 0 or not select.select([process.stdout], [], [], wait)[0]:
                raise OutOfTime("" if end == deadline else f"one git call on it took more than {CALL_S:g} s")
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise OutOfTime(f"its history lists more than {MAX_OUTPUT >> 20} MiB of protected paths")
            chunks.append(chunk)
        try:
            code = process.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise OutOfTime("" if end == deadline else f"one git call on it took more than {CALL_S:g} s") from None
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    if code != 0:
        raise NotRead(f"the host's git could not read it (`git {args[0]}` exited {code}: an object is missing or "
                      "damaged, and a partial clone's is not fetched to check it)")
    return [item.decode("utf-8", "surrogateescape") for item in b"".join(chunks).split(b"\0") if item]


def _target(refs_now: dict[str, str], value: str | None) -> str | None:
    """A ref's value as an object id (a symbolic ref followed, once)."""
    if value and value.startswith("ref:"):
        value = refs_now.get(value[4:].strip())
    # as git reads one: the id's hex in either case, then anything after a space (red team rt11:
    # an upper-case id, or one followed by " x", moved a branch past this check unseen)
    value = value.split(None, 1)[0].lower() if value and value.split() else None
    return value if value and all(c in "0123456789abcdef" for c in value) and len(value) in (40, 64) else None


def _blob_id(path: str, length: int) -> str | None:
    """The git blob id of the file at path (a link's target text), or None. Read in chunks and
    only a regular file: an index entry may name a FIFO or, through `..`, /dev/zero (red team rt11)."""
    import hashlib

    digest = hashlib.sha1() if length == 40 else hashlib.sha256()
    try:
        if os.path.islink(path):
            data = os.readlink(path).encode("utf-8", "surrogateescape")
            digest.update(b"blob %d\0" % len(data) + data)
            return digest.hexdigest()
    except OSError:
        return None
    fd = open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            size, done = os.fstat(fd).st_size, 0
            digest.update(b"blob %d\0" % size)
            while chunk := handle.read(1 << 20):
                done += len(chunk)
                if done > size:  # growing as it is read: not the file git would see
                    return None
                digest.update(chunk)
        except OSError:
            return None
    return digest.hexdigest() if done == size else None


def check(before: dict[str, tuple[str, str, dict[str, str] | None]], homes: tuple[str, ...], roots: tuple[str, ...],
          run_id: str) -> list[Change]:
    """The protected names a ref or the index changed during the run now brings in (see above).
    Every git call of the check shares BUDGET_S: what is left when it is spent is said, not read."""
    import time

    changes: list[Change] = []
    program: str | None = None
    deadline = time.monotonic() + BUDGET_S
    for root, (gitdir, common, old) in before.items():
        if old is None:
            changes.append(_unchecked(gitdir, f"more than {MAX_REFS} refs or {MAX_PACKED >> 20} MiB of packed-refs "
                                      "as the run started", run_id))
            continue
        now = refs(gitdir, common)
        if now == old:
            continue
        if now is not None:
            changes += _pending(gitdir, old, now, run_id)
        if now is None:  # the sandbox made more refs than are read: said, never passed over in silence
            changes.append(_unchecked(gitdir, f"more than {MAX_REFS} refs or {MAX_PACKED >> 20} MiB of packed-refs",
                                      run_id))
            continue
        program = program or _git_program(roots)
        if program is None:  # said, as a history too big to read is (red team rt11: it was said of none)
            changes.append(_unchecked(gitdir, "no git program outside the writable grants to read it with", run_id))
            continue
        found: dict[str, list[str]] = {}  # path -> where it is (refs, the index)
        try:
            _brought_in(program, root, gitdir, old, now, root in homes, found, changes, run_id, deadline)
        except NotRead as stop:
            changes.append(_unchecked(gitdir, str(stop) or f"its history took more than {BUDGET_S:g} s to read",
                                      run_id))
        changes.extend(_brought_in_changes(root, found, run_id))
    return changes


def _todo_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _todo_ids(text: str) -> list[str]:
    ids = (_target({}, line.split()[1]) for line in _todo_commands(text) if len(line.split()) > 1)
    return [i for i in ids if i]


def _pending(gitdir: str, before: dict[str, str], now: dict[str, str], run_id: str) -> list[Change]:
    """A rebase or cherry-pick left in progress with commands the run wrote: `git rebase --continue`
    outside carries them out, and an exec line runs its program on the host (red team rt11)."""
    from sandboxctl.protect.restore import Change

    out = []
    for todo in TODO_FILES:
        text = now.get(TODO + todo)
        if text is None or text == before.get(TODO + todo) or not _todo_commands(text):
            continue
        lines = _todo_commands(text)
        runs = sum(1 for line in lines if line.split()[0] in ("exec", "x"))
        out.append(Change(f"{gitdir} ({todo} was left holding {len(lines)} commands that `git rebase --continue` or "
                          f"`git cherry-pick --continue` carries out, {runs} of them exec lines that run programs: "
                          "read it first)", "modified", ACTION, None, run_id))
    if now.get(APPLY) and now.get(APPLY) != before.get(APPLY):  # red team rt11: git am --skip wrote .envrc
        out.append(Change(f"{gitdir} (rebase-apply was left holding patches that `git am --continue` or `--skip`, "
                          "or `git rebase --continue`, applies: read them first)", "modified", ACTION, None, run_id))
    return out


def _unchecked(gitdir: str, why: str, run_id: str) -> Change:
    from sandboxctl.protect.restore import Change

    return Change(f"{gitdir} ({why}: not all of it checked for commits bringing protected names in)", "modified",
                  ACTION, None, run_id)


def _brought_in(program: str, root: str, gitdir: str, old: dict[str, str], now: dict[str, str], home: bool,
                found: dict[str, list[str]], changes: list[Change], run_id: str, deadline: float) -> None:
    """Fill `found` with the held names each moved ref's commit and the index bring in."""
    held = [n for n in (*names.ROOT_NAMES, *(names.HOME_NAMES if home else ())) if n != names.GIT]
    moved = []
    for ref in sorted(set(now) - {INDEX}):
        if ref == APPLY:
            continue
        if ref.startswith(TODO):  # each full id a pick names is checked as a ref would be
            if now[ref] != old.get(ref):
                moved += [(ref[len(TODO):], new, None) for new in _todo_ids(now[ref])]
            continue
        new, was = _target(now, now.get(ref)), _target(old, old.get(ref))
        if new is None or new == was or (ref == "HEAD" and now["HEAD"].startswith("ref:")):
            continue  # a symbolic HEAD: its branch is compared as itself
        moved.append((ref, new, was))
    if len(moved) > MAX_CHANGED:
        changes.append(_unchecked(gitdir, f"{len(moved)} refs changed; the first {MAX_CHANGED} checked", run_id))
    if now.get(INDEX) != old.get(INDEX):  # the index first: one call, and the likeliest next checkout
        try:
            staged = _git(program, root, gitdir, "ls-files", "-s", "-z", "--",
                          *(f":(icase,literal){name}" for name in held),
                          *(f":(icase,glob){glob}" for glob in names.ROOT_GLOBS), deadline=deadline)
        except NotRead as stop:  # the refs are still read with what is left (red team rt11: a FIFO index)
            changes.append(_unchecked(gitdir, f"its index: {stop or 'out of time'}", run_id))
            staged = []
        for line in staged:
            meta, _, path = line.partition("\t")
            parts = meta.split()
            inside = not {"", ".", ".."} & set(path.split("/"))  # git writes no such path; nor is it read
            if len(parts) >= 2 and (not inside or _blob_id(os.path.join(root, path), len(parts[1])) != parts[1]):
                found.setdefault(path, []).append("the index")
    for ref, new, was in moved[:MAX_CHANGED]:
        listed = _held_in_tree(program, root, gitdir, new, home, deadline)
        if listed and was:
            listed -= _held_in_tree(program, root, gitdir, was, home, deadline)
        for line in sorted(listed):
            found.setdefault(line.split("\t", 1)[-1], []).append(ref)


def _held_in_tree(program: str, root: str, gitdir: str, commit: str, home: bool, deadline: float) -> set[str]:
    """ls-tree's lines for the protected names in a commit, in any spelling a folding makes one
    (red team rt11: `.ENVRC` or `.Claude/settings.json`, which a case-insensitive directory makes
    the protected file, went unlisted): the root's names are listed, and what they hold is judged
    by names.root_name_reason as the wall judges it."""
    roots_listed = _git(program, root, gitdir, "ls-tree", "-z", "--full-tree", "--name-only", commit,
                        deadline=deadline)
    chosen = [name for name in roots_listed if _top_may_hold(name, home)]  # names.ROOT_GLOBS too (rt14)
    if not chosen:
        return set()
    lines = _git(program, root, gitdir, "ls-tree", "-r", "-z", "--full-tree", commit, "--",
                 *(f":(literal){name}" for name in chosen), deadline=deadline)
    return {line for line in lines
            if names.root_name_reason(tuple(line.split("\t", 1)[-1].split("/")), home) is not None}


def _brought_in_changes(root: str, found: dict[str, list[str]], run_id: str) -> list[Change]:
    from sandboxctl.protect.restore import Change

    listed = sorted(found.items())
    out = [Change(f"{root}/{path} (in {', '.join(where)})", "created", ACTION, None, run_id)
           for path, where in listed[:MAX_REPORTED]]
    if len(listed) > MAX_REPORTED:  # one line each would flood stderr and the log (red team rt11)
        out.append(Change(f"{root} ({len(listed) - MAX_REPORTED} more protected paths its commits or index bring "
                          "in, not listed one by one)", "modified", ACTION, None, run_id))
    return out


def _top_may_hold(name: str, home: bool = False) -> bool:
    """Whether an entry at the root of a writable grant, by its name, is or holds a protected name
    (for reading what a commit brings in: the root's entries first, then only these)."""
    folded = names.fold_name(name)
    if folded == names.GIT:
        return False
    return folded in _tops(home) or names.root_glob_reason((name,)) is not None


@functools.cache
def _tops(home: bool) -> frozenset[str]:
    held = (*names.ROOT_NAMES, *(names.HOME_NAMES if home else ()), *names.ROOT_GLOBS)
    return frozenset(names.fold_name(top) for top in (name.split("/", 1)[0] for name in held) if "*" not in top)
