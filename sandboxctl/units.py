"""Parsing of the small value languages in policies: durations, sizes, host patterns.

Kept dependency-free because the policy validator, the CLI and the shim-side planner all use it.
"""

from __future__ import annotations

from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import ipaddress

# Patterns as text: `re` compiles (and caches) one on its first use, not every run at import. The
# usual texts are parsed by hand to the same answer (`re` and its enum module are ~2.5 ms of import):
# `\d` is str.isdecimal and `\s` str.isspace in `re` too; tests/unit/test_lazyre.py compares them.
_DURATION_PART = r"(\d+)(ms|s|m|h|d)"
_DURATION_FULL = r"(?:\d+(?:ms|s|m|h|d))+"
_DURATION_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_SIZE = r"(?i)(\d+)\s*([KMGT]?)(i?B)?"
_SIZE_FACTOR = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _duration_parts(value: str) -> list[tuple[str, str]] | None:
    """re.findall(_DURATION_PART, value) where re.fullmatch(_DURATION_FULL, value), else None."""
    parts = []
    i, end = 0, len(value)
    while i < end:
        j = i
        while j < end and value[j].isdecimal():
            j += 1
        if j == i:
            return None
        unit = "ms" if value.startswith("ms", j) else value[j:j + 1]  # re tries ms first, as here
        if unit not in _DURATION_UNIT_SECONDS:  # "" too: digits at the end
            return None
        parts.append((value[i:j], unit))
        i = j + len(unit)
    return parts or None


def _size_parts(text: str) -> tuple[str, str] | None:
    """re.fullmatch(_SIZE, text).group(1, 2) or None; for a text that is not ASCII, re itself
    (its IGNORECASE matches K to the Kelvin sign)."""
    if not text.isascii():
        import re

        match = re.fullmatch(_SIZE, text)
        return (match.group(1), match.group(2)) if match else None
    i, end = 0, len(text)
    while i < end and text[i].isdecimal():
        i += 1
    if not i:
        return None
    number = text[:i]
    while i < end and text[i].isspace():
        i += 1
    unit = text[i] if i < end and text[i] in "KMGTkmgt" else ""
    return (number, unit) if text[i + len(unit):].lower() in ("", "b", "ib") else None


def _is_label(label: str) -> bool:
    """re.fullmatch(_LABEL, label): 1-63 of a-z, 0-9 and '-', neither first nor last a '-'."""
    return 0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and _LABEL_CHARS.issuperset(label)


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '500ms' -> seconds. Bare numbers are refused as ambiguous."""
    value = text.strip().lower()
    parts = _duration_parts(value)
    if not parts:
        raise ValueError(f"{text!r}: not a duration (use e.g. 90s, 30m, 2h)")
    seconds = sum(int(n) * _DURATION_UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return seconds


def parse_size(text: str | int) -> int:
    """'512M', '4G', '1GiB', or a plain byte count -> bytes (binary multiples)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"{text!r}: a size must be larger than zero")
        return text
    match = _size_parts(str(text).strip())
    if not match:
        raise ValueError(f"{text!r}: not a size (use e.g. 512M, 4G)")
    number, unit = match
    size = int(number) * _SIZE_FACTOR[unit.upper()]
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be larger than zero")
    return size


def format_duration(seconds: float) -> str:
    """Text that parse_duration reads back (never '1e+06s' or '1.5s'): 500ms, 90s, 30m, 2h."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, factor in (("h", 3600), ("m", 60)):
        if whole >= factor and whole % factor == 0:
            return f"{whole // factor}{unit}"
    return f"{whole}s"


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_FACTOR[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class HostPattern(Record):
    """One network destination rule: an exact name, a '*.' wildcard, or an IP literal; any port if None."""

    host: str
    port: int | None = None

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        """IP literals compare as addresses, so '[::1]', '0:0::1' or '::ffff:10.0.0.1' cannot slip past a rule."""
        if self.port is not None and self.port != port:
            return False
        host = host.lower().rstrip(".")
        address = _ip(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        if address is not None:
            return not self.wildcard and address == _ip(self.host)
        if self.wildcard:
            return host.endswith(self.host[1:])
        return host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def may_be_address(text: str) -> bool:
    """False where ipaddress.ip_address(text) must fail: an IPv6 literal has colons, an IPv4 one is
    ASCII digits and dots only. So a plain name needs no ipaddress module (~1 ms of import)."""
    return ":" in text or (text.isascii() and text.replace(".", "").isdigit())


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a literal names (an IPv4-mapped IPv6 address is its IPv4 one), or None for a name."""
    import ipaddress  # ~1 ms of import: only where an address is compared (the proxy)

    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_port(text: str, original: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{original!r}: port must be 1-65535")
    return int(text)


_SCHEME_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80, "ftp": 21, "ssh": 22, "git": 9418}


def _url_destination(url: str) -> str:
    """What a URL means as a destination: its host and port (the scheme's default port)."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    host, port = authority, None
    if authority.startswith("[") and "]" in authority:
        end = authority.index("]") + 1
        host, port = authority[:end], authority[end + 1:] if authority[end:end + 1] == ":" else None
    elif authority.count(":") == 1:
        host, port = authority.split(":")
    port = port or _SCHEME_PORTS.get(scheme)
    suggestion = f"{host}:{port or 443}"
    try:  # only a destination that parses is suggested (never raw bytes of the URL)
        parse_host_pattern(suggestion)
    except ValueError:
        return "host:port, e.g. pypi.org:443"
    return suggestion if port else f"{host}:PORT"


def parse_host_pattern(text: str) -> HostPattern:
    """host | host:port | *.domain[:port] | IPv4[:port] | [IPv6][:port]."""
    original = text
    text = text.strip().lower()
    if not text:
        raise ValueError("empty host pattern")
    if "://" in text:
        raise ValueError(f"{original!r}: a URL, not a host pattern; write {_url_destination(text)}")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{original!r}: unclosed '[' in IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{original!r}: expected ':PORT' after ']'")
            port = _parse_port(rest[1:], original)
        import ipaddress  # ~1 ms of import: only for a pattern that names an address

        try:
            return HostPattern(str(ipaddress.IPv6Address(host)), port)
        except ValueError:
            raise ValueError(f"{original!r}: not an IPv6 address") from None
    if text.count(":") > 1:
        raise ValueError(f"{original!r}: write IPv6 addresses in brackets, e.g. [::1]:443")
    host, sep, port_text = text.partition(":")
    if sep:
        port = _parse_port(port_text, original)
    if may_be_address(host):  # host has no colon here: IPv4Address takes only digits and dots
        import ipaddress

        try:
            return HostPattern(str(ipaddress.IPv4Address(host)), port)
        except ValueError:
            pass
    name = host[2:] if host.startswith("*.") else host
    labels = name.rstrip(".").split(".")
    if (
        not name
        or len(name) > 253
        or not all(_is_label(label) for label in labels)
        or (host.startswith("*.") and not labels[-1])
    ):
        raise ValueError(f"{original!r}: not a host pattern (use host, host:port or *.domain[:port])")
    if labels[-1].isdigit():
        raise ValueError(f"{original!r}: not a valid IPv4 address or host name")
    return HostPattern(host.rstrip("."), port)
