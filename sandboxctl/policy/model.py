"""The merged, validated policy as frozen data: what the plan builder reads."""

from __future__ import annotations

from sandboxctl import units
from sandboxctl.record import Record
from sandboxctl.units import HostPattern

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class Filesystem(Record):
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    protect_json: tuple[str, ...] = ()  # PATH#KEY.PATH: keys of a writable JSON file put back at the end
    create: tuple[dict, ...] = ()  # {path, kind, mode, content}: absent writable grants made before the run


class Network(Record):
    mode: str = "none"
    allow: tuple[HostPattern, ...] = ()
    deny: tuple[HostPattern, ...] = ()
    allow_private: bool = False
    listen: bool | tuple[int, ...] = True  # servers inside: any port (none/proxy), none, or these ports
    unix: tuple[str, ...] = ()  # pathname UNIX sockets (or directories of them) the command may connect to
    upstream_ca: tuple[str, ...] = ()
    # host pattern -> request rules ("GET /repos/**"); None: every request allowed (read and logged)
    inspect: tuple[tuple[str, tuple[str, ...] | None], ...] = ()


class Env(Record):
    passthrough: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()


class Secret(Record):
    name: str
    source: str  # "env:NAME" | "file:PATH" | "command:CMD" — a reference, never a value
    deliver_as: str = "file"  # file | env | proxy
    ttl: float | None = None
    hosts: tuple[str, ...] = ()  # as: proxy: the host patterns whose requests get the value

    @property
    def source_kind(self) -> str:
        return self.source.partition(":")[0]

    @property
    def source_ref(self) -> str:
        return self.source.partition(":")[2]


class Limits(Record):
    timeout: float | None = None
    memory: int | None = None
    pids: int | None = None
    file_size: int | None = None
    open_files: int | None = None


class Approval(Record):
    mode: str = "ask"
    via: str = "tty"
    timeout: float = 60.0


class CiSettings(Record):
    fail_on_denial: bool = False  # a successful command with denials exits 123 (errors.EXIT_DENIED)


class LogSettings(Record):
    path: str = "{state}/actions.jsonl"
    file_events: str = "write"
    exec_events: bool = True
    forward: tuple[str, ...] = ()  # syslog | syslog+udp://HOST:PORT | syslog+tcp://HOST:PORT


class Policy(Record):
    name: str
    description: str = ""
    source: str = ""
    chain: tuple[str, ...] = ()
    sha256: str = ""
    workspace: str = "none"
    backend: str = "bwrap"
    filesystem: Filesystem = Filesystem()
    exec_allow: tuple[str, ...] | None = None  # None: anything readable may be executed
    network: Network = Network()
    env: Env = Env()
    secrets: tuple[Secret, ...] = ()
    syscalls_deny: tuple[str, ...] = ()
    syscalls_allow: tuple[str, ...] = ()
    limits: Limits = Limits()
    approval: Approval = Approval()
    landlock: str = "required"
    log: LogSettings = LogSettings()
    ci: CiSettings = CiSettings()


def policy_from_data(data: dict[str, Any], *, source: str, chain: tuple[str, ...], sha256: str) -> Policy:
    """Build the frozen Policy from merged, already-validated data (missing keys take safe defaults)."""
    fs = data.get("filesystem", {})
    net = data.get("network", {})
    env = data.get("env", {})
    limits = data.get("limits", {})
    approval = data.get("approval", {})
    log = data.get("log", {})
    syscalls = data.get("syscalls", {})
    exec_allow = data.get("exec", {}).get("allow")

    def size(value: Any) -> int | None:
        return None if value is None else units.parse_size(value)

    def duration(value: Any) -> float | None:
        return None if value is None else units.parse_duration(value)

    return Policy(
        name=data.get("name", "unnamed"),
        description=data.get("description", ""),
        source=source,
        chain=chain,
        sha256=sha256,
        workspace=data.get("workspace", "none"),
        backend=data.get("backend", "bwrap"),
        filesystem=Filesystem(**{k: tuple(fs.get(k, ())) for k in ("read", "write", "tmpfs", "deny", "protect",
                                                                    "protect_json", "create")}),
        exec_allow=None if exec_allow is None else tuple(exec_allow),
        network=Network(
            mode=net.get("mode", "none"),
            allow=tuple(units.parse_host_pattern(h) for h in net.get("allow", ())),
            deny=tuple(units.parse_host_pattern(h) for h in net.get("deny", ())),
            allow_private=net.get("allow_private", False),
            listen=_listen(net.get("listen", True)),
            unix=tuple(net.get("unix", ())),
            upstream_ca=tuple(net.get("upstream_ca", ())),
            inspect=_inspect_entries(net.get("inspect", {})),
        ),
        env=Env(passthrough=tuple(env.get("pass", ())), set=tuple(sorted(env.get("set", {}).items()))),
        secrets=tuple(
            Secret(name, spec["from"], spec.get("as", "file"), duration(spec.get("ttl")),
                   tuple(spec.get("hosts", ())) if spec.get("as") == "proxy" else ())
            for name, spec in sorted(data.get("secrets", {}).items())
        ),
        syscalls_deny=tuple(syscalls.get("deny", ())),
        syscalls_allow=tuple(syscalls.get("allow", ())),
        limits=Limits(
            timeout=duration(limits.get("timeout")),
            memory=size(limits.get("memory")),
            pids=limits.get("pids"),
            file_size=size(limits.get("file_size")),
            open_files=limits.get("open_files"),
        ),
        approval=Approval(
            mode=approval.get("mode", "ask"),
            via=approval.get("via", "tty"),
            timeout=duration(approval.get("timeout")) or 60.0,
        ),
        landlock=data.get("landlock", "required"),
        log=LogSettings(path=log.get("path", LogSettings._field_defaults["path"]),
                        file_events=log.get("file_events", "write"), exec_events=log.get("exec_events", True),
                        forward=tuple(log.get("forward", ()))),
        ci=CiSettings(fail_on_denial=data.get("ci", {}).get("fail_on_denial", False)),
    )


def _listen(value: Any) -> bool | tuple[int, ...]:
    """true/false stay flags; a list is the sorted set of ports (duplicates from `extends` dropped)."""
    return value if isinstance(value, bool) else tuple(sorted(set(value)))
def _inspect_entries(raw: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """network.inspect by normalized host pattern; two spellings of one host (API.x and api.x, from
    different files) join their rules."""
    merged: dict[str, tuple[str, ...] | None] = {}
    for host, spec in raw.items():
        key = str(units.parse_host_pattern(host))
        rules = None if not spec or "allow" not in spec else tuple(spec["allow"])
        if key in merged:
            before = merged[key]
            rules = before if rules is None else rules if before is None else (
                *before, *(r for r in rules if r not in before))
        merged[key] = rules
    return tuple(sorted(merged.items()))
