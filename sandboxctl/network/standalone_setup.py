"""What a standalone proxy will be, before it runs: its options, their checks, its clients' environment.

Pure (no socket, no file): `sandboxctl proxy` checks these before anything starts, and the
Kubernetes export (export/k8s_sidecar.py) writes manifests that these checks accept.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from sandboxctl.errors import SandboxError
from sandboxctl.network.clientenv import LOOPBACK_NAMES, ca_variables, proxy_variables
from sandboxctl.record import Record

if TYPE_CHECKING:
    from sandboxctl.policy.model import Policy

DEFAULT_LISTEN = "127.0.0.1:3128"
APPROVE_MODES = ("deny", "allow", "ask")


class ProxyOptions(Record):
    listen: str = DEFAULT_LISTEN
    approve: str = "deny"  # deny | allow | ask (through the approval socket, never a terminal prompt)
    log_path: str | None = None  # None: the policy's log.path
    client_dir: str | None = None  # None: a private directory of its own, and the environment on stdout
    phantom_id: str | None = None  # derived placeholders (network/phantoms.py); loopback only
    log_stdout: bool = False  # every record also on stdout (a container's log)


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT (IPv6 in brackets) -> (address, port); a name is refused: bind what you mean."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SandboxError(f"--listen {text!r}: not ADDR:PORT", "for example --listen 127.0.0.1:3128")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SandboxError(f"--listen {text!r}: {host or 'the address'} is not an IP address",
                           "for example --listen 127.0.0.1:3128 (or [::1]:3128)") from None
    return str(address), int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check(policy: Policy, options: ProxyOptions) -> list[str]:
    """Refuse what cannot be served (exit 125); return the launch-time confirmations."""
    from sandboxctl.network.phantoms import PHANTOM_ID

    mode = policy.network.mode
    if mode != "proxy":
        what = ("has network: none: it allows no destination, so its proxy would refuse everything"
                if mode == "none" else "has network: host: it reaches everything directly; there is no proxy to run")
        raise SandboxError(f"policy {policy.name} {what}", "use a policy with network.mode: proxy")
    if options.approve not in APPROVE_MODES:
        raise SandboxError(f"--approve {options.approve!r}: must be one of {', '.join(APPROVE_MODES)}",
                           "a standalone proxy never prompts on its terminal: ask goes to `sandboxctl approve`")
    host, port = parse_listen(options.listen)
    if options.phantom_id is not None:
        if not PHANTOM_ID.fullmatch(options.phantom_id):
            raise SandboxError(f"--phantom-id {options.phantom_id!r}: 16 to 100 lower-case letters, digits and '-'",
                               "for example the pod's UID (metadata.uid)")
        if not is_loopback(host):
            raise SandboxError("--phantom-id makes placeholders anyone who knows the id can use through the proxy: "
                               f"it is refused on {format_address(host, port)}",
                               "listen on a loopback address (127.0.0.1)")
    if options.log_stdout and options.client_dir is None:
        raise SandboxError("--log-stdout: stdout carries the clients' environment",
                           "pass --client-dir DIR too: the environment is then written to DIR/env")
    confirmations = []
    if not is_loopback(host):
        secrets = [s.name for s in policy.secrets if s.deliver_as == "proxy"]
        text = (f"--listen {format_address(host, port)} opens the proxy to the network: whoever can reach it may use "
                "its allowlist")
        if secrets:
            text += f" and, with a placeholder, the secrets {', '.join(secrets)}"
        confirmations.append(text)
    if options.approve == "allow":
        confirmations.append("--approve allow lets every destination through (and logs it)")
    return confirmations


def client_environment(host: str, port: int, policy: Policy, bundle: str | None, ca: str | None,
                       placeholders: dict[str, str]) -> dict[str, str]:
    """What a client sets to use this proxy: where it is (a wildcard address is reached at loopback),
    the CA variables when something is inspected, and the placeholders (never the values)."""
    from sandboxctl.plan.network import names_host_loopback

    target = host
    if ipaddress.ip_address(host).is_unspecified:
        target = "::1" if ":" in host else "127.0.0.1"
    allowed = [pattern.host for pattern in policy.network.allow]
    env = proxy_variables(target, port, "" if names_host_loopback(allowed) else LOOPBACK_NAMES)
    if bundle is not None and ca is not None:
        env.update(ca_variables(bundle, ca))
    env.update(placeholders)
    return env
