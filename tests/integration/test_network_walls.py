"""Network walls besides the proxy, through real sandboxes, judged from outside.

- servers inside: a test suite's own HTTP/UNIX servers work under default, ci and offline; under
  network: host only listed ports bind (judged by connecting from the host);
- UNIX sockets: a host socket server the test runs records what reaches it — nothing unless the
  socket is listed in network.unix, however the path is spelled, raced or swapped;
- direct connections: denied, logged as net events with their destination, counted, annotated.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sandboxctl.supervise.processes import wait_for


class SocketServer:
    """A UNIX socket server on the host: records every connection and the bytes it received."""

    def __init__(self, path: Path, kind: int = socket.SOCK_STREAM, abstract: bytes | None = None):
        self.path = path
        self.connections = 0
        self.received: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(abstract if abstract is not None else str(path))
        if abstract is None:
            os.chmod(path, 0o666)
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            client.settimeout(2)
            try:
                self.received.append(client.recv(100))
            except OSError:
                self.received.append(b"")
            client.close()

    def settle(self) -> None:
        time.sleep(0.3)  # what the sandbox sent before it exited has been accepted

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def host_sockets(tmp_path: Path):
    """Two host socket servers in one directory: app.sock (the one policies list) and
    docker.sock (the one no policy lists: a host takeover if reached)."""
    directory = tmp_path / "run"
    directory.mkdir()
    os.chmod(directory, 0o755)
    servers = {name: SocketServer(directory / f"{name}.sock") for name in ("app", "docker")}
    yield directory, servers
    for server in servers.values():
        server.close()


def policy(sandbox, text: str, name: str = "walls.yaml") -> str:
    return str(sandbox.write_policy(name, "version: 1\n" + textwrap.dedent(text)))


def records(sandbox, event: str) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == event]


def run_end(sandbox) -> dict:
    return records(sandbox, "run.end")[-1]


def run_loud(sandbox, *args: str, policy: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A run without -q: the denial table goes to stderr."""
    argv = [a for a in sandbox.argv(*args, policy=policy) if a != "-q"]
    return subprocess.run(argv, cwd=sandbox.workspace, env=sandbox.env({"COLUMNS": "400", **(env or {})}),
                          capture_output=True, text=True, timeout=60)


CONNECT_UNIX = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    s.send(b"takeover")
    print("connected")
except OSError as e:
    print("refused", e.errno)
"""


# ------------------------------------------------------------------ servers inside
SUITE = r"""
import os, socket, subprocess, sys, threading, time, urllib.request
server = subprocess.Popen([sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(200):
    try:
        body = urllib.request.urlopen("http://127.0.0.1:8000/", timeout=5).read()
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("the HTTP server inside was not reachable")
for _ in range(20):  # a test suite talks to it many times, a new connection each
    assert urllib.request.urlopen("http://localhost:8000/", timeout=5).status == 200
server.terminate()
print("http ok")
for address in ("/var/tmp/inside.sock", "\0sandboxctl-inside"):  # pathname and abstract, bound inside
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen()
    threading.Thread(target=lambda: (lambda c: c.sendall(c.recv(9).upper()))(listener.accept()[0])).start()
    client = socket.socket(socket.AF_UNIX)
    client.connect(address)
    client.sendall(b"ping")
    assert client.recv(9) == b"PING"
print("unix ok")
"""


@pytest.mark.parametrize("name", ["default", "ci", "offline"])
def test_a_test_suite_with_servers_inside_passes(sandbox, name):
    result = sandbox.run("--", "python3", "-c", SUITE, policy=name, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["http", "ok", "unix", "ok"]
    assert run_end(sandbox)["denied"] == 0
    start = records(sandbox, "run.start")[-1]["layers"]["network"]
    assert start["listen"] == "any TCP port on the sandbox's own loopback"


TAKEOVER = r"""
import socket
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"),
                     (socket.AF_INET6, "::ffff:127.0.0.1")):
    for options in ((), ("SO_REUSEADDR",), ("SO_REUSEADDR", "SO_REUSEPORT")):
        s = socket.socket(family)
        for option in options:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, option), 1)
        try:
            s.bind((host, 3128))
            s.listen()
            print("BOUND", host, options)
        except OSError as e:
            print("refused", e.errno)
"""


def test_servers_inside_cannot_take_the_proxys_port(sandbox, web):
    """127.0.0.1:3128 is the supervisor's listener: no address or option binds next to it, and the
    proxy still serves (judged by the host server's file arriving)."""
    port, _ = web
    allow = policy(sandbox, f"""\
        extends: ci
        network: {{mode: proxy, allow: ["127.0.0.1:{port}"], allow_private: true}}
        """)
    script = TAKEOVER + f"import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:{port}/hello.txt')" \
                        ".read().decode().strip())"
    result = sandbox.py(script, policy=allow)
    assert "BOUND" not in result.stdout
    assert result.stdout.count("refused 98") == 12  # EADDRINUSE
    assert result.stdout.splitlines()[-1] == "hello from the host"
    assert [r["decision"] for r in records(sandbox, "net")] == ["allow"]


def _free_ports(count: int) -> list[int]:
    holders = [socket.socket() for _ in range(count)]
    for holder in holders:
        holder.bind(("127.0.0.1", 0))
    ports = [holder.getsockname()[1] for holder in holders]
    for holder in holders:
        holder.close()
    return ports


HOST_SERVERS = r"""
import socket, sys, time
results = []
listeners = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
        listeners.append(s)
        results.append(f"{port}:bound")
    except OSError as e:
        results.append(f"{port}:{e.errno}")
print(" ".join(results), flush=True)
for s in listeners:
    s.settimeout(20)
    client, _ = s.accept()
    client.sendall(b"from inside")
    client.close()
"""


def _landlock_abi() -> int:
    from landlockpy import _syscall

    try:
        return _syscall.abi_version()
    except OSError:
        return 0


needs_tcp_rules = pytest.mark.skipif(_landlock_abi() < 4, reason="Landlock TCP rules need ABI 4 (Linux 6.7)")


@needs_tcp_rules
def test_under_host_only_listed_ports_bind_and_the_host_reaches_them(sandbox):
    listed, other = _free_ports(2)
    host_policy = policy(sandbox, f"""\
        extends: default
        network: {{mode: host, listen: [{listed}]}}
        """)
    proc = subprocess.Popen(sandbox.argv("--yes", "--", "python3", "-c", HOST_SERVERS, str(listed), str(other),
                                         policy=host_policy),
                            cwd=sandbox.workspace, env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().split()
        assert line == [f"{listed}:bound", f"{other}:13"], line or proc.stderr.read()  # EACCES
        with socket.create_connection(("127.0.0.1", listed), 5) as client:  # from the host
            assert client.recv(20) == b"from inside"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", other), 2)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


@needs_tcp_rules
def test_under_host_listen_true_opens_no_port(sandbox):
    (port,) = _free_ports(1)
    host_policy = policy(sandbox, "extends: default\nnetwork: {mode: host}\n")
    result = sandbox.run("--yes", "--", "python3", "-c",
                         "import socket, sys\ns = socket.socket()\ntry:\n    s.bind(('127.0.0.1', int(sys.argv[1])))\n"
                         "    print('bound')\nexcept OSError as e:\n    print('refused', e.errno)", str(port),
                         policy=host_policy)
    assert result.stdout.strip() == "refused 13", result.stderr


def test_listen_false_refuses_servers_inside(sandbox):
    closed = policy(sandbox, "extends: offline\nnetwork: {listen: false}\n")
    result = sandbox.py("import socket\ns = socket.socket()\ntry:\n    s.bind(('127.0.0.1', 8000))\n"
                        "    print('bound')\nexcept OSError as e:\n    print('refused', e.errno)", policy=closed)
    assert result.stdout.strip() == "refused 13"


# ------------------------------------------------------------------ UNIX sockets
def test_a_host_socket_under_a_read_grant_is_unreachable(sandbox, host_sockets):
    directory, servers = host_sockets
    grant = policy(sandbox, f"extends: ci\nfilesystem: {{read: [{directory}]}}\n")
    result = run_loud(sandbox, "--", "python3", "-c", CONNECT_UNIX, str(directory / "docker.sock"), policy=grant)
    servers["docker"].settle()
    assert servers["docker"].connections == 0 and servers["docker"].received == []
    assert result.stdout.strip() == "refused 13"  # EACCES
    [event] = [r for r in records(sandbox, "net") if r["decision"] == "deny"]
    assert event["host"] == f"unix:{directory}/docker.sock" and "network.unix" in event["rule"]
    assert run_end(sandbox)["denied"] == 1
    assert f"unix:{directory}/docker.sock" in result.stderr  # the denial table


def test_a_host_socket_in_the_writable_workspace_is_unreachable(sandbox):
    server = SocketServer(sandbox.workspace / "dev.sock")
    try:
        result = sandbox.run("--", "python3", "-c", CONNECT_UNIX, "dev.sock", policy="ci")  # relative, too
        server.settle()
        assert result.stdout.strip() == "refused 13" and server.connections == 0
    finally:
        server.close()


INSIDE_AND_HOST = r"""
import socket, sys, threading
listener = socket.socket(socket.AF_UNIX)
listener.bind("/var/tmp/inside.sock")  # the sandbox's own tmpfs
listener.listen()
threading.Thread(target=lambda: listener.accept()[0].recv(10), daemon=True).start()
for path in ("/var/tmp/inside.sock", "dev.sock"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.send(b"takeover")
        print("connected")
    except OSError as e:
        print("refused", e.errno)
"""


@pytest.mark.parametrize("name", ["ci", "host"])
def test_a_socket_bound_inside_is_reachable_and_its_host_neighbour_is_not(sandbox, name):
    """Under host the sandbox shares the host's socket list: what makes a socket its own is that a
    sandboxed process holds it."""
    server = SocketServer(sandbox.workspace / "dev.sock")
    try:
        args = ("--yes", "--net", "host") if name == "host" else ()
        result = sandbox.run(*args, "--", "python3", "-c", INSIDE_AND_HOST, policy="ci")
        server.settle()
        assert result.stdout.split("\n")[:2] == ["connected", "refused 13"], result.stdout + result.stderr
        assert server.connections == 0
    finally:
        server.close()


def test_a_listed_socket_is_reachable_and_logged(sandbox, host_sockets):
    directory, servers = host_sockets
    listed = policy(sandbox, f"extends: ci\nnetwork: {{unix: [{directory}/app.sock]}}\n")
    result = sandbox.run("--", "python3", "-c", CONNECT_UNIX, str(directory / "app.sock"), policy=listed)
    servers["app"].settle()
    assert result.stdout.strip() == "connected", result.stderr
    assert servers["app"].received == [b"takeover"]
    [event] = records(sandbox, "net")
    assert event["decision"] == "allow" and event["host"] == f"unix:{directory}/app.sock"
    # listing one socket shows that socket only: its neighbour is not even visible
    result = sandbox.run("--", "python3", "-c", CONNECT_UNIX, str(directory / "docker.sock"), policy=listed)
    assert result.stdout.strip() == "refused 2" and servers["docker"].connections == 0  # ENOENT


def test_a_listed_directory_covers_the_sockets_in_it(sandbox, host_sockets):
    directory, servers = host_sockets
    listed = policy(sandbox, f"extends: ci\nfilesystem: {{read: [{directory}]}}\nnetwork: {{unix: [{directory}]}}\n")
    result = sandbox.run("--", "python3", "-c", CONNECT_UNIX, str(directory / "docker.sock"), policy=listed)
    servers["docker"].settle()
    assert result.stdout.strip() == "connected" and servers["docker"].received == [b"takeover"]


SPELLINGS = r"""
import os, socket, sys
target = sys.argv[1]
os.symlink(target, "/tmp/short")
attempts = {"symlink": "/tmp/short", "dotdot": target.replace("/run/", "/run/../run/"),
            "proc-root": "/proc/self/root" + target}
os.chdir(os.path.dirname(target))
attempts["relative"] = os.path.basename(target)
fd = os.open(target, os.O_PATH)
attempts["magic-link"] = f"/proc/self/fd/{fd}"
for name, path in attempts.items():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.send(b"takeover")
        print(name, "connected")
    except OSError as e:
        print(name, "refused", e.errno)
"""


def test_no_spelling_of_the_path_reaches_an_unlisted_socket(sandbox, host_sockets):
    directory, servers = host_sockets
    grant = policy(sandbox, f"extends: ci\nfilesystem: {{read: [{directory}]}}\n")
    result = sandbox.run("--", "python3", "-c", SPELLINGS, str(directory / "docker.sock"), policy=grant)
    servers["docker"].settle()
    assert servers["docker"].connections == 0, result.stdout
    assert "connected" not in result.stdout and result.stdout.count("refused") == 5, result.stdout + result.stderr


RACER = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* path mode: one thread flips a sockaddr_un between a listed and an unlisted path while the main
   thread connects with it. fd mode: the flipping thread also swaps the descriptor number the main
   thread connects between a TCP socket and a UNIX one (and the buffer between an inet and a
   UNIX address): what a "check, then let the kernel continue" design would let through. */
#define FD 100
static union { struct sockaddr_un un; struct sockaddr_in in; char raw[sizeof(struct sockaddr_un)]; } addr;
static char listed[sizeof addr], unlisted[sizeof addr];
static volatile int stop;
static int fd_mode;

#define BARRIER() __asm__ __volatile__("" ::: "memory")  /* each store really happens */

static void hold(unsigned round) {  /* stay in one state a little, a different while each time */
    for (volatile unsigned i = 0; i < 200 + round % 3000; i++) {
    }
}

static void *flip(void *unused) {
    (void)unused;
    for (unsigned round = 0; !stop; round++) {
        memcpy(addr.raw, unlisted, sizeof addr);
        BARRIER();
        if (fd_mode) {
            int u = socket(AF_UNIX, SOCK_STREAM, 0);
            dup2(u, FD);
            close(u);
        }
        hold(round);
        memcpy(addr.raw, listed, sizeof addr);
        BARRIER();
        if (fd_mode) {
            int t = socket(AF_INET, SOCK_STREAM, 0);
            dup2(t, FD);
            close(t);
        }
        hold(round * 7);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = atoi(argv[2]), connected = 0, refused = 0, other = 0;
    struct sockaddr_un *un = (struct sockaddr_un *)unlisted;
    fd_mode = strcmp(argv[1], "fd") == 0;
    un->sun_family = AF_UNIX;
    strncpy(un->sun_path, argv[4], sizeof un->sun_path - 1);
    if (fd_mode) {  /* the "harmless" address: the sandbox's own loopback, where nothing listens */
        struct sockaddr_in *in = (struct sockaddr_in *)listed;
        in->sin_family = AF_INET;
        in->sin_port = htons(9);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        struct sockaddr_un *ok = (struct sockaddr_un *)listed;
        ok->sun_family = AF_UNIX;
        strncpy(ok->sun_path, argv[3], sizeof ok->sun_path - 1);
    }
    memcpy(addr.raw, listed, sizeof addr);
    pthread_t thread;
    pthread_create(&thread, NULL, flip, NULL);
    /* on a loaded machine the flipping thread may not run for a while: go on until it has */
    for (int i = 0; i < rounds || (refused == 0 && i < rounds * 30); i++) {
        int s = FD;
        if (!fd_mode) {
            s = socket(AF_UNIX, SOCK_STREAM, 0);
        }
        if (connect(s, (struct sockaddr *)&addr, sizeof(struct sockaddr_un)) == 0) {
            connected++;
            if (write(s, "race", 4) < 0) other++;
        } else if (errno == EACCES) {
            refused++;
        } else {
            other++;
        }
        if (!fd_mode) close(s);
    }
    stop = 1;
    pthread_join(thread, NULL);
    printf("connected %d refused %d other %d\n", connected, refused, other);
    return 0;
}
"""


@pytest.fixture
def racer(sandbox) -> str:
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the racing program")
    source = sandbox.workspace / "racer.c"
    source.write_text(RACER)
    binary = sandbox.workspace / "racer"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return str(binary)


@pytest.mark.parametrize("mode", ["path", "fd"])
def test_a_racing_thread_never_reaches_an_unlisted_socket(sandbox, host_sockets, racer, mode):
    directory, servers = host_sockets
    listed = policy(sandbox, f"extends: ci\nfilesystem: {{read: [{directory}]}}\n"
                             f"network: {{unix: [{directory}/app.sock]}}\n")
    result = sandbox.run("--", racer, mode, "3000", str(directory / "app.sock"), str(directory / "docker.sock"),
                         policy=listed, timeout=180)
    servers["docker"].settle()
    assert result.returncode == 0, result.stderr
    counts = dict(zip(*[iter(result.stdout.split())] * 2, strict=True))
    assert servers["docker"].connections == 0 and servers["docker"].received == [], result.stdout
    # the race really ran: both paths were tried (and the log's denials are exactly the refusals)
    assert int(counts["refused"]) > 0, result.stdout
    if mode == "path":
        assert int(counts["connected"]) > 0, result.stdout
        assert servers["app"].connections == int(counts["connected"])
    assert run_end(sandbox)["denied"] == int(counts["refused"])


def test_datagram_unix_sockets_are_refused_below_landlock_abi_9(sandbox):
    if _landlock_abi() >= 9:
        pytest.skip("with Landlock ABI 9 the kernel checks datagram socket paths: they are allowed")
    result = sandbox.py("import socket\nsocket.socketpair()\nprint('stream ok')\n"
                        "for make in (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),\n"
                        "             lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)):\n"
                        "    try:\n        make()\n        print('created')\n"
                        "    except OSError as e:\n        print('refused', e.errno)", policy="ci")
    assert result.stdout.split("\n")[:3] == ["stream ok", "refused 13", "refused 13"]
    events = [r for r in records(sandbox, "syscall") if r["decision"] == "deny"]
    assert [e["name"] for e in events] == ["socket", "socketpair"]
    assert run_end(sandbox)["denied"] == 2


ABSTRACT = r"""
import os, socket, sys, threading
host_name, inside_name = (b"\0" + os.fsencode(arg) for arg in sys.argv[1:3])
inside = socket.socket(socket.AF_UNIX)
inside.bind(inside_name)
inside.listen()
threading.Thread(target=lambda: inside.accept()[0].recv(10), daemon=True).start()
for name in (host_name, inside_name):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(name)
        s.send(b"takeover")
        print("connected")
    except OSError as e:
        print("refused", e.errno)
"""


@pytest.mark.parametrize("name", ["ci", "offline", "host"])
def test_a_host_abstract_socket_is_unreachable_and_the_sandboxs_own_is(sandbox, name):
    """Under none/proxy the sandbox has abstract names of its own; under host they are the host's,
    and only those of sockets held inside may be reached (what Landlock's scope says, ABI 6)."""
    # names of this test's own (pytest workers and other users' runs share the host's abstract names)
    unique = f"sandboxctl-test-{os.getpid()}-{os.urandom(4).hex()}"
    server = SocketServer(Path("unused"), abstract=f"\0{unique}-host".encode())
    try:
        args = ("--yes", "--net", "host") if name == "host" else ()
        result = sandbox.run(*args, "--", "python3", "-c", ABSTRACT, f"{unique}-host", f"{unique}-inside",
                             policy="ci" if name == "host" else name)
        server.settle()
        assert server.connections == 0
        refused, own = result.stdout.split("\n")[:2]
        assert refused.startswith("refused") and own == "connected", result.stdout + result.stderr
    finally:
        server.close()


# ------------------------------------------------------------------ direct connections
DIRECT = r"""
import socket
for family, address in ((socket.AF_INET, ("1.1.1.1", 443)), (socket.AF_INET6, ("2606:4700::1111", 443))):
    try:
        socket.socket(family).connect(address)
        print("connected")
    except OSError as e:
        print("refused", e.errno)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"q", ("8.8.8.8", 53))
    print("sent")
except OSError as e:
    print("refused", e.errno)
"""


@pytest.mark.parametrize("name", ["ci", "offline"])
def test_direct_connections_are_denied_logged_and_counted(sandbox, name):
    result = run_loud(sandbox, "--", "python3", "-c", DIRECT, policy=name, env={"GITHUB_ACTIONS": "true"})
    assert result.stdout.split("\n")[:3] == ["refused 13"] * 3, result.stdout + result.stderr
    denied = [(r["host"], r["port"], r["via"]) for r in records(sandbox, "net") if r["decision"] == "deny"]
    assert denied == [("1.1.1.1", 443, "connect"), ("2606:4700::1111", 443, "connect"), ("8.8.8.8", 53, "sendto")]
    assert run_end(sandbox)["denied"] == 3
    for target in ("1.1.1.1:443", "[2606:4700::1111]:443", "8.8.8.8:53"):
        assert target in result.stderr  # the denial table
        assert any(line.startswith("::warning") and target in line for line in result.stdout.splitlines())


def test_summary_json_lists_direct_connections(sandbox, tmp_path):
    summary = tmp_path / "summary.json"
    sandbox.run("--summary-json", str(summary), "--", "python3", "-c", DIRECT, policy="ci")
    targets = [d["target"] for d in json.loads(summary.read_text())["denials"]]
    assert targets == ["1.1.1.1:443", "[2606:4700::1111]:443", "8.8.8.8:53"]


FLIPPER = r"""
import ctypes, socket, threading
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
accepted = []
threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in iter(int, 1)], daemon=True).start()
def sockaddr(ip, port):
    return bytes([2, 0]) + port.to_bytes(2, "big") + socket.inet_aton(ip) + bytes(8)
inside, outside = sockaddr("127.0.0.1", port), sockaddr("1.1.1.1", 443)
buffer = ctypes.create_string_buffer(inside, 16)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buffer, outside, 16)
        ctypes.memmove(buffer, inside, 16)
threading.Thread(target=flip, daemon=True).start()
libc = ctypes.CDLL(None, use_errno=True)
connected = refused = 0
for _ in range(2000):
    s = socket.socket()
    if libc.connect(s.fileno(), buffer, 16) == 0:
        connected += 1
        assert s.getpeername() == ("127.0.0.1", port)  # never anywhere else
    elif ctypes.get_errno() == 13:
        refused += 1
    s.close()
stop = True
import time; time.sleep(0.5)
print(connected, refused, len(accepted))
"""


def test_a_raced_address_is_never_logged_as_one_thing_and_connected_to_another(sandbox):
    result = sandbox.py(FLIPPER, policy="ci", timeout=180)
    connected, refused, accepted = map(int, result.stdout.split())
    assert connected + refused == 2000 and connected == accepted, result.stdout + result.stderr
    denials = [r for r in records(sandbox, "net") if r["decision"] == "deny"]
    # identical denials past the first few are counted in one summary record (repeated: N)
    logged = sum(r.get("repeated", 0) if "repeated" in r else 1 for r in denials)
    assert logged == refused and all(r["host"] == "1.1.1.1" for r in denials)
    assert run_end(sandbox)["denied"] == refused
    assert not [r for r in records(sandbox, "net") if r["decision"] == "allow"]


BLOCKING = r"""
import socket, threading, time
path = "/var/tmp/full.sock"
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(0)
first = socket.socket(socket.AF_UNIX)
first.connect(path)  # the backlog is now full
waited = {}
def second():
    client = socket.socket(socket.AF_UNIX)
    started = time.monotonic()
    client.connect(path)
    waited["s"] = time.monotonic() - started
thread = threading.Thread(target=second)
thread.start()
time.sleep(0.5)
other = socket.socket()
other.bind(("127.0.0.1", 0))
other.listen()
started = time.monotonic()
for _ in range(20):  # the supervisor answers other connects meanwhile
    socket.create_connection(other.getsockname()).close()
    other.accept()[0].close()
print("others", round(time.monotonic() - started, 3), "still waiting", "s" not in waited)
server.accept()
server.accept()
thread.join(10)
print("second connected after", round(waited["s"], 1))
"""


def test_a_blocking_connect_waits_without_stalling_the_supervisor(sandbox):
    result = sandbox.py(BLOCKING, policy="ci", timeout=60)
    lines = result.stdout.split("\n")
    assert lines[0].startswith("others") and lines[0].endswith("still waiting True"), result.stdout + result.stderr
    assert float(lines[0].split()[1]) < 5
    assert lines[1].startswith("second connected after")


def test_dry_run_shows_the_walls(sandbox):
    result = sandbox.run("--dry-run", "--", "true", policy="ci")
    assert "servers inside: any TCP port on the sandbox's own loopback" in result.stdout
    assert "direct connections" in result.stdout and "connect" in result.stdout
    plan = json.loads(sandbox.run("--dry-run", "--json", "--", "true", policy="ci").stdout)
    assert [r["syscall"] for r in plan["seccomp"]["net_rules"]][:2] == ["connect", "sendto"]
    assert plan["landlock"]["restrict_tcp_bind"] is False


def test_nothing_waits_after_the_run(sandbox):
    """A connect still waiting when the run ends is dropped with the sandbox: no process survives."""
    marker = "6.02214"
    script = BLOCKING.split("thread.start()")[0] + f"thread.start()\nimport os\nos.system('sleep {marker}')\n"
    result = sandbox.run("--timeout", "2s", "--", "python3", "-c", script, policy="ci")
    assert result.returncode == 124
    assert wait_for(lambda: not subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).stdout, 5)
