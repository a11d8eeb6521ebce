"""Runs inside gVisor, between runsc and the command (python3 -I -S -B, stdlib only).

In order: read the configuration the supervisor left in /run/sandboxctl/launch, give the
command default signal dispositions, load the seccomp baseline, open the proxy port and start
its forwarder (network: proxy), drop every capability, exec the command. gVisor implements
seccomp-bpf for the programs it runs (not user notification), so the filter is loaded here with
a raw seccomp(2) call; Landlock does not exist inside gVisor, so there is nothing else to apply.
Any failure exits 125 (126/127 for the command itself) and never runs the command.

The forwarder must stay out of the command's reach: the command is uid 0 in here, so a
forwarder of the same uid dies to kill(-1, SIGKILL), and the command could then bind
127.0.0.1:3128 itself and read every other process's proxied requests. So the forwarder becomes
another user (FORWARDER_UID, with CAP_SETUID/CAP_SETGID the bundle grants this launcher only),
which a capability-less uid 0 can neither signal, trace nor read; it holds the port for the whole
run, and a connection it keeps open to the supervisor ends the run if it ever stops. Then this
launcher empties its bounding set and its capabilities, so the command starts with none (an
exec as uid 0 would otherwise regain the bounding set).
"""

import marshal
import os
import sys


def fail(message, code=125):
    os.write(2, f"sandboxctl: error: {message}\n".encode(errors="replace"))
    os._exit(code)


def load_seccomp(program, seccomp_nr):
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, prog) after no_new_privs, as bubblewrap does."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.syscall(seccomp_nr, 1, 0, ctypes.byref(prog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def proxy_listener(port):
    """The proxy port, on every address of the sandbox's own network stack (gVisor's: a loopback
    and nothing else). The wildcard address and no SO_REUSEADDR/SO_REUSEPORT leave no address
    and no option with which the command could bind the same port next to it and be handed
    some of the connections meant for 127.0.0.1:3128 (gVisor, measured: with the listener on
    127.0.0.1 and SO_REUSEADDR, the command could bind 0.0.0.0:3128)."""
    import _socket

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", port))
    sock.listen(256)
    return sock


FORWARDER_UID = 65534  # "nobody": not the command's uid, so out of its kill(), ptrace and /proc reach
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_DUMPABLE = 23, 24, 4
CAP_SETPCAP, CAP_LAST = 8, 63
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAPGET_CAPSET = {"x86_64": (125, 126), "aarch64": (90, 91)}  # the machines runsc runs on


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def become(uid):
    """Every id of this process set to uid; changing the uid from 0 clears its capabilities."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise OSError("the ids did not change")


def drop_capabilities():
    """Empty the bounding set (CAP_SETPCAP last: it is what allows it), then every capability set,
    and check that none is left: the command must not start with any."""
    import ctypes
    import errno

    libc = _libc()
    if libc.prctl(PR_CAPBSET_READ, CAP_SETPCAP, 0, 0, 0) == 1:
        for cap in [c for c in range(CAP_LAST + 1) if c != CAP_SETPCAP] + [CAP_SETPCAP]:
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
                raise OSError(ctypes.get_errno(), f"cannot drop capability {cap} from the bounding set")
    capget, capset = CAPGET_CAPSET[os.uname().machine]
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}, all zero
    if libc.syscall(capset, header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    left = [c for c in range(CAP_LAST + 1) if libc.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1]
    if libc.syscall(capget, header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    if left or any(data):
        raise OSError(f"capabilities left after dropping: bounding {left}, sets {list(data)}")


def forward(listener, path):
    """Relay each connection to the supervisor's proxy socket (a host UNIX socket runsc lets the
    sandbox open): the supervisor decides every destination, exactly as under bubblewrap.

    On the C modules _socket and _thread: socket.py and threading.py import enum, functools,
    collections, selectors..., files gVisor's gofer must find and read in a cold sandbox
    (measured: ~30 ms of a network: proxy run's start, platform ptrace)."""
    import _socket
    import _thread

    def relay(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, _socket.SHUT_WR), (source, _socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                continue

    def relay_back(source, sink, done):
        try:
            relay(source, sink)
        finally:
            done.release()

    def serve(client):
        upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            return
        back_done = _thread.allocate_lock()
        back_done.acquire()
        _thread.start_new_thread(relay_back, (upstream, client, back_done))
        relay(client, upstream)
        back_done.acquire()  # the other direction has ended too
        client.close()
        upstream.close()

    while True:  # threads of _thread end with this process (os._exit), as daemon threads
        try:
            fd, _addr = listener._accept()
        except OSError as exc:
            if exc.errno in (9, 22):  # EBADF, EINVAL: the listener is gone
                return
            continue
        try:
            client = _socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        _thread.start_new_thread(serve, (client,))


def start_forwarder(proxy):
    """Fork the forwarder before the command starts, as another user (see the module docstring);
    the command starts only once it holds the port and the supervisor's heartbeat connection."""
    import _signal as signal  # the C modules (see forward): `signal` imports enum, functools, collections
    import _socket  # the forwarder's imports, while this launcher can still read anything
    import select
    try:
        listener = proxy_listener(proxy["port"])
    except OSError as exc:
        fail(f"cannot open the network proxy's port inside the sandbox: {exc}")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            os.setsid()
            become(FORWARDER_UID)
            _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            # its lifeline: the supervisor ends the run when this connection closes
            heartbeat = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            heartbeat.connect(proxy["alive"])
            # it lives as long as the sandbox: a dead peer or a signal meant for the command must not end it
            for signum in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                           signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(signum, signal.SIG_IGN)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            os.write(ready_w, b"ok")
            os.close(ready_w)
        except OSError as exc:
            os.write(ready_w, f"{exc}".encode(errors="replace")[:500])
            os._exit(1)
        try:
            forward(listener, proxy["socket"])
        finally:
            os._exit(0)
    os.close(ready_w)
    listener.close()
    readable, _, _ = select.select([ready_r], [], [], 20)
    answer = os.read(ready_r, 512) if readable else b"no answer within 20 s"
    os.close(ready_r)
    if answer != b"ok":
        fail(f"the network proxy's forwarder could not start: {answer.decode(errors='replace')}")


def exec_command(argv, env):
    import errno

    name = argv[0]
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in env.get("PATH", "/usr/bin:/bin").split(":")
    ]
    denied = None
    for path in candidates:
        if "/" not in name and not os.path.isfile(path):
            continue
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno == errno.EACCES:
                denied = denied or path
                continue
            fail(f"{path}: {exc.strerror}", 126)
    if denied:
        fail(f"{denied}: permission denied (the file is not executable)", 126)
    fail(f"{name}: command not found inside the sandbox", 127)


def main():
    try:
        with open(sys.argv[1], "rb") as handle:
            config = marshal.loads(handle.read())
    except (OSError, IndexError, ValueError, EOFError) as exc:
        fail(f"cannot read the launch configuration: {exc}")
    # the C module: `import signal` imports enum, functools and collections, files gVisor's gofer must
    # find and read in a cold sandbox (measured: ~40 ms of a run's start, platform ptrace)
    import _signal as signal

    # Python ignores SIGPIPE and SIGXFSZ for itself, and exec keeps ignored signals
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, *config.get("default_signals", ())):
        signal.signal(signum, signal.SIG_DFL)
    if config.get("seccomp"):
        try:
            load_seccomp(config["seccomp"], config["seccomp_nr"])
        except OSError as exc:
            fail(f"cannot load the seccomp filter inside gVisor: {exc}")
    if config.get("proxy"):
        start_forwarder(config["proxy"])  # after seccomp: the forwarder is filtered too
    if config.get("drop_capabilities"):
        try:
            drop_capabilities()
        except OSError as exc:
            fail(f"cannot drop the launcher's capabilities before the command: {exc}")
    exec_command(config["argv"], config["env"])


if __name__ == "__main__":
    main()
