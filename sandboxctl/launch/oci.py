"""Render a Plan as an OCI bundle for gVisor's runsc. Pure: the same plan and paths give the same config.

The gvisor backend runs the very plan the bubblewrap backend runs: the same mounts in the same
order (read-only and writable binds, fresh tmpfs, masks over denied paths, read-only binds over
protected paths), the same working directory, limits and environment. What differs is
who enforces it: gVisor's own kernel (the sentry) serves every system call of the command, and
its file proxy (the gofer) is the only thing that touches the host's files.

The environment is not in config.json: like the bubblewrap backend's shim, the in-sandbox
launcher gets argv, environment and the seccomp program from a private file (`launch`), so no
variable shows up in the bundle that `--dry-run` prints. That file is the launcher itself when
it can be native (gvisor_exec.py: x86-64, no proxy forwarder to start), else the configuration
gvisor_init.py reads (python3 inside gVisor).
"""

from __future__ import annotations

import marshal
import os
from typing import Any, NamedTuple

from sandboxctl.launch import gvisor_exec
from sandboxctl.plan.build import GVISOR_INIT, PROXY_PORT, SECRETS_DIR, SHIM_DIR
from sandboxctl.plan.model import Mount, Plan

LAUNCH_FILE = f"{SHIM_DIR}/launch"
PROXY_DIR = f"{SHIM_DIR}/proxy"
PROXY_SOCKET_NAME = "proxy.sock"
ALIVE_SOCKET_NAME = "alive.sock"  # the forwarder's heartbeat connection to the supervisor
# what the launcher needs to start the forwarder as another user; it drops them before the command
LAUNCHER_CAPABILITIES = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
BIND_RO = ("rbind", "ro", "nosuid", "nodev")
BIND_RW = ("rbind", "rw", "nosuid", "nodev")
BIND_DATA = (*BIND_RO, "noexec")  # masks, secrets and the launcher's own files: read, never run


class BundlePaths(NamedTuple):
    """Host paths in one run's private directory that the bundle refers to."""

    bundle: str  # holds config.json
    rootfs: str  # an empty directory: the container's read-only root
    empty_file: str  # bound read-only over denied files
    empty_dir: str  # bound read-only over denied directories
    launch: str  # the launcher's configuration (argv, environment, seccomp program)
    state: str  # runsc --root: the container's state files
    log: str  # runsc --log: its own errors, read to explain a failed start
    secrets: str | None = None  # the file secrets, bound read-only at /run/secrets
    proxy: str | None = None  # the directory of the supervisor's proxy socket (network: proxy)
    data: str | None = None  # files made at launch (the run's CA bundle), each bound over its target


def dry_paths(plan: Plan, root: str = "{run}") -> BundlePaths:
    """Stand-ins for --dry-run: the real directory is made at launch, in the runtime dir."""
    return BundlePaths(bundle=root, rootfs=f"{root}/rootfs", empty_file=f"{root}/empty-file",
                       empty_dir=f"{root}/empty-dir", launch=f"{root}/launch", state=f"{root}/state",
                       log=f"{root}/runsc.log", secrets=f"{root}/secrets" if _file_secrets(plan) else None,
                       proxy=f"{root}/proxy" if plan.network.mode == "proxy" else None,
                       data=f"{root}/data" if any(m.kind == "data-file" for m in plan.mounts) else None)


def data_file_name(target: str) -> str:
    """The name, in the run's data directory, of the file bound over target."""
    return target.strip("/").replace("/", "_")


def _file_secrets(plan: Plan) -> bool:
    return any(s.deliver_as == "file" for s in plan.secrets)


def _bind(target: str, source: str, options: tuple[str, ...]) -> dict[str, Any]:
    return {"destination": target, "type": "bind", "source": source, "options": list(options)}


def _tmpfs(target: str, mode: str = "755") -> dict[str, Any]:
    return {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", f"mode={mode}"]}


def symlink_target(mount: Mount) -> str:
    """The host path a planned symlink points at (the plan keeps the link's own text)."""
    text = mount.source or ""
    return os.path.normpath(text if text.startswith("/") else os.path.join(os.path.dirname(mount.target), text))


def rootfs_symlinks(plan: Plan) -> list[tuple[str, str]]:
    """Symlinks straight under / (merged-/usr /bin -> usr/bin): made in the private root directory,
    exactly as on the host. Deeper ones become read-only binds of what they point at."""
    return [(m.target, m.source or "") for m in plan.mounts
            if m.kind == "symlink" and os.path.dirname(m.target) == "/"]


def mounts(plan: Plan, paths: BundlePaths, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The plan's mount directives as OCI mounts, in the plan's order (parents before children).

    skip: masks left out because runsc cannot mount over them and they need no mask (see
    runsc.unmaskable: the caller can neither read nor enter them, and gVisor reads host files only
    as the caller)."""
    result: list[dict[str, Any]] = []
    for mount in plan.mounts:
        kind, target = mount.kind, mount.target
        if kind in ("mask-file", "mask-dir") and target in skip:
            continue
        source = mount.source or target
        if kind == "proc":
            result.append({"destination": target, "type": "proc", "source": "proc"})
        elif kind == "dev":  # gVisor populates its own /dev (null, zero, random, tty, pts, shm, …)
            result.append(_tmpfs(target))
        elif kind == "tmpfs" and target == SECRETS_DIR and paths.secrets:
            result.append(_bind(target, paths.secrets, BIND_DATA))
        elif kind == "tmpfs":
            result.append(_tmpfs(target))
        elif kind == "ro":
            result.append(_bind(target, source, BIND_RO))
        elif kind == "rw":
            result.append(_bind(target, source, BIND_RW))
        elif kind == "mask-file":
            result.append(_bind(target, paths.empty_file, BIND_DATA))
        elif kind == "mask-dir":
            result.append(_bind(target, paths.empty_dir, BIND_DATA))
        elif kind == "symlink":
            if os.path.dirname(target) != "/":
                result.append(_bind(target, symlink_target(mount), BIND_RO))
        elif kind == "data-file":
            if not paths.data:
                raise ValueError("the plan has data files but the bundle has no data directory")
            result.append(_bind(target, f"{paths.data}/{data_file_name(target)}", BIND_DATA))
        elif kind == "secret-file":
            if not paths.secrets:
                raise ValueError("the plan has file secrets but the bundle has no secrets directory")
            # the file itself is in the secrets directory bound at /run/secrets
        else:
            raise ValueError(f"unknown mount kind {kind!r}")
    result.append(_bind(LAUNCH_FILE, paths.launch, BIND_RO if native_launcher(plan) else BIND_DATA))
    if plan.network.mode == "proxy" and paths.proxy:
        result.append(_bind(PROXY_DIR, paths.proxy, BIND_DATA))
    return result


def rlimits(plan: Plan) -> list[dict[str, Any]]:
    """The plan's limits as OCI rlimits; gVisor's kernel enforces them (measured: NOFILE, FSIZE,
    AS, and NPROC even for uid 0)."""
    lim = plan.limits
    wanted = [("RLIMIT_NOFILE", lim.open_files), ("RLIMIT_FSIZE", lim.file_size),
              ("RLIMIT_NPROC", lim.pids if lim.pids_method == "rlimit" else None),
              ("RLIMIT_AS", lim.memory if lim.memory_method == "rlimit-as" else None)]
    return [{"type": name, "hard": int(value), "soft": int(value)} for name, value in wanted if value]


def config(plan: Plan, paths: BundlePaths, skip: frozenset[str] = frozenset(), terminal: bool = False
           ) -> dict[str, Any]:
    """config.json for runsc. The command runs as uid 0 *inside* gVisor, which rootless runsc maps
    to the calling user (so files it writes are the caller's), with no capabilities at all. Under
    network: proxy the launcher starts with LAUNCHER_CAPABILITIES, to run the proxy's forwarder as
    another user, and drops them all before the command (gvisor_init.py checks none is left).

    terminal: stdin, stdout and stderr are one terminal. Without it gVisor treats a terminal as a
    plain file (no size, no raw mode); with it, runsc gives the command that terminal for all
    three (so it is only right when all three are it)."""
    forwarder = plan.network.mode == "proxy"
    caps: dict[str, list[str]] = {k: list(LAUNCHER_CAPABILITIES) if forwarder and k in ("bounding", "effective",
                                                                                       "permitted") else []
                                  for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": [LAUNCH_FILE] if native_launcher(plan) else [plan.shim_python, "-I", "-S", "-B", GVISOR_INIT,
                                                                  LAUNCH_FILE],
            "env": [],
            "cwd": plan.cwd,
            "capabilities": caps,
            "rlimits": rlimits(plan),
            "noNewPrivileges": True,
        },
        "root": {"path": paths.rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts(plan, paths, skip),
        "linux": {"namespaces": [{"type": name} for name in NAMESPACES]},
    }


def container_id(plan: Plan) -> str:
    return f"sandboxctl-{plan.run_id}"


def runsc_argv(plan: Plan, paths: BundlePaths, *, runsc: str = "runsc", platform: str = "ptrace") -> list[str]:
    """`runsc run` for this bundle: rootless (works as root and as any user), no network device
    but loopback, no cgroups of its own, state and log in the run's private directory. Host UNIX
    sockets are reachable only under network: proxy, where the proxy's socket is the way out."""
    argv = [runsc, "--rootless", "--ignore-cgroups", "--network=none", f"--platform={platform}",
            f"--root={paths.state}", f"--log={paths.log}"]
    if plan.network.mode == "proxy":
        argv.append("--host-uds=open")
    return [*argv, "run", "--bundle", paths.bundle, container_id(plan)]


def native_launcher(plan: Plan) -> bool:
    """The plan chose gvisor_exec's static program to start the command, not python3 running
    gvisor_init.py (plan.build.gvisor_native_launcher: x86-64, no proxy forwarder to start nor
    capabilities to drop), so it binds no gvisor_init.py. Saves the interpreter's start inside
    gVisor (~80 ms on platform ptrace)."""
    return plan.network.mode != "proxy" and not any(m.target == GVISOR_INIT for m in plan.mounts)


def launch_file(plan: Plan, launch: dict[str, Any]) -> bytes:
    """The content of LAUNCH_FILE: the native launcher for this run, or gvisor_init.py's configuration."""
    if native_launcher(plan):  # no seccomp program is an error there (fail closed), never a run without it
        return gvisor_exec.build(launch["seccomp"] or b"", launch["argv"], launch["env"], launch.get("hints"))
    return marshal.dumps(launch)


def launch_config(plan: Plan, seccomp_program: bytes | None, env: dict[str, str], default_signals: list[int],
                  seccomp_nr: int, hints: dict[str, str] | None = None) -> dict[str, Any]:
    """What gvisor_init.py reads from LAUNCH_FILE (marshal): it runs with python -I -S, stdlib only.
    `hints`: the hint lines of the launcher's errors, by gvisor_init.HINTS key."""
    return {
        "hints": dict(hints or {}),
        "argv": list(plan.command),
        "env": env,
        "seccomp": seccomp_program,
        "seccomp_nr": seccomp_nr,
        "default_signals": default_signals,
        "proxy": {"port": PROXY_PORT, "socket": f"{PROXY_DIR}/{PROXY_SOCKET_NAME}",
                  "alive": f"{PROXY_DIR}/{ALIVE_SOCKET_NAME}"}
        if plan.network.mode == "proxy" else None,
        "drop_capabilities": plan.network.mode == "proxy",
    }
