"""UNIX socket paths longer than a socket address holds (deep CI runtime directories)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from sandboxctl import unixpath


def test_a_path_past_107_bytes_is_bound_and_reached_at_that_very_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "s.sock")
    assert len(path) > unixpath.MAX_PATH
    with pytest.raises(OSError):
        socket.socket(socket.AF_UNIX).bind(path)  # what the kernel alone says
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unixpath.bind(listener, path)
    listener.listen(1)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the socket is where it was asked for, not in /proc
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unixpath.connect(client, path)
    peer, _ = listener.accept()
    client.sendall(b"hi")
    assert peer.recv(2) == b"hi"
    for sock in (peer, client, listener):
        sock.close()


def test_a_short_path_is_used_as_it_is_and_no_descriptor_is_left_open(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    with unixpath.address(str(tmp_path / "s")) as where:
        assert where == str(tmp_path / "s")
    deep = tmp_path / ("x" * 120)
    deep.mkdir()
    with unixpath.address(str(deep / "s")) as where:
        assert where.startswith("/proc/self/fd/") and where.endswith("/s")
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_name_too_long_on_its_own_is_an_error_not_a_truncated_path(tmp_path):
    with pytest.raises(OSError) as caught, unixpath.address(str(tmp_path / ("n" * 120))):
        pass
    assert caught.value.errno == 36


def test_a_symlink_planted_in_a_world_writable_dir_is_not_taken_for_our_private_dir(tmp_path):
    from sandboxctl.errors import SandboxError
    from sandboxctl.paths import ensure_private_dir

    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    mine = tmp_path / "workspace-rt"
    mine.mkdir(mode=0o700)
    (shared / "sandboxctl-1000").symlink_to(mine)  # someone's choice of where our sockets go
    with pytest.raises(SandboxError, match="symlink"):
        ensure_private_dir(shared / "sandboxctl-1000")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "state").symlink_to(mine)  # a user's own symlink, in a directory only they write: fine
    assert ensure_private_dir(home / "state") == home / "state"


@pytest.mark.skipif(os.getuid() != 0, reason="a socket file of another user needs root to chown it")
@pytest.mark.parametrize("deep", [False, True])
def test_another_users_socket_is_refused_before_it_gets_a_connection(tmp_path, deep):
    """SO_PEERCRED would tell the other user's server our pid and uid the moment we connect: the
    socket file's owner is checked first, and its server never sees us."""
    directory = tmp_path / ("d" * 120 if deep else "s")
    directory.mkdir()
    path = str(directory / "theirs.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unixpath.bind(server, path)
    server.listen(1)
    os.lchown(path, 65534, 65534)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(PermissionError, match="another user"):
            unixpath.connect_own(client, path)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()  # no connection ever reached it
        os.lchown(path, 0, 0)
        unixpath.connect_own(client, path)  # ours again: connected
    finally:
        client.close()
        server.close()


@pytest.mark.skipif(os.getuid() != 0, reason="a socket file of another user needs root to chown it")
def test_a_link_of_ours_to_another_users_socket_is_refused_before_connecting(tmp_path):
    """connect() follows a symlink: the owner checked is the socket's, not the link's (red team)."""
    path = str(tmp_path / "theirs.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unixpath.bind(server, path)
    server.listen(1)
    os.lchown(path, 65534, 65534)
    link = tmp_path / "ours.sock"
    link.symlink_to(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(PermissionError, match="another user"):
            unixpath.connect_own(client, str(link))
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        client.close()
        server.close()
