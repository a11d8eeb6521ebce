"""The launch configuration in frames (launch/config_frames.py, joined by launch/shim.py), and a
broken pipe that is ours rather than the reader's: never a silent success."""

from __future__ import annotations

import importlib.util
import marshal
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from sandboxctl.launch import config_frames

SHIM = Path(config_frames.__file__).with_name("shim.py")


def load_shim():
    spec = importlib.util.spec_from_file_location("sandboxctl_shim_under_test", SHIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frames_mark_the_last_one_and_fit_a_message():
    assert config_frames.frames(b"") == [b"."]
    parts = config_frames.frames(b"x" * (3 * config_frames.FRAME + 5))
    assert [p[:1] for p in parts] == [b"+", b"+", b"+", b"."]
    assert max(len(p) for p in parts) == config_frames.FRAME + 1
    assert b"".join(p[1:] for p in parts) == b"x" * (3 * config_frames.FRAME + 5)
    assert load_shim().FRAME == config_frames.FRAME


def test_a_configuration_of_megabytes_reaches_the_shim_whole():
    config = {"landlock": [f"/work/repo{n}/.git/hooks" * 4 for n in range(20000)], "env": {"A": "b"}}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    assert len(marshal.dumps(config)) > 4 * ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    sender = threading.Thread(target=config_frames.send_config, args=(ours, config))
    sender.start()
    try:
        assert marshal.loads(load_shim().read_config(theirs.fileno())) == config
    finally:
        sender.join()
        ours.close()
        theirs.close()


def test_a_shim_that_died_first_does_not_make_the_send_raise():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    config_frames.send_config(ours, {"big": "x" * 500_000})  # bubblewrap's stderr tells the loop why
    ours.close()


def test_a_configuration_cut_short_stops_the_shim_with_125():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.sendall(b"+" + b"x" * 100)
    ours.close()
    code = (f"import importlib.util as u; s = u.spec_from_file_location('s', {str(SHIM)!r}); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); m.read_config({theirs.fileno()}); print('went on')")
    result = subprocess.run([sys.executable, "-c", code], pass_fds=(theirs.fileno(),), capture_output=True, text=True)
    theirs.close()
    assert result.returncode == 125 and "went on" not in result.stdout


BROKEN_RUN = ("import sandboxctl.cli.run as run\n"
              "def broken(*args, **kwargs): raise BrokenPipeError(32, 'Broken pipe')\n"
              "run.execute_run = broken\n"
              "from sandboxctl.cli.main import main\n"
              "main(['run', '--', 'true'])\n")


def test_a_broken_pipe_of_our_own_is_an_error_not_a_success():
    result = subprocess.run([sys.executable, "-c", BROKEN_RUN], capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.startswith("sandboxctl: error: internal error: BrokenPipeError")


def test_a_reader_that_went_away_is_still_not_an_error():
    read, write = os.pipe()
    os.close(read)  # `sandboxctl run --dry-run | head`, after head has exited
    result = subprocess.run([sys.executable, "-c", BROKEN_RUN], stdout=write, stderr=subprocess.PIPE,
                            text=True, timeout=60)
    os.close(write)
    assert result.returncode == 0, result.stderr


def test_a_go_to_a_shim_that_died_is_not_a_broken_pipe():
    """The red team's case: the shim dies between ready and go while stdout is a broken pipe too;
    a BrokenPipeError from the go would have been taken for the reader going away (exit 0)."""
    from sandboxctl.supervise.handshake import _send_go

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    _send_go(ours, True)
    _send_go(ours, False)
    ours.close()


def test_send_to_shim_swallows_a_dead_peer_only():
    """The one helper both the configuration and the go use: a dead shim is not an error, every
    other failure is (a closed descriptor of ours must not pass for a sent message)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    config_frames.send_to_shim(ours, b"one", b"two")
    assert [theirs.recv(16), theirs.recv(16)] == [b"one", b"two"]
    theirs.close()
    config_frames.send_to_shim(ours, b"three", b"four")  # EPIPE: swallowed
    ours.close()
    try:
        config_frames.send_to_shim(ours, b"five")
    except OSError as exc:
        assert not isinstance(exc, BrokenPipeError | ConnectionResetError)
    else:
        raise AssertionError("a send on a closed socket of ours passed silently")
