"""Network walls as data and as small pieces: policy keys, the plan, socket addresses, the checks."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.errors import SandboxError
from sandboxctl.launch import seccomp
from sandboxctl.network import sockaddr, sockdiag
from sandboxctl.network.sockets import connect_now
from sandboxctl.network.unixwall import UnixWall
from sandboxctl.plan import network as netwalls
from sandboxctl.policy.errors import PolicyError
from tests.unit.test_plan import HOME, plan_for, policy_from_text


# ------------------------------------------------------------------ policy
def test_listen_and_unix_validate(tmp_path):
    policy = policy_from_text("version: 1\nnetwork: {listen: [8000, 0, 8000], unix: [~/run/app.sock]}\n", tmp_path)
    assert policy.network.listen == (0, 8000) and policy.network.unix == ("~/run/app.sock",)
    assert policy_from_text("version: 1\n", tmp_path).network.listen is True


@pytest.mark.parametrize("text, message", [
    ("listen: yes-please", "expected true, false or a list"),
    ("listen: [70000]", "must be between 0 and 65535"),
    ("listen: [http]", "expected a whole number"),
    ("unix: [run/app.sock]", "relative path"),
    ("unix: /run/app.sock", "expected a list"),
])
def test_bad_listen_and_unix_name_the_key(tmp_path, text, message):
    with pytest.raises(PolicyError) as caught:
        policy_from_text(f"version: 1\nnetwork:\n  {text}\n", tmp_path)
    assert message in str(caught.value) and "network." in str(caught.value)


def test_a_child_list_replaces_a_parent_flag_and_lists_join(tmp_path):
    (tmp_path / "parent.yaml").write_text("version: 1\nnetwork: {listen: [8000]}\n")
    child = policy_from_text("version: 1\nextends: parent.yaml\nnetwork: {listen: [9000]}\n", tmp_path)
    assert child.network.listen == (8000, 9000)
    flag = policy_from_text("version: 1\nextends: parent.yaml\nnetwork: {listen: false}\n", tmp_path)
    assert flag.network.listen is False


# ------------------------------------------------------------------ plan: TCP rules
@pytest.mark.parametrize("mode, listen, expected", [
    ("proxy", True, (False, (), False, ())),  # the namespace is the wall: any port
    ("none", True, (False, (), False, ())),
    ("proxy", False, (True, (), True, (3128,))),  # only the proxy may be dialled
    ("none", False, (True, (), True, ())),
    ("proxy", (8000,), (True, (8000,), True, (3128, 8000))),
    ("host", True, (True, (), False, ())),  # the host's interfaces: nothing unless listed
    ("host", (8000, 8001), (True, (8000, 8001), False, ())),
])
def test_tcp_rules(mode, listen, expected):
    rules = netwalls.tcp_rules(mode, listen, 3128)
    assert (rules.restrict_bind, rules.bind_ports, rules.restrict_connect, rules.connect_ports) == expected
    assert bool(rules.notes) == (mode == "host" and listen is True)


def test_the_plan_carries_the_tcp_rules_and_says_so(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nnetwork: {mode: host, listen: [8000]}\n", tmp_path)
    plan = plan_for(policy)
    assert plan.landlock.restrict_tcp_bind and plan.landlock.bind_tcp_ports == (8000,)
    assert not plan.landlock.restrict_tcp_connect
    assert any("listen: true opens no port" in n for n in plan_for(net="host").notes)


def test_no_proxy_names_the_loopback_unless_the_policy_names_the_hosts(tmp_path):
    env = dict(plan_for("ci").env)
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    host = policy_from_text("version: 1\nextends: ci\nnetwork: {allow: ['127.0.0.1:8080'], allow_private: true}\n",
                            tmp_path)
    plan = plan_for(host)
    assert dict(plan.env)["NO_PROXY"] == "" and any("host's loopback" in n for n in plan.notes)
    assert dict(plan_for("ci", allow_net=("localhost:11434",)).env)["NO_PROXY"] == ""


@pytest.mark.parametrize("hosts, expected", [
    (["pypi.org", "10.0.0.1"], False), (["127.0.0.1"], True), (["127.1.2.3"], True), (["::1"], True),
    (["::ffff:127.0.0.1"], True), (["localhost"], True), (["api.localhost"], True), (["localhost.example"], False),
])
def test_names_host_loopback(hosts, expected):
    assert netwalls.names_host_loopback(hosts) is expected


# ------------------------------------------------------------------ plan: listed sockets
def test_a_listed_socket_no_grant_shows_is_bound_by_itself(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nnetwork: {unix: [/run/user/1000/app.sock]}\n", tmp_path)
    plan = plan_for(policy, files={"/run/user/1000/app.sock": "other"})
    assert ("ro", "/run/user/1000/app.sock") in [(m.kind, m.target) for m in plan.mounts]
    assert plan.network.unix == ("/run/user/1000/app.sock",)
    assert ("/run/user/1000/app.sock", ("unix",)) in plan.landlock.paths


def test_a_listed_socket_under_a_read_grant_needs_no_mount_and_write_grants_never_resolve(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nfilesystem: {read: [/run]}\n"
                              "network: {unix: [/run/app.sock]}\n", tmp_path)
    plan = plan_for(policy, files={"/run": "dir", "/run/app.sock": "other"})
    assert [m for m in plan.mounts if m.reason == "network.unix"] == []
    assert all("unix" not in rule.access for rule in plan.landlock.paths if rule.path != "/run/app.sock")


@pytest.mark.parametrize("files, listed, message", [
    ({"/srv/sock": "file"}, "/srv/sock", "is a regular file, not a socket"),
    ({"/srv/sockets": "dir"}, "/srv/sockets", "is not visible inside the sandbox"),
])
def test_listed_paths_that_cannot_work_are_errors(tmp_path, files, listed, message):
    policy = policy_from_text(f"version: 1\nextends: default\nnetwork: {{unix: [{listed}]}}\n", tmp_path)
    with pytest.raises(SandboxError, match=message):
        plan_for(policy, files=files)


def test_deny_wins_over_a_listing_and_absent_sockets_are_noted(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nnetwork: {unix: [~/.ssh/agent.sock, /run/gone.sock]}\n",
                              tmp_path)
    plan = plan_for(policy, files={f"{HOME}/.ssh": "dir", f"{HOME}/.ssh/agent.sock": "other"})
    assert plan.network.unix == ()
    assert any("under denied" in n for n in plan.notes) and any("absent on this host" in n for n in plan.notes)


def test_a_listed_symlink_lists_what_it_points_at(tmp_path):
    policy = policy_from_text("version: 1\nextends: default\nnetwork: {unix: [/var/run/docker.sock]}\n", tmp_path)
    plan = plan_for(policy, files={"/var/run/docker.sock": "symlink:/run/docker.sock", "/run/docker.sock": "other"})
    assert plan.network.unix == ("/run/docker.sock",)


def test_gvisor_refuses_what_it_cannot_enforce(tmp_path):
    listed = policy_from_text("version: 1\nextends: default\nnetwork: {unix: [/run/app.sock]}\n", tmp_path)
    with pytest.raises(SandboxError, match=r"network\.unix cannot be enforced under gVisor"):
        plan_for(listed, backend="gvisor", files={"/run/app.sock": "other"})
    closed = policy_from_text("version: 1\nextends: default\nnetwork: {listen: false}\n", tmp_path)
    with pytest.raises(SandboxError, match=r"network\.listen limits cannot be enforced under gVisor"):
        plan_for(closed, backend="gvisor")
    relaxed = policy_from_text("version: 1\nextends: default\nlandlock: best-effort\nnetwork: {listen: false}\n",
                               tmp_path)
    assert any("network.listen is not enforced" in w for w in plan_for(relaxed, backend="gvisor").warnings)


# ------------------------------------------------------------------ plan: trapped calls
def test_trapped_calls_per_mode_and_backend():
    names = lambda plan: [r.syscall for r in plan.seccomp.net_rules]  # noqa: E731
    assert names(plan_for("ci")) == ["connect", "sendto", "socket", "socket", "socketpair", "socketpair"]
    assert names(plan_for(net="host")) == ["connect", "socket", "socket", "socketpair", "socketpair"]
    assert plan_for(backend="gvisor").seccomp.net_rules == ()
    socket_rule = plan_for("ci").seccomp.net_rules[2]
    assert [(c.arg, c.value, c.mask) for c in socket_rule.conditions] == [(0, 1, 0xFFFFFFFF), (1, 2, 0xF)]


def test_the_notify_filter_compiles_with_the_socket_rules(tmp_path):
    plan = plan_for("ci")
    _program, numbers = seccomp.load_or_compile_notify(plan.seccomp, tmp_path)
    assert {"connect", "sendto", "socket", "socketpair"} <= set(numbers.values())
    pseudo = tmp_path / "pseudo"
    with open(pseudo, "w") as handle:
        seccomp.build_filter(plan.seccomp, "notify").export_pfc(handle)
    assert "connect" in pseudo.read_text()


def test_dry_run_lines():
    from sandboxctl.cli.planview import network_walls

    lines = network_walls(plan_for("ci"))
    assert lines[0] == "servers inside: any TCP port on the sandbox's own loopback"
    assert "supervisor performs every connect" in lines[1] and lines[2].startswith("direct connections")
    assert len(network_walls(plan_for(net="host"))) == 2


# ------------------------------------------------------------------ socket addresses
def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("<H", 2) + struct.pack(">H", port) + ipaddress.IPv4Address(ip).packed + bytes(8)


def sockaddr_in6(ip: str, port: int) -> bytes:
    return struct.pack("<H", 10) + struct.pack(">H", port) + bytes(4) + ipaddress.IPv6Address(ip).packed + bytes(4)


@pytest.mark.parametrize("raw, local, text", [
    (sockaddr_in("127.0.0.1", 80), True, "127.0.0.1:80"),
    (sockaddr_in("127.9.9.9", 80), True, "127.9.9.9:80"),
    (sockaddr_in("0.0.0.0", 80), True, "0.0.0.0:80"),
    (sockaddr_in("1.1.1.1", 443), False, "1.1.1.1:443"),
    (sockaddr_in("10.0.0.1", 22), False, "10.0.0.1:22"),
    (sockaddr_in6("::1", 80), True, "[::1]:80"),
    (sockaddr_in6("::", 80), True, "[::]:80"),
    (sockaddr_in6("::ffff:127.0.0.1", 80), True, f"[{ipaddress.IPv6Address('::ffff:127.0.0.1')}]:80"),
    (sockaddr_in6("::ffff:1.1.1.1", 443), False, f"[{ipaddress.IPv6Address('::ffff:1.1.1.1')}]:443"),
    (sockaddr_in6("2606:4700::1111", 443), False, "[2606:4700::1111]:443"),
])
def test_inet_addresses(raw, local, text):
    address = sockaddr.parse(raw)
    assert sockaddr.is_local(address) is local and sockaddr.local_inet(raw) is local
    assert sockaddr.describe(address) == text


def test_unix_addresses():
    path = sockaddr.parse(b"\x01\x00/run/docker.sock\x00junk after the nul")
    assert path.path == b"/run/docker.sock" and sockaddr.describe(path) == "unix:/run/docker.sock"
    abstract = sockaddr.parse(b"\x01\x00\x00name\x00with nul")
    assert abstract.abstract == b"name\x00with nul" and abstract.path is None
    assert sockaddr.parse(b"\x01\x00") == sockaddr.Address(1)  # unnamed: the kernel answers EINVAL
    assert sockaddr.describe(sockaddr.parse(b"\x01\x00/bad\xff")) == "unix:/bad\\xff"
    for raw in (b"", b"\x02", b"\x02\x00\x00\x50", b"\x0a\x00" + bytes(10)):  # too short for an address
        assert sockaddr.local_inet(raw) is None and not sockaddr.parse(raw).inet


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"\x02\x00", b"\x0a\x00", b"\x01\x00", b""]))
def test_the_fast_path_agrees_with_the_parser(tail, family):
    raw = family + tail
    fast = sockaddr.local_inet(raw)
    address = sockaddr.parse(raw)
    assert fast is (sockaddr.is_local(address) if address.inet else None)


# ------------------------------------------------------------------ the pieces that act
def test_connect_now_never_blocks_and_says_what_a_blocking_connect_would():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    flags = os.get_blocking(client.fileno())
    assert flags
    import fcntl

    assert connect_now(client.fileno(), sockaddr_in("127.0.0.1", listener.getsockname()[1]),
                       fcntl.fcntl(client.fileno(), fcntl.F_GETFL)) == 0
    assert os.get_blocking(client.fileno())  # the caller's flag is as it was
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    other = socket.socket()
    assert connect_now(other.fileno(), sockaddr_in("127.0.0.1", port),
                       fcntl.fcntl(other.fileno(), fcntl.F_GETFL)) == errno.ECONNREFUSED
    for sock in (listener, client, other):
        sock.close()


def test_connect_now_reports_a_full_unix_backlog(tmp_path):
    import fcntl

    path = str(tmp_path / "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(0)
    first = socket.socket(socket.AF_UNIX)
    first.connect(path)
    second = socket.socket(socket.AF_UNIX)
    raw = struct.pack("<H", 1) + path.encode() + b"\0"
    assert connect_now(second.fileno(), raw, fcntl.fcntl(second.fileno(), fcntl.F_GETFL)) == errno.EAGAIN
    server.accept()
    assert connect_now(second.fileno(), raw, fcntl.fcntl(second.fileno(), fcntl.F_GETFL)) == 0
    for sock in (server, first, second):
        sock.close()


def test_the_unix_wall_judges_files_not_names(tmp_path):
    """Resolved in a process's own view (here ours), pinned at launch: renaming or linking a name
    afterwards changes nothing, a directory covers what is in it, the caller's magic links lead to
    the file they name."""
    listed_dir = tmp_path / "listed"
    listed_dir.mkdir()
    servers = []
    for path in (tmp_path / "app.sock", listed_dir / "inner.sock", tmp_path / "docker.sock"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        servers.append(server)
    wall = UnixWall((str(tmp_path / "app.sock"), str(listed_dir)), private_netns=True, diag_fd=None,
                    sandbox_pids=lambda: [])
    wall.pin(os.getpid())

    def verdict(path):
        fd = wall.resolve(os.getpid(), os.fsencode(path))
        try:
            return wall.pathname_verdict(fd)[0]
        finally:
            os.close(fd)

    assert verdict(tmp_path / "app.sock") and verdict(listed_dir / "inner.sock")
    assert not verdict(tmp_path / "docker.sock")
    os.rename(tmp_path / "docker.sock", tmp_path / "tmp.sock")  # a listed name on another file
    os.rename(tmp_path / "app.sock", tmp_path / "docker.sock")
    os.rename(tmp_path / "tmp.sock", tmp_path / "app.sock")
    assert not verdict(tmp_path / "app.sock") and verdict(tmp_path / "docker.sock")
    os.symlink(tmp_path / "app.sock", tmp_path / "link")
    assert not verdict(tmp_path / "link")
    # the caller's own magic link is followed as its kernel follows it (openat2 in our view refuses
    # it: ELOOP, which was answered unseen), and the file it leads to is what is judged
    fd = os.open(tmp_path / "docker.sock", os.O_PATH)
    assert verdict(f"/proc/self/fd/{fd}") and verdict(f"/proc/thread-self/fd/{fd}")
    os.close(fd)
    os.symlink(f"/proc/self/root{tmp_path}", tmp_path / "via-proc")  # /proc/self met on the way
    assert verdict(tmp_path / "via-proc" / "docker.sock") and not verdict(tmp_path / "via-proc" / "app.sock")
    with pytest.raises(OSError) as caught:  # truly nothing there: the kernel's answer, as before
        wall.resolve(os.getpid(), os.fsencode(tmp_path / "via-proc" / "none.sock"))
    assert caught.value.errno == errno.ENOENT
    for server in servers:
        server.close()


def test_sock_diag_finds_a_bound_socket_by_its_file(tmp_path):
    diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s"))
    server.listen()
    identity = sockdiag.file_identity(os.stat(tmp_path / "s"))
    found = [s for s in sockdiag.unix_sockets(diag.fileno()) if s.vfs == identity]
    assert len(found) == 1 and found[0].name.rstrip(b"\0") == str(tmp_path / "s").encode()
    assert os.readlink(f"/proc/self/fd/{server.fileno()}") == f"socket:[{found[0].inode}]"
    server.close()
    diag.close()



def test_the_log_viewer_names_destinations_as_the_events_do():
    from sandboxctl.log.render import summarize

    assert summarize({"event": "net", "host": "1.1.1.1", "port": 443}) == "1.1.1.1:443"
    assert summarize({"event": "net", "host": "2606:4700::1111", "port": 443}) == "[2606:4700::1111]:443"
    assert summarize({"event": "net", "host": "unix:/run/docker.sock", "port": None}) == "unix:/run/docker.sock"


def test_a_unix_connect_is_made_only_while_the_call_is_pending(tmp_path, monkeypatch):
    """The socket path is resolved from the caller's /proc/PID/cwd and root: once the caller is gone
    (its pid perhaps a host process's) nothing is connected for it."""
    from sandboxctl.network import sockets
    from sandboxctl.supervise import notify
    from sandboxctl.supervise.notify import _NOTIF, Notification

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "app.sock"))
    server.listen(4)
    server.setblocking(False)
    wall = UnixWall((str(tmp_path / "app.sock"),), private_netns=True, diag_fd=None, sandbox_pids=lambda: [])
    wall.pin(os.getpid())
    calls = sockets.SocketCalls(-1, private_netns=True, wall=wall, connect_ports=None, log=lambda *a, **k: None,
                                denied=[])
    pending = [True]
    monkeypatch.setattr(notify, "still_valid", lambda fd, notification_id: pending[0])
    monkeypatch.setattr(notify, "respond", lambda fd, notification_id, **kwargs: pending[0])
    raw = sockaddr_unix(str(tmp_path / "app.sock"))
    notification = Notification(_NOTIF.pack(7, os.getpid(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    try:
        for still in (False, True):
            pending[0] = still
            client = socket.socket(socket.AF_UNIX)
            try:
                ours = os.dup(client.fileno())
                if not calls._connect_for(notification, ours, raw):  # not handed to the waiter: ours to close
                    os.close(ours)
                try:
                    server.accept()[0].close()
                    connected = True
                except BlockingIOError:
                    connected = False
            finally:
                client.close()
            assert connected is still
    finally:
        calls.close()
        server.close()


def sockaddr_unix(path: str) -> bytes:
    import struct

    return struct.pack("<H", socket.AF_UNIX) + path.encode() + b"\0"
