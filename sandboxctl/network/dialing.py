"""A proxied connection's destination: the decision for host:port, then the dial (part of connection.py).

The policy's answer (or a human's, through the approval hook: only a literal True approves),
a placeholder of a secret used as a host name refused before any DNS lookup, one resolution,
every address screened (private ones stay blocked unless allowed), and the first that passed
and answers dialled within the connect timeout. Each step sets the connection's rule, decision
and error, which its `net` record carries.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

from sandboxctl.network import addresses
from sandboxctl.network.addresses import IPAddress, Verdict
from sandboxctl.network.refusal import Refusal, dial_failure, policy_refusal, stopped
from sandboxctl.network.relay import _errno_name
from sandboxctl.network.wire import SOCKS_HOST_UNREACHABLE, SOCKS_NOT_ALLOWED

if TYPE_CHECKING:
    from sandboxctl.network.proxy import ProxyServer


class Dialing:
    """Deciding and dialling, for connection._Connection (a mixin: the state is the connection's)."""

    server: ProxyServer

    def _open(self, host: str, port: int) -> socket.socket | Refusal:
        """Decide, resolve once, screen the addresses and dial the first that passed and answers."""
        refusal = self.decide(host, port)
        return refusal if refusal is not None else self.connect(host, port)

    def decide(self, host: str, port: int) -> Refusal | None:
        """The policy's (or a human's) answer for host:port; None: allowed. Sets rule and decision."""
        server = self.server
        dest = addresses.format_destination(host, port)
        leaked = server.inspection.phantoms.leaks_in(host.encode(), host, port) if server.inspection else []
        if leaked:  # the placeholder as a host name would reach a DNS server
            self.rule = f"leak: {leaked[0]}"
            self.decision = "deny"
            return Refusal(403, SOCKS_NOT_ALLOWED, f"sandboxctl: the host name carries the placeholder of the "
                            f"secret {leaked[0]}; refused.", "http_request_denied")
        verdict = addresses.match_destination(server.policy, host, port)
        self.rule = verdict.rule
        if verdict.kind == "deny":
            return self._policy_refusal(verdict, host, dest)
        if verdict.kind == "unlisted":
            asked = server.ask is not None
            if not self._ask(host, port):
                self.rule = "not in network.allow (not approved)" if asked else "not in network.allow"
                return self._policy_refusal(verdict, host, dest, declined=asked)
            self.rule = "not in network.allow (approved)"
        return None

    def connect(self, host: str, port: int) -> socket.socket | Refusal:
        """Resolve once, screen the addresses and dial the first that passed (host:port is allowed)."""
        server = self.server
        dest = addresses.format_destination(host, port)
        if self.aborted:
            return self._stopped()
        literal = addresses.parse_ip(host)
        try:
            infos = server.resolver(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                    socket.AI_NUMERICHOST if literal is not None else 0)
        except (OSError, UnicodeError) as exc:
            self.decision = "allow"
            self.error = f"could not resolve {host}: {_errno_name(exc) if isinstance(exc, OSError) else exc}"
            return Refusal(502, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "dns_error", self.error)
        sockaddrs: dict[IPAddress, tuple[Any, ...]] = {}
        order: list[IPAddress] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            addr = addresses.parse_ip(str(sockaddr[0]))
            if addr is not None and addr not in sockaddrs:
                sockaddrs[addr] = sockaddr
                order.append(addr)
        local = frozenset() if server.policy.allow_private else addresses.local_addresses()
        passed, refusal = addresses.screen_addresses(server.policy, order, port, local)
        if not passed:
            if refusal is None:
                self.decision = "allow"
                self.error = f"could not resolve {host}: no IPv4 or IPv6 address"
                return Refusal(502, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "dns_error", self.error)
            self.rule = refusal.rule
            return self._policy_refusal(refusal, host, dest)
        self.decision = "allow"
        return self._dial(passed, sockaddrs, port, dest)

    def _dial(self, passed: list[IPAddress], sockaddrs: dict[IPAddress, tuple[Any, ...]], port: int,
              dest: str) -> socket.socket | Refusal:
        deadline = time.monotonic() + 2 * self.server.connect_timeout
        failure: tuple[IPAddress, OSError] | None = None
        for addr in passed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sock = socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                failure = (addr, exc)
                continue
            if not self.attach(sock):
                sock.close()
                return self._stopped()
            try:
                sock.settimeout(min(self.server.connect_timeout, remaining))
                sock.connect(sockaddrs[addr])
                sock.settimeout(None)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                failure = (addr, exc)
                with self.lock:
                    self.upstream = None
                sock.close()
                if self.aborted:
                    return self._stopped()
                continue
            self.address = str(addr)
            return sock
        if failure is None:
            self.error = f"could not connect to {dest}: timed out"
            return Refusal(504, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {self.error}.", "connection_timeout",
                            self.error)
        refusal = dial_failure(dest, *failure, self.server.connect_timeout)
        self.error = refusal.error
        return refusal

    def _ask(self, host: str, port: int) -> bool:
        """The approval hook's answer; only a literal True approves (fail closed)."""
        ask = self.server.ask
        if ask is None:
            return False
        try:
            return ask(host, port, self.peer_port()) is True
        except Exception as exc:  # a failing approval channel denies, it does not crash
            self.error = f"approval failed: {exc!r}"
            return False

    def _stopped(self) -> Refusal:
        self.decision = "deny"
        self.error = self.error or "the proxy was stopped"
        return stopped(self.error)

    def _policy_refusal(self, verdict: Verdict, host: str, dest: str, declined: bool = False) -> Refusal:
        self.decision = "deny"
        return policy_refusal(verdict, host, dest, self.port, declined)
