"""Request rules for inspected hosts: `METHOD PATH-GLOB`, each request judged on its own.

Why a module of its own: these are security decisions, so they are pure functions of the policy
and one request line, and tested rule by rule (tests/unit/test_request_rules.py).

A rule is `GET /repos/acme/**`: an HTTP method (upper case, or `*` for any) and a path glob.
In the glob `*` matches within one path segment and never crosses `/` (a segment that is only
`*` must be non-empty), and a whole segment `**` matches any number of segments, none included:
`/repos/acme/**` covers `/repos/acme` and everything beneath it, never `/repos/acmeevil`.

What a rule is compared with is the request's path in one canonical form, so that no spelling of
a path can escape its rule:
- the query string is not part of it (rules say nothing about queries; it is forwarded untouched);
- percent-escapes are decoded once (`%61` is `a`, `%2F` is `/`: a `*` never matches `x%2Fy`);
- a path the canonical form cannot vouch for is refused outright instead of being "fixed":
  dot segments (`.`, `..`, also `%2e%2e`, and `..;x` which Java servers read as `..`), a
  backslash (some servers read it as `/`), escapes that are still there after one decoding
  (`%252e`: a server that decodes twice would see a dot), malformed escapes, control characters
  and bytes that are not UTF-8. Servers differ in how they resolve such paths; a refusal is the
  same on all of them.
The request goes upstream exactly as the client sent it: what was judged is what is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from sandboxctl.units import HostPattern, parse_host_pattern

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_STILL_ENCODED = re.compile(r"%(?:2e|2f|5c|25)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RULE_PATH_BAD = re.compile(r"[\s?#%\\]")
MAX_PATH = 8192


class PathRefused(ValueError):
    """A request path that cannot be judged safely; the message says why, for the agent and the log."""


@dataclass(frozen=True)
class RequestRule:
    """One `METHOD PATH-GLOB` rule, compiled."""

    text: str
    method: str  # "*" or an upper-case method
    path: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.path.fullmatch(path) is not None


def parse_rule(text: str) -> RequestRule:
    """A rule from the policy, or ValueError naming what is wrong with it."""
    if not text.isprintable():
        raise ValueError(f"{text!r}: a control or format character in a request rule")
    parts = text.split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"{text!r}: a request rule is METHOD PATH, e.g. 'GET /repos/acme/**' ('*' for any method)")
    method, path = parts
    if method != "*" and not _METHOD.fullmatch(method):
        raise ValueError(f"{text!r}: {method!r} is not an HTTP method in upper case (or '*')")
    if not path.startswith("/"):
        raise ValueError(f"{text!r}: the path must start with '/'")
    if len(path) > MAX_PATH:
        raise ValueError(f"{text!r}: the path is longer than {MAX_PATH} characters")
    bad = _RULE_PATH_BAD.search(path)
    if bad:
        what = {"?": "a query ('?'): rules match the path only", "#": "a fragment ('#')",
                "%": "a percent-escape: write the path decoded, rules compare with the decoded path",
                "\\": "a backslash"}.get(bad.group(), "white space or a control character")
        raise ValueError(f"{text!r}: the path contains {what}")
    segments = path.split("/")[1:]
    for segment in segments:
        if segment in (".", ".."):
            raise ValueError(f"{text!r}: '.' and '..' segments never match (such requests are refused)")
        if "**" in segment and segment != "**":
            raise ValueError(f"{text!r}: '**' must be a whole segment, as in /a/**/b")
    return RequestRule(text, method, re.compile(_glob_regex(segments)))


def _glob_regex(segments: list[str]) -> str:
    out = ""
    for segment in segments:
        if segment == "**":
            out += "(?:/.*)?"
        elif segment == "*":
            out += "/[^/]+"
        else:
            out += "/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*"))
    return out or "/"


def canonical_path(target: str) -> str:
    """The decoded path of an origin-form request target, or PathRefused (see the module docstring)."""
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        raise PathRefused("the request target is not a path")
    if "#" in path:
        raise PathRefused("the request target contains a fragment ('#')")
    if len(path) > MAX_PATH:
        raise PathRefused(f"the path is longer than {MAX_PATH} characters")
    if _BAD_ESCAPE.search(path):
        raise PathRefused("the path contains a malformed percent-escape")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("the decoded path is not UTF-8") from None
    if _CONTROL.search(decoded):
        raise PathRefused("the decoded path contains a control character")
    if "\\" in decoded:
        raise PathRefused("the path contains a backslash")
    if _STILL_ENCODED.search(decoded):
        raise PathRefused("the path is percent-encoded twice")
    for segment in decoded.split("/"):
        if segment.split(";", 1)[0] in (".", ".."):
            raise PathRefused("the path contains a '.' or '..' segment")
    return decoded


@dataclass(frozen=True)
class RequestVerdict:
    """allowed, or not; `rule` names what decided, for the log; `reason` is the sentence for a refusal."""

    allowed: bool
    rule: str
    reason: str = ""
    askable: bool = False  # not matched (a human may approve); a refused path is never askable


@dataclass(frozen=True)
class HostRules:
    """The request rules of one `network.inspect` entry; rules None: every request is allowed (and read)."""

    pattern: HostPattern
    rules: tuple[RequestRule, ...] | None

    @property
    def label(self) -> str:
        return f"network.inspect[{self.pattern}]"

    def judge(self, method: str, target: str) -> RequestVerdict:
        try:
            path = canonical_path(target)
        except PathRefused as exc:
            return RequestVerdict(False, f"bad request: {exc}", f"{exc}, which this sandbox does not forward "
                                  "to inspected hosts")
        if self.rules is None:
            return RequestVerdict(True, f"{self.label}: every request")
        for rule in self.rules:
            if rule.matches(method, path):
                return RequestVerdict(True, f"{self.label}: {rule.text}")
        return RequestVerdict(False, f"not in {self.label}.allow",
                              f"{method} {_short(path)} is not in this sandbox's {self.label}.allow", askable=True)


def _short(path: str, limit: int = 200) -> str:
    return path if len(path) <= limit else path[: limit - 1] + "…"


def compile_inspect(entries: Mapping[str, Sequence[str] | None]) -> tuple[HostRules, ...]:
    """network.inspect as compiled rules; ValueError names the first bad entry."""
    return tuple(HostRules(parse_host_pattern(host), None if rules is None else tuple(parse_rule(r) for r in rules))
                 for host, rules in entries.items())


def most_specific(candidates: Iterable[HostRules], host: str, port: int) -> HostRules | None:
    """The entry that speaks for host:port: an exact name before a wildcard, the longer wildcard before
    the shorter, an entry with a port before one without."""
    best: tuple[tuple[int, int, int], HostRules] | None = None
    for entry in candidates:
        if not entry.pattern.matches(host, port):
            continue
        rank = (0 if entry.pattern.wildcard else 1, len(entry.pattern.host), 1 if entry.pattern.port else 0)
        if best is None or rank > best[0]:
            best = (rank, entry)
    return best[1] if best else None
