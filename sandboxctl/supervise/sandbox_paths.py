"""Paths as a sandboxed process sees them, resolved from outside in its own root.

openat2(RESOLVE_IN_ROOT) from /proc/PID/root resolves like the kernel does for the caller, in C,
but it refuses magic links (/proc/self/fd/N, /proc/PID/cwd) and cannot follow /proc/self, which
names nobody for a process outside the sandbox's PID namespace. `walk` does the same resolution
in Python, following symlinks itself and mapping /proc/self, /proc/thread-self, the caller's own
namespace pid and its magic links to the host's /proc: it is the slow path, taken only when
openat2 gives up, and it says "unsure" rather than guess.
"""

from __future__ import annotations

import errno
import os
import stat

from sandboxctl import lazyre
from sandboxctl.record import Record
from sandboxctl.supervise import fdops, processes

MAX_LINKS = 40
PROC_MEMORY = lazyre.Pattern(r"^/proc/(self|thread-self|\d+)(/task/(\d+))?/mem$", ("/proc/",))
_MAGIC = ("fd", "cwd", "root", "exe", "map_files")


class Walked(Record):
    state: str  # absent | exists | unsure
    error: int = 0  # absent: ENOENT, ENOTDIR, ENAMETOOLONG or ELOOP; unsure: the errno that stopped it, if any
    text: str = ""  # exists: where it leads, as text in the sandbox's view ("" for a pipe, socket, …)


def openat2_in_root(pid: int, path: str, flags: int, root: int | None = None) -> int:
    """`root`: a descriptor of the sandbox's root held by the caller (every process of a sandbox has
    the same one: chroot, pivot_root and new mount namespaces are refused inside); else the
    caller's /proc/PID/root is opened for this one lookup."""
    if root is not None:
        return fdops.openat2(root, path, flags | os.O_CLOEXEC, 0, fdops.RESOLVE_IN_ROOT)
    own = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return fdops.openat2(own, path, flags | os.O_CLOEXEC, 0, fdops.RESOLVE_IN_ROOT)
    finally:
        os.close(own)


def process_memory_open(pid: int, tgid: int, path: str) -> str | None:
    """Why opening `path` (absolute, not normalised: `..` after a link matters) in the caller
    would open, or might open, a /proc/PID/mem file; None when it certainly would not."""
    if PROC_MEMORY.match(os.path.normpath(path)) and "/.." not in path:
        return "it names /proc/PID/mem"
    try:
        fd = openat2_in_root(pid, path, os.O_PATH)
    except OSError:
        walked = walk(pid, tgid, path)
        if walked.state == "unsure":
            if walked.error == errno.EACCES:  # refused all the same: a mode changed back races the kernel's walk
                return "the supervisor may not search a directory on its way, so it might lead to /proc/PID/mem"
            return "where it leads through /proc could not be established"
        return "it leads to /proc/PID/mem" if PROC_MEMORY.match(walked.text) else None
    try:  # resolved without magic links or /proc/self: what the descriptor names is the target
        return "it leads to /proc/PID/mem" if PROC_MEMORY.match(os.readlink(f"/proc/self/fd/{fd}")) else None
    finally:
        os.close(fd)


def walk(pid: int, tgid: int, path: str) -> Walked:
    """Resolve `path` in the caller's root, component by component (see the module docstring)."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return Walked("unsure")
    stack = [root]
    try:
        try:
            proc_dev = os.stat("proc", dir_fd=root).st_dev
        except OSError:
            proc_dev = None
        parts = _split(path)
        done: list[str] = []  # the components resolved so far, as text
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    done.pop()
                continue
            try:
                st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                return Walked("absent", errno.ENOENT)
            except NotADirectoryError:
                return Walked("absent", errno.ENOTDIR)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:  # a component past NAME_MAX: the kernel's walk fails there too
                    return Walked("absent", errno.ENAMETOOLONG)
                return Walked("unsure", exc.errno or 0)
            if st.st_dev == proc_dev and done == []:  # entering the sandbox's /proc
                text = _in_proc(pid, tgid, parts)
                if text is None:
                    return Walked("unsure")
                # a magic link's target with `..` after it is walked on, never judged as text
                if text.startswith("/") and (not text.startswith("/proc/") or "/.." in text):
                    links += 1
                    if links > MAX_LINKS:
                        return Walked("unsure")
                    while len(stack) > 1:  # a magic link to a file elsewhere: walk on from there
                        os.close(stack.pop())
                    parts, done = _split(text), []
                    continue
                return Walked("exists", text=text)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                try:
                    target = os.readlink(part, dir_fd=stack[-1])
                except OSError:
                    return Walked("unsure")
                if links > MAX_LINKS:  # the kernel counts every link of a walk, magic ones too: ELOOP there
                    return Walked("absent", errno.ELOOP)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    done = []
                parts = _split(target) + parts
                continue
            if not parts:
                return Walked("exists", text="/" + "/".join([*done, part]))
            if not stat.S_ISDIR(st.st_mode):
                return Walked("absent", errno.ENOTDIR)
            try:
                stack.append(os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW,
                                     dir_fd=stack[-1]))
            except OSError:
                return Walked("unsure")
            done.append(part)
        return Walked("exists", text="/" + "/".join(done))
    finally:
        for fd in stack:
            os.close(fd)


def proc_link_text(pid: int, tgid: int, path: str) -> str | None:
    """What a `/proc/...` path of the caller's own leads to by its magic link, as text (a memory
    file's "/memfd:NAME (deleted)" too, which no walk finds); None when it cannot be told."""
    parts = _split(path)
    if parts[:1] != ["proc"] or ".." in parts:
        return None
    return _in_proc(pid, tgid, parts[1:]) or None


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _in_proc(pid: int, tgid: int, parts: list[str]) -> str | None:
    """The rest of a path inside the sandbox's /proc (parts after "proc"), as text; a magic link
    of the caller's own (fd/N, cwd, root, exe) is replaced by where it leads. None: unsure."""
    if not parts:
        return "/proc"
    who, rest = parts[0], parts[1:]
    host = _host_dir(pid, tgid, who)
    if rest[:1] == ["task"] and len(rest) > 1:
        host = f"{host}/task/{_host_tid(tgid, rest[1])}" if host else None
        rest_text, rest = "/".join(rest[:2]), rest[2:]
    else:
        rest_text = ""
    text = "/proc/" + "/".join(p for p in (who, rest_text, *rest) if p)
    # `..` after a magic link applies to its target (/proc/self/root/../proc/self/mem is the caller's
    # mem, which normpath made /proc/self/proc/self/mem: "no process memory"); fd/.. is /proc/PID
    if rest and rest[0] in _MAGIC and not (rest[0] in ("fd", "map_files") and rest[1:2] in ([".."], ["."], [])):
        if host is None:
            return None  # another process's magic link: cannot follow it faithfully
        link = f"{host}/{rest[0]}" + (f"/{rest[1]}" if rest[0] in ("fd", "map_files") and len(rest) > 1 else "")
        depth = 2 if rest[0] in ("fd", "map_files") else 1
        try:
            target = os.readlink(link)
        except OSError:
            return None
        if not target.startswith("/"):
            return ""  # a pipe, a socket, an anonymous inode: no path
        return "/".join([target.rstrip("/"), *rest[depth:]]) if rest[depth:] else target
    return os.path.normpath(text)


def _host_dir(pid: int, tgid: int, who: str) -> str | None:
    if who == "self":
        return f"/proc/{tgid}"
    if who == "thread-self":
        return f"/proc/{tgid}/task/{pid}"
    if who.isdigit() and who == _ns_pid(tgid):
        return f"/proc/{tgid}"
    return None


def _host_tid(tgid: int, tid: str) -> str:
    for task in os.listdir(f"/proc/{tgid}/task"):
        if _ns_pid(int(task)) == tid:
            return task
    return "?"


def _ns_pid(pid: int) -> str | None:
    """The caller's pid inside the sandbox (the last NSpid field)."""
    return processes.status_fields(pid, "NSpid").get("NSpid")
