"""A session's server, inside the sandbox: starts each command the supervisor sends it.

The shim runs it in its own process once Landlock, rlimits, the seccomp filters and the
supervisor's go are in place (launch/shim.py serve_session), so every command inherits all of
them — nothing here can widen anything. It talks only to the supervisor, over the control socket
bubblewrap was given, which has no name. The commands share the server's walls and may signal
it (like any two processes of one sandbox, and so that a later command can stop what an earlier
one left running): nothing the server holds widens the sandbox, a stopped server is continued by
the supervisor, and if the server dies, the sandbox dies with it (it is bubblewrap's command) —
the supervisor sees that and ends the session.

Messages are JSON, one per SOCK_SEQPACKET message:
  in:  {"start": N, "argv": [...], "env": {...}, "cwd": DIR|null, "tty": [ROWS, COLS]|null} + 0, 1, 2
       {"go": N}   {"kill": N, "signal": S}
  out: {"started": N, "pid": PID} (+ the pty's master)   {"exited": N, "code": C[, "error": E, "hint": H]}
A started command waits for its go: the supervisor knows its pid before the command's first exec.
Runs under the shim's interpreter (python3 -I -S): stdlib only, no typing.
"""

import contextlib
import json
import marshal
import os
import select
import socket
import struct

TIOCSCTTY, TIOCSWINSZ = 0x540E, 0x5414


def send(sock, message, fds=()):
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv_fds(sock):
    """One message and its descriptors, close-on-exec from the start (so no command inherits
    another's; Python 3.11's socket.recv_fds ignores its flags)."""
    import array

    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_LEN(4 * fds.itemsize),
                                                  socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def session_pids(sid):
    """Processes of the sandbox in this command's session (its own /proc: the sandbox's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and int(fields[3]) == sid:
            found.append(int(entry))
    return found


class Server:
    def __init__(self, control, config, exec_command, change_directory):
        self.sock = socket.socket(fileno=control)
        self.sock.setblocking(True)
        self.env = config["env"]
        self.exec_command = exec_command
        self.change_directory = change_directory
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.children = {}  # pidfd -> (number, pid, report pipe)
        self.pids = {}  # number -> pid
        self.waiting = {}  # number -> the write end its child waits on for the go

    def serve(self):
        while True:
            for fd, events in self.poller.poll():
                if fd == self.sock.fileno():
                    self.on_request(events)
                else:
                    self.on_exit(fd)

    def on_request(self, events):
        try:
            data, fds = recv_fds(self.sock)
        except OSError:
            data, fds = b"", []
        if not data:
            os._exit(0)  # the supervisor is gone: so is the session
        message = json.loads(data)
        if "start" in message:
            try:
                self.start(message, fds)
            except Exception as exc:  # one command that cannot start must not end the session
                self.failed(message["start"], exc)
        else:
            for fd in fds:
                os.close(fd)
            if "go" in message:
                go_w = self.waiting.pop(message["go"], None)
                if go_w is not None:
                    os.write(go_w, b"g")
                    os.close(go_w)
            elif "kill" in message:
                self.kill(message["kill"], int(message["signal"]))

    def failed(self, number, exc):
        send(self.sock, {"exited": number, "code": 125, "error": f"the session could not start the command: {exc}",
                         "hint": "the session goes on; `sandboxctl log --denied` may say why"})

    def start(self, message, fds):
        number = message["start"]
        env = dict(self.env)
        env.update(message.get("env") or {})
        master = None
        if message.get("tty"):
            try:
                master, slave = os.openpty()
                rows, cols = message["tty"]
                import fcntl

                fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            except OSError as exc:
                for fd in [*fds, *([master, slave] if master is not None else [])]:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self.failed(number, exc)
                return
            fds = [slave, slave, slave]
        go_r, go_w = os.pipe()
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self.child(message, fds, env, master, go_r, go_w, report_r, report_w)
        for fd in {*fds, go_r, report_w}:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = (number, pid, report_r)
        self.pids[number] = pid
        self.poller.register(pidfd, select.POLLIN)
        self.waiting[number] = go_w
        send(self.sock, {"started": number, "pid": pid}, [master] if master is not None else ())
        if master is not None:
            os.close(master)

    def child(self, message, fds, env, master, go_r, go_w, report_r, report_w):
        try:
            os.setsid()
            if master is not None:
                os.close(master)
                import fcntl

                fcntl.ioctl(fds[0], TIOCSCTTY, 0)
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            for fd in {*fds, go_w, report_r}:
                if fd > 2:
                    os.close(fd)
            os.read(go_r, 1)
            os.close(go_r)
            self.sock.close()
            self.change_directory(report_w, message.get("cwd"))
            self.exec_command(report_w, list(message["argv"]), env)
        except BaseException as exc:
            try:
                os.write(report_w, marshal.dumps({"exec_error": f"the session could not start the command: {exc}",
                                                  "code": 125}))
            finally:
                os._exit(125)

    def on_exit(self, pidfd):
        number, pid, report_r = self.children.pop(pidfd)
        go_w = self.waiting.pop(number, None)
        if go_w is not None:
            os.close(go_w)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        self.pids.pop(number, None)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        reply = {"exited": number, "code": 128 - code if code < 0 else code}
        os.set_blocking(report_r, False)
        try:
            report = os.read(report_r, 65536)
        except OSError:
            report = b""
        os.close(report_r)
        if report:
            try:
                failure = marshal.loads(report)
                reply.update(error=str(failure["exec_error"]), hint=failure.get("hint"), code=int(failure["code"]))
            except (ValueError, EOFError, KeyError, TypeError):
                pass
        send(self.sock, reply)

    def kill(self, number, signum):
        pid = self.pids.get(number)
        if pid is None:
            return
        for target in [pid, *session_pids(pid)]:
            with contextlib.suppress(OSError):
                os.kill(target, signum)
        with contextlib.suppress(OSError):
            os.killpg(pid, signum)


def serve(control, config, exec_command, change_directory):
    Server(control, config, exec_command, change_directory).serve()
