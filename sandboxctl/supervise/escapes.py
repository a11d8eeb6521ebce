"""The run's boundary escapes outside seccomp: the approval broker, and the network proxy.

Part of the Supervisor (runner.py). The broker's front end starts before anything runs; the
proxy starts at the first connection to its port (its import and threads are paid only by
runs that use the network); TLS inspection's CA is made before the sandbox exists.
"""

from __future__ import annotations

import os

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import fd_budget, processes

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import selectors
    from typing import Any


class Escapes:
    """Approvals, the proxy and TLS inspection (a mixin of runner.Supervisor)."""

    def _start_broker(self) -> None:
        """One broker for every escape; its front end starts before anything runs (a prompt that
        cannot work is a failed launch, not a silent deny)."""
        from sandboxctl.approval.broker import Broker
        from sandboxctl.approval.grants import GrantStore, Scope

        plan = self.plan
        self.broker = Broker(
            plan.approval_mode, plan.approval_timeout, self._write_log, run_id=plan.run_id,
            scope=Scope(plan.policy, plan.policy_sha256, plan.workspace or ""), store=GrantStore(self.state),
            describe={"run": plan.run_id, "policy": plan.policy, "command": list(plan.command),
                      "workspace": plan.workspace, "supervisor_pid": os.getpid()},
            scrub=self.log.scrubber.text if getattr(self.log, "scrubber", None) is not None else None)
        if plan.approval_mode != "ask":
            return
        if self.approver is not None:
            self.broker.attach(self.approver)
        elif plan.approval_via == "socket":
            from sandboxctl.approval.socket_server import SocketFrontEnd

            front_end = SocketFrontEnd(plan.run_id)
            self.broker.attach(front_end)
            self.notice(f"sandboxctl: approvals for run {plan.run_id}: answer with `sandboxctl approve` "
                        "in another terminal")
        else:
            from sandboxctl.approval.tty import TtyFrontEnd

            self.tty_front_end = TtyFrontEnd()
            self.broker.attach(self.tty_front_end)

    def _arm_freeze(self) -> None:
        """Once the sandbox runs: the terminal prompt stops it while a panel waits, when the kernel
        keeps a pending request through a stop (the shim's WAIT_KILLABLE_RECV). Costs nothing until
        a panel is shown."""
        front_end = getattr(self, "tty_front_end", None)
        if front_end is None or not self.notify_killable or self.init_pid is None or self.sandbox_pidns is None:
            return
        front_end.freeze_with = (self.init_pid, self.sandbox_pidns, self.notify_fd)

    def _end_prompts(self) -> None:
        """The run is being ended (its timeout, a forwarded SIGTERM/SIGHUP): waiting requests are
        denied and a frozen sandbox continues, so that it can take the signal it is sent."""
        if getattr(self, "tty_front_end", None) is not None and self.broker is not None:
            self.broker.stop()

    def _terminal_freeze_layer(self) -> dict[str, Any] | None:
        """Whether the sandbox is stopped while a terminal panel waits, as it really is."""
        if getattr(self, "tty_front_end", None) is None:
            return None
        if getattr(self.tty_front_end, "freeze_with", None) is not None:
            return {"enforced": True, "by": "SIGSTOP of every process of the sandbox while a panel waits (the asking "
                                            "thread held in its call: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)"}
        return {"enforced": False, "why": "the kernel refused SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19): "
                                          "the command runs, and may write to the terminal, while a panel waits"
                if self.notify_fd is not None else "no seccomp notification listener"}

    def _ask_network(self, host: str, port: int, peer: int | None) -> bool:
        pid, command = self._socket_caller(peer)
        return self.broker.decide("network", f"{host}:{port}", "not in network.allow", pid, command).approved

    def _socket_caller(self, peer: int | None) -> tuple[int | None, str]:
        """The sandbox process behind a proxy connection, and its command line, for the prompt
        (looked up only when a human is asked: it walks the sandbox's sockets)."""
        from sandboxctl.supervise.file_escape import command_line

        init = self._init_pid()
        if not (peer and init and self.broker.asks_human):
            return None, ""
        pid = processes.socket_owner(init, peer)
        return pid, command_line(pid) if pid else ""

    def _ask_request(self, method: str, host: str, port: int, path: str, peer: int | None) -> bool:
        """An inspected request its host's rules do not list: asked like a destination (kind http)."""
        from sandboxctl.network.addresses import format_destination

        pid, command = self._socket_caller(peer)
        target = f"{method} {format_destination(host, None if port in (80, 443) else port)}{path}"
        return self.broker.decide("http", target, "not in network.inspect allow rules", pid, command).approved

    def _prepare_inspection(self) -> dict[str, bytes]:
        """The run's CA and phantom secrets (network.inspect, as: proxy): made before the sandbox exists,
        because the sandbox starts out trusting the CA. Returns the content of each data-file mount."""
        plan = self.plan
        if not plan.inspecting:
            return {}
        from sandboxctl.network.certs import combined_bundle, system_bundle
        from sandboxctl.network.inspection import PhantomSpec, checked_inspection

        specs = [PhantomSpec(s.name, self.secret_values[s.name], s.hosts, s.ttl)
                 for s in plan.secrets if s.deliver_as == "proxy"]
        self.inspection = inspection = checked_inspection(plan.network.inspect, specs, plan.network.upstream_ca,
                                                          f"sandboxctl {plan.run_id}")
        ca = inspection.ca_pem
        bundle = combined_bundle(ca, system_bundle())
        return {m.target: ca if m.source == "tls:ca" else bundle for m in plan.mounts if m.kind == "data-file"}

    def _first_connection(self, sel: selectors.BaseSelector) -> None:
        """A connection waits on the proxy's port: start the proxy (its import and threads are
        paid by runs that use the network, and never before the command may start)."""
        fd, self._proxy_listener = self._proxy_listener, None
        sel.unregister(fd)
        self._start_proxy(fd)
        if self.setup_error:
            self._kill()  # fail closed: the sandbox would wait on a proxy that cannot serve

    def _start_proxy(self, fd: int) -> None:
        """Serve the sandbox's proxy port from here; every connection becomes a `net` event."""
        import socket  # the proxy's sockets are socket.socket (accept, makefile): paid by runs that use it

        from sandboxctl.network.proxy import NetPolicy, ProxyServer

        net = self.plan.network
        listener = socket.socket(fileno=fd)
        listener.setblocking(True)
        self.proxy = ProxyServer(listener, NetPolicy(net.allow, net.deny, net.allow_private),
                                 log=lambda record: self._on_net(record), ask=self._ask_network,
                                 inspection=self.inspection, log_http=self._on_http, ask_request=self._ask_request,
                                 max_connections=fd_budget.connection_cap(self.nofile),
                                 attribute=self._connection_fields())
        self.proxy.start()
        if not self.proxy.serving:
            self.setup_error = SandboxError("the network proxy could not start", "run sandboxctl doctor")

    def _connection_fields(self) -> Any:
        """ProxyServer's `attribute` hook: a run has one command, so its records need none (a session's do)."""
        return None

    def _on_net(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "deny":
            target = f"{record['host']}:{record.get('port')}" if record.get("host") else (
                "any destination" if "count" in record else "unparsable request")
            self.denials.append({"kind": "net", "target": target, "rule": record.get("rule"),
                                 "count": int(record.get("count", 1))})
        self._write_log("net", **record)

    def _on_http(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "deny":
            port = record.get("port")
            host = f"{record.get('host')}" + ("" if port in (80, 443, None) else f":{port}")
            target = f"{record.get('method')} {host}{record.get('path', '')}"
            self.denials.append({"kind": "http", "target": target, "rule": record.get("rule")})
        self._write_log("http", **record)
