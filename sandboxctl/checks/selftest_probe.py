"""The probe `sandboxctl selftest` runs INSIDE the sandbox: it tries each standard escape for real.

Standard library only (it runs under the sandbox's own python3, not sandboxctl's interpreter).
It is given one JSON argument (what to aim at) and prints one JSON object of raw observations
on its last stdout line. It judges nothing: the verdicts are made outside, by `sandboxctl.checks.selftest`,
mostly from what the host shows after the run. Risky calls run in a forked child, so a call that
unexpectedly succeeds (a new user namespace, a mount) cannot change what the later attempts see.
"""

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

PTRACE_ATTACH = 16
PTRACE_DETACH = 17
CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
WALL = 0x40000000

LIBC = ctypes.CDLL(None, use_errno=True)


def progress(what):
    """One line per attempt on stderr: if the probe dies, the caller knows where."""
    sys.stderr.write("selftest-probe: " + what + "\n")
    sys.stderr.flush()


def errname(number):
    return errno.errorcode.get(number, str(number))


def os_error(exc):
    return {"ok": False, "errno": errname(exc.errno) if exc.errno else type(exc).__name__}


def in_child(function):
    """Run function() in a forked child; return its JSON-able result (or how the child died)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return {"ok": False, "errno": errname(exc.errno), "note": "fork failed"}
    if pid == 0:
        os.close(read_end)
        try:
            result = function()
        except BaseException as exc:  # reported, never raised inside the child
            result = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        data = os.read(read_end, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else "no answer"
        return {"ok": False, "errno": None, "note": how}
    return json.loads(b"".join(chunks).decode())


def libc_call(name, *args):
    """Call libc; return {"ok": True} or the errno."""
    ctypes.set_errno(0)
    result = getattr(LIBC, name)(*args)
    if result == -1:
        return {"ok": False, "errno": errname(ctypes.get_errno())}
    return {"ok": True, "result": result}


def cmdline_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def pids_with(command_line):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and cmdline_of(int(entry)) == command_line:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------------- attempts

def write_outside(targets):
    results = {}
    for path in targets:
        try:
            with open(path, "w") as handle:
                handle.write("written by the sandboxctl selftest probe\n")
            results[path] = {"ok": True}
        except OSError as exc:
            results[path] = os_error(exc)
    return results


def read_files(paths):
    results = {}
    for label, path in paths.items():
        try:
            with open(path, "rb") as handle:
                data = handle.read(4096)
            results[label] = {"ok": True, "bytes": len(data), "text": data.decode(errors="replace")}
        except OSError as exc:
            results[label] = os_error(exc)
    return results


def connect_tcp(port):
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError as exc:
        return os_error(exc) if exc.errno else {"ok": False, "errno": type(exc).__name__}
    try:
        sock.settimeout(2)
        try:
            answer = sock.recv(64).decode(errors="replace")
        except OSError:
            answer = ""
        return {"ok": True, "answer": answer}
    finally:
        sock.close()


def via_proxy(port):
    """Ask the run's proxy (when there is one) for a tunnel to the host listener."""
    url = next((os.environ[n] for n in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
                if os.environ.get(n)), None)
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    try:
        sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 3128), timeout=10)
    except OSError as exc:
        return dict(os_error(exc), proxy=url)
    try:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n" not in answer and len(answer) < 4096:
            data = sock.recv(1024)
            if not data:
                break
            answer += data
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace").strip()
        parts = status.split()
        return {"ok": len(parts) > 1 and parts[1] == "200", "status": status or "connection closed", "proxy": url}
    except OSError as exc:
        return dict(os_error(exc), proxy=url)
    finally:
        sock.close()


def resolve(name):
    try:
        addresses = sorted({item[4][0] for item in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)})
        return {"ok": True, "addresses": addresses[:4]}
    except OSError as exc:
        names = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}
        code = exc.errno if isinstance(exc, socket.gaierror) else None
        return {"ok": False, "errno": names.get(code) or (errname(exc.errno) if exc.errno else type(exc).__name__)}


def environment(name):
    marker = (name + "=").encode()
    found = {}
    if name in os.environ:
        found["os.environ"] = os.environ[name]
    unreadable = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                block = handle.read()
        except OSError:
            unreadable += 1
            continue
        for item in block.split(b"\0"):
            if item.startswith(marker):
                found[f"/proc/{entry}/environ"] = item[len(marker):].decode(errors="replace")
    return {"found": found, "unreadable": unreadable}


def execute(path):
    try:
        done = subprocess.run([path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False)
        return {"ok": True, "returncode": done.returncode}
    except OSError as exc:
        return os_error(exc)


def signal_host(pid, expected_cmdline):
    inside = cmdline_of(pid)
    if inside is not None and inside != expected_cmdline:
        # the host pid number names one of the sandbox's own processes here: do not shoot it
        return {"ok": False, "errno": None, "note": f"pid {pid} is a different process inside the sandbox"}
    try:
        os.kill(pid, signal.SIGTERM)
        return {"ok": True}
    except OSError as exc:
        return os_error(exc)


def ptrace(pid):
    def attempt():
        LIBC.ptrace.restype = ctypes.c_long
        LIBC.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        result = libc_call("ptrace", PTRACE_ATTACH, pid, None, None)
        if result["ok"]:  # never leave the target stopped
            with contextlib.suppress(OSError):
                os.waitpid(pid, WALL)
            LIBC.ptrace(PTRACE_DETACH, pid, None, None)
        return result

    return in_child(attempt)


def new_user_namespace():
    return in_child(lambda: libc_call("unshare", CLONE_NEWUSER))


def mount():
    def attempt():
        LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        return libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None)

    return in_child(attempt)


def tiocsti():
    """TIOCSTI on fd 0. When fd 0 is not a terminal, a fresh pty of our own is put there first, so
    the attempt tests the wall rather than failing with ENOTTY; injected bytes could only reach it."""

    def attempt():
        note = "fd 0 is a terminal"
        if not os.isatty(0):
            try:
                _master, slave = os.openpty()
                os.dup2(slave, 0)
                note = "fd 0 is a private pty"
            except OSError as exc:
                note = f"fd 0 is not a terminal (no pty: {errname(exc.errno)})"
        LIBC.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p]
        result = libc_call("ioctl", 0, TIOCSTI, b"x")
        result["note"] = note
        return result

    return in_child(attempt)


def outlive(argv):
    """Double fork + setsid + exec: a daemon that tries to survive the run."""
    try:
        pid = os.fork()
    except OSError as exc:
        return os_error(exc)
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.execvp(argv[0], argv)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    wanted = " ".join(argv)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if pids_with(wanted):
            return {"ok": True, "started": True}
        time.sleep(0.05)
    return {"ok": False, "started": False, "note": "the daemon did not start"}


def tamper(workspace):
    results = {}
    hook = os.path.join(workspace, ".git", "hooks", "pre-commit")
    try:
        with open(hook, "w") as handle:
            handle.write("#!/bin/sh\necho evil\n")
        os.chmod(hook, 0o755)
        results["hook"] = {"ok": True}
    except OSError as exc:
        results["hook"] = os_error(exc)
    try:
        with open(os.path.join(workspace, ".git", "config"), "a") as handle:
            handle.write("[core]\n\thooksPath = /tmp/evil\n")
        results["config"] = {"ok": True}
    except OSError as exc:
        results["config"] = os_error(exc)
    try:
        os.rename(os.path.join(workspace, ".git"), os.path.join(workspace, "x"))
        results["rename"] = {"ok": True}
    except OSError as exc:
        results["rename"] = os_error(exc)
    return results


def fork_bomb(count):
    """Fork up to `count` children that stay alive until the end; stop at the first failure."""
    read_end, write_end = os.pipe()
    children = []
    failure = None
    started = time.monotonic()
    while len(children) < count:
        try:
            pid = os.fork()
        except OSError as exc:
            failure = errname(exc.errno)
            break
        if pid == 0:
            os.close(write_end)
            try:
                os.read(read_end, 1)  # EOF once the parent closes its end
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write_end)
    os.close(read_end)
    for pid in children:
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
    return {"children": len(children), "failure": failure, "seconds": round(time.monotonic() - started, 2)}


def memory_bomb(total):
    chunk = 64 << 20
    blocks = []
    try:
        while len(blocks) * chunk < total:
            block = bytearray(chunk)
            block[::4096] = b"\1" * len(range(0, chunk, 4096))  # touch every page: really resident
            blocks.append(block)
        return {"ok": True, "allocated": len(blocks) * chunk}
    except MemoryError:
        return {"ok": False, "errno": "MemoryError", "allocated": len(blocks) * chunk}


# ---------------------------------------------------------------------- main

def main():
    config = json.loads(sys.argv[1])
    out = {"pid": os.getpid(), "uid": os.getuid()}
    if config.get("mode") == "memory":
        progress("memory bomb")
        out["memory_bomb"] = memory_bomb(config["memory_total"])
        print(json.dumps(out), flush=True)
        return
    steps = (
        ("write_outside", lambda: write_outside(config["write_targets"])),
        ("read", lambda: read_files(config["canaries"])),
        ("net_tcp", lambda: connect_tcp(config["port"])),
        ("net_proxy", lambda: via_proxy(config["port"])),
        ("net_dns", lambda: resolve(config["dns_name"])),
        ("env", lambda: environment(config["env_name"])),
        ("exec", lambda: execute(config["exec_path"])),
        ("signal", lambda: signal_host(config["host_pid"], config["host_cmdline"])),
        ("ptrace", lambda: {"parent": ptrace(os.getppid()), "host": ptrace(config["host_pid"])}),
        ("userns", new_user_namespace),
        ("mount", mount),
        ("tiocsti", tiocsti),
        ("protected", lambda: tamper(config["workspace"])),
        ("outlive", lambda: outlive(config["daemon"])),
        ("fork_bomb", lambda: fork_bomb(config["fork_count"]) if config.get("fork_count") else None),
    )
    for name, step in steps:
        progress(name)
        try:
            out[name] = step()
        except Exception as exc:  # one surprise must not hide the other attempts
            out[name] = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
