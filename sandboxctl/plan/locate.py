"""Where a command lives on the host, and which read grant would show it inside a sandbox.

Agents are often installed outside the system directories every policy shows: an npm prefix
(`npm install -g --prefix /opt/x`), a virtual environment anywhere, pyenv, nvm. Inside the sandbox
they are then simply absent ("command not found"); this module finds them on the caller's PATH and
names the directory to grant: the install's root (the venv, the npm prefix, the pyenv or nvm
version), so its libraries and its interpreter come along. It reads the host's file system, like
facts.py, and nothing else; `run` uses it for the hint of a 127, `shell-init` for its functions.
"""

from __future__ import annotations

import os
import shutil

from sandboxctl.record import Record


class Location(Record):
    command: str  # the path PATH found (may be a symlink)
    real: str  # what it resolves to
    roots: tuple[str, ...]  # directories a read grant needs, the command's own first, its interpreter's next


def install_root(real: str) -> str:
    """The directory an installed program needs whole: its venv, npm prefix, pyenv or nvm version."""
    parts = real.split("/")
    if "node_modules" in parts:  # <prefix>/lib/node_modules/<package>/...: the npm prefix
        index = parts.index("node_modules")
        end = index - 1 if index >= 2 and parts[index - 1] == "lib" else index
        return "/".join(parts[:end]) or "/"
    for anchor in ((".pyenv", "versions"), (".nvm", "versions", "node")):  # ~/.pyenv/versions/3.12.1/...
        for i in range(len(parts) - len(anchor)):
            if tuple(parts[i: i + len(anchor)]) == anchor and len(parts) > i + len(anchor):
                return "/".join(parts[: i + len(anchor) + 1])
    directory = os.path.dirname(real)
    probe = directory
    while probe not in ("/", ""):  # a virtual environment: the directory holding pyvenv.cfg
        if os.path.isfile(os.path.join(probe, "pyvenv.cfg")):
            return probe
        probe = os.path.dirname(probe)
    if os.path.basename(directory) == "bin":  # <prefix>/bin/tool: the prefix holds its lib/ and share/
        return os.path.dirname(directory)
    return directory


def _interpreter(real: str, path_env: str) -> str | None:
    """A script's interpreter from its #! line (`/usr/bin/env node` looks node up on PATH)."""
    try:
        with open(real, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return shutil.which(rest[0], path=path_env) if rest else None
    return words[0]


def locate(name: str, path_env: str, cwd: str) -> Location | None:
    """Where `name` is on the host (as the caller's PATH finds it), or None."""
    if "/" in name:
        found = os.path.join(cwd, name) if not os.path.isabs(name) else name
        if not os.path.isfile(found):
            return None
    else:
        found = shutil.which(name, path=path_env)
        if found is None:
            return None
    found = os.path.abspath(found)
    real = os.path.realpath(found)
    roots = [install_root(real)]
    if os.path.dirname(found) != os.path.dirname(real):
        roots.append(os.path.dirname(found))  # the link on PATH lives elsewhere (~/.local/bin/x -> …)
    interpreter = _interpreter(real, path_env)
    if interpreter and os.path.exists(interpreter):
        roots.append(install_root(os.path.realpath(interpreter)))
    unique = list(dict.fromkeys(roots))
    inside = [r for r in unique if any(r != o and r.startswith(o.rstrip("/") + "/") for o in unique)]
    return Location(found, real, tuple(r for r in unique if r not in inside))  # a root inside another: once


TOO_BROAD = ("/", "/home", "/root", "/tmp", "/var", "/opt", "/usr/local")


def grantable(root: str, home: str) -> bool:
    """A directory a hint or shell-init may propose: never the root, a home or what holds it."""
    root = os.path.normpath(root)
    return root not in TOO_BROAD and not (home == root or home.startswith(root.rstrip("/") + "/"))


def shown(mounts, path: str) -> bool:
    """Does the sandbox show this host path (the deepest mount holding it binds the host)?"""
    holder = None
    for mount in mounts:
        holds = path == mount.target or path.startswith(mount.target.rstrip("/") + "/")
        if mount.kind != "symlink" and holds and (holder is None or len(mount.target) >= len(holder.target)):
            holder = mount
    return holder is not None and holder.kind in ("ro", "rw") and (holder.source or holder.target).startswith("/")


def exec_restricted(plan) -> bool:
    """Whether the plan limits execution (exec.allow): some Landlock path rule lacks `execute`."""
    return any("execute" not in rule.access and "read" in rule.access and rule.path not in ("/proc", "/dev")
               for rule in plan.landlock.paths)


def session_exec_hint(code: int) -> str:
    """The hint after a session command that could not start, where the session's plan is not at
    hand (`sandboxctl exec`): what each code means, not a guess at exec.allow for both."""
    if code == 126:
        return "the file is not executable (chmod +x), or the policy's exec.allow does not list it"
    if code != 127:
        return "the session's records say more: sandboxctl log"
    return ("check the name: the command must be on the sandbox's PATH, in a directory the session's policy shows "
            "(start the session with --allow-read DIR to show one)")


def hint_for_exec_error(plan, code: int, name: str, path_env: str) -> str:
    """The hint after `command not found` (127) or `cannot execute` (126): where the command lives
    on the host and which grant would show it, instead of guessing at exec.allow."""
    if code == 126:
        if exec_restricted(plan):
            return "the policy's exec.allow does not list it (or the file is not executable)"
        return "the file is not executable (chmod +x), or its interpreter is not"
    from sandboxctl.inert import inert

    location = locate(name, path_env, plan.cwd)
    if location is None:
        return f"'{inert(name)}' is not on your PATH outside the sandbox either: check the name"
    where = inert(location.command) + (f" (-> {inert(location.real)})" if location.real != location.command else "")
    hidden = [root for root in location.roots if not shown(plan.mounts, os.path.realpath(root))]
    if hidden:
        grants = [root for root in hidden if grantable(root, plan.home)]
        if not grants:
            return f"on the host it is {where}, which this sandbox does not show; grant its directory read-only"
        return (f"on the host it is {where}, which this sandbox does not show: grant it with "
                + " ".join(f"--allow-read {inert(root)}" for root in grants) + " (or filesystem.read in the policy)")
    inside_path = dict(plan.env).get("PATH", "")
    if "/" not in name and os.path.dirname(location.command) not in inside_path.split(":"):
        return (f"on the host it is {where}; the sandbox shows it, but its directory is not on the sandbox's PATH: "
                f"run it by its full path, or pass PATH (--env PATH)")
    return f"on the host it is {where}, and the sandbox shows it: its interpreter or a library may be missing inside"
