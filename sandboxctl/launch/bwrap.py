"""Render a Plan as a bubblewrap command line. Pure: the same plan and fds give the same argv.

The environment is not on this command line (--clearenv only): values travel to the shim over
its control socket, so no variable — and no secret — shows up in `ps`.
"""

from __future__ import annotations

from sandboxctl.plan.model import Mount, Plan
from sandboxctl.record import Record


class LaunchFds(Record):
    seccomp: int
    control: int
    stderr: int
    empty_file: str  # host path of an empty read-only file used to mask denied files
    secrets: dict[str, int] | None = None  # secret name -> memfd with its value (for --file)
    data: dict[str, int] | None = None  # data-file target -> memfd with its content (--ro-bind-data)


def mount_args(mount: Mount, empty_file: str, secret_fds: dict[str, int] | None = None,
               data_fds: dict[str, int] | None = None) -> list[str]:
    kind, target = mount.kind, mount.target
    if kind == "data-file":
        fd = (data_fds or {}).get(target)
        return ["--perms", "0444", "--ro-bind-data", "{fd:" + (mount.source or "") + "}" if fd is None else str(fd),
                target]
    if kind == "secret-file":
        name = (mount.source or "").removeprefix("secret:")
        fd = (secret_fds or {}).get(name)
        return ["--perms", "0400", "--file", "{fd:" + name + "}" if fd is None else str(fd), target]
    if kind == "proc":
        return ["--proc", target]
    if kind == "dev":
        return ["--dev", target]
    if kind == "tmpfs":
        return ["--tmpfs", target]
    source = mount.source or target
    if kind == "ro":
        return ["--ro-bind", source, target]
    if kind == "rw":
        return ["--bind", source, target]
    if kind == "symlink":
        return ["--symlink", mount.source or "", target]
    if kind == "mask-dir":
        return ["--perms", "0555", "--tmpfs", target, "--remount-ro", target]
    if kind == "mask-file":
        return ["--ro-bind", empty_file, target]
    raise ValueError(f"unknown mount kind {kind!r}")


def render(plan: Plan, fds: LaunchFds, bwrap: str = "bwrap") -> list[str]:
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    ]
    if plan.network.mode != "host":
        argv.append("--unshare-net")
    argv += ["--die-with-parent", "--cap-drop", "ALL", "--clearenv", "--hostname", "sandbox"]
    for mount in plan.mounts:
        argv += mount_args(mount, fds.empty_file, fds.secrets, fds.data)
    argv += ["--chdir", plan.cwd, "--seccomp", str(fds.seccomp)]
    argv += ["--", plan.shim_python, "-I", "-S", "-B", plan.shim_entry, str(fds.control), str(fds.stderr)]
    return argv
