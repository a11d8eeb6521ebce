"""Phantom secrets (`secrets.NAME.as: proxy`): the sandbox holds a placeholder, the proxy the value.

The sandboxed program gets `$NAME` = a per-run placeholder (`sbx-phantom-` and 160 random bits);
the real value never enters the sandbox. When a request goes to one of the secret's `hosts` over
TLS that the proxy terminates, the proxy puts the real value in place of the placeholder in the
request headers (any header; inside `Authorization: Basic` too, where git and other clients put
a token base64-encoded). Anywhere else, the placeholder is a leak attempt: a request that carries
it toward another host (in a header, the URL or, when the proxy reads it, the body) is refused
and logged with `leak: NAME`. Each secret is gated by its own hosts: the placeholder of A sent
to a host of B is a leak of A, not an injection.

Answers from a host that got the real value are searched for it too (headers — a 101's and trailers too —
and bodies that are not compressed: such a request asks for `Accept-Encoding: identity`), as it is
and in base64 (the form the proxy itself puts into `Authorization: Basic`), and it is masked
there, so an endpoint that echoes the request back does not hand the value to the sandbox.

Expiry: a secret with a `ttl` stops being injected when it expires; requests that still carry
its placeholder are refused.

Derived placeholders (`derived_placeholder`): a standalone proxy whose clients get their
environment before it starts (a Kubernetes sidecar: the pod spec sets the agent's variables)
cannot hand out random ones. Then each placeholder is `sbx-phantom-ID-` and 8 hex digits of the
name's SHA-256, ID being something both sides know and nobody else reaches the proxy with (the
pod's UID, through the downward API): still distinct per pod and never the value, but
predictable to whoever knows ID, so the standalone proxy allows it only on a loopback address.

Pure apart from the clock; nothing here touches a socket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from sandboxctl.units import HostPattern, parse_host_pattern

PREFIX = "sbx-phantom-"
_PREFIX_BYTES = PREFIX.encode()


# What a derived placeholder's ID may be: lower case (host names are compared in lower case, so a
# placeholder in one must be found there), inert in headers, URLs, JSON and shells, and long enough.
PHANTOM_ID = re.compile(r"[0-9a-z][0-9a-z-]{15,99}")


def new_placeholder() -> str:
    """Unguessable and inert in headers, URLs, JSON and shells: lower-case hex after a fixed prefix."""
    return PREFIX + secrets.token_hex(20)


def derived_placeholder(phantom_id: str, name: str) -> str:
    """The placeholder of secret NAME under a shared ID (see the module docstring). Every one has the
    same length and the prefix once, so none is found inside another; the export calls this with
    the text `$(VAR)`, which Kubernetes replaces with the same ID the proxy is given."""
    return f"{PREFIX}{phantom_id}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass
class Phantom:
    name: str
    value: str
    hosts: tuple[HostPattern, ...]
    placeholder: str = field(default_factory=new_placeholder)
    expires_at: float | None = None  # time.monotonic() deadline

    def bound_to(self, host: str, port: int) -> bool:
        return any(pattern.matches(host, port) for pattern in self.hosts)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def __repr__(self) -> str:  # never the value, not even in a traceback
        return f"Phantom({self.name!r}, hosts={[str(h) for h in self.hosts]})"


@dataclass(frozen=True)
class PhantomSpec:
    """What the proxy needs to know of one `as: proxy` secret (the value is resolved by the caller)."""

    name: str
    value: str
    hosts: Sequence[str]
    ttl: float | None = None
    placeholder: str | None = None  # None: a new random one (derived_placeholder for a shared ID)

    def __repr__(self) -> str:
        return f"PhantomSpec({self.name!r}, hosts={list(self.hosts)!r}, ttl={self.ttl!r})"


@dataclass
class HeaderOutcome:
    """What rewriting one request's headers found: the headers to send, and what to say about them."""

    headers: list[tuple[bytes, bytes]]
    injected: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    cleartext: list[str] = field(default_factory=list)  # bound here, but the request is not over TLS


class PhantomSecrets:
    """Every phantom of one run: placeholders, injection per host, leak checks, masking of answers."""

    def __init__(self, specs: Iterable[PhantomSpec], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        start = clock()
        self.items: list[Phantom] = []
        for spec in specs:
            if not spec.hosts:
                raise ValueError(f"secret {spec.name}: a proxy secret needs hosts")
            if not spec.value or PREFIX in spec.value:
                raise ValueError(f"secret {spec.name}: unusable value for a proxy secret")
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in spec.value):
                raise ValueError(f"secret {spec.name}: the value has a line break or a control character, and "
                                 "as: proxy puts it into a request header")
            placeholder = spec.placeholder or new_placeholder()
            if not _usable_placeholder(placeholder):
                raise ValueError(f"secret {spec.name}: unusable placeholder")
            self.items.append(Phantom(spec.name, spec.value, tuple(parse_host_pattern(h) for h in spec.hosts),
                                      placeholder, None if spec.ttl is None else start + spec.ttl))
        for phantom in self.items:  # one found inside another would be replaced inside it
            if any(other is not phantom and phantom.placeholder in other.placeholder for other in self.items):
                raise ValueError(f"secret {phantom.name}: its placeholder is not distinct from another's")
        self._by_placeholder = {p.placeholder.encode(): p for p in self.items}

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def placeholders(self) -> dict[str, str]:
        """NAME -> placeholder: what the sandbox's environment gets."""
        return {p.name: p.placeholder for p in self.items}

    @property
    def host_patterns(self) -> list[HostPattern]:
        return [pattern for p in self.items for pattern in p.hosts]

    def bound_here(self, host: str, port: int) -> list[Phantom]:
        return [p for p in self.items if p.bound_to(host, port)]

    def expire(self, name: str) -> None:
        """Stop injecting NAME now (the supervisor's timer calls this when its ttl is over)."""
        for p in self.items:
            if p.name == name:
                p.expires_at = min(p.expires_at or self.clock(), self.clock())

    # ------------------------------------------------------------------ finding placeholders
    def found_in(self, data: bytes) -> list[Phantom]:
        """The phantoms whose placeholder appears in data (as is, or percent-encoded)."""
        if not self.items:
            return []
        found = [p for key, p in self._by_placeholder.items() if key in data]
        if b"%" in data:
            try:
                decoded = unquote_to_bytes(data)
            except (TypeError, ValueError):
                decoded = b""
            found += [p for key, p in self._by_placeholder.items() if key in decoded and p not in found]
        return found

    def leaks_in(self, data: bytes, host: str, port: int) -> list[str]:
        """Names of phantoms in data that are not bound to host:port (sent there, they are leaks)."""
        return [p.name for p in self.found_in(data) if not p.bound_to(host, port)]

    # ------------------------------------------------------------------ request headers
    def rewrite_headers(self, headers: Sequence[tuple[bytes, bytes]], host: str, port: int,
                        tls: bool) -> HeaderOutcome:
        """Put real values in place of placeholders bound to host:port (over TLS only); report the rest."""
        outcome = HeaderOutcome([])
        now = self.clock()
        for name, value in headers:
            for leaked in self.leaks_in(name, host, port):  # a header name is a token: a placeholder fits
                _add(outcome.leaked, leaked)
            if _PREFIX_BYTES in value or b"%" in value or _maybe_basic(value):
                value = self._rewrite_value(value, host, port, tls, now, outcome)
            outcome.headers.append((name, value))
        return outcome

    def _rewrite_value(self, value: bytes, host: str, port: int, tls: bool, now: float,
                       outcome: HeaderOutcome) -> bytes:
        basic = _basic_credentials(value)
        if basic is not None:
            rewritten = self._rewrite_text(basic, host, port, tls, now, outcome)
            if rewritten != basic:
                return value.strip()[:6] + base64.b64encode(rewritten)
            return value
        return self._rewrite_text(value, host, port, tls, now, outcome)

    def _rewrite_text(self, text: bytes, host: str, port: int, tls: bool, now: float,
                      outcome: HeaderOutcome) -> bytes:
        for phantom in self.found_in(text):
            if not phantom.bound_to(host, port):
                _add(outcome.leaked, phantom.name)
            elif not tls:
                _add(outcome.cleartext, phantom.name)
            elif phantom.expired(now):
                _add(outcome.expired, phantom.name)
            elif phantom.placeholder.encode() in text:
                text = text.replace(phantom.placeholder.encode(), phantom.value.encode())
                _add(outcome.injected, phantom.name)
            else:  # only percent-encoded: not a value a server would decode in a header; refuse
                _add(outcome.leaked, phantom.name)
        return text

    # ------------------------------------------------------------------ bodies and answers
    def body_scanner(self, host: str, port: int) -> BodyScanner | None:
        """A scanner for the request body toward host:port, or None when no placeholder could leak there."""
        watched = [p for p in self.items if not p.bound_to(host, port)]
        return BodyScanner(watched) if watched else None

    def masker(self, names: Iterable[str]) -> Masker | None:
        """A masker for the answer to a request that carried these secrets' real values."""
        chosen = [p for p in self.items if p.name in set(names)]
        return Masker(chosen) if chosen else None


def _usable_placeholder(text: str) -> bool:
    """The prefix once, then lower-case letters, digits and '-' (at least 16: never guessable by luck)."""
    rest = text.removeprefix(PREFIX)
    return rest != text and PREFIX not in rest and len(rest) >= 16 and re.fullmatch(r"[0-9a-z-]+", rest) is not None


def _add(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def _maybe_basic(value: bytes) -> bool:
    return value[:6].lower() == b"basic "


def _basic_credentials(value: bytes) -> bytes | None:
    """The decoded credentials of `Basic base64`, or None."""
    text = value.strip()
    if not _maybe_basic(text):
        return None
    try:
        return base64.b64decode(text[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _held_back(buf: bytes, keys: Sequence[bytes]) -> int:
    """How many bytes at the end of buf could be the start of one of keys (0 almost always), so a
    stream is held back only while a match is still possible and never delayed otherwise."""
    longest = 0
    for key in keys:
        for size in range(min(len(key) - 1, len(buf)), longest, -1):
            if buf.endswith(key[:size]):
                longest = size
                break
    return longest


class BodyScanner:
    """Finds placeholders in a body that arrives in pieces: feed() returns the bytes that are safe to
    forward now (a tail that could be the start of a placeholder waits for the next piece)."""

    def __init__(self, watched: Sequence[Phantom]) -> None:
        self.keys = [(p.placeholder.encode(), p.name) for p in watched]
        self.tail = b""
        self.leaked: str | None = None

    def feed(self, data: bytes) -> bytes:
        buf = self.tail + data
        for key, name in self.keys:
            if key in buf:
                self.leaked, self.tail = name, b""
                return b""
        keep = _held_back(buf, [key for key, _ in self.keys])
        self.tail = buf[len(buf) - keep:] if keep else b""
        return buf[: len(buf) - keep]

    def finish(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail


def base64_cores(value: bytes) -> list[bytes]:
    """What any base64 text holding `value` holds, wherever the value starts in the encoded bytes:
    for each of the three alignments, the characters made of the value's bits alone (standard and
    URL-safe alphabets). The proxy itself base64-encodes a value into `Authorization: Basic`, so an
    echo of that header carries the value in this form; cores shorter than 8 are not worth masking."""
    found: list[bytes] = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value)
        core = encoded[-(-8 * shift // 6): 8 * (shift + len(value)) // 6]
        for variant in (core, core.translate(bytes.maketrans(b"+/", b"-_"))):
            if len(variant) >= 8 and variant not in found:
                found.append(variant)
    return found


class Masker:
    """Masks real values in an answer that arrives in pieces (same length, so the framing holds):
    as they are, and in base64 (base64_cores)."""

    def __init__(self, phantoms: Sequence[Phantom]) -> None:
        values = [p.value.encode() for p in phantoms]
        forms = values + [core for value in values for core in base64_cores(value) if core not in values]
        self.pairs = [(form, b"*" * len(form)) for form in forms]
        self.tail = b""
        self.masked = 0

    def apply(self, data: bytes) -> bytes:
        for value, mask in self.pairs:
            if value in data:
                self.masked += data.count(value)
                data = data.replace(value, mask)
        return data

    def feed(self, data: bytes) -> bytes:
        buf = self.apply(self.tail + data)
        keep = _held_back(buf, [value for value, _ in self.pairs])
        self.tail = buf[len(buf) - keep:] if keep else b""
        return buf[: len(buf) - keep]

    def finish(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail
