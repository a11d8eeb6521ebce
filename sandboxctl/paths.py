"""Where sandboxctl keeps its own files, and how policy paths expand.

The state directory holds what the sandbox must never touch (trust store, action log, caches,
remembered approvals); the planner masks it inside every sandbox.

Paths are plain strings here and on the whole run path: pathlib (with the urllib.parse, ipaddress,
fnmatch and ntpath it imports) is ~4 ms of every run's CPU. `pure`, `join`, `parent`, `name`,
`suffix`, `stem`, `expand_user`, `resolve`, `is_dir`, `is_file`, `exists`, `is_symlink` and
`make_dirs` do what pathlib did, to the same string and with the same system calls
(tests/unit/test_paths_pure.py holds them to pathlib's results).
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike

# pathlib's _IGNORED_ERRNOS: ENOENT and ENOTDIR (their own exceptions), EBADF and ELOOP (errno is
# imported only then: the head start imports this module before bubblewrap is spawned)


def pure(path: str | PathLike[str]) -> str:
    """str(PurePosixPath(path)): runs of slashes collapsed (a leading // kept: POSIX lets it mean
    something else), "." components and a trailing slash dropped, ".." kept; "" is "."."""
    path = os.fspath(path)
    rest = path.lstrip("/")
    root = "//" if len(path) - len(rest) == 2 else "/" if rest != path else ""
    return (root + "/".join(part for part in rest.split("/") if part and part != ".")) or "."


def join(path: str | PathLike[str], *names: str) -> str:
    """str(Path(path, *names)), as `Path(path) / name` made it (an absolute name replaces)."""
    return pure(os.path.join(path, *names))


def parent(path: str | PathLike[str]) -> str:
    """str(Path(path).parent): "a" has ".", "/" has "/", "a/b/" has "a"."""
    path = pure(path)
    rest = path.lstrip("/")
    head = path.rpartition("/")[0] if "/" in rest else path[:len(path) - len(rest)]
    return head or "."


def name(path: str | PathLike[str]) -> str:
    """Path(path).name: the last component ("" for "/" and for ".")."""
    last = pure(path).rpartition("/")[2]
    return "" if last == "." else last


def suffix(path: str | PathLike[str]) -> str:
    """Path(path).suffix: from the last dot of the name, if that dot is neither its first nor last character."""
    last = name(path)
    dot = last.rfind(".")
    return last[dot:] if 0 < dot < len(last) - 1 else ""


def stem(path: str | PathLike[str]) -> str:
    """Path(path).stem: the name without its suffix."""
    last = name(path)
    dot = last.rfind(".")
    return last[:dot] if 0 < dot < len(last) - 1 else last


def expand_user(path: str | PathLike[str]) -> str:
    """str(Path(path).expanduser()): a leading ~ or ~user replaced by that home; a home that cannot
    be found is a RuntimeError (os.path.expanduser would leave "~user" as a relative name)."""
    path = pure(path)
    if path[:1] != "~":
        return path
    first, _, rest = path.partition("/")
    home = os.path.expanduser(first)
    if home[:1] == "~":
        raise RuntimeError("Could not determine home directory.")
    return join(home, rest) if rest else pure(home)


def resolve(path: str | PathLike[str]) -> str:
    """str(Path(path).resolve()): os.path.realpath, and as pathlib does, a symlink loop anywhere on
    the way is a RuntimeError rather than a path that names nothing."""
    resolved = os.path.realpath(pure(path))
    try:
        os.stat(resolved)
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise RuntimeError(f"Symlink loop from {exc.filename!r}") from None
    return resolved


def _mode(path: str | PathLike[str], follow: bool = True) -> int | None:
    """Path(path).stat()/lstat()'s st_mode, None where pathlib's is_*() answer False; other errors
    raise. Of the path as pathlib spelt it: "file/" is "file", and "link/" no longer follows the link."""
    try:
        return os.stat(pure(path), follow_symlinks=follow).st_mode
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        import errno

        if exc.errno not in (errno.EBADF, errno.ELOOP):
            raise
    except ValueError:
        pass
    return None


def is_dir(path: str | PathLike[str]) -> bool:
    """Path.is_dir(): unlike os.path.isdir, an error other than "not there" (EACCES) raises."""
    mode = _mode(path)
    return mode is not None and mode & 0o170000 == 0o040000


def is_file(path: str | PathLike[str]) -> bool:
    """Path.is_file(), which raises on EACCES as is_dir() does."""
    mode = _mode(path)
    return mode is not None and mode & 0o170000 == 0o100000


def exists(path: str | PathLike[str]) -> bool:
    """Path.exists()."""
    return _mode(path) is not None


def is_symlink(path: str | PathLike[str]) -> bool:
    """Path.is_symlink()."""
    mode = _mode(path, follow=False)
    return mode is not None and mode & 0o170000 == 0o120000


def make_dirs(path: str | PathLike[str], mode: int = 0o777) -> None:
    """Path(path).mkdir(mode, parents=True, exist_ok=True): the missing parents with the default
    mode, `path` itself with `mode`; an existing directory (or symlink to one) is fine."""
    path = pure(path)
    try:
        os.mkdir(path, mode)
    except FileNotFoundError:
        up = parent(path)
        if up == path:
            raise
        make_dirs(up)
        try:
            os.mkdir(path, mode)
        except OSError:
            if not is_dir(path):
                raise
    except OSError:
        # not EEXIST alone: the system may report EACCES or EROFS first
        if not is_dir(path):
            raise


def home_dir() -> str:
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        return pure(home)
    import pwd

    return pure(pwd.getpwuid(os.getuid()).pw_dir)


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME")
    root = base if base and os.path.isabs(base) else join(home_dir(), ".local", "state")
    return join(root, "sandboxctl")


def runtime_dir() -> str:
    """Approval and session sockets: the user's runtime dir when it is really theirs — private, and
    reached through nothing another user may change (others_control) — else a per-user dir in
    TMPDIR (an absolute one nobody else controls; else /tmp), which ensure_private_dir checks as
    it is made. Spelt resolved: a runtime dir written with "..", or through a symlink, is the
    directory it names."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and others_control(base) is None:
        try:
            st = os.stat(base)
            if st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return join(os.path.realpath(base), "sandboxctl")
        except OSError:
            pass
    temporary = os.environ.get("TMPDIR")
    if not (temporary and os.path.isabs(temporary) and others_control(temporary) is None):
        temporary = "/tmp"  # a relative TMPDIR names the current directory: often the workspace
    return join(temporary, f"sandboxctl-{os.getuid()}")


def others_control(path: str, unmapped_as_root: bool = False) -> str | None:
    """Why a user other than us and root could change what the absolute `path` names, or None.

    Every directory the lookup passes through and every symlink it follows must be ours or
    root's, and a directory others may write must be sticky (/tmp: there only an entry's owner
    may replace it, and the entry passed through is ours or root's); writable by our own private
    group alone counts as ours. Otherwise another user may
    swap a component, or assemble directories of ours (a workspace a sandbox wrote) into the
    path. What does not exist yet is ours to make (ensure_private_dir checks what it makes).

    `unmapped_as_root`: in a user namespace that does not map root (unshare --user, a rootless
    container), the host's root owns / and /home, and they show as the overflow uid; so does any
    other unmapped user, whom nothing here can tell apart. Counted as root then (ensure_private_dir:
    no worse than before it looked at the way at all; a directory others may write is still named)."""
    import stat

    owners = (0, os.getuid(), *((_overflow_uid(),) if unmapped_as_root and _root_unmapped() else ()))
    names = [part for part in path.split("/") if part and part != "."]
    here, links = "/", 0
    try:
        while True:
            st = os.lstat(here)  # a directory reached (real: every symlink on the way was followed)
            if st.st_uid not in owners:
                return f"{here} belongs to another user"
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX and not _own_group_only(st):
                return f"{here} may be written by others"
            if not names:
                return None
            name = names.pop(0)
            if name == "..":
                here = os.path.dirname(here)  # `here` is resolved: its parent is what ".." names
                continue
            entry = os.path.join(here, name)
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in owners:
                    return f"{entry} is another user's symlink"
                links += 1
                if links > 40:
                    return f"{path}: too many symlinks"
                target = os.readlink(entry)
                names = [part for part in target.split("/") if part and part != "."] + names
                if target.startswith("/"):
                    here = "/"
                continue
            if not stat.S_ISDIR(st.st_mode):
                return f"{entry} is not a directory"
            here = entry
    except OSError as exc:
        return f"{here}: {exc.strerror or exc}"


def _overflow_uid() -> int:
    try:
        with open("/proc/sys/kernel/overflowuid") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 65534


def _root_unmapped() -> bool:
    """This user namespace maps no uid 0 (the initial one maps every uid from 0)."""
    try:
        with open("/proc/self/uid_map") as handle:
            return not any(line.split()[:1] == ["0"] for line in handle)
    except OSError:
        return False


def _own_group_only(st: os.stat_result) -> bool:
    """A directory writable by its group alone, that group being our own private one (a user
    private group, as umask 002 leaves ~/.local on many systems): named as we are, no members
    but us, nobody else's primary group. Looked up only then (grp is not otherwise imported)."""
    if st.st_mode & 0o002 or st.st_gid != os.getgid():
        return False
    import grp
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(st.st_gid)
    except KeyError:
        return False
    if group.gr_name != name or not set(group.gr_mem) <= {name}:
        return False
    # gr_mem lists supplementary members only: another user whose primary group it is (useradd -g)
    # writes there as well (red team rt11: such a user renamed entries of a 0775 state dir judged ours)
    return all(entry.pw_name == name for entry in pwd.getpwall() if entry.pw_gid == st.st_gid)


def ensure_private_dir(path: str | PathLike[str]) -> str | PathLike[str]:
    """Create a 0700 directory we own, refusing one another user could tamper with, or reach
    through a directory they may change (others_control, as for the runtime dir; the state dir has
    no fallback: its trust store, log and approvals must persist). Returns `path`, a str or a Path
    as given."""
    where = pure(path)  # as Path(path) named it: no trailing slash that would make lstat follow a link
    if not os.path.isdir(where):  # nothing is made under a directory others may change
        _refuse_others(where)
    make_dirs(where, 0o700)
    st = os.stat(where)
    # in a directory anyone may write (/tmp), a symlink is someone else's choice of where we go
    planted = is_symlink(where) and os.stat(parent(where)).st_mode & 0o002
    # one others could write may already hold what they put there (a symlink at the name of our
    # next temporary file, a forged record): chmod would close it and keep all of that
    shared = st.st_mode & 0o022
    if st.st_uid != os.getuid() or planted or shared:
        from sandboxctl.errors import SandboxError

        whose = ("is a symlink in a directory anyone may write" if planted
                 else "belongs to another user" if st.st_uid != os.getuid()
                 else "is writable by others (what they left in it stays)")
        raise SandboxError(f"{where} {whose}", "remove it, or set XDG_RUNTIME_DIR / XDG_STATE_HOME to a "
                           "directory of your own")
    # the directory itself is ours; what leads to it must be too: another user who may rename a
    # component (a group-writable ~/.local) could put a trust store or approvals of theirs in its place
    _refuse_others(where)
    if st.st_mode & 0o077:
        os.chmod(where, 0o700)
    return path


def _refuse_others(where: str) -> None:
    why = others_control(os.path.abspath(where), unmapped_as_root=True)
    if why is not None:
        from sandboxctl.errors import SandboxError

        raise SandboxError(f"{where} is reached through a directory another user may change: {why}",
                           "remove the others' write access on the way (chmod g-w,o-w), or set XDG_STATE_HOME / "
                           "XDG_RUNTIME_DIR to a directory only you and root can change")


def open_regular(path: str) -> int | None:
    """A descriptor of path if it is a regular file (links followed, as git does), opened so that
    nothing waits for a writer or a device: stat first (no device is opened), then fstat. For
    files a sandbox may have made into a FIFO or a device: git's refs and index, the host's git
    config and what it includes (protect/history_refs, protect/gitconfig)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the two (another run in the workspace)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def expand(path: str, *, workspace: str, home: str, state: str | None = None) -> str:
    """Expand ~, {home}, {workspace} (and {state} for built-in defaults) into a normalised path."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    path = path.replace("{workspace}", workspace).replace("{home}", home)
    if state is not None:
        path = path.replace("{state}", state)
    return os.path.normpath(path) if path.startswith("/") else path


def within(path: str, root: str) -> bool:
    """path is root or lies beneath it, compared by components (/a/bc is not within /a/b): the
    one test of containment the planner, the protections, the mediator and the exports share."""
    return path == root or path.startswith(root.rstrip("/") + "/")
