"""`sandboxctl policy suggest --run ID`: a policy extending the run's own with the least grants its denials needed.

Each denial of the run (the action log's `file` and `net` records with decision deny) becomes the
narrowest grant that would have let it through: the file itself, or the directory it was created in
(or, in HOME, the new file or directory with a `filesystem.create` entry: the parent stays read-only);
`host:port` for a connection (and the literal address too when the name led to a private one).
Each grant carries a comment naming the denial it answers. Some denials are never turned into a
grant, and are listed as refused with the reason: a protected path (it would run later outside the
sandbox), a masked credential store or anything the policy denies outright, sandboxctl's own state,
a system directory, a seccomp baseline call, a name no policy path can hold exactly (bytes that are not
UTF-8 — os.fsdecode's surrogate escapes, which no YAML escape holds — a wildcard, a brace, a line
break). Every value is written in printable ASCII with YAML's own escapes, every comment inert, so
the text is YAML any reader takes (libyaml too) and loads to exactly the paths that were denied.
Nothing here touches the host but to ask whether a path
exists (the `kind` callable), so the judging is testable with invented hosts.

Extension point: request rules (network inspection, issue 15) — `http` records go through
`_http_grant`, which is where `network.inspect` rules will be written once the schema has them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sandboxctl.paths import within

# Directories too broad to make writable, and trees whose files run or configure the machine later.
SYSTEM_DIRS = ("/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc", "/sys", "/run",
               "/var", "/opt", "/srv", "/home", "/root", "/tmp", "/mnt", "/media")
SYSTEM_TREES = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
                "/sys", "/run", "/opt", "/var/lib", "/var/spool", "/var/cache", "/var/log")
_PRIVATE = re.compile(r"private address (\S+) \(")


@dataclass
class Suggestion:
    """The grants (value -> the denials they answer) and the refusals, section by section."""

    policy: str  # the run's policy: what `extends` names
    run: str
    write: dict[str, list[str]] = field(default_factory=dict)
    create: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # path -> (kind, denials)
    allow: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # denial -> why no grant is suggested
    later: dict[str, str] = field(default_factory=dict)  # denial -> what will answer it (extension points)

    @property
    def empty(self) -> bool:
        return not (self.write or self.create or self.allow)


@dataclass
class Host:
    """What the judging needs to know of the host and the run."""

    home: str
    workspace: str | None
    kind: Callable[[str], str]  # dir | file | symlink | missing | other
    denied: tuple[str, ...] = ()  # the policy's filesystem.deny, expanded (patterns allowed)
    protected: Callable[[str], str | None] = lambda path: None  # why a path is protected, or None


def _label(record: dict[str, Any]) -> str:
    """The denial in one line, as the comment above its grant (inert: control characters escaped)."""
    from sandboxctl.inert import inert

    if record.get("event") == "file":
        text = f"file: {record.get('op', '?')} {record.get('path', '?')} ({record.get('rule', '')})"
    elif record.get("event") == "net":
        text = f"net: {record.get('host', '?')}:{record.get('port', '?')} ({record.get('rule', '')})"
    else:
        text = f"{record.get('event')}: {record.get('name') or record.get('target') or ''} ({record.get('rule', '')})"
    return inert(text, 200)


def suggest(records: Iterable[dict[str, Any]], host: Host, policy: str, run: str) -> Suggestion:
    result = Suggestion(policy, run)
    created_in: dict[str, set[str]] = {}
    files: list[tuple[dict[str, Any], str]] = []
    for record in records:
        if record.get("decision") != "deny" and record.get("answer") not in ("deny", "timeout"):
            continue
        event = record.get("event")
        label = _label(record)
        if event == "file" and isinstance(record.get("path"), str) and record["path"].startswith("/"):
            path = os.path.normpath(record["path"])
            why = _forged(path) or _never(path, str(record.get("rule", "")), host)
            if why:
                result.refused[label] = why
                continue
            files.append((record, path))
            if record.get("op") == "create" or host.kind(path) == "missing":
                created_in.setdefault(os.path.dirname(path), set()).add(path)
        elif event == "net":
            _net_grant(record, label, result)
        elif event == "syscall":
            result.refused[label] = ("a seccomp baseline call: syscalls.allow would take it out for every command in "
                                     "the sandbox; add it by hand only if you must (a launch-time confirmation)")
        elif event == "http":
            _http_grant(record, label, result)
        # approval records repeat what their file or net record says: the concrete record decides
    for record, path in files:
        _file_grant(record, path, _label(record), host, created_in, result)
    _narrow(result)
    return result


def _file_grant(record: dict[str, Any], path: str, label: str, host: Host, created_in: dict[str, set[str]],
                result: Suggestion) -> None:
    if host.kind(path) in ("file", "other"):  # written to or truncated: the file itself, nothing beside it
        _grant(result, path, label, host)
        return
    parent = os.path.dirname(path)
    if host.kind(parent) == "dir":
        siblings = created_in.get(parent, set())
        if within(path, host.home) and len(siblings) < 2:
            # one new file in HOME: that file alone, made before the run (its directory stays read-only)
            _grant(result, path, label, host, create="file")
            return
        if parent in SYSTEM_DIRS or parent == host.home:
            result.refused[label] = f"new files directly in {parent}: that directory is too broad to make writable"
            return
        _grant(result, parent, label, host)  # several new files, or outside HOME: their directory
        return
    missing = parent  # the first missing directory on the way, whose own parent exists
    while host.kind(os.path.dirname(missing)) == "missing" and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)
    if not within(missing, host.home) or missing == host.home:
        result.refused[label] = (f"{missing} does not exist, and sandboxctl makes directories only in your home: "
                                 "create it first, then suggest again")
        return
    _grant(result, missing, label, host, create="dir")


def _grant(result: Suggestion, path: str, label: str, host: Host, create: str | None = None) -> None:
    """A write grant (and a `filesystem.create` entry) for `path`, if a policy path can name it."""
    why = _unnameable(path, host)
    if why:
        result.refused[label] = why
        return
    result.write.setdefault(path, []).append(label)
    if create:
        result.create.setdefault(path, (create, []))[1].append(label)


def _forged(path: str) -> str | None:
    """A path no program could have used: the record did not come from a sandbox as it is."""
    if "\0" in path:
        return ("a path with a NUL byte, which no file name holds: the log was damaged or edited "
                "(check it: sandboxctl log --verify)")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate that is not an undecodable byte (those are U+DC80..U+DCFF)
        return ("a path that encodes to no file name: the log was damaged or edited "
                "(check it: sandboxctl log --verify)")
    return None


def _unnameable(path: str, host: Host) -> str | None:
    """Why no policy path holds exactly `path` (written as the grant will be: ~, {workspace})."""
    from sandboxctl.paths import expand
    from sandboxctl.policy.definition import check_path

    shown = _shown(path, host)
    hint = "rename it, or write a grant for a directory above it by hand"
    if not is_text(shown):
        return f"its name is not UTF-8 text (its bytes are shown as \\xNN): a policy file cannot name it; {hint}"
    try:
        check_path(shown)
    except ValueError as exc:
        return f"a policy path cannot name it ({str(exc).removeprefix(repr(shown) + ': ')}); {hint}"
    if expand(shown, workspace=host.workspace or "/nonexistent", home=host.home) != path:
        return f"a policy path cannot name it exactly; {hint}"
    return None


def _never(path: str, rule: str, host: Host) -> str | None:
    """Why no grant may answer this denial (SPEC: protected paths and masked stores are never granted)."""
    protected = host.protected(path)
    if protected or "protected" in rule:
        return (f"a protected path ({protected or rule}): it configures or runs programs later, outside the sandbox; "
                "never suggested")
    for deny in host.denied:
        if within(path, deny) or _matches(path, deny):
            return f"masked by filesystem.deny {deny} (a credential store or secret): never suggested"
    if "never approvable" in rule:
        return f"{rule.split('never approvable: ', 1)[-1]}: never suggested"
    if path in SYSTEM_DIRS or any(within(path, tree) for tree in SYSTEM_TREES):
        return "in a system directory (what is there runs or configures the machine later): never suggested"
    return None


def _matches(path: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return bool(set("*?[") & set(pattern)) and (fnmatchcase(path, pattern) or fnmatchcase(path, pattern + "/*"))


def _net_grant(record: dict[str, Any], label: str, result: Suggestion) -> None:
    from sandboxctl.units import parse_host_pattern

    host, port, rule = record.get("host"), record.get("port"), str(record.get("rule", ""))
    if str(host).startswith("unix:"):  # network/sockets.py: a host UNIX socket can be a takeover
        result.refused[label] = (f"a UNIX socket: add {str(host)[5:]} to network.unix by hand, only if the command "
                                 "must reach that service (Docker, an agent, a bus: each can act as you)")
        return
    if rule.startswith("direct connection"):
        result.refused[label] = ("a direct connection: the program ignored the proxy variables (HTTP_PROXY, "
                                 "ALL_PROXY); no grant lets it through without them")
        return
    if not host or not isinstance(port, int):
        result.refused[label] = "not a destination (a malformed request): nothing to grant"
        return
    if rule.startswith("network.deny"):
        result.refused[label] = f"the policy denies it explicitly ({rule}); network.deny wins over any allow"
        return
    if rule.startswith(("bad request", "connection limit")):
        result.refused[label] = "not a policy decision: nothing to grant"
        return
    try:
        pattern = parse_host_pattern(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except ValueError:
        result.refused[label] = "not a host name or address sandboxctl can allow"
        return
    destination = str(pattern)
    if pattern.host.startswith("*") or not is_text(destination):
        result.refused[label] = "a pattern, not the host that was asked for: nothing to grant"
        return
    result.allow.setdefault(destination, []).append(label)
    private = _PRIVATE.search(rule)
    if private:  # the name led to a private address: only a literal allow of it passes that check
        address = private.group(1)
        literal = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        result.allow.setdefault(literal, []).append(label + " [the private address it resolved to]")


def _http_grant(record: dict[str, Any], label: str, result: Suggestion) -> None:
    """Extension point for request rules (network.inspect, issue 15): until the schema has them, the
    denial is listed with what will answer it, and no grant is written."""
    result.later[label] = "a request rule under network.inspect (once network inspection lands)"


def _narrow(result: Suggestion) -> None:
    """A grant beneath another grant adds nothing: keep the outer one, with the denials of both."""
    for path in sorted(result.write, key=len):
        for other in list(result.write):
            if other != path and within(other, path) and path in result.write:
                result.write[path] += result.write.pop(other)
                result.create.pop(other, None)


# ------------------------------------------------------------------ rendering


_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _scalar(text: str) -> str:
    """A YAML double-quoted scalar in printable ASCII: nothing in it is read as markup, nothing in
    it acts on a terminal. Every other character is written with YAML's own escapes, not JSON's
    (JSON writes a character past U+FFFF as two surrogate halves, which YAML reads as two invalid
    characters). A lone surrogate is no character at all (is_text): ValueError."""
    if not is_text(text):
        raise ValueError(f"not text: {text!r}")
    out = []
    for char in text:
        code = ord(char)
        if char in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def is_text(text: str) -> bool:
    """Whether `text` is Unicode text, which a YAML file can hold: a lone surrogate (os.fsdecode's
    form of a byte that is not UTF-8, U+DC80..U+DCFF, or any other) is not, and no escape holds it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: str, host: Host) -> str:
    if host.workspace and within(path, host.workspace):
        return "{workspace}" + path[len(host.workspace.rstrip("/")):]
    if within(path, host.home):
        return "~" + path[len(host.home.rstrip("/")):]
    return path


def render(result: Suggestion, host: Host, extends: str, command: str) -> str:
    from sandboxctl.inert import inert as clean  # comments hold untrusted paths: never a line break in them

    lines = [
        "# yaml-language-server: $schema=https://sandboxctl.dev/schema/policy-v1.json",
        f"# Suggested by `{clean(command, 300)}`",
        f"# from the denials of run {clean(result.run, 80)} (policy {clean(result.policy, 80)}): each grant names the",
        "# denial it answers. Review every one before you use this policy: each grant widens the sandbox.",
        "version: 1",
        f"name: {_scalar(_name(result.policy))}",
        f"description: {_scalar(clean(f'{result.policy} and the grants run {result.run} was denied', 200))}",
        f"extends: {_scalar(extends)}",
    ]
    if result.write or result.create:
        lines.append("filesystem:")
    if result.write:
        lines.append("  write:")
        for path, labels in result.write.items():
            lines += [f"    # {label}" for label in _once(labels)]
            lines.append(f"    - {_scalar(_shown(path, host))}")
    if result.create:
        lines.append("  create:                        # absent now: made before the run, in your home only")
        for path, (kind, _labels) in result.create.items():
            lines.append(f"    - {{path: {_scalar(_shown(path, host))}, kind: {kind}}}")
    if result.allow:
        lines += ["network:", "  allow:"]
        for destination, labels in result.allow.items():
            lines += [f"    # {label}" for label in _once(labels)]
            lines.append(f"    - {_scalar(destination)}")
    if result.empty:
        lines.append("# no grant to suggest: every denial of the run is listed below with the reason")
    if result.refused:
        lines.append("# Not suggested, never granted by `policy suggest`:")
        lines += [f"#   {label}: {clean(why, 300)}" for label, why in result.refused.items()]
    if result.later:
        lines.append("# Not suggested yet:")
        lines += [f"#   {label}: {clean(why, 300)}" for label, why in result.later.items()]
    return "\n".join(lines) + "\n"


def _once(labels: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [label + (f" (x{count})" if count > 1 else "") for label, count in counts.items()]


def _name(policy: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "-", policy)[:50].strip("-._") or "policy"
    return f"{base}-suggested"
