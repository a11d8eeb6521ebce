"""Runs inside the sandbox, between bubblewrap and the command (python3 -I -S, the stdlib only).

In order: take the real stderr back, read the configuration from the control socket, set
rlimits, apply Landlock (which needs the mount tree bubblewrap just built, so it cannot happen
outside), report what was really enforced, wait for the supervisor's go, exec the command.
bubblewrap has already loaded the seccomp program. Kept tiny: this interpreter starts on every
run, so it imports only C modules (no socket, signal, enum or ctypes: their Python layers cost
more than everything else here), messages are marshal (built in) rather than json, and the
supervisor runs it precompiled (launch/shim_code.py). Any failure exits 125 (or 126/127 for the
command itself) and never execs the command.

The system calls Python has no function for (Landlock's three, seccomp, prctl) go through libc's
syscall(2) by _ctypes, ctypes' C core, alone: ctypes' Python layer (its __init__ and what that
imports) cost ~2.7 ms of every run's start-up in here, measured inside bubblewrap, and landlockpy's
bindings, which this used before, are built on it. The structures are the kernel's, packed as bytes.
"""

import marshal
import os
import stat
import sys

SHIM_DIR = "/run/sandboxctl"
RLIMITS = {"pids": "RLIMIT_NPROC", "file_size": "RLIMIT_FSIZE", "open_files": "RLIMIT_NOFILE",
           "memory": "RLIMIT_AS"}
SOL_SOCKET, SCM_RIGHTS = 1, 1
FRAME = 64 * 1024  # launch/config_frames.py's


def send(fd, message):
    os.write(fd, marshal.dumps(message))


def read_config(control):
    """The configuration's frames joined (launch/config_frames.py: MORE or LAST, then a part)."""
    parts = []
    while True:
        frame = os.read(control, FRAME + 1)
        if not frame:
            os._exit(125)  # the supervisor is gone before the whole configuration came
        parts.append(frame[1:])
        if frame[:1] == b".":
            return b"".join(parts)
        if frame[:1] != b"+":
            os._exit(125)


def send_with_fds(fd, message, handles):
    """Hand descriptors made inside the sandbox to the supervisor (SCM_RIGHTS), then drop ours."""
    import _socket
    import struct

    sock = _socket.socket(fileno=fd)
    try:
        fds = list(handles.values())
        sock.sendmsg([marshal.dumps(message)], [(SOL_SOCKET, SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    finally:
        sock.detach()
        for handle in handles.values():
            os.close(handle)


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


def u64(*values):
    return b"".join(value.to_bytes(8, sys.byteorder) for value in values)


def load_notify_filter(libc, program, seccomp_nr, killable=False):
    """Load the notify filter with a listener (seccomp(2), SECCOMP_FILTER_FLAG_NEW_LISTENER);
    returns (listener, whether the wait is killable-only).

    bubblewrap's --seccomp cannot return a listener and libseccomp is not reachable in here, so
    this is the raw call. no_new_privs is already set (bubblewrap, Landlock).

    `killable` (a terminal prompt may freeze the sandbox: approval/freeze.py) adds
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19): once the supervisor has received a
    notification, the caller waits killable only, so the SIGSTOP of a freeze leaves the request
    pending instead of interrupting it (without the flag the call is interrupted, its request
    vanishes, and it is made again after SIGCONT). An older kernel refuses the flag (EINVAL):
    loaded without it, and said so (the freeze is then not used).
    """
    if killable:
        try:
            return libc.seccomp_filter(seccomp_nr, 8 | 32, program), True
        except OSError as exc:
            if exc.errno != 22:
                raise
    return libc.seccomp_filter(seccomp_nr, 8, program), False  # SECCOMP_FILTER_FLAG_NEW_LISTENER


def proxy_listener(port):
    """The proxy's listening socket, bound on the sandbox's own loopback.

    Made here because only a process inside the sandbox's network namespace can bind there, and
    before Landlock, which forbids binding afterwards. The supervisor accepts on it from the
    host side and dials out from the host: no forwarder process, and no route out for anything
    that ignores the proxy variables.
    """
    import _socket

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    return sock.detach()


def sock_diag_socket():
    """A NETLINK_SOCK_DIAG socket in the sandbox's own network namespace: the supervisor asks it
    which UNIX sockets were bound inside (those may be connected to without being listed). Made
    before the notify filter, whose baseline refuses netlink families other than route."""
    import _socket

    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, 4)  # NETLINK_SOCK_DIAG
    return sock.detach()


def fail(fd, message, hint=None, code=125):
    try:
        send(fd, {"error": message, "hint": hint, "code": code})
    except OSError:  # the supervisor is gone: bubblewrap's stderr is all that may still be read
        os.write(2, f"sandboxctl: error: {inert(message)}\n".encode(errors="replace"))
    os._exit(code)


def inert(text):
    """A line written straight to the caller's stderr, with no supervisor to escape it: as
    gvisor_init.py's inert (printable ASCII stays, every other character a visible escape)."""
    return "".join(c if " " <= c <= "~" and c != "\\" else "\\\\" if c == "\\" else c.encode("unicode_escape").decode()
                   for c in str(text))


def set_rlimits(limits):
    import resource

    for key, name in RLIMITS.items():
        value = limits.get(key)
        if value:
            resource.setrlimit(getattr(resource, name), (value, value))


# Landlock's system calls (the same numbers on every architecture) and their structures
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_NO_NEW_PRIVS = 38


def abi_version(libc):
    import errno

    try:
        return libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def for_abi(pairs, abi):
    value = 0
    for bit, first in pairs:
        if abi >= first:
            value |= bit
    return value


def apply_landlock(libc, plan):
    """The ruleset of the plan (rights as numbers: launch/landlock_rights.shim_config), for the
    ABI this kernel has; what was enforced comes back as numbers too."""
    abi = abi_version(libc)
    report = {"abi": abi, "required": plan["required"], "minimum_abi": plan["minimum_abi"]}
    if abi < plan["minimum_abi"]:
        what = "not available" if abi == 0 else f"ABI {abi}, the policy needs ABI {plan['minimum_abi']}"
        if plan["required"]:
            raise RuntimeError(f"Landlock is {what}")
        report["degraded"] = f"Landlock is {what}"
        if abi == 0:
            report["enforced"] = False
            return report
    handled_fs = for_abi(plan["fs"], abi)
    handled_net = 0
    for wanted, (bit, first) in ((plan["restrict_tcp_bind"], plan["bind"]),
                                 (plan["restrict_tcp_connect"], plan["connect"])):
        if wanted and abi >= first:
            handled_net |= bit
    scoped = for_abi(plan["scopes"], abi)
    # struct landlock_ruleset_attr: the fields of ABI 6; an older kernel takes it while the fields
    # it does not know are zero, as they are then (for_abi)
    attr = u64(handled_fs, handled_net, scoped)
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    skipped = []
    applied = 0
    try:
        os.set_inheritable(fd, False)
        for path, wanted in plan["paths"]:
            access = wanted & handled_fs
            if not access:
                continue  # a right this kernel does not have (RESOLVE_UNIX below ABI 9)
            try:
                parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                skipped.append(path)
                continue
            try:
                if not stat.S_ISDIR(os.fstat(parent).st_mode):
                    access &= plan["file_only"]
                if access:  # struct landlock_path_beneath_attr, packed: __u64 allowed_access, __s32 parent_fd
                    rule = u64(access) + parent.to_bytes(4, sys.byteorder, signed=True)
                    libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, RULE_PATH_BENEATH, rule, 0)
                applied += 1
            finally:
                os.close(parent)
        for ports, (bit, _first) in ((plan["connect_tcp_ports"], plan["connect"]),
                                     (plan["bind_tcp_ports"], plan["bind"])):
            if handled_net & bit:
                for port in ports:  # struct landlock_net_port_attr: __u64 allowed_access, __u64 port
                    libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, RULE_NET_PORT, u64(bit, port), 0)
        flags = 0
        if abi >= plan["no_new_privs"][1]:
            flags = plan["no_new_privs"][0]
        else:
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, flags)
    finally:
        os.close(fd)
    report.update(
        enforced=True, handled_fs=handled_fs, handled_net=handled_net, scoped=scoped,
        path_rules=applied,
        tcp_connect_ports=list(plan["connect_tcp_ports"]) if handled_net & plan["connect"][0] else None,
        tcp_bind_ports=list(plan["bind_tcp_ports"]) if handled_net & plan["bind"][0] else None,
        skipped=skipped,
    )
    return report


def exec_command(control, argv, env):
    import errno

    name = argv[0]
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in env.get("PATH", "/usr/bin:/bin").split(":")
    ]
    denied = None
    for path in candidates:
        if "/" not in name and not os.path.isfile(path):
            continue  # probing PATH by stat keeps failed attempts out of the exec log
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno == errno.EACCES:
                denied = denied or path
                continue
            send(control, {"exec_error": f"{path}: {exc.strerror}", "code": 126})
            os._exit(126)
    if denied:
        send(control, {"exec_error": f"{denied}: permission denied (the policy's exec.allow, or the file "
                                     "is not executable)", "code": 126})
        os._exit(126)
    send(control, {"exec_error": f"{name}: command not found inside the sandbox", "code": 127})
    os._exit(127)


def main():
    """Whatever goes wrong in here ends the run as a sandbox that could not be built (125, one
    message): an unexpected exception (a libc call raising TypeError, a broken interpreter) would
    otherwise be a traceback and exit 1, which after the go reads as the command's own."""
    control, real_stderr = int(sys.argv[1]), int(sys.argv[2])
    try:
        launch(control, real_stderr)
    except BaseException as exc:
        fail(control, f"the sandbox's launcher failed: {type(exc).__name__}: {exc}",
             "re-run with --debug and please report it")


def launch(control, real_stderr):
    os.dup2(real_stderr, 2)
    os.close(real_stderr)
    os.set_inheritable(control, False)
    config = marshal.loads(read_config(control))
    server = read_session_server() if config.get("session") else None  # before Landlock hides it
    try:
        set_rlimits(config["limits"])
    except (OSError, ValueError) as exc:
        fail(control, f"cannot set resource limits: {exc}")
    handles = {}
    if config.get("proxy_port"):
        try:
            handles["proxy"] = proxy_listener(config["proxy_port"])
        except OSError as exc:
            fail(control, f"cannot open the network proxy's port inside the sandbox: {exc}")
    if config.get("sock_diag"):
        try:
            handles["sockdiag"] = sock_diag_socket()
        except OSError as exc:
            fail(control, f"cannot open the socket-diagnostics socket the UNIX socket wall needs: {exc}")
    try:
        libc = Libc()
    except Exception as exc:  # ImportError, OSError, AttributeError (a missing symbol): no layer can be applied
        fail(control, f"cannot reach libc's system calls through _ctypes: {exc}",
             f"the launcher's Python ({sys.executable}) needs its _ctypes module; `landlock: best-effort` does not "
             "help here")
    try:
        landlock = apply_landlock(libc, config["landlock"])
    except Exception as exc:  # any failure here must stop the run, never skip the layer
        fail(control, f"cannot apply Landlock: {exc}",
             "run `sandboxctl doctor`; on an older kernel set `landlock: best-effort` to run without it")
    import _signal

    # Python ignores SIGPIPE and SIGXFSZ for itself, and exec keeps ignored signals: give the
    # command the defaults (as subprocess does), plus the caller's own SIGINT/SIGQUIT
    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ, *config.get("default_signals", ())):
        _signal.signal(signum, _signal.SIG_DFL)
    killable = False
    if config.get("notify_program"):
        try:
            handles["notify"], killable = load_notify_filter(libc, config["notify_program"], config["seccomp_nr"],
                                                             config.get("notify_killable", False))
        except Exception as exc:  # OSError, or a call _ctypes could not make: never run without the filter
            fail(control, f"cannot load the seccomp notification filter: {exc}",
                 "kernel 5.0 or newer is needed (sandboxctl doctor)")
    if config.get("secrets_dir"):
        handles["secrets_dir"] = os.open("/run/secrets", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ready = {"ready": {"landlock": landlock, "pid": os.getpid(), "notify_killable": killable}, "fds": list(handles)}
    try:
        if handles:
            send_with_fds(control, ready, handles)
        else:
            send(control, ready)
        answer = os.read(control, 4096)
    except OSError:  # the supervisor is gone, or dropped this sandbox (launch/headstart.py): no go
        os._exit(125)
    if not answer or marshal.loads(answer).get("go") is not True:
        os._exit(125)
    if config.get("session"):  # a session: a small server starts each command from here
        serve_session(control, config, server)
    change_directory(control, config.get("cwd"))
    exec_command(control, config["argv"], config["env"])


def change_directory(report, path):
    """The library's cwd= (after Landlock, like the exec): failing, the command never starts."""
    if not path:
        return
    try:
        os.chdir(path)
    except OSError as exc:
        send(report, {"exec_error": f"cannot change to directory {path} inside the sandbox: {exc.strerror}",
                      "hint": "pass a directory that exists in the sandbox (relative paths start at the workspace)",
                      "code": 125})
        os._exit(125)


def read_session_server():
    """The session server's code, mounted beside this file (only sessions pay for it)."""
    path = SHIM_DIR + "/session_server.py"
    with open(path, "rb") as handle:
        return compile(handle.read(), path, "exec")


def serve_session(control, config, server):
    """Run the session server in this process (after Landlock and the go): it never returns."""
    namespace = {"__name__": "sandboxctl_session_server"}
    try:
        exec(server, namespace)
        namespace["serve"](control, config, exec_command, change_directory)
    except BaseException as exc:  # the control socket speaks the server's JSON now: no marshal message on it
        said = inert(f"the session's server failed: {type(exc).__name__}: {exc}")  # straight to stderr, too
        os.write(2, f"sandboxctl: error: {said}\n".encode(errors="replace"))
        os._exit(125)
    os._exit(0)


if __name__ == "__main__":
    main()
