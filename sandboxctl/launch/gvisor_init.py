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

DOCTOR = "run `sandboxctl doctor` to see whether the gvisor backend works here"
HINTS = {  # when the configuration says none (supervise/gvisor.py's launch_hints: for this command, this host)
    "backend": DOCTOR,
    "launcher": "please report it, with the output of `sandboxctl doctor`",
    "proxy": "run it again, or with --net none; run `sandboxctl doctor` if it recurs",
    "exec": "the file is not executable (chmod +x), or its interpreter is not",
    "not_found": "check the command's name, and that the policy shows its directory",
}


def fail(message, code=125, hint="backend"):
    """One line and a hint (SPEC: every error of ours), in one write: `hint` is a key of HINTS,
    or of the configuration's own "hints" once it is read."""
    text = CONFIG_HINTS.get(hint) or HINTS.get(hint, DOCTOR)
    os.write(2, f"sandboxctl: error: {inert(message)}\n  hint: {inert(text)}\n".encode(errors="replace"))
    os._exit(code)


CONFIG_HINTS = {}


def inert(text):
    """The line goes straight to the caller's terminal (under bubblewrap the supervisor escapes the
    shim's words; here nothing is in between), and it holds the command's name and the kernel's or
    Python's words: printable ASCII stays, every other character becomes a visible escape (ESC as
    \\x1b, U+202E as \\u202e, a backslash doubled), as sandboxctl.inert shows them."""
    return "".join(c if " " <= c <= "~" and c != "\\" else "\\\\" if c == "\\" else c.encode("unicode_escape").decode()
                   for c in str(text))


# The same class as launch/shim.py's (a unit test holds them equal): each launcher is one file,
# bound alone, and `import ctypes` (its Python layer) is ~35 ms of a cold gVisor sandbox's start.
class Libc:
    """libc's syscall(2) and prctl(2), called through _ctypes, ctypes' C core: ctypes' Python layer
    is start-up time of every run (~2.7 ms inside bubblewrap, ~35 ms in a cold gVisor sandbox).

    Arguments are Python ints (passed as C ints, which is what these calls take), None (NULL) or
    bytes (a pointer to their contents, which the kernel only reads). A call that returns -1
    raises OSError with its errno.
    """

    def __init__(self):
        import _ctypes

        class Long(_ctypes._SimpleCData):
            _type_ = "l"

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class ReturnsLong(_ctypes.CFuncPtr):  # long syscall(long number, ...)
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Long

        class ReturnsInt(_ctypes.CFuncPtr):  # int prctl(int option, ...)
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Int

        class Process:  # what CFuncPtr looks a name up in: the running interpreter, which has libc
            _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

        self._ctypes = _ctypes
        self._syscall = ReturnsLong(("syscall", Process))
        self._prctl = ReturnsInt(("prctl", Process))

    def syscall(self, number, *args):
        return self._checked(self._syscall(number, *args))

    def prctl(self, option, *args):
        return self._checked(self._prctl(option, *args))

    def _checked(self, result):
        if result == -1:
            err = self._ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result

    def address_of_copy(self, data):
        """A copy of `data` in memory of ours (kept alive by the caller) and its address, for a
        structure that points at a buffer (seccomp_filter) or memory the kernel writes."""
        _ctypes = self._ctypes

        class Byte(_ctypes._SimpleCData):
            _type_ = "B"

        class Buffer(_ctypes.Array):
            _type_ = Byte
            _length_ = len(data)

        copy = Buffer.from_buffer_copy(data)
        return copy, _ctypes.addressof(copy)

    def seccomp_filter(self, seccomp_nr, flags, program):
        """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog), prog a struct sock_fprog (unsigned short
        len, padding, a pointer) naming a copy of the program that lives until the call returns
        (the kernel has copied it by then); returns what seccomp returns (a listener, or 0)."""
        if not program or len(program) % 8 or len(program) > 8 * 0xFFFF:  # len: instructions, an unsigned short
            raise OSError(22, f"a seccomp program of {len(program)} bytes is not 1 to 65535 whole instructions")
        copy, address = self.address_of_copy(program)
        width = 8 if sys.maxsize > 2**32 else 4
        order = sys.byteorder
        fprog = (len(program) // 8).to_bytes(2, order) + bytes(width - 2) + address.to_bytes(width, order)
        try:
            return self.syscall(seccomp_nr, 1, flags, fprog)
        finally:
            del copy


def load_seccomp(libc, program, seccomp_nr):
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, prog) after no_new_privs, as bubblewrap does."""
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.seccomp_filter(seccomp_nr, 0, program)


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


def become(uid):
    """Every id of this process set to uid; changing the uid from 0 clears its capabilities."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise OSError("the ids did not change")


def drop_capabilities(libc):
    """Empty the bounding set (CAP_SETPCAP last: it is what allows it), then every capability set,
    and check that none is left: the command must not start with any."""
    import errno

    def in_bounding_set(cap):
        try:
            return libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # past this kernel's last capability
                return False
            raise

    if in_bounding_set(CAP_SETPCAP):
        for cap in [c for c in range(CAP_LAST + 1) if c != CAP_SETPCAP] + [CAP_SETPCAP]:
            try:
                libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a capability this kernel does not have
                    raise OSError(exc.errno, f"cannot drop capability {cap} from the bounding set") from None
    capget, capset = CAPGET_CAPSET[os.uname().machine]
    # struct __user_cap_header_struct {__u32 version; int pid}, then two __user_cap_data_struct of
    # three __u32 (effective, permitted, inheritable): all zero
    header = _LINUX_CAPABILITY_VERSION_3.to_bytes(4, sys.byteorder) + bytes(4)
    libc.syscall(capset, header, bytes(24))
    left = [c for c in range(CAP_LAST + 1) if in_bounding_set(c)]
    header_copy, _ = libc.address_of_copy(header)  # capget writes both: memory of ours, not bytes
    data, _ = libc.address_of_copy(bytes(24))
    libc.syscall(capget, header_copy, data)
    if left or any(bytes(data)):
        raise OSError(f"capabilities left after dropping: bounding {left}, sets {list(bytes(data))}")


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


def start_forwarder(proxy, libc):
    """Fork the forwarder before the command starts, as another user (see the module docstring);
    the command starts only once it holds the port and the supervisor's heartbeat connection."""
    import _signal as signal  # the C modules (see forward): `signal` imports enum, functools, collections
    import _socket  # the forwarder's imports, while this launcher can still read anything
    import select
    try:
        listener = proxy_listener(proxy["port"])
    except OSError as exc:
        fail(f"cannot open the network proxy's port inside the sandbox: {exc}", hint="proxy")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            os.setsid()
            become(FORWARDER_UID)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
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
        except Exception as exc:  # said on the pipe: one line from the launcher, not a traceback from here
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
        fail(f"the network proxy's forwarder could not start: {answer.decode(errors='replace')}", hint="proxy")


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
            fail(f"{path}: {exc.strerror}", 126, "exec")
    if denied:
        fail(f"{denied}: permission denied (the file is not executable)", 126, "exec")
    fail(f"{name}: command not found inside the sandbox", 127, "not_found")


def main():
    """Whatever goes wrong in here ends the run with 125 and one line: an unexpected exception (a
    libc call raising TypeError or ctypes.ArgumentError) would otherwise be a traceback and exit 1,
    which the supervisor cannot tell from the command's own exit status."""
    try:
        launch()
    except BaseException as exc:
        fail(f"the sandbox's launcher failed: {type(exc).__name__}: {exc}", hint="launcher")


def launch():
    try:
        with open(sys.argv[1], "rb") as handle:
            config = marshal.loads(handle.read())
    except (OSError, IndexError, ValueError, EOFError) as exc:
        fail(f"cannot read the launch configuration: {exc}")
    hints = config.get("hints")
    if isinstance(hints, dict):
        CONFIG_HINTS.update({k: v for k, v in hints.items() if isinstance(k, str) and isinstance(v, str)})
    # the C module: `import signal` imports enum, functools and collections, files gVisor's gofer must
    # find and read in a cold sandbox (measured: ~40 ms of a run's start, platform ptrace)
    import _signal as signal

    # Python ignores SIGPIPE and SIGXFSZ for itself, and exec keeps ignored signals
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, *config.get("default_signals", ())):
        signal.signal(signum, signal.SIG_DFL)
    try:
        libc = Libc()
    except Exception as exc:  # ImportError, OSError, AttributeError (a missing symbol), or worse
        fail(f"cannot reach libc's system calls through _ctypes: {exc}")
    if config.get("seccomp"):
        try:
            load_seccomp(libc, config["seccomp"], config["seccomp_nr"])
        except Exception as exc:  # OSError, or a call _ctypes could not make: never run without the filter
            fail(f"cannot load the seccomp filter inside gVisor: {exc}")
    if config.get("proxy"):
        start_forwarder(config["proxy"], libc)  # after seccomp: the forwarder is filtered too
    if config.get("drop_capabilities"):
        try:
            drop_capabilities(libc)
        except Exception as exc:
            fail(f"cannot drop the launcher's capabilities before the command: {exc}")
    exec_command(config["argv"], config["env"])


if __name__ == "__main__":
    main()
