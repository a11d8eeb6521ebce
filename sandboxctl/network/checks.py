"""The socket-call checks of one run: built from the plan and from what Landlock really applied,
and described for run.start as they hold (not as planned).

Where Landlock checks UNIX socket paths itself (RESOLVE_UNIX, ABI 9) the handlers only watch
direct connections; below, the listed sockets are found at launch, before the command runs, and
every connect is made by the supervisor (sockets.py).
"""

from __future__ import annotations

import _socket  # socket.py's enums cost ~2 ms of a run's start-up; the C socket does all we need
import contextlib
import os
from collections.abc import Callable

from sandboxctl.plan.model import Plan
from sandboxctl.plan.network import describe_listen

TYPE_CHECKING = False
TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from sandboxctl.network.sockets import SocketCalls
    from sandboxctl.network.unixwall import UnixWall

NETLINK_SOCK_DIAG = 4


class SocketChecks:
    def __init__(self, plan: Plan, listener: int, landlock: dict[str, Any], *, sock_diag_fd: int | None,
                 sandbox_pids: Callable[[], list[int]], root_pid: int, log: Callable[..., None],
                 denied: list[dict[str, Any]]):
        self.abi = landlock.get("abi")
        private = plan.network.mode != "host"
        self.own_diag = None
        self.wall: UnixWall | None = None
        if "RESOLVE_UNIX" not in landlock.get("fs_rights", ()):
            from sandboxctl.network.unixwall import UnixWall

            diag = sock_diag_fd
            if diag is None:  # under host the namespace is the host's: our own netlink socket sees it
                diag = self.own_diag = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC,
                                                      NETLINK_SOCK_DIAG).detach()
            self.wall = UnixWall(plan.network.unix, private_netns=private, diag_fd=diag, sandbox_pids=sandbox_pids)
            self.wall.pin(root_pid)
        ports = landlock.get("tcp_connect_ports")  # set when Landlock handles TCP connect
        self.arguments = {"private_netns": private, "wall": self.wall, "log": log, "denied": denied,
                          "connect_ports": tuple(ports) if ports is not None else None}
        self.listener = listener
        self.calls: SocketCalls | None = None  # made on the first call (ctypes is no start-up cost)

    def routes(self) -> dict[str, Callable[..., bool]]:
        return dict.fromkeys(("connect", "sendto", "socket", "socketpair"), self._route)

    def _route(self, notification: Any, name: str) -> bool:
        if self.calls is None:
            from sandboxctl.network.sockets import SocketCalls

            self.calls = SocketCalls(self.listener, **self.arguments)
        return self.calls.route(notification, name)

    def close(self) -> None:
        if self.calls is not None:
            self.calls.close()
        if self.own_diag is not None:
            with contextlib.suppress(OSError):
                os.close(self.own_diag)


def network_layer(plan: Plan, landlock: dict[str, Any], checks: SocketChecks | None, proxy: str | None
                  ) -> dict[str, Any]:
    """run.start's layers.network under bubblewrap: what holds each wall in this run."""
    listen = describe_listen(plan.network.mode, plan.network.listen)
    if plan.landlock.restrict_tcp_bind and "BIND_TCP" not in (landlock.get("net_rights") or []):
        listen += " (not enforced: Landlock here has no TCP rules)"
    if checks is None:
        unix: dict[str, Any] = {"enforced_by": None, "why": "no seccomp user notification for socket calls"}
    elif checks.wall is None:
        unix = {"enforced_by": f"Landlock RESOLVE_UNIX (ABI {checks.abi})", "listed": list(plan.network.unix)}
    else:
        unix = {"enforced_by": f"the supervisor: it performs every connect (Landlock ABI {checks.abi} has no UNIX "
                               "socket rules)",
                "listed": list(plan.network.unix), "not_found_at_launch": checks.wall.missing or None,
                "datagram_sockets": "refused (their sendmsg could address any socket path)"}
    return {
        "mode": plan.network.mode,
        "proxy": proxy,
        "listen": listen,
        "unix_sockets": unix,
        "direct_connections": ("denied and logged (connect and sendto, seccomp user notification)"
                               if checks is not None and plan.network.mode != "host" else None),
    }
