"""The version-1 policy schema (SPEC "Policy file"), and the small parsers for its value types."""

from __future__ import annotations

import re

from sandboxctl import units
from sandboxctl.policy.schema import (
    Boolean,
    Choice,
    FlagOrList,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    OneOrMany,
    Record,
    SizeValue,
    Text,
    Version,
)

PATH_VARIABLES = ("{workspace}", "{home}")
_VARIABLE = re.compile(r"\{[^}]*\}")
_GLOB_CHARS = set("*?[")
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
SYSCALL_NAME = r"[a-z_][a-z0-9_]{0,63}"


def check_path(text: str, *, allow_glob: bool = False) -> str:
    """Policy paths are absolute, or start with ~, {home} or {workspace}; nothing else is meaningful."""
    if not text:
        raise ValueError("empty path")
    if "\0" in text or "\n" in text:
        raise ValueError(f"{text!r}: control characters in a path")
    for variable in _VARIABLE.findall(text):
        if variable not in PATH_VARIABLES:
            raise ValueError(f"{text!r}: unknown variable {variable} (known: {', '.join(PATH_VARIABLES)})")
    if "{" in _VARIABLE.sub("", text) or "}" in _VARIABLE.sub("", text):
        raise ValueError(f"{text!r}: unbalanced braces")
    if not (text.startswith("/") or text == "~" or text.startswith("~/")
            or any(text.startswith(v) for v in PATH_VARIABLES)):
        if text.startswith("~"):
            raise ValueError(f"{text!r}: only ~ and ~/ are supported (not ~user)")
        raise ValueError(f"{text!r}: relative path; write it as {{workspace}}/{text} or an absolute path")
    for variable in PATH_VARIABLES:
        if variable in text[1:] and not text.startswith(variable):
            raise ValueError(f"{text!r}: {variable} may only start a path")
    after_root = text.split("/", 1)[1] if "/" in text else ""
    if ".." in after_root.split("/"):
        raise ValueError(f"{text!r}: '..' is not allowed in policy paths")
    if not allow_glob and _GLOB_CHARS & set(text):
        raise ValueError(f"{text!r}: wildcards are only allowed in filesystem.deny and filesystem.protect")
    if ("**" in text and not text.endswith("/**")) or text.count("**") > 1:
        prefix, _, name = text.partition("/**/")
        if not name or "/" in name or "**" in name or _GLOB_CHARS & set(prefix):
            raise ValueError(f"{text!r}: '**' is supported as DIR/**/NAME (NAME at any depth under DIR) and "
                             "DIR/** (DIR and all beneath it), e.g. {workspace}/**/.env*")
    return text


def check_env_pattern(text: str) -> str:
    if not re.fullmatch(rf"{ENV_NAME}\*?", text):
        raise ValueError(f"{text!r}: not a variable name or a PREFIX_* pattern")
    return text


SECRET_SOURCES = ("env", "file", "command")


def check_secret_source(text: str) -> str:
    kind, sep, value = text.partition(":")
    if not sep or kind not in SECRET_SOURCES or not value.strip():
        raise ValueError(f"{text!r}: a secret source is env:NAME, file:PATH or command:CMD")
    if kind == "env" and not re.fullmatch(ENV_NAME, value):
        raise ValueError(f"{text!r}: {value!r} is not a variable name")
    if kind == "file":
        check_path(value)
    return text


def check_request_rule(text: str) -> str:
    from sandboxctl.network.rules import parse_rule  # pure: a regex per rule

    parse_rule(text)
    return text


def check_secret(spec: dict) -> list[tuple[str, str | None]]:
    """as: proxy and hosts go together, in the same file (one place says where a secret may go)."""
    problems: list[tuple[str, str | None]] = []
    if spec.get("as") == "proxy" and not spec.get("hosts"):
        problems.append(("as: proxy needs hosts: the hosts whose requests get the real value",
                         "e.g. hosts: [api.anthropic.com]"))
    if "hosts" in spec and spec.get("as") != "proxy":
        problems.append(("hosts is only for as: proxy (the value never enters the sandbox)",
                         "add as: proxy, or remove hosts"))
    return problems


FORWARD_SCHEMES = ("syslog+udp", "syslog+tcp")


def check_forward(text: str) -> str:
    """"syslog" (the local /dev/log), or syslog+udp://HOST:PORT / syslog+tcp://HOST:PORT (RFC 5424)."""
    if text == "syslog":
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in FORWARD_SCHEMES:
        raise ValueError(f"{text!r}: a log copy goes to \"syslog\", \"syslog+udp://HOST:PORT\" or "
                         "\"syslog+tcp://HOST:PORT\"")
    host, port = split_host_port(rest)
    if not host or port is None:
        raise ValueError(f"{text!r}: give the collector as HOST:PORT (an IPv6 address in brackets)")
    return text


def split_host_port(text: str) -> tuple[str, int | None]:
    """'host:514' or '[::1]:514' -> (host, port); port None when absent or not a number 1-65535."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
        if not host:
            host, port_text = port_text, ""
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or "/" in host or not host.strip():
        return host, None
    return host, int(port_text)


_JSON_KEY = re.compile(r"(?:\*|[A-Za-z0-9_@.-]+)")


def check_json_key(text: str) -> str:
    """'~/.claude.json#mcpServers' or '~/.claude.json#projects.*.mcpServers'."""
    path, sep, keys = text.partition("#")
    if not sep or not keys:
        raise ValueError(f"{text!r}: write it as PATH#KEY (e.g. ~/.claude.json#mcpServers)")
    check_path(path)
    if any(not part or not _JSON_KEY.fullmatch(part) or "." in part for part in keys.split(".")):
        raise ValueError(f"{text!r}: KEY is names (or *) joined by dots")
    return text


def check_extends(text: str) -> str:
    if not text or "\0" in text or "\n" in text:
        raise ValueError(f"{text!r}: not a policy name or relative path")
    if text.startswith("/"):
        raise ValueError(f"{text!r}: extends takes a built-in name or a path relative to this file")
    return text


_path = Text(parse=check_path, description="A path: absolute, ~/…, {home}/… or {workspace}/…")
_path_glob = Text(parse=lambda t: check_path(t, allow_glob=True),
                  description="A path as above; * ? [ ] wildcards allowed")
_unix_path = Text(parse=check_path, max_length=4000,
                  description="A socket path (or a directory of sockets): absolute, ~/…, {home}/… or {workspace}/…")
_duration = Text(parse=units.parse_duration, pattern=r"(?:\d+(?:ms|s|m|h|d))+",
                 description="A duration such as 90s, 30m, 2h")
_host = Text(parse=units.parse_host_pattern,
             description="host, host:port, *.domain[:port], IPv4[:port] or [IPv6][:port]")

POLICY_SCHEMA = Record(
    description="A sandboxctl policy (version 1).",
    required=("version",),
    fields={
        "version": Version(),
        "name": Text(pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", description="Short name of the policy."),
        "description": Text(max_length=500, description="One sentence: what the policy grants."),
        "extends": OneOrMany(Text(parse=check_extends, max_length=1024),
                             description="Built-in policy names or paths relative to this file."),
        "workspace": Choice(("rw", "ro", "none", "overlay"),
                            "How the --workspace directory is mounted; overlay: writes are held in a layer of "
                            "their own until `sandboxctl apply`."),
        "backend": Choice(("bwrap", "gvisor"), "Isolation backend: bwrap, or gvisor (the same plan under runsc)."),
        "filesystem": Record(description="File-system grants.", fields={
            "read": ListOf(_path, description="Visible, read-only."),
            "write": ListOf(_path, description="Visible, writable; must exist (or be listed in create)."),
            "tmpfs": ListOf(_path, description="Fresh empty writable directories, gone at exit."),
            "deny": ListOf(_path_glob, description="Hidden even under a granted parent."),
            "protect": ListOf(_path_glob, description="Read-only even under a writable parent."),
            "protect_json": ListOf(Text(parse=check_json_key),
                                   description="PATH#KEY.PATH: keys of a writable JSON file that are put back at "
                                               "the end of the run (* matches any key at its level)."),
            "create": ListOf(Record(required=("path",), fields={
                "path": _path,
                "kind": Choice(("dir", "file"), "What to make (default dir)."),
                "mode": Text(pattern=r"0?[0-7]{3}", max_length=4,
                             description='Octal, quoted ("0600"); default: what mkdir/open make under the umask.'),
                "content": Text(max_length=65536, description="A new file's content (nothing is ever overwritten)."),
            }), max_items=64, description="Absent filesystem.write grants in HOME that sandboxctl makes before the "
                                          "run, as the program would on its first start; each one is logged."),
        }),
        "exec": Record(description="Where executables may run from.", fields={
            "allow": ListOf(_path, description="Directories or files that may be executed."),
        }),
        "network": Record(description="Network access.", fields={
            "mode": Choice(("none", "proxy", "host"), "none: loopback only; proxy: allowlist; host: shared."),
            "allow": ListOf(_host),
            "deny": ListOf(_host, description="Wins over allow."),
            "allow_private": Boolean(description="Allow loopback, private and metadata addresses."),
            "listen": FlagOrList(Integer(0, 65535), max_items=64, description=(
                "Servers inside: true (any port on the sandbox's own loopback; none/proxy modes), false, or only "
                "these TCP ports (0: a port the kernel picks). Under network: host only listed ports may bind.")),
            "unix": ListOf(_unix_path, max_items=64, description=(
                "Pathname UNIX sockets (or directories of them) the command may connect to; a read grant never "
                "implies it.")),
            "upstream_ca": ListOf(_path, max_items=32,
                                  description="Extra CA files the proxy trusts when it dials out."),
            "inspect": MapOf(
                Nullable(Record(fields={
                    "allow": ListOf(Text(parse=check_request_rule, max_length=8200), max_items=256,
                                    description="METHOD PATH-GLOB ('*' any method; * within a segment, ** across)"),
                }, description="Request rules; without allow, every request is allowed (and logged).")),
                key_pattern=r"[A-Za-z0-9*.:\[\]_-]{1,260}", key_meaning="a host pattern",
                key_parse=units.parse_host_pattern, max_items=128,
                description="Hosts read request by request (HTTPS terminated with a per-run CA)."),
        }),
        "env": Record(description="Environment of the command.", fields={
            "pass": ListOf(Text(parse=check_env_pattern), description="Copied from the caller when set."),
            "set": MapOf(Text(max_length=32768), description="Set to these values."),
        }),
        "secrets": MapOf(
            Record(required=("from",), consistency=check_secret, fields={
                "from": Text(parse=check_secret_source, max_length=4096,
                             description="env:NAME, file:PATH or command:CMD"),
                "as": Choice(("file", "env", "proxy"), "file: /run/secrets/NAME (0400); env: the variable; "
                             "proxy: a placeholder inside, the real value put into requests to hosts by the proxy."),
                "hosts": ListOf(_host, max_items=64, description="as: proxy: the hosts whose requests get the value."),
                "ttl": _duration,
            }),
            description="Secrets injected for this run only; values never logged.",
        ),
        "syscalls": Record(description="Adjustments to the seccomp baseline.", fields={
            "deny": ListOf(Text(pattern=SYSCALL_NAME), description="Added to the baseline."),
            "allow": ListOf(Text(pattern=SYSCALL_NAME), description="Taken out of the baseline."),
        }),
        "limits": Record(description="Resource limits.", fields={
            "timeout": _duration,
            "memory": SizeValue(),
            "pids": Integer(1, 1 << 22),
            "file_size": SizeValue(),
            "open_files": Integer(16, 1 << 20),
        }),
        "approval": Record(description="How boundary escapes are answered.", fields={
            "mode": Choice(("ask", "deny", "allow")),
            "via": Choice(("tty", "socket")),
            "timeout": _duration,
        }),
        "landlock": Choice(("required", "best-effort"), "Refuse to run without full Landlock, or degrade."),
        "ci": Record(description="Continuous integration.", fields={
            "fail_on_denial": Boolean(description="A command that succeeds but was denied anything exits 123 "
                                                  "(as run --fail-on-denial): the step fails and says which."),
        }),
        "log": Record(description="The action log.", fields={
            "path": _path,
            "file_events": Choice(("none", "write", "all")),
            "exec_events": Boolean(description="Log every program executed inside (seccomp notification)."),
            "forward": ListOf(Text(parse=check_forward, description="\"syslog\", \"syslog+udp://HOST:PORT\" or "
                                                                   "\"syslog+tcp://HOST:PORT\""),
                              description="Copies of every record, sent as it is written (RFC 5424)."),
        }),
    },
)


def json_schema() -> dict:
    schema = POLICY_SCHEMA.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sandboxctl.dev/schema/policy-v1.json",
        "title": "sandboxctl policy",
        **schema,
    }
