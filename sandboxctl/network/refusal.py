"""Why a proxied connection was not relayed, in every form it is reported.

A refusal is told to the client (an HTTP status or a SOCKS5 reply code, with one sentence an
agent can act on: the rule that refused and how a human would allow it), written to the `net`
record (`error`), and, for plain HTTP, named in the Proxy-Status header.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from sandboxctl.network import addresses
from sandboxctl.network.addresses import IPAddress, Verdict
from sandboxctl.network.relay import _errno_name
from sandboxctl.network.wire import (
    SOCKS_FAILURE,
    SOCKS_HOST_UNREACHABLE,
    SOCKS_NET_UNREACHABLE,
    SOCKS_NOT_ALLOWED,
    SOCKS_REFUSED,
    HttpError,
)


@dataclass
class Refusal:
    """One refusal: the HTTP status, the SOCKS5 code, the sentence, the Proxy-Status error kind."""

    status: int
    socks: int
    message: str
    proxy_status: str
    error: str | None = None

    def http(self) -> bytes:
        return HttpError(self.status, self.message, self.proxy_status).to_bytes()


def policy_refusal(verdict: Verdict, host: str, dest: str, port: int | None, declined: bool = False) -> Refusal:
    """The one sentence an agent gets back: the rule that refused, and how a human would allow it."""
    if verdict.kind == "deny" and verdict.address is None:
        message = (f"sandboxctl: {dest} is blocked by this sandbox's network.deny rule {verdict.pattern}; "
                   "only a human can change that, by editing the policy.")
        kind = "http_request_denied"
    elif verdict.kind == "deny":
        message = (f"sandboxctl: {host} resolves to {verdict.address}, which this sandbox's network.deny rule "
                   f"{verdict.pattern} blocks; only a human can change that, by editing the policy.")
        kind = "destination_ip_prohibited"
    elif verdict.kind == "private":
        listed = addresses.format_destination(str(verdict.address), port)
        subject = (f"{host} resolves to {verdict.address} ({verdict.address_label}),"
                   if str(verdict.address) != host else f"{host} ({verdict.address_label}) is")
        message = (f"sandboxctl: {subject} an address this sandbox does not dial (network.allow_private: false); "
                   f"a human can allow it with --allow-net {listed} or with network.allow_private: true "
                   "in the policy.")
        kind = "destination_ip_prohibited"
    else:
        approval = " and the request to reach it was not approved" if declined else ""
        message = (f"sandboxctl: {dest} is not in this sandbox's network.allow{approval}; "
                   f"a human can allow it with --allow-net {dest} or in the policy.")
        kind = "http_request_denied"
    return Refusal(403, SOCKS_NOT_ALLOWED, message, kind)


def stopped(error: str) -> Refusal:
    return Refusal(503, SOCKS_FAILURE, "sandboxctl: the sandbox's proxy is shutting down.", "proxy_internal_error",
                   error)


def dial_failure(dest: str, addr: IPAddress, exc: OSError, connect_timeout: float) -> Refusal:
    """Every address that passed was tried and the last one failed with exc."""
    if isinstance(exc, TimeoutError):
        error = f"could not connect to {dest} ({addr}): no answer within {connect_timeout:g} s"
        return Refusal(504, SOCKS_HOST_UNREACHABLE, f"sandboxctl: {error}.", "connection_timeout", error)
    error = f"could not connect to {dest} ({addr}): {_errno_name(exc)}"
    code = {errno.ECONNREFUSED: SOCKS_REFUSED, errno.ENETUNREACH: SOCKS_NET_UNREACHABLE}.get(
        exc.errno or 0, SOCKS_HOST_UNREACHABLE)
    status = "connection_refused" if code == SOCKS_REFUSED else "destination_unavailable"
    return Refusal(502, code, f"sandboxctl: {error}.", status, error)
