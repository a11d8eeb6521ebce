"""Bringing a standalone proxy up, step by step (part of standalone.py's StandaloneProxy.start).

The proxy secrets' values (only `as: proxy` ones are read), TLS inspection and its CA, the action
log (with its copies: log.forward, --log-stdout), the approval broker, the listening socket, the
`layers` of its run.start, and the files its clients read (the environment, the CA bundle, the
ready file). Each step raises SandboxError with one line and a hint; start() then releases what
the earlier ones made.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

from sandboxctl.errors import SandboxError
from sandboxctl.network.clientfiles import BUNDLE_FILE, CA_FILE, ENV_FILE, ClientFiles, env_text
from sandboxctl.network.standalone_setup import client_environment, format_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandboxctl.network.standalone_setup import ProxyOptions
    from sandboxctl.policy.model import Policy


class StandaloneStart:
    """The start's steps, for StandaloneProxy (a mixin: the state is the proxy's)."""

    policy: Policy
    options: ProxyOptions
    environ: dict[str, str]
    notice: Callable[[str], None]

    def _secret_values(self) -> dict[str, str]:
        from sandboxctl import paths
        from sandboxctl.plan.model import SecretPlan
        from sandboxctl.supervise.secrets import resolve

        others = [s.name for s in self.policy.secrets if s.deliver_as != "proxy"]
        if others:
            self.notice(f"not the proxy's (as: file/env, for a sandbox's command): {', '.join(others)}; not read")
        home = str(paths.home_dir())
        return {s.name: resolve(SecretPlan(s.name, s.source, s.deliver_as, s.ttl, s.hosts), self.environ, home)
                for s in self.policy.secrets if s.deliver_as == "proxy"}

    def _prepare_inspection(self, values: dict[str, str]) -> None:
        from sandboxctl import paths
        from sandboxctl.network.inspection import PhantomSpec, checked_inspection
        from sandboxctl.network.phantoms import derived_placeholder

        net = self.policy.network
        phantom_id = self.options.phantom_id
        specs = [PhantomSpec(s.name, values[s.name], s.hosts, s.ttl,
                             derived_placeholder(phantom_id, s.name) if phantom_id else None)
                 for s in self.policy.secrets if s.deliver_as == "proxy"]
        if not net.inspect and not specs:
            return
        home = str(paths.home_dir())
        upstream_ca = [paths.expand(p, workspace=os.getcwd(), home=home) for p in net.upstream_ca]
        for path in upstream_ca:
            if not os.path.isfile(path):
                raise SandboxError(f"network.upstream_ca: {path} is not a file",
                                   "name a PEM file of CA certificates the proxy should trust upstream")
        self.inspection = checked_inspection(net.inspect, specs, upstream_ca, f"sandboxctl proxy {self.run_id}")

    def _open_log(self, state: Any, values: dict[str, str]) -> None:
        from sandboxctl import paths
        from sandboxctl.log.writer import ActionLog

        if self.options.log_path:
            log_path = os.path.abspath(os.path.expanduser(self.options.log_path))
        else:
            log_path = paths.expand(self.policy.log.path, workspace=os.getcwd(), home=str(paths.home_dir()),
                                    state=str(state))
        self.log = ActionLog(log_path, self.run_id, redact=tuple(values.values()))
        self.log.on_refused = self.late.refused
        copies: list[Any] = []
        if self.policy.log.forward:
            from sandboxctl.log.forward import Forwarder

            self.forwarder = Forwarder(self.policy.log.forward)
            self.forwarder.on_state = lambda **fields: self._write("log.forward", **fields)
            copies.append(self.forwarder)
        if self.options.log_stdout:
            copies.append(_StdoutCopy())
        if copies:
            self.log.forward = copies[0] if len(copies) == 1 else _Copies(copies)

    def _start_broker(self, state: Any) -> None:
        from sandboxctl.approval.broker import Broker
        from sandboxctl.approval.grants import GrantStore, Scope

        policy = self.policy
        self.broker = Broker(
            self.options.approve, policy.approval.timeout, self._write, run_id=self.run_id,
            scope=Scope(policy.name, policy.sha256, ""), store=GrantStore(state),
            describe={"run": self.run_id, "policy": policy.name, "command": list(self.argv_for_log),
                      "workspace": None, "supervisor_pid": os.getpid()},
            scrub=self.log.scrubber.text if self.log.scrubber is not None else None)
        if self.options.approve == "ask":
            from sandboxctl.approval.socket_server import SocketFrontEnd

            self.broker.attach(SocketFrontEnd(self.run_id))
            self.notice(f"approvals for proxy run {self.run_id}: answer with `sandboxctl approve` in another terminal")

    @staticmethod
    def _listen(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            return socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            raise SandboxError(f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}",
                               "stop what holds that address, or pass --listen ADDR:PORT") from None

    def _layers(self) -> dict[str, Any]:
        inspected = [str(p) for p in self.inspection.patterns] if self.inspection else None
        return {
            "sandbox": None,  # nothing here holds the clients: see the module docstring
            "network": {"mode": "proxy",
                        "proxy": f"{format_address(*self.address)}, standalone: its clients are whoever connects, "
                                 "and nothing keeps them from going around it",
                        "allow": [str(p) for p in self.policy.network.allow],
                        "deny": [str(p) for p in self.policy.network.deny],
                        "allow_private": self.policy.network.allow_private, "inspected": inspected},
            "approvals": {"mode": self.options.approve, "via": "socket" if self.options.approve == "ask" else None},
        }

    def _write_client_files(self) -> None:
        from sandboxctl import paths
        from sandboxctl.network.certs import combined_bundle, system_bundle

        directory = self.options.client_dir or paths.join(paths.runtime_dir(), f"proxy-{self.run_id}")
        if self.options.client_dir is None:
            paths.ensure_private_dir(paths.runtime_dir())
        self.files = ClientFiles(os.path.abspath(directory))
        try:
            self.files.prepare()
            bundle = ca = None
            if self.inspection is not None:
                ca_pem = self.inspection.ca_pem
                bundle = str(self.files.write(BUNDLE_FILE, combined_bundle(ca_pem, system_bundle()), 0o644))
                ca = str(self.files.write(CA_FILE, ca_pem, 0o644))
            placeholders = self.inspection.placeholders if self.inspection is not None else {}
            env = client_environment(*self.address, self.policy, bundle, ca, placeholders)
            text = env_text(env, f"sandboxctl proxy {self.run_id} (policy {self.policy.name}): the environment of "
                                 "its clients; placeholders, never a secret's value")
            self.files.write(ENV_FILE, text.encode(), 0o640)
            self.files.write_ready(os.getpid(), self.run_id, format_address(*self.address))
        except OSError as exc:
            raise SandboxError(f"cannot write the clients' files in {directory}: {exc.strerror or exc}",
                               "pass --client-dir DIR with a directory you may write") from None
        if self.options.client_dir is None and self.out is not None:
            self.out(text)


class _StdoutCopy:
    """The log's lines on stdout as they are written (`--log-stdout`: a container's log)."""

    def send(self, line: bytes, event: str, notice: bool = False) -> None:
        with contextlib.suppress(OSError):
            data = memoryview(line + b"\n")
            while data:
                data = data[os.write(1, data):]


class _Copies:
    def __init__(self, copies: list[Any]) -> None:
        self.copies = copies

    def send(self, line: bytes, event: str, notice: bool = False) -> None:
        for copy in self.copies:
            copy.send(line, event, notice)
