"""The handshake: what the shim says on the control socket, up to the supervisor's go.

At the shim's "ready" the sandbox is built and its command waits: the descriptors it hands out
are taken (notification listener, proxy port, secrets directory, sock_diag), the last checks
are made (noexec remounts, the cgroup), run.start is written, and only then is the command let
go. Before "ready", bubblewrap's stderr explains a failed launch. Part of the Supervisor (runner.py).
"""

from __future__ import annotations

import _socket  # socket.py's enums cost ~2 ms of every start-up
import array
import contextlib
import marshal
import os
import selectors
import time

from sandboxctl.errors import SandboxError
from sandboxctl.launch import landlock_rights
from sandboxctl.launch.config_frames import send_to_shim
from sandboxctl.log.writer import LogWriteError
from sandboxctl.protect.snapshot import HEARTBEAT_S
from sandboxctl.supervise import processes

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import socket


class Handshake:
    """The control socket and bubblewrap's stderr (a mixin of runner.Supervisor)."""

    def _on_control(self, control: socket.socket, sel: selectors.BaseSelector) -> None:
        try:
            data, fds = _recv_fds(control, 1 << 20, 4)
        except ConnectionError:
            data, fds = b"", []
        if not data:
            sel.unregister(control)
            return
        message = marshal.loads(data)
        received = dict(zip(message.get("fds", ()), fds, strict=False)) if "ready" in message else {}
        for fd in fds[len(received):]:
            os.close(fd)
        self.secrets_dir_fd = received.pop("secrets_dir", None)
        self.sock_diag_fd = received.pop("sockdiag", None)
        landlock = landlock_rights.report(message["ready"]["landlock"]) if "ready" in message else {}
        if "proxy" in received:  # served from the first connection on (launch/shim.py made it listen)
            self._proxy_listener = received.pop("proxy")
            sel.register(self._proxy_listener, selectors.EVENT_READ, "proxy")
        if "notify" in received:
            self._start_notify(received.pop("notify"), sel, landlock)
        if self.setup_error:
            _send_go(control, False)
            return
        for fd in received.values():
            os.close(fd)
        if "ready" in message and self.plan.noexec_mounts:
            from sandboxctl.supervise.noexec import remount_noexec

            try:  # before the command runs: bubblewrap has built the tree, the shim waits for "go"
                remount_noexec(self._init_pid() or 0, self.plan.noexec_mounts)
            except OSError as exc:
                self.setup_error = SandboxError(
                    f"exec.allow: cannot make the writable mounts noexec ({exc.strerror or exc})",
                    "run `sandboxctl doctor`; without it an allowed program could map a written file as code")
                _send_go(control, False)
                return
        if "ready" in message:
            self._init_pid()  # found (and its pidfd held) while it surely lives
            self.notify_killable = bool(message["ready"].get("notify_killable")) and "notify" in message.get("fds", ())
            self._arm_freeze()
            self.layers = self._layers(landlock)
            if self.snapshot is not None and self.snapshot.active:
                protect = self.layers.get("protect") or {}
                self.snapshot.mark(bool(protect.get("wall_whole")))
                self.next_beat = time.monotonic() + HEARTBEAT_S
            degraded = self.layers["landlock"].get("degraded")
            if degraded:
                self.notice(f"sandboxctl: warning: {degraded}; running with `landlock: best-effort`")
            if self.cgroup and self.bwrap_pid:
                # everything alive now (bwrap, its init, the shim) joins before the command may fork
                try:
                    self._cgroup_joined()
                    self.cgroup.add([self.bwrap_pid, *processes.descendants(self.bwrap_pid)])
                except SandboxError as exc:
                    self.setup_error = exc
                    _send_go(control, False)
                    return
            try:
                self._write_record("run.start", argv=self.argv_for_log, workspace=self.plan.workspace,
                                   policy=self.plan.policy, policy_source=self.plan.policy_source,
                                   policy_sha256=self.plan.policy_sha256,
                                   layers=self.layers, limits=self._limits_for_log(),
                                   confirmed=list(self.plan.confirmations) or None,
                                   head_start=True if self.head_started else None, **self.start_fields())
            except LogWriteError:
                _send_go(control, False)
                raise
            self._log_secrets()
            self.ready = True
            _send_go(control, True)
            self._went()
            self._on_ready()
        elif "error" in message:
            self.shim_error = message
        elif "exec_error" in message:
            self.exec_error = message

    def _went(self) -> None:
        """The command was let go: tell the caller (once)."""
        on_go, self.on_go = self.on_go, None
        if on_go is not None:
            on_go()

    def _on_stderr(self, err_r: int, sel: selectors.BaseSelector) -> None:
        data = os.read(err_r, 65536)
        if not data:
            sel.unregister(err_r)
            return
        self._take_stderr(data)

    def _take_stderr(self, data: bytes) -> None:
        """After the shim is ready it is the command's business: pass it on. Before, it explains
        a failed launch: keep it for the error message."""
        if self.ready:
            self.io.emit(2, data)
        else:
            self.bwrap_stderr += data

    def _drain(self, control: socket.socket, err_r: int) -> None:
        control.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionError):
            while data := control.recv(1 << 20):
                message = marshal.loads(data)
                if "exec_error" in message:
                    self.exec_error = message
                elif "error" in message:
                    self.shim_error = message
        os.set_blocking(err_r, False)
        with contextlib.suppress(BlockingIOError):
            while data := os.read(err_r, 65536):
                self._take_stderr(data)


def _send_go(control: socket.socket, go: bool) -> None:
    """The shim's answer. A shim that died meanwhile is not an error here (send_to_shim)."""
    send_to_shim(control, marshal.dumps({"go": go}))


def _recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """socket.recv_fds without socket.py: the message and the descriptors passed with it."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)
