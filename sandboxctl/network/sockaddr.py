"""Socket addresses as the sandboxed caller wrote them (raw struct sockaddr bytes), parsed. Pure.

The handler reads the bytes once from the caller's memory and decides on them; what it then
does uses the same bytes, so a second thread rewriting the buffer changes nothing.
"""

from __future__ import annotations

import struct

from sandboxctl.record import Record

AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6 = 0, 1, 2, 10
MAX_SOCKADDR = 128  # sizeof(struct sockaddr_storage): the kernel refuses longer ones (EINVAL)
MAX_UNIX = 110  # sizeof(struct sockaddr_un): a longer AF_UNIX address is EINVAL


class Address(Record):
    family: int
    host: str | None = None  # inet: the address as text
    port: int | None = None
    path: bytes | None = None  # AF_UNIX pathname (up to the first NUL, as the kernel reads it)
    abstract: bytes | None = None  # AF_UNIX abstract name (after its leading NUL)

    @property
    def inet(self) -> bool:
        return self.family in (AF_INET, AF_INET6) and self.host is not None


def parse(raw: bytes) -> Address:
    """What the kernel will see in these bytes. Too short to hold an address: family only (the
    kernel answers EINVAL for it, so the call is performed as given)."""
    import ipaddress

    if len(raw) < 2:
        return Address(AF_UNSPEC if not raw else -1)
    family = struct.unpack_from("<H", raw)[0]
    if family == AF_INET and len(raw) >= 16:
        return Address(family, str(ipaddress.IPv4Address(raw[4:8])), struct.unpack_from(">H", raw, 2)[0])
    if family == AF_INET6 and len(raw) >= 24:
        return Address(family, str(ipaddress.IPv6Address(raw[8:24])), struct.unpack_from(">H", raw, 2)[0])
    if family == AF_UNIX and len(raw) > 2:
        name = raw[2:]
        if name[:1] == b"\0":
            return Address(family, abstract=name[1:])
        return Address(family, path=name.split(b"\0", 1)[0])
    return Address(family)


_LOCAL_V6 = (b"\0" * 15 + b"\1", b"\0" * 16)


def local_inet(raw: bytes) -> bool | None:
    """The fast path of parse + is_local for the call every connect makes: None when the bytes are
    not an IPv4/IPv6 address, else whether it is the sandbox's own loopback."""
    if len(raw) >= 16 and raw[0] == AF_INET and raw[1] == 0:
        return raw[4] == 127 or raw[4:8] == b"\0\0\0\0"
    if len(raw) >= 24 and raw[0] == AF_INET6 and raw[1] == 0:
        ip = raw[8:24]
        if ip in _LOCAL_V6:
            return True
        if ip[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped
            return ip[12] == 127 or ip[12:] == b"\0\0\0\0"
        return False
    return None


def is_local(address: Address) -> bool:
    """The sandbox's own loopback: 127/8 and ::1, and the unspecified address (a connect to
    0.0.0.0 or :: goes to the local host); IPv4-mapped forms count as their IPv4 address."""
    import ipaddress

    if not address.inet:
        return False
    ip = ipaddress.ip_address(address.host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def text(value: bytes) -> str:
    """A socket path as text for the log: undecodable bytes kept as escapes, nothing dropped."""
    return value.decode("utf-8", "backslashreplace")


def describe(address: Address) -> str:
    """host:port, [v6]:port, unix:/path or unix:@name: how a destination appears in events."""
    if address.inet:
        host = f"[{address.host}]" if address.family == AF_INET6 else address.host
        return f"{host}:{address.port}"
    if address.path is not None:
        return f"unix:{text(address.path)}"
    if address.abstract is not None:
        return f"unix:@{text(address.abstract)}"
    return f"family {address.family}"


def destination(host: object, port: object) -> str:
    """A net record's destination as text: host:port, [v6]:port, or a UNIX socket (no port)."""
    text = str(host)
    if ":" in text and not text.startswith(("unix:", "[")):
        text = f"[{text}]"
    return text if port is None else f"{text}:{port}"
