"""Find the repositories and the masked names beneath a workspace, quickly and on every run.

A walk of a large workspace costs tens of milliseconds; most runs see the same tree. The walk is
cached per workspace in the private state dir, one record per directory keyed by its inode and
ctime: a directory whose ctime is unchanged has the same entries (creating, removing or renaming
an entry updates the ctime, and nothing without CAP_SYS_TIME can set a ctime back), so a warm
run costs one lstat per directory and rescans only the directories that changed.

It reports:
- `.git` entries (directories, `gitdir:` files, symlinks) and bare repositories (a directory
  holding HEAD, objects/ and refs/), with the git directories they lead to, including the
  submodule and worktree repositories under `.git/modules` and `.git/worktrees`;
- entries whose names match the given patterns (e.g. `.env*` for `{workspace}/**/.env*`).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat

from sandboxctl import cachedir, lazyre
from sandboxctl.digest import sha256
from sandboxctl.paths import join, make_dirs, parent
from sandboxctl.protect import names
from sandboxctl.protect.names import fold_name, is_git_name
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from os import PathLike

CACHE_VERSION = 2  # 2: names compared folded (.GIT on a case-insensitive directory)
MAX_DIRS = 500_000  # beyond this the walk stops and says so: a mask at depth must not be skipped silently


class TreeIndex(Record):
    root: str
    repositories: tuple[str, ...]  # paths of `.git` entries and bare repositories found
    gitdirs: tuple[str, ...]  # git directories they lead to (real paths), nested ones included
    matches: tuple[str, ...]  # paths whose names match the patterns
    directories: int  # how many directories the walk covered
    complete: bool = True


class _Dir(Record):
    ctime: int
    ino: int
    subdirs: list[str]
    hits: list[tuple[str, str]]  # (name, kind) of `.git` entries and pattern matches
    bare: bool  # this directory is a bare repository (not descended into)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    return "dir" if stat.S_ISDIR(mode) else "file"


def _scan_dir(path: str, patterns: tuple[str, ...], st: os.stat_result) -> _Dir:
    subdirs: list[str] = []
    hits: list[tuple[str, str]] = []
    names: dict[str, bool] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_link = entry.is_symlink()
            except OSError:
                continue
            names[fold_name(name)] = is_dir
            if is_git_name(name):  # `.GIT` is `.git` on a case-insensitive directory
                hits.append((name, "symlink" if is_link else "dir" if is_dir else "file"))
                continue
            if patterns and any(lazyre.fnmatchcase(fold_name(name), p) for p in patterns):  # folded: .ENV too
                hits.append((name, "symlink" if is_link else "dir" if is_dir else "file"))
            if is_dir:
                subdirs.append(name)
    bare = names.get("head") is False and names.get("objects") is True and names.get("refs") is True
    return _Dir(st.st_ctime_ns, st.st_ino, [] if bare else subdirs, hits, bare)


def _gitdirs_within(gitdir: str) -> list[str]:
    """gitdir itself, and the submodule and worktree repositories beneath it."""
    found = [gitdir]
    worktrees = os.path.join(gitdir, "worktrees")
    with contextlib.suppress(OSError), os.scandir(worktrees) as entries:
        found += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    stack = [os.path.join(gitdir, "modules")]
    while stack:  # submodule names may hold slashes: a repository is where HEAD is
        current = stack.pop()
        with contextlib.suppress(OSError), os.scandir(current) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if os.path.isfile(os.path.join(entry.path, "HEAD")):
                    found += _gitdirs_within(entry.path)
                else:
                    stack.append(entry.path)
    return found


def _gitfile_target(path: str) -> str | None:
    """Where a `gitdir: …` file points (relative to its own directory)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(4096).decode(errors="replace")
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    target = text[len("gitdir:"):].strip()
    return os.path.realpath(os.path.join(os.path.dirname(path), target)) if target else None


def _cache_file(cache_dir: str | PathLike[str], root: str, patterns: tuple[str, ...]) -> str:
    key = sha256(f"{CACHE_VERSION}\0{root}\0{chr(0).join(patterns)}".encode()).hexdigest()[:24]
    return join(cache_dir, f"tree-{key}.marshal")


def _load(path: str) -> dict[str, tuple]:
    try:
        st = os.lstat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return {}
        cachedir.mark_used(path, st.st_mtime)
        with open(path, "rb") as handle:
            return marshal.loads(handle.read())  # plain tuples in _Dir's field order
    except (OSError, ValueError, EOFError, TypeError):
        return {}


def _save(path: str, dirs: dict[str, tuple]) -> None:
    directory, name = parent(path), path.rpartition("/")[2]
    with contextlib.suppress(OSError):
        make_dirs(directory, 0o700)
        tmp = join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(marshal.dumps(dirs))
        os.replace(tmp, path)
        cachedir.prune_daily(directory)


def scan(root: str, patterns: tuple[str, ...] = (), cache_dir: str | PathLike[str] | None = None,
         deep: bool = True) -> TreeIndex:
    """Walk root (never following symlinks), reusing the cached records of unchanged directories.
    Not deep: only root's own entries (a writable grant other than the workspace)."""
    patterns = tuple(sorted({fold_name(p) for p in patterns}))  # names are matched folded (.ENV is .env)
    cache_path = _cache_file(cache_dir, root, patterns) if cache_dir and deep else None
    cached = _load(cache_path) if cache_path else {}
    fresh: dict[str, tuple] = {}
    repositories: list[str] = []
    gitdirs: list[str] = []
    matches: list[str] = []
    complete = True
    changed = False
    lstat = os.lstat
    stack = [""]
    while stack:
        relative = stack.pop()
        path = f"{root}/{relative}" if relative else root
        try:
            st = lstat(path)
        except OSError:
            changed = True
            continue
        record = cached.get(relative)
        if record is None or record[0] != st.st_ctime_ns or record[1] != st.st_ino:
            if not stat.S_ISDIR(st.st_mode):
                changed = True
                continue
            try:
                record = tuple(_scan_dir(path, patterns, st))
            except OSError:
                continue  # unreadable: the sandbox cannot list it either
            changed = True
        fresh[relative] = record
        if len(fresh) > MAX_DIRS:
            complete = False
            break
        _ctime, _ino, subdirs, hits, bare = record
        if bare:
            repositories.append(path)
            gitdirs += _gitdirs_within(path)
        for name, kind in hits:
            entry = f"{path}/{name}"
            if is_git_name(name):
                repositories.append(entry)
                target = entry if kind == "dir" else (
                    os.path.realpath(entry) if kind == "symlink" else _gitfile_target(entry))
                if target and os.path.isdir(target):
                    gitdirs += _gitdirs_within(target)
            else:
                matches.append(entry)
        if subdirs and deep:
            prefix = f"{relative}/" if relative else ""
            stack += [prefix + name for name in subdirs]
    if cache_path and (changed or len(fresh) != len(cached)):
        _save(cache_path, fresh)
    return TreeIndex(root, tuple(sorted(repositories)), tuple(sorted(set(gitdirs))), tuple(sorted(matches)),
                     len(fresh), complete)


def glob_matches(root: str, listdir: Callable[[str], list[str]]) -> list[str]:
    """The entries beneath root that a names.ROOT_GLOBS entry holds, as spelt on disk (the root's own
    entries, and those of the directories a glob names: `mise/`, `.config/`). For recording them
    at launch, and where nothing mediated the run (gVisor) for finding new ones at its end."""
    dirs = {fold_name(glob.split("/", 1)[0]) for glob in names.ROOT_GLOBS if "/" in glob}
    out = []
    for name in listdir(root):
        if names.root_glob_reason((name,)):
            out.append(f"{root}/{name}")
        elif fold_name(name) in dirs:
            out += [f"{root}/{name}/{sub}" for sub in listdir(f"{root}/{name}") if names.root_glob_reason((name, sub))]
    return out


def listdir(path: str) -> list[str]:
    """A directory's names; none for what is not one (or cannot be read), never following a
    symlink at path itself."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return os.listdir(fd)
    except OSError:
        return []
    finally:
        os.close(fd)
