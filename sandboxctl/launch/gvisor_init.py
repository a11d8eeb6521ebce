"""Runs inside gVisor, between runsc and the command (python3 -I -S -B, stdlib only).

In order: read the configuration the supervisor left in /run/sandboxctl/launch, give the
command default signal dispositions, open the proxy port and start its forwarder (network:
proxy), load the seccomp baseline, exec the command. gVisor implements seccomp-bpf for the
programs it runs (not user notification), so the filter is loaded here with a raw seccomp(2)
call; Landlock does not exist inside gVisor, so there is nothing else to apply. Any failure
exits 125 (126/127 for the command itself) and never runs the command.
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
    """The proxy port on the sandbox's own loopback (gVisor's network stack, nothing else on it)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    return sock


def forward(listener, path):
    """Relay each connection to the supervisor's proxy socket (a host UNIX socket runsc lets the
    sandbox open): the supervisor decides every destination, exactly as under bubblewrap."""
    import socket
    import threading

    def relay(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                continue

    def serve(client):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            return
        back = threading.Thread(target=relay, args=(upstream, client), daemon=True)
        back.start()
        relay(client, upstream)
        back.join()
        client.close()
        upstream.close()

    while True:
        try:
            client, _addr = listener.accept()
        except OSError as exc:
            if exc.errno in (9, 22):  # EBADF, EINVAL: the listener is gone
                return
            continue
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def start_forwarder(proxy):
    """Fork the forwarder before the command starts; it dies with the sandbox."""
    try:
        listener = proxy_listener(proxy["port"])
    except OSError as exc:
        fail(f"cannot open the network proxy's port inside the sandbox: {exc}")
    pid = os.fork()
    if pid == 0:
        import signal

        # it lives as long as the sandbox: a dead peer or a signal meant for the command must not end it
        for signum in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        try:
            forward(listener, proxy["socket"])
        finally:
            os._exit(0)
    listener.close()


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
    import signal

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
    exec_command(config["argv"], config["env"])


if __name__ == "__main__":
    main()
