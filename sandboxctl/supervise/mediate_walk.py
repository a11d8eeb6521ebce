"""A directory path resolved as the caller's own kernel would, where openat2 in our view cannot.

Part of the Mediator's resolution (mediate_resolve.Resolver). openat2(RESOLVE_IN_ROOT) from the
sandbox's root walks as the caller does except where the walk depends on who walks: /proc/self
and /proc/thread-self name the reader, and the supervisor has no pid in the sandbox's /proc (so
they are "missing" for us: ENOENT), and magic links (/proc/PID/cwd, root, fd/N) are refused
(RESOLVE_NO_MAGICLINKS: ELOOP). A symlink met on the way that leads there (ws/l ->
/proc/self/root/usr/share, /dev/fd -> /proc/self/fd) made a write reaching /usr/share look like a
write where nothing exists: answered ENOENT, never logged. `walk` is the slow path taken only then:
component by component from the root, one O_PATH descriptor at a time (never re-resolving a
prefix by name), following symlinks itself, /proc/self and /proc/thread-self taken as the
caller's own pid and thread, and the caller's own magic links read (readlink names the target in
the sandbox's view). It says "certainly not there" (an errno name) only where the caller's lookup
fails so; anything it cannot follow faithfully (another process's magic link, a link to a pipe or
a deleted directory, a directory it may not search) is Unresolved, which the mediator refuses and
logs.
"""

from __future__ import annotations

import errno
import os
import stat

from sandboxctl.supervise import processes
from sandboxctl.supervise.mediate_resolve import Budget, Unresolved

MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS: the 41st symlink of one lookup fails with ELOOP
PROC_ROOT_INO = 1  # procfs' root directory
# components looked up at most (each a system call from Python): 40 links of 4 KiB of `../` each
# would be 80 000, a fifth of a second of the supervisor's time per call, asked again and again
MAX_STEPS = 4096
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def caller_ids(pid: int) -> tuple[str, str] | None:
    """The caller's thread-group id and thread id in the sandbox's PID namespace (the last
    NStgid and NSpid fields of its status), as text: what /proc/self and /proc/thread-self name."""
    ids = processes.status_fields(pid, "NStgid", "NSpid")
    return (ids["NStgid"], ids["NSpid"]) if len(ids) == 2 else None


def walk(root: int, pid: int, path: str, links: int = 0,
         budget: Budget | None = None) -> tuple[int, str] | str | Unresolved:
    """The directory `path` (absolute, in the sandbox's view) as the caller's kernel reaches it:
    (our O_PATH descriptor of it, the path the kernel reads back for it), or the errno name its
    lookup certainly fails with (ENOENT, ENOTDIR, ELOOP), or Unresolved. `links`: symlinks the
    caller's lookup has already followed (a final one the Resolver followed before). `budget`: the
    call's, shared by its walks (MAX_STEPS and MAX_SYMLINKS hold for the call, not each walk)."""
    budget = budget if budget is not None else Budget()
    links = max(links, budget.links)
    ids: tuple[str, str] | None = None
    parts = [p for p in path.split("/") if p and p != "."]
    parts.reverse()  # a stack: the next component last
    done: list[str] = []  # the components walked so far, as text (real directories only)
    cur = root
    proc_dev: int | None = None
    retries = 0
    try:
        while parts:
            part = parts.pop()
            if part == ".":
                continue
            budget.steps += 1
            if budget.steps > MAX_STEPS:
                return Unresolved(f"the path takes more than {MAX_STEPS} lookups to walk")
            if part == "..":
                if done:  # at the root `..` stays there, as it does for the caller
                    up = os.open("..", _DIR, dir_fd=cur)
                    _close(cur, root)
                    cur = up
                    done.pop()
                continue
            try:
                step = os.open(part, _DIR, dir_fd=cur)
            except FileNotFoundError:
                return "ENOENT"
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    return Unresolved(f"the supervisor could not look up {_text(done, part)} in the caller's view "
                                      f"({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                try:
                    st = os.lstat(part, dir_fd=cur)
                except FileNotFoundError:
                    return "ENOENT"
                except OSError as again:
                    return Unresolved(f"the supervisor could not examine {_text(done, part)} "
                                      f"({errno.errorcode.get(again.errno or 0, again.errno)})")
                if stat.S_ISDIR(st.st_mode):  # a directory swapped in since: look again, a few times
                    retries += 1
                    if retries > 8:
                        return Unresolved(f"{_text(done, part)} kept changing while it was resolved")
                    parts.append(part)
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    return "ENOTDIR"
                links += 1
                budget.links = links
                if links > MAX_SYMLINKS:
                    return "ELOOP"
                in_proc = proc_dev is not None and done[:1] == ["proc"]
                if in_proc and len(done) == 1 and part in ("self", "thread-self"):
                    ids = ids or caller_ids(pid)
                    if ids is None:
                        return Unresolved("the caller's pid in the sandbox could not be read")
                    parts.extend(reversed([ids[0]] if part == "self" else [ids[0], "task", ids[1]]))
                    continue
                magic = in_proc and len(done) > 1  # beneath /proc/PID: cwd, root, fd/N, exe, ns/…
                if magic:
                    ids = ids or caller_ids(pid)
                    if ids is None or not _own(done, ids):
                        return Unresolved(f"{_text(done, part)} is another process's link, which the supervisor "
                                          "cannot follow as the caller's kernel would")
                try:
                    target = os.readlink(part, dir_fd=cur)
                except OSError as exc:
                    return Unresolved(f"{_text(done, part)} could not be read "
                                      f"({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                if magic and (not target.startswith("/") or target.endswith(" (deleted)")):
                    return Unresolved(f"{_text(done, part)} leads to {target!r}, which is not a directory path")
                if target.startswith("/"):
                    _close(cur, root)
                    cur, done = root, []
                parts.extend(p for p in reversed(target.split("/")) if p and p != ".")
                continue
            _close(cur, root)
            cur = step
            done.append(part)
            if proc_dev is None and done == ["proc"]:
                st = os.fstat(cur)
                if st.st_ino == PROC_ROOT_INO:
                    proc_dev = st.st_dev
        real = os.readlink(f"/proc/self/fd/{cur}")
        if not real.startswith("/"):
            return Unresolved("the directory reached has no path in the sandbox")
        if cur == root:
            cur = os.open(".", _DIR, dir_fd=root)  # the caller's own descriptor, never the Resolver's root
        found, cur = cur, -1
        return found, real
    except OSError as exc:
        return Unresolved(f"the supervisor could not walk the path ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
    finally:
        _close(cur, root)


def _own(done: list[str], ids: tuple[str, str]) -> bool:
    """Whether /proc/DONE[1]... is the caller's own process (or thread) directory."""
    if done[1] not in ids:
        return False
    return len(done) < 4 or done[2] != "task" or done[3] in ids


def _text(done: list[str], part: str) -> str:
    return "/" + "/".join([*done, part])


def _close(fd: int, root: int) -> None:
    if fd >= 0 and fd != root:
        os.close(fd)
