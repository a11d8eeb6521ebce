"""Landlock's access rights as numbers: what the shim needs to build a ruleset without enum.

The shim runs in a fresh interpreter on every run, where importing landlockpy's flags (IntFlag
classes, typing, re) costs more than the rest of its work; the supervisor cannot import them
cheaply either (landlockpy's package also imports its test helpers). The values are the kernel's
UAPI (include/uapi/linux/landlock.h) and never change; a unit test holds them equal to
landlockpy.flags. The shim still makes every Landlock call through landlockpy._syscall.
"""

from __future__ import annotations

# name -> (bit, the first ABI that has it)
FS = {
    "EXECUTE": (1 << 0, 1), "WRITE_FILE": (1 << 1, 1), "READ_FILE": (1 << 2, 1), "READ_DIR": (1 << 3, 1),
    "REMOVE_DIR": (1 << 4, 1), "REMOVE_FILE": (1 << 5, 1), "MAKE_CHAR": (1 << 6, 1), "MAKE_DIR": (1 << 7, 1),
    "MAKE_REG": (1 << 8, 1), "MAKE_SOCK": (1 << 9, 1), "MAKE_FIFO": (1 << 10, 1), "MAKE_BLOCK": (1 << 11, 1),
    "MAKE_SYM": (1 << 12, 1), "REFER": (1 << 13, 2), "TRUNCATE": (1 << 14, 3), "IOCTL_DEV": (1 << 15, 5),
    "RESOLVE_UNIX": (1 << 16, 9),
}
NET = {"BIND_TCP": (1 << 0, 4), "CONNECT_TCP": (1 << 1, 4), "BIND_UDP": (1 << 2, 10),
       "CONNECT_SEND_UDP": (1 << 3, 10)}
SCOPE = {"ABSTRACT_UNIX_SOCKET": (1 << 0, 6), "SIGNAL": (1 << 1, 6)}
RESTRICT_NO_NEW_PRIVS = (1 << 4, 11)  # landlock_restrict_self sets no_new_privs itself (ABI 11)

# the plan's groups of rights (plan.model.LandlockPathRule.access)
GROUPS = {
    "read": ("READ_FILE", "READ_DIR"),
    # no RESOLVE_UNIX: a grant never lets the command connect to the host's sockets in it
    "write": ("WRITE_FILE", "REMOVE_DIR", "REMOVE_FILE", "MAKE_DIR", "MAKE_REG", "MAKE_SOCK",
              "MAKE_FIFO", "MAKE_SYM", "REFER", "TRUNCATE"),
    "unix": ("RESOLVE_UNIX",),  # network.unix (ABI 9; below it the supervisor answers each connect)
    "write_file": ("WRITE_FILE", "TRUNCATE"),
    "execute": ("EXECUTE",),
    "ioctl_dev": ("IOCTL_DEV",),
}
FILE_ONLY = ("EXECUTE", "WRITE_FILE", "READ_FILE", "TRUNCATE", "IOCTL_DEV", "RESOLVE_UNIX")  # a rule on a file


def mask(table: dict[str, tuple[int, int]], names) -> int:
    value = 0
    for name in names:
        value |= table[name][0]
    return value


def for_abi(table: dict[str, tuple[int, int]], abi: int) -> int:
    """Every right of the table the given ABI knows (landlockpy's fs_for_abi and friends)."""
    return mask(table, [name for name, (_bit, first) in table.items() if abi >= first])


def names(table: dict[str, tuple[int, int]], value: int) -> list[str]:
    return sorted(name for name, (bit, _first) in table.items() if value & bit)


def shim_config(landlock) -> dict:
    """plan.LandlockPlan -> what the shim computes the ruleset from, for whatever ABI it finds:
    (bit, first ABI) pairs, and each path's rights as one mask (the shim keeps what its ABI handles)."""
    return {
        "required": landlock.required,
        "minimum_abi": landlock.minimum_abi,
        "fs": list(FS.values()),
        "restrict_tcp_bind": landlock.restrict_tcp_bind, "restrict_tcp_connect": landlock.restrict_tcp_connect,
        "bind": list(NET["BIND_TCP"]), "connect": list(NET["CONNECT_TCP"]),
        "scopes": [SCOPE[name.upper()] for name in landlock.scopes],
        "no_new_privs": list(RESTRICT_NO_NEW_PRIVS),
        "file_only": mask(FS, FILE_ONLY),
        "paths": [[rule.path, mask(FS, [n for group in rule.access for n in GROUPS[group]])]
                  for rule in landlock.paths],
        "connect_tcp_ports": list(landlock.connect_tcp_ports),
        "bind_tcp_ports": list(landlock.bind_tcp_ports),
    }


def report(shim_report: dict) -> dict:
    """The shim's numbers as run.start's `layers.landlock` names them."""
    out = {key: value for key, value in shim_report.items() if key not in ("handled_fs", "handled_net", "scoped")}
    if shim_report.get("enforced"):
        out["fs_rights"] = names(FS, shim_report["handled_fs"])
        out["net_rights"] = names(NET, shim_report["handled_net"])
        out["scopes"] = names(SCOPE, shim_report["scoped"])
    return out
