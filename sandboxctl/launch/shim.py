"""Runs inside the sandbox, between bubblewrap and the command (python3 -I -S, stdlib + landlockpy).

In order: take the real stderr back, read the configuration from the control socket, set
rlimits, apply Landlock (which needs the mount tree bubblewrap just built, so it cannot happen
outside), report what was really enforced, wait for the supervisor's go, exec the command.
bubblewrap has already loaded the seccomp program. Kept tiny: every import here is start-up time,
so messages are marshal (built in) rather than json. Any failure exits 125 (or 126/127 for the
command itself) and never execs the command.
"""

import marshal
import os
import sys

SHIM_LIB = "/run/sandboxctl/lib"
FILE_ONLY = ("EXECUTE", "WRITE_FILE", "READ_FILE", "TRUNCATE", "IOCTL_DEV")
GROUPS = {
    "read": ("READ_FILE", "READ_DIR"),
    "write": ("WRITE_FILE", "REMOVE_DIR", "REMOVE_FILE", "MAKE_DIR", "MAKE_REG", "MAKE_SOCK",
              "MAKE_FIFO", "MAKE_SYM", "REFER", "TRUNCATE", "RESOLVE_UNIX"),
    "write_file": ("WRITE_FILE", "TRUNCATE"),
    "execute": ("EXECUTE",),
    "ioctl_dev": ("IOCTL_DEV",),
}
RLIMITS = {"pids": "RLIMIT_NPROC", "file_size": "RLIMIT_FSIZE", "open_files": "RLIMIT_NOFILE",
           "memory": "RLIMIT_AS"}


def send(fd, message):
    os.write(fd, marshal.dumps(message))


def send_with_fds(fd, message, handles):
    """Hand descriptors made inside the sandbox to the supervisor (SCM_RIGHTS), then drop ours."""
    import socket

    sock = socket.socket(fileno=fd)
    try:
        socket.send_fds(sock, [marshal.dumps(message)], list(handles.values()))
    finally:
        sock.detach()
        for handle in handles.values():
            os.close(handle)


def load_notify_filter(program, seccomp_nr):
    """Load the notify filter with a listener (seccomp(2), SECCOMP_FILTER_FLAG_NEW_LISTENER).

    bubblewrap's --seccomp cannot return a listener and libseccomp is not reachable in here, so
    this is the raw call. no_new_privs is already set (bubblewrap, Landlock).
    """
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(seccomp_nr, 1, 8, ctypes.byref(prog))  # SET_MODE_FILTER, FLAG_NEW_LISTENER
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def proxy_listener(port):
    """The proxy's listening socket, bound on the sandbox's own loopback.

    Made here because only a process inside the sandbox's network namespace can bind there, and
    before Landlock, which forbids binding afterwards. The supervisor accepts on it from the
    host side and dials out from the host: no forwarder process, and no route out for anything
    that ignores the proxy variables.
    """
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    return sock.detach()


def fail(fd, message, hint=None, code=125):
    send(fd, {"error": message, "hint": hint, "code": code})
    os._exit(code)


def set_rlimits(limits):
    import resource

    for key, name in RLIMITS.items():
        value = limits.get(key)
        if value:
            resource.setrlimit(getattr(resource, name), (value, value))


def import_landlockpy():
    """Import only the landlockpy modules the shim uses, with libc handed over directly.

    - ctypes.util.find_library runs ldconfig (a process, ~20 ms, often absent in a sandbox) and
      imports subprocess; the running interpreter already has libc, so CDLL(None) is exact.
    - the package's __init__ also imports its test helpers (dataclasses, pathlib, inspect: ~40 ms).
    - its flags module imports typing only to declare a TypeVar for annotations (~5 ms with re and
      collections); a stand-in answers TypeVar and loads the real typing for anything else.
    All are start-up cost only; the Landlock calls are landlockpy's own.
    """
    import ctypes
    import types

    class LazyTyping(types.ModuleType):
        @staticmethod
        def TypeVar(name, *constraints, **options):  # typing's own name
            return name

        def __getattr__(self, attribute):
            del sys.modules["typing"]
            import typing

            return getattr(typing, attribute)

    if "typing" not in sys.modules:
        sys.modules["typing"] = LazyTyping("typing")

    finder = types.ModuleType("ctypes.util")
    finder.find_library = lambda name: None
    sys.modules["ctypes.util"] = finder
    ctypes.util = finder
    package = types.ModuleType("landlockpy")
    package.__path__ = [SHIM_LIB + "/landlockpy"]
    sys.modules["landlockpy"] = package
    from landlockpy import _syscall, flags, ruleset

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    _syscall._libc = libc
    return _syscall, flags, ruleset


def abi_version(_syscall):
    import errno

    try:
        return _syscall.abi_version()
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def apply_landlock(plan):
    _syscall, flags, ruleset = import_landlockpy()
    AccessFS, AccessNet, Scope, Ruleset = flags.AccessFS, flags.AccessNet, flags.Scope, ruleset.Ruleset
    abi = abi_version(_syscall)
    report = {"abi": abi, "required": plan["required"], "minimum_abi": plan["minimum_abi"]}
    if abi < plan["minimum_abi"]:
        what = "not available" if abi == 0 else f"ABI {abi}, the policy needs ABI {plan['minimum_abi']}"
        if plan["required"]:
            raise RuntimeError(f"Landlock is {what}")
        report["degraded"] = f"Landlock is {what}"
        if abi == 0:
            report["enforced"] = False
            return report
    handled_fs = flags.fs_for_abi(abi)
    handled_net = AccessNet.NONE
    if plan["restrict_tcp"] and abi >= 4:
        handled_net = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    scoped = Scope.NONE
    if abi >= 6:
        for name in plan["scopes"]:
            scoped |= Scope[name.upper()]
    file_mask = AccessFS.NONE
    for name in FILE_ONLY:
        file_mask |= AccessFS[name]
    skipped = []
    with Ruleset(handled_fs=handled_fs, handled_net=handled_net, scoped=scoped, best_effort=False) as rs:
        for path, groups in plan["paths"]:
            access = AccessFS.NONE
            for group in groups:
                for name in GROUPS[group]:
                    access |= AccessFS[name]
            access &= handled_fs
            try:
                if not os.path.isdir(path):
                    access &= file_mask
                rs.allow_path(path, access)
            except FileNotFoundError:
                skipped.append(path)
        for port in plan["connect_tcp_ports"]:
            rs.allow_port(port, AccessNet.CONNECT_TCP)
        for port in plan["bind_tcp_ports"]:
            rs.allow_port(port, AccessNet.BIND_TCP)
        rs.restrict()
    report.update(
        enforced=True,
        fs_rights=sorted(f.name for f in AccessFS if f and f in handled_fs),
        net_rights=sorted(f.name for f in AccessNet if f and f in handled_net),
        scopes=sorted(f.name for f in Scope if f and f in scoped),
        path_rules=len(plan["paths"]) - len(skipped),
        tcp_connect_ports=list(plan["connect_tcp_ports"]) if handled_net else None,
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
    control, real_stderr = int(sys.argv[1]), int(sys.argv[2])
    os.dup2(real_stderr, 2)
    os.close(real_stderr)
    os.set_inheritable(control, False)
    config = marshal.loads(os.read(control, 1 << 20))
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
    try:
        landlock = apply_landlock(config["landlock"])
    except Exception as exc:  # any failure here must stop the run, never skip the layer
        fail(control, f"cannot apply Landlock: {exc}",
             "run `sandboxctl doctor`; on an older kernel set `landlock: best-effort` to run without it")
    import signal

    # Python ignores SIGPIPE and SIGXFSZ for itself, and exec keeps ignored signals: give the
    # command the defaults (as subprocess does), plus the caller's own SIGINT/SIGQUIT
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, *config.get("default_signals", ())):
        signal.signal(signum, signal.SIG_DFL)
    if config.get("notify_program"):
        try:
            handles["notify"] = load_notify_filter(config["notify_program"], config["seccomp_nr"])
        except OSError as exc:
            fail(control, f"cannot load the seccomp notification filter: {exc}",
                 "kernel 5.0 or newer is needed (sandboxctl doctor)")
    if config.get("secrets_dir"):
        handles["secrets_dir"] = os.open("/run/secrets", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ready = {"ready": {"landlock": landlock, "pid": os.getpid()}, "fds": list(handles)}
    if handles:
        send_with_fds(control, ready, handles)
    else:
        send(control, ready)
    answer = os.read(control, 4096)
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
    path = SHIM_LIB.rsplit("/", 1)[0] + "/session_server.py"
    with open(path, "rb") as handle:
        return compile(handle.read(), path, "exec")


def serve_session(control, config, server):
    """Run the session server in this process (after Landlock and the go): it never returns."""
    namespace = {"__name__": "sandboxctl_session_server"}
    exec(server, namespace)
    namespace["serve"](control, config, exec_command, change_directory)
    os._exit(0)


if __name__ == "__main__":
    main()
