"""`sandboxctl proxy`: a policy's network proxy on its own, without a sandbox (containers, sidecars).

The same ProxyServer a run's supervisor serves the sandbox with, built from the same policy
fields: `network.allow`/`deny`, the refusal of private addresses, `network.inspect` request rules
and `secrets.*.as: proxy` phantom secrets, with its own run id in the same chained action log
(`run.start` with `standalone: proxy`, `net`, `http`, `approval`, `secret`, and `run.end` when it is
stopped by SIGTERM, SIGINT or SIGHUP).

What it cannot be is a wall: no sandbox holds the clients, so a client that ignores the proxy
variables goes around it. It limits what goes *through* it; something else (a network namespace,
a firewall rule on the client's uid, a Kubernetes NetworkPolicy; see export/k8s_sidecar.py) must
keep the clients from going around. And whoever can connect to it is a client: on a loopback
address every local user, on another address the network (a launch-time confirmation).

Approvals: deny (the default: nobody is there to ask in a container), allow (every destination,
logged), or ask through the approval socket (`sandboxctl approve` in another terminal of the same
user); never a prompt on the proxy's own terminal. The steps of its start are standalone_start.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandboxctl.errors import SandboxError
from sandboxctl.log.late import LateRecords, close_forwarder, unfinished_text
from sandboxctl.network.clientfiles import ClientFiles
from sandboxctl.network.standalone_setup import (
    ProxyOptions,
    check,
    format_address,
    parse_listen,
)
from sandboxctl.network.standalone_start import StandaloneStart

if TYPE_CHECKING:
    from sandboxctl.policy.model import Policy

THROTTLE_FLUSH_S = 60.0  # identical denials counted past the first few: their summary at least this often


class StandaloneProxy(StandaloneStart):
    """One standalone proxy from start to stop. `start()` raises SandboxError (nothing is left then);
    `serve()` blocks until `request_stop()` (a signal handler may call it) or a failed log write."""

    def __init__(self, policy: Policy, options: ProxyOptions, argv_for_log: list[str], *,
                 environ: dict[str, str] | None = None, notice: Callable[[str], None] | None = None,
                 out: Callable[[str], None] | None = None, confirmed: tuple[str, ...] = ()) -> None:
        from sandboxctl.api.options import new_run_id

        self.policy = policy
        self.options = options
        self.argv_for_log = argv_for_log
        self.environ = dict(os.environ if environ is None else environ)
        self.notice = notice or (lambda message: None)
        self.out = out  # where the clients' environment goes without --client-dir (stdout)
        self.confirmed = confirmed
        self.run_id = new_run_id()
        self.late = LateRecords(self.run_id, notice)  # a record after run.end: refused, and said
        self.log = None
        self.log_closed = False
        self.server = None
        self.broker = None
        self.inspection = None
        self.files: ClientFiles | None = None
        self.forwarder = None
        self.started = 0.0
        self.address: tuple[str, int] | None = None
        self.stop_reason: str | None = None
        self.failed: SandboxError | None = None
        self.denied = 0
        self.connections = 0
        self._log_lock = threading.Lock()
        self._throttle = None
        self._expiries: list[tuple[float, str]] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        confirmations = check(self.policy, self.options)
        missing = [item for item in confirmations if item not in self.confirmed]
        if missing:
            raise SandboxError("this proxy needs confirming: " + "; ".join(missing),
                               "pass --yes to accept (nothing widens silently)")
        try:
            self._start()
        except BaseException as exc:
            self._release(error=exc.message if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}")
            raise

    def _start(self) -> None:
        from sandboxctl import paths
        from sandboxctl.network.addresses import NetPolicy
        from sandboxctl.network.proxy import ProxyServer
        from sandboxctl.supervise import fd_budget
        from sandboxctl.supervise.denials import LogThrottle

        policy, options = self.policy, self.options
        host, port = parse_listen(options.listen)
        state = paths.ensure_private_dir(paths.state_dir())
        values = self._secret_values()
        self._prepare_inspection(values)
        self._open_log(state, values)
        self._throttle = LogThrottle()
        self._start_broker(state)
        nofile = fd_budget.raise_nofile()
        listener = self._listen(host, port)
        self.address = listener.getsockname()[:2]
        net = policy.network
        self.server = ProxyServer(listener, NetPolicy(tuple(str(p) for p in net.allow), tuple(str(p) for p in net.deny),
                                                      net.allow_private),
                                  log=self._on_net, ask=self._ask_network, inspection=self.inspection,
                                  log_http=self._on_http, ask_request=self._ask_request,
                                  max_connections=fd_budget.connection_cap(nofile), log_peers=True)
        self.server.start()
        if not self.server.serving:
            raise SandboxError("the network proxy could not start", "run sandboxctl doctor")
        self.started = time.monotonic()
        self._write("run.start", argv=self.argv_for_log, workspace=None, policy=policy.name,
                    policy_source=policy.source or None, policy_sha256=policy.sha256 or None,
                    standalone="proxy", listen=format_address(*self.address), layers=self._layers(), limits=None,
                    confirmed=list(self.confirmed) or None)
        now = time.monotonic()
        for secret in policy.secrets:
            if secret.deliver_as != "proxy":
                continue
            self._write("secret", name=secret.name, **{"as": "proxy"}, action="inject", ttl_s=secret.ttl,
                        hosts=list(secret.hosts), placeholder="derived" if options.phantom_id else "random")
            if secret.ttl:
                self._expiries.append((now + secret.ttl, secret.name))
        self._expiries.sort()
        self._write_client_files()

    # ------------------------------------------------------------------ the proxy's callbacks
    def _write(self, event: str, **fields: Any) -> None:
        """Proxy threads, the broker and the loop share the log; a failed write stops the proxy (it
        must not go on unobserved)."""
        from sandboxctl.log.writer import LogWriteError

        if self.log is None or self.failed is not None:
            return
        try:
            with self._log_lock:
                if self._throttle is None or self._throttle.admit(event, fields):
                    self.log.write(event, **fields)
        except LogWriteError as exc:
            self.failed = exc
            self._wake()

    def _on_net(self, record: dict[str, Any]) -> None:
        self.connections += int(record.get("count", 1))
        if record.get("decision") == "deny":
            self.denied += int(record.get("count", 1))
        self._write("net", **record)

    def _on_http(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "deny":
            self.denied += 1
        self._write("http", **record)

    def _ask_network(self, host: str, port: int, _peer: int | None) -> bool:
        return self.broker.decide("network", f"{host}:{port}", "not in network.allow").approved

    def _ask_request(self, method: str, host: str, port: int, path: str, _peer: int | None) -> bool:
        from sandboxctl.network.addresses import format_destination

        target = f"{method} {format_destination(host, None if port in (80, 443) else port)}{path}"
        return self.broker.decide("http", target, "not in network.inspect allow rules").approved

    # ------------------------------------------------------------------ serving, stopping
    def request_stop(self, reason: str) -> None:
        """Stop serving (async-signal-safe enough for a Python signal handler: a flag and a pipe write)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve(self) -> None:
        """Until a stop is requested or a log write fails: expire proxy secrets and write the summary of
        repeated denials on time. Raises the log's SandboxError after stopping cleanly."""
        next_flush = time.monotonic() + THROTTLE_FLUSH_S
        try:
            while self.stop_reason is None and self.failed is None:
                now = time.monotonic()
                due = min([next_flush, *(t for t, _ in self._expiries)])
                with contextlib.suppress(InterruptedError):
                    select.select([self._wake_r], [], [], max(0.0, due - now))
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
                now = time.monotonic()
                while self._expiries and now >= self._expiries[0][0]:
                    self._expire(self._expiries.pop(0)[1])
                if now >= next_flush:
                    self._flush_throttled()
                    next_flush = now + THROTTLE_FLUSH_S
        finally:
            self.stop()
        if self.failed is not None:
            raise self.failed

    def _expire(self, name: str) -> None:
        if self.inspection is not None:
            self.inspection.phantoms.expire(name)
        self._write("secret", name=name, **{"as": "proxy"}, action="expire")

    def _flush_throttled(self) -> None:
        if self._throttle is None or self.log is None:
            return
        with self._log_lock:
            pending = self._throttle.pending()
        for event, fields in pending:
            with contextlib.suppress(SandboxError), self._log_lock:
                self.log.write(event, **fields)

    def stop(self) -> None:
        """Deny what waits for an answer, close every connection, write run.end, remove the client files."""
        self._release(error=self.failed.message if self.failed is not None else None)

    def _release(self, error: str | None) -> None:
        """Everything the proxy holds, in an order that never leaves a client half-served; run.end
        once run.start was written (exit_code 0 when stopped, 125 with the error otherwise)."""
        from sandboxctl.log.writer import RUN_HEAD, LogWriteError

        if self.files is not None:
            self.files.remove()  # first: no client should start on a proxy that is going away
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        unfinished = {}
        if self.server is not None:
            self.server.stop()
            if stuck := self.server.unfinished():  # named in run.end; what they record after it is refused
                unfinished["proxy_connections"] = stuck
            self.server = None
        if self.log is not None and not self.log_closed:
            with contextlib.suppress(LogWriteError):
                self._flush_throttled()
                if self.started and self.failed is None:
                    if self.forwarder is not None:
                        self.forwarder.flush(2.0)
                    with self._log_lock:  # a stuck connection's record never slips in between these
                        for loss in self.forwarder.losses() if self.forwarder is not None else ():
                            self.log.write("log.forward", **loss)
                        if unfinished:
                            self.late.say(unfinished_text(unfinished))
                        self.log.write_last("run.end", exit_code=125 if error else 0, signal=None,
                                            duration_s=round(time.monotonic() - self.started, 6),
                                            denied=self.denied, timed_out=False, stopped_by=self.stop_reason,
                                            error=error, connections=self.connections, head=RUN_HEAD,
                                            **({"unfinished": unfinished} if unfinished else {}))
            if self.forwarder is not None:  # what reaches it, or not, after run.end is said, not recorded
                close_forwarder(self.forwarder, 2.0, self.late.say)
                self.forwarder = None
            self.log.close()  # kept: a proxy thread's late record is refused by it, and said
            self.log_closed = True
            self.late.returned()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

