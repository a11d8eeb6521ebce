"""The network walls besides the proxy, as plan data: servers inside (`network.listen`), UNIX
sockets (`network.unix`) and the socket calls the supervisor answers. Pure: no I/O.

Who enforces what (README, "Network walls"):
- the network namespace: under none/proxy the sandbox has only a loopback of its own, so a
  connection anywhere else has no route; servers inside bind and accept there by default;
- Landlock's TCP rules (ABI 4): which ports may be bound (all of them on the private loopback,
  only the listed ones under `host`) and, when `listen` is narrowed, which may be dialled;
- seccomp user notification: every connect() reaches the supervisor, which answers it itself
  (network/sockets.py): a pathname UNIX socket only when listed or bound inside the sandbox, a
  direct connection denied and logged with its destination.
"""

from __future__ import annotations

from sandboxctl.errors import SandboxError
from sandboxctl.paths import within
from sandboxctl.plan.inputs import HostFacts
from sandboxctl.plan.model import Mount, SeccompCondition, SeccompRule
from sandboxctl.record import Record

AF_UNIX = 1
SOCK_DGRAM, SOCK_RAW = 2, 3  # AF_UNIX turns SOCK_RAW into SOCK_DGRAM
SOCK_TYPE_MASK = 0xF
LOW32 = 0xFFFFFFFF


class TcpRules(Record):
    """What Landlock's TCP rules (ABI 4) are asked to do."""

    restrict_bind: bool
    bind_ports: tuple[int, ...]
    restrict_connect: bool
    connect_ports: tuple[int, ...]
    notes: tuple[str, ...] = ()


def tcp_rules(mode: str, listen: bool | tuple[int, ...], proxy_port: int) -> TcpRules:
    """Under none/proxy the namespace is the wall, so `listen: true` leaves TCP to it: any port may
    be bound and dialled on the private loopback. `false` or a list narrows both (the proxy's port
    stays dialable). Under host the host's interfaces are shared: only listed ports bind, and
    connecting is whatever host mode allows."""
    ports = () if isinstance(listen, bool) else tuple(listen)
    if mode == "host":
        notes = ("network.listen: true opens no port under network: host (servers there would listen on "
                 "the host's own interfaces); list the ports, e.g. listen: [8000]",) if listen is True else ()
        return TcpRules(True, ports, False, (), notes)
    if listen is True:
        return TcpRules(False, (), False, ())
    dialable = tuple(sorted({*ports, *((proxy_port,) if mode == "proxy" else ())}))
    return TcpRules(True, ports, True, dialable)


def names_host_loopback(hosts: list[str]) -> bool:
    """Does network.allow name the *host's* loopback (reached through the proxy, allow_private)?
    Then 127.0.0.1 inside goes to the proxy, as before servers inside existed."""
    from sandboxctl.units import may_be_address

    for host in hosts:
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return True
        if not may_be_address(name):
            continue
        import ipaddress  # only for a literal (~1 ms of import)

        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            continue
        if address.is_loopback or (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
                                   and address.ipv4_mapped.is_loopback):
            return True
    return False


def describe_listen(mode: str, listen: bool | tuple[int, ...]) -> str:
    """One line for --dry-run and run.start: which servers the command may run."""
    if isinstance(listen, tuple):
        where = "the host's interfaces" if mode == "host" else "the sandbox's own loopback"
        return f"only TCP ports {', '.join(map(str, listen)) or '(none)'}, on {where}"
    if listen and mode != "host":
        return "any TCP port on the sandbox's own loopback"
    return "no TCP port may be bound"


def trap_rules(mode: str) -> tuple[SeccompRule, ...]:
    """The socket calls the supervisor answers (bubblewrap backend), each with its why.

    BPF sees a sockaddr's length and the descriptor, never the address, so every connect() is
    trapped; sendto() only when it carries an address (a connected socket's sends never leave the
    kernel). sendmsg() keeps its address in memory BPF cannot read: it is not trapped (a datagram
    sent that way to a remote address still has no route under none/proxy, but is not logged).
    """
    rules = [SeccompRule("connect", "notify",
                         "answered by the supervisor: a pathname UNIX socket only when listed in network.unix or "
                         "bound inside; a direct connection is denied and logged with its destination")]
    if mode != "host":
        rules.append(SeccompRule("sendto", "notify",
                                 "a datagram with an address: one to anywhere but the sandbox's own loopback is "
                                 "denied and logged", (SeccompCondition(5, "ne", 0),)))
    why = ("an AF_UNIX datagram socket can send to any socket path (sendmsg, which seccomp cannot read): "
           "allowed only where Landlock checks socket paths (ABI 9)")
    for name in ("socket", "socketpair"):
        rules += [SeccompRule(name, "notify", why, (SeccompCondition(0, "masked_eq", AF_UNIX, LOW32),
                                                    SeccompCondition(1, "masked_eq", kind, SOCK_TYPE_MASK)))
                  for kind in (SOCK_DGRAM, SOCK_RAW)]
    return tuple(rules)


def unix_sockets(listed: list[str], denied: list[str], mounts: list[Mount], facts: HostFacts
                 ) -> tuple[list[Mount], list[str], list[str]]:
    """network.unix (expanded) -> (mounts to add, the paths the sandbox will see, notes).

    A listed socket no grant shows is bound read-only by itself (connecting needs no write access
    to the mount); a listed directory must be shown by a grant, since binding it here would widen
    the file-system grants behind the policy's back. Deny wins over a listing."""
    added: list[Mount] = []
    paths: list[str] = []
    notes: list[str] = []
    for path in listed:
        under_deny = [d for d in denied if within(path, d)]
        if under_deny:
            notes.append(f"network.unix {path}: not reachable, it lies under denied {under_deny[0]}")
            continue
        kind = facts.kind(path)
        if kind == "symlink":
            path = facts.realpath(path)
            kind = facts.kind(path)
        if kind == "missing":
            notes.append(f"network.unix {path}: absent on this host, skipped (listed sockets are found once, "
                         "at launch)")
            continue
        if kind == "file":
            raise SandboxError(f"network.unix: {path} is a regular file, not a socket",
                               "list the socket itself, or the directory that holds it")
        holder = None
        for mount in (*mounts, *added):
            if mount.kind != "symlink" and within(path, mount.target) and (
                    holder is None or len(mount.target) >= len(holder.target)):
                holder = mount
        shown = (holder is not None and holder.kind in ("ro", "rw") and holder.source is not None
                 and not holder.source.startswith("placeholder:"))
        if not shown and kind == "dir":
            raise SandboxError(f"network.unix: the directory {path} is not visible inside the sandbox",
                               f"grant it (filesystem.read: [{path}]) or list the socket itself")
        if not shown:
            added.append(Mount("ro", path, path, "network.unix"))
        paths.append(path)
    return added, paths, notes
