"""What the proxy reads request by request: inspected hosts, their request rules, phantom secrets.

This is the engine behind `network.inspect` and `secrets.*.as: proxy`, usable without a sandbox
(a standalone proxy or a sidecar builds one from the policy's network and secrets settings):

    inspection = Inspection({"api.github.com": ["GET /repos/acme/**"]},
                            [PhantomSpec("GITHUB_TOKEN", token, ["api.github.com"])],
                            upstream_ca=["/etc/corp-ca.pem"])
    inspection.ca_pem                # what the clients must trust
    inspection.placeholders          # NAME -> the value clients get instead of the secret
    ProxyServer(listener, NetPolicy(...), log, inspection=inspection)

A host is inspected when an entry of network.inspect covers it, or when a proxy secret is bound
to it (then every request is allowed unless an inspect entry says otherwise): its HTTPS is
terminated with a certificate from the run's CA, and each request is judged on its own.
The CA and the upstream trust are made on first use, so building an Inspection is cheap and an
inspection that never terminates TLS never imports `cryptography`.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from sandboxctl.network.phantoms import PhantomSecrets, PhantomSpec
from sandboxctl.network.rules import HostRules, compile_inspect, most_specific
from sandboxctl.units import HostPattern

if TYPE_CHECKING:
    from sandboxctl.network.certs import RunAuthority

__all__ = ["Inspection", "PhantomSpec"]


class Inspection:
    """Inspected hosts, request rules, phantom secrets, the run's CA and the upstream trust."""

    def __init__(self, inspect: Mapping[str, Sequence[str] | None], secrets: Iterable[PhantomSpec] = (),
                 upstream_ca: Sequence[str] = (), *, label: str = "sandboxctl run") -> None:
        self.entries: tuple[HostRules, ...] = compile_inspect(inspect)
        self.phantoms = PhantomSecrets(secrets)
        self.upstream_ca = tuple(upstream_ca)
        self.label = label
        bound = [HostRules(pattern, None) for pattern in self.phantoms.host_patterns]
        self._bound = tuple(bound)
        self._lock = threading.Lock()
        self._authority: RunAuthority | None = None
        self._upstream: ssl.SSLContext | None = None

    def __bool__(self) -> bool:
        return bool(self.entries or self._bound)

    @property
    def patterns(self) -> list[HostPattern]:
        """Every host pattern that is inspected (what the CA's name constraints permit)."""
        return list(dict.fromkeys(entry.pattern for entry in (*self.entries, *self._bound)))

    @property
    def placeholders(self) -> dict[str, str]:
        return self.phantoms.placeholders

    def rules_for(self, host: str, port: int) -> HostRules | None:
        """The request rules for host:port, or None when it is not inspected (an opaque tunnel)."""
        entry = most_specific(self.entries, host, port)
        if entry is not None:
            return entry
        return most_specific(self._bound, host, port)

    # ------------------------------------------------------------------ TLS, made on first use
    @property
    def authority(self) -> RunAuthority:
        with self._lock:
            if self._authority is None:
                from sandboxctl.network.certs import RunAuthority

                self._authority = RunAuthority(self.patterns, self.label)
            return self._authority

    @property
    def ca_pem(self) -> bytes:
        return self.authority.pem

    def upstream_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._upstream is None:
                from sandboxctl.network.tls import upstream_context

                self._upstream = upstream_context(self.upstream_ca)
            return self._upstream

    def check(self) -> None:
        """Make the CA and load the upstream trust now (at launch): OSError / ssl.SSLError on a bad CA file."""
        self.authority  # noqa: B018 - made for its side effect
        self.upstream_context()


def checked_inspection(inspect: Mapping[str, object], specs: list[PhantomSpec], upstream_ca: Sequence[str],
                       label: str) -> Inspection:
    """An Inspection made and checked at launch (a sandboxctl run's and a standalone proxy's): a
    bad CA file or a secret that cannot go into a header is one line and a hint, never a traceback."""
    from sandboxctl.errors import SandboxError

    try:
        inspection = Inspection(dict(inspect), specs, upstream_ca, label=label)
        inspection.check()
    except (OSError, ssl.SSLError) as exc:
        raise SandboxError(f"network.upstream_ca: cannot load the CA certificates: {exc}",
                           "name PEM files of CA certificates the proxy should trust upstream") from None
    except ValueError as exc:  # a proxy secret's value that cannot go into a header
        raise SandboxError(str(exc), "a proxy secret is one line of text (a token)") from None
    return inspection
