"""The network proxy's decisions: which destinations a policy allows, and which addresses may be dialled.

Why a separate module: these are the security decisions of `network: proxy`, so they are kept free of
sockets and threads (pure functions of their arguments, apart from `local_addresses`, which reads the
host's interfaces) and are tested address class by address class.

Why addresses are checked at all: an allowlist of names is only as good as what the names resolve to.
A listed name can resolve to 127.0.0.1 (the host's own services), to the cloud metadata endpoint (the
machine's credentials) or to an RFC 1918 address (the user's LAN), and a DNS answer can change between
two look-ups (DNS rebinding). So the supervisor resolves each name once, refuses the addresses that
are not on the public internet unless `allow_private` is set or the address is itself listed in
`network.allow`, and dials exactly an address that passed. IPv6 forms that carry an IPv4 address
(IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) are judged by the IPv4 address they reach.

Names are never resolved before the policy has allowed them: a look-up of a refused name would
already leak data (e.g. `secret-data.attacker.example`) to whoever runs that name's DNS server.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from sandboxctl.units import HostPattern, parse_host_pattern

IPAddress = IPv4Address | IPv6Address

# Checked in order, so the most specific label comes first (the metadata endpoints lie inside
# link-local, CGNAT and unique-local ranges, or, for Azure's 168.63.129.16, in public space).
_V4_CLASSES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), label)
    for net, label in (
        ("169.254.169.254/32", "cloud metadata"),
        ("100.100.100.200/32", "cloud metadata"),
        ("168.63.129.16/32", "cloud metadata"),
        ("0.0.0.0/8", "unspecified"),  # connect() to 0.0.0.0 reaches the host itself on Linux
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared CGNAT (RFC 6598)"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6_CLASSES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), label)
    for net, label in (
        ("fd00:ec2::254/128", "cloud metadata"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique-local"),
        ("ff00::/8", "multicast"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("64:ff9b:1::/48", "local-use NAT64"),
    )
)
# IPv6 ranges whose addresses carry an IPv4 address, and where that address sits.
_MAPPED = IPv6Network("::ffff:0:0/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_TEREDO = IPv6Network("2001::/32")

def non_public_networks(version: int) -> list[IPv4Network | IPv6Network]:
    """What the proxy refuses without allow_private, as collapsed networks of one IP version (the
    Kubernetes export leaves them out of a pod's egress too). IPv6 forms that carry an IPv4 address
    are left out whole: the proxy judges them by that address, a network policy cannot."""
    if version == 4:
        return list(ipaddress.collapse_addresses(net for net, _ in _V4_CLASSES))
    return list(ipaddress.collapse_addresses([*(net for net, _ in _V6_CLASSES), _MAPPED, _TRANSLATED, _COMPATIBLE]))


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LOCAL_TTL_S = 2.0


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal (IPv6 optionally in brackets, zone id dropped) or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(text: str) -> str | None:
    """A destination host as the policy sees it: lower-case name or canonical IP literal; None if invalid.

    Numeric forms that the C resolver would read as IPv4 (`127.1`, `0x7f000001`, `2130706433`) are
    refused, so a name can never be an IP address in disguise.
    """
    if not text or len(text) > 255 or not text.isascii():
        return None
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            return None
        inner = text[1:-1]
        try:
            return str(IPv6Address(inner))
        except ValueError:
            return None
    if ":" in text:
        if "%" in text:
            return None
        try:
            return str(IPv6Address(text))
        except ValueError:
            return None
    try:
        return str(IPv4Address(text))
    except ValueError:
        pass
    name = text.lower()
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    try:
        socket.inet_aton(name)
    except OSError:
        return name
    return None  # e.g. 0x7f.1: a legacy IPv4 spelling


def format_destination(host: str, port: int | None) -> str:
    """host:port as a user would type it after --allow-net ([v6]:port for IPv6)."""
    return str(HostPattern(host, port))


def embedded_ipv4(addr: IPv6Address) -> tuple[IPv4Address, str] | None:
    """The IPv4 address an IPv6 address reaches or carries, and the name of the form; None if none."""
    if addr in _MAPPED:
        return IPv4Address(int(addr) & 0xFFFFFFFF), "IPv4-mapped"
    if addr in _TRANSLATED:
        return IPv4Address(int(addr) & 0xFFFFFFFF), "IPv4-translated"
    if addr in _COMPATIBLE and int(addr) > 1:
        return IPv4Address(int(addr) & 0xFFFFFFFF), "IPv4-compatible"
    if addr in _NAT64:
        return IPv4Address(int(addr) & 0xFFFFFFFF), "NAT64"
    if addr in _SIX_TO_FOUR:
        return IPv4Address((int(addr) >> 80) & 0xFFFFFFFF), "6to4"
    if addr in _TEREDO:
        return IPv4Address(~int(addr) & 0xFFFFFFFF), "Teredo"
    return None


def address_class(addr: IPAddress) -> str | None:
    """Why an address is not a public internet destination ('loopback', …), or None if it is one."""
    if isinstance(addr, IPv4Address):
        for net, label in _V4_CLASSES:
            if addr in net:
                return label
        return None
    for net, label in _V6_CLASSES:
        if addr in net:
            return label
    embedded = embedded_ipv4(addr)
    if embedded is not None:
        inner, form = embedded
        label = address_class(inner)
        if label is not None:
            return f"{label} via {form} {inner}"
    return None


def _plain(addr: IPAddress) -> IPAddress:
    """The address without an IPv6 zone id, so that it compares equal to the same address from elsewhere."""
    if isinstance(addr, IPv6Address) and addr.scope_id:
        return IPv6Address(int(addr))
    return addr


def interface_addresses(raw: dict[str, Sequence[object]]) -> frozenset[IPAddress]:
    """The IP addresses in a psutil.net_if_addrs()-shaped mapping (other families are skipped)."""
    found: set[IPAddress] = set()
    for entries in raw.values():
        for entry in entries:
            if getattr(entry, "family", None) not in (socket.AF_INET, socket.AF_INET6):
                continue
            addr = parse_ip(str(getattr(entry, "address", "")))
            if addr is not None:
                found.add(_plain(addr))
    return frozenset(found)


_local_lock = threading.Lock()
_local_cache: tuple[float, frozenset[IPAddress]] | None = None


def local_addresses(max_age_s: float = _LOCAL_TTL_S) -> frozenset[IPAddress]:
    """Every address on one of the host's interfaces (its public address too: services bound to
    0.0.0.0 answer there). Reading them costs ~0.1 ms, so the answer is kept for `max_age_s`."""
    global _local_cache
    now = time.monotonic()
    with _local_lock:
        if _local_cache is not None and now - _local_cache[0] < max_age_s:
            return _local_cache[1]
    try:
        import psutil  # a dependency, imported late: only runs with network: proxy need it

        found = interface_addresses(psutil.net_if_addrs())
    except Exception:  # an unreadable interface list must not open the host: keep what we knew
        found = _local_cache[1] if _local_cache is not None else frozenset()
    with _local_lock:
        _local_cache = (now, found)
    return found


@dataclass(frozen=True)
class Verdict:
    """A decision about one destination: `rule` says which pattern or check decided, for the log."""

    allowed: bool
    rule: str
    kind: str  # allow | deny | unlisted | private
    pattern: HostPattern | None = None
    address: IPAddress | None = None
    address_label: str | None = None


@dataclass(frozen=True)
class NetPolicy:
    """The `network` section as the proxy applies it. Patterns as in units.parse_host_pattern; deny wins."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_private: bool = False
    _allow: tuple[HostPattern, ...] = field(default=(), init=False, repr=False, compare=False)
    _deny: tuple[HostPattern, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "deny", tuple(self.deny))
        object.__setattr__(self, "_allow", tuple(parse_host_pattern(p) for p in self.allow))
        object.__setattr__(self, "_deny", tuple(parse_host_pattern(p) for p in self.deny))

    @property
    def allow_patterns(self) -> tuple[HostPattern, ...]:
        return self._allow

    @property
    def deny_patterns(self) -> tuple[HostPattern, ...]:
        return self._deny


def match_destination(policy: NetPolicy, host: str, port: int) -> Verdict:
    """The policy's verdict on a (normalized) host and port, before any name is resolved."""
    for pattern in policy.deny_patterns:
        if pattern.matches(host, port):
            return Verdict(False, f"network.deny: {pattern}", "deny", pattern)
    for pattern in policy.allow_patterns:
        if pattern.matches(host, port):
            return Verdict(True, f"network.allow: {pattern}", "allow", pattern)
    return Verdict(False, "not in network.allow", "unlisted")


def _literal_match(patterns: Iterable[HostPattern], addr: IPAddress, port: int) -> HostPattern | None:
    text = str(addr)
    for pattern in patterns:
        if parse_ip(pattern.host) is not None and pattern.matches(text, port):
            return pattern
    return None


def screen_address(
    policy: NetPolicy, addr: IPAddress, port: int, local: frozenset[IPAddress] = frozenset()
) -> Verdict | None:
    """Why a resolved address may not be dialled (a refusing Verdict), or None if it may.

    An IP-literal deny pattern refuses the address whatever name led to it, and so does a deny of
    the IPv4 address that an IPv6 form carries. A non-public or host-interface address (the IPv4
    one an IPv6 form carries included) is refused unless allow_private is set or an IP-literal
    allow pattern lists exactly that address (and port).
    """
    addr = _plain(addr)
    embedded = embedded_ipv4(addr) if isinstance(addr, IPv6Address) else None
    reaches = [addr] if embedded is None else [addr, embedded[0]]
    for target in reaches:
        denied = _literal_match(policy.deny_patterns, target, port)
        if denied is not None:
            return Verdict(False, f"network.deny: {denied}", "deny", denied, addr)
    if policy.allow_private:
        return None
    label = address_class(addr)
    if label is None and any(target in local for target in reaches):
        label = "host interface"
    if label is None or _literal_match(policy.allow_patterns, addr, port) is not None:
        return None
    return Verdict(False, f"private address {addr} ({label}; allow_private: false)", "private", None, addr, label)


def screen_addresses(
    policy: NetPolicy, addresses: Iterable[IPAddress], port: int, local: frozenset[IPAddress] = frozenset()
) -> tuple[list[IPAddress], Verdict | None]:
    """The addresses that may be dialled, in order and without duplicates, and the first refusal seen."""
    passed: list[IPAddress] = []
    refusal: Verdict | None = None
    for raw in addresses:
        addr = _plain(raw)
        if addr in passed:
            continue
        verdict = screen_address(policy, addr, port, local)
        if verdict is None:
            passed.append(addr)
        elif refusal is None:
            refusal = verdict
    return passed, refusal
