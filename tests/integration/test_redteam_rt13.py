"""Red team rt13: the terminal approval prompt, attacked by the command that shares its terminal.

The sandboxed command owns stdout and stdin, the very terminal the prompt is drawn on and read
from. Every test here is judged from outside: the bytes the pty's master side received (what a
terminal would show), the bytes it was sent (what the human or the terminal typed), the action
log, and the files on the host.

The pty master in these tests plays the terminal emulator: like xterm, VTE, kitty or PuTTY it
answers the queries the command writes (cursor position, mode reports, colours, answerback) by
typing the reply into the terminal's input, where the prompt reads its keys.
"""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

import pytest

from .test_approvals import _policy
from .test_terminal import _spawn_on_pty

BOTTOM_RIGHT = "╯".encode()


# The command: a thread keeps writing QUERY to the terminal; the main thread writes outside the
# writable set, so the prompt is up while the queries go on.
QUERYING_WRITER = r"""
import os, sys, threading, time
query = bytes.fromhex(sys.argv[1])
def ask():
    while True:
        os.write(1, query)
        time.sleep(0.05)
threading.Thread(target=ask, daemon=True).start()
time.sleep(0.2)
try:
    with open(sys.argv[2], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
"""


class FakeTerminal:
    """The master side of a pty, answering the command's queries as a terminal emulator does."""

    def __init__(self, master: int, replies: dict[bytes, bytes]):
        self.master = master
        self.replies = replies
        self.screen = b""
        self.answering = True
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen = 0  # how far the replies have been made
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.screen += chunk
                for query, reply in self.replies.items():
                    start = seen
                    while self.answering and (found := self.screen.find(query, start)) >= 0:
                        os.write(self.master, reply)
                        start = found + len(query)
                seen = max(0, len(self.screen) - 16)

    def wait_for(self, needle: bytes, timeout: float = 20.0, after: int = 0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if self.screen.find(needle, after) >= 0:
                    return True
            time.sleep(0.05)
        return False

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _approvals(sandbox) -> list[dict]:
    return [r for r in sandbox.records() if r["event"] == "approval"]


# What terminals answer, and the key each answer holds for a prompt that reads single bytes:
# the cursor position report ends in "R" (run), a mode report in "y" (once), a colour report
# holds "r" (rgb), PuTTY's default answerback to ENQ is "PuTTY" (y), and a terminal in 8-bit
# mode (S8C1T, which the command can switch on) sends its reports with a C1 CSI.
REPORTS = {
    "cursor position report": (b"\x1b[6n", b"\x1b[12;40R"),
    "mode report": (b"\x1b[?2004$p", b"\x1b[?2004;2$y"),
    "colour report": (b"\x1b]11;?\x07", b"\x1b]11;rgb:0000/0000/0000\x1b\\"),
    "answerback": (b"\x05", b"PuTTY"),
    "8-bit report": (b"\x1b[6n", "\u009b12;40R".encode()),
    "raw 8-bit report": (b"\x1b[6n", b"\x9b12;40R"),
    "device attributes": (b"\x1b[>c", b"\x1b[>41;380;0c\x1b[?64;1;2;6;9;15;18;21;22c"),
}


@pytest.mark.parametrize("name", list(REPORTS))
def test_terminal_reports_the_command_asks_for_are_no_answer(sandbox, outside, name):
    """A report typed by the terminal is not the human's key: the request waits for a real one."""
    query, reply = REPORTS[name]
    target = outside / "bashrc"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", QUERYING_WRITER, query.hex(), str(target)],
                                 policy=_policy(sandbox, outside, timeout="8s"))
    terminal = FakeTerminal(master, {query: reply})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(1.5)  # the queries and their answers go on while the prompt waits
        with terminal.lock:
            terminal.answering = False
        time.sleep(0.5)
        terminal.type(b"d")  # the human's own answer still counts
        assert terminal.wait_for(b"refused") or terminal.wait_for(b"wrote", 1), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists(), f"a {name} answered the prompt: {_approvals(sandbox)}"
    answers = [(a["target"], a["answer"], a["via"]) for a in _approvals(sandbox)]
    assert answers == [(str(target), "deny", "tty")], answers


MOUSE_WRITER = r"""
import os, sys
os.write(1, b"\x1b[?1000h\x1b[?1003h")  # report every click and every motion, X10 style
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
"""


def test_mouse_reports_are_no_answer(sandbox, outside):
    """With X10 mouse reporting switched on by the command, moving the mouse over column 79 types
    ESC [ M, then the button, column and row each as a byte plus 32: "o" for column 79, "y" for
    column 89, "a" for row 65. None of it is a key."""
    target = outside / "profile"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", MOUSE_WRITER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="6s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        for column, row in ((79, 1), (89, 2), (82, 65), (68, 3)):  # o, y, r / a, d
            terminal.type(b"\x1b[M" + bytes((32 + 3, 32 + column, 32 + row)))  # a motion, no button
            time.sleep(0.2)
        assert terminal.wait_for(b"refused", 15) or terminal.wait_for(b"wrote", 1), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists(), _approvals(sandbox)
    assert [a["answer"] for a in _approvals(sandbox)] == ["timeout"]


def test_a_paste_is_no_answer(sandbox, outside):
    """Text pasted while the prompt waits (bracketed or not) arrives as one burst: not a key."""
    target = outside / "pasted"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", MOUSE_WRITER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="5s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        terminal.type(b"\x1b[200~yes, run it\x1b[201~")
        time.sleep(0.3)
        terminal.type(b"yarn add left-pad")
        assert terminal.wait_for(b"refused", 15) or terminal.wait_for(b"wrote", 1), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists(), _approvals(sandbox)
    assert [a["answer"] for a in _approvals(sandbox)] == ["timeout"]




# The command reads the terminal too. It asks for a cursor report and reads all of it but the
# last byte, so the prompt finds a lone "R" (allow for this run) after a quiet moment.
PREFIX_STEALER = r"""
import os, sys, termios, threading, time
mode = termios.tcgetattr(0)
mode[3] &= ~(termios.ICANON | termios.ECHO)
termios.tcsetattr(0, termios.TCSANOW, mode)
def steal():
    while True:
        os.write(1, b"\x1b[6n")
        try:
            os.read(0, 7)
        except OSError:
            pass
        time.sleep(0.25)
threading.Thread(target=steal, daemon=True).start()
time.sleep(0.5)
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
"""


def test_the_command_cannot_leave_the_last_byte_of_a_report_for_the_prompt(sandbox, outside):
    target = outside / "gitconfig"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", PREFIX_STEALER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="6s"))
    terminal = FakeTerminal(master, {b"\x1b[6n": b"\x1b[12;40R"})
    try:
        assert terminal.wait_for(b"refused", 30) or terminal.wait_for(b"wrote", 1), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists(), _approvals(sandbox)
    assert [a["answer"] for a in _approvals(sandbox)] == ["timeout"]


# The command makes a process group of its own the terminal's foreground one (SIGTTOU ignored, as
# a shell does), then reads every key typed.
FOREGROUND_TAKER = r"""
import os, signal, sys, threading, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
signal.signal(signal.SIGTTIN, signal.SIG_IGN)
os.setpgid(0, 0)
os.tcsetpgrp(0, os.getpgrp())
stolen = []
def steal():
    import select
    while True:
        try:
            os.tcsetpgrp(0, os.getpgrp())
            if select.select([0], [], [], 0.05)[0]:
                stolen.append(os.read(0, 64))
        except OSError:
            time.sleep(0.01)
threading.Thread(target=steal, daemon=True).start()
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
print("stolen", repr(b"".join(stolen)), flush=True)
"""


def test_a_command_that_takes_the_foreground_reads_no_key(sandbox, outside):
    """The command fights for the terminal until it asks; while the panel waits it is stopped
    (supervise/freeze.py), so the prompt holds the terminal, reads the human's key, and the command
    reads none of it. (Where the sandbox cannot be frozen, a command that takes the terminal back
    has its request denied at once: `tty: the command took the terminal`.)"""
    target = outside / "zshrc"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", FOREGROUND_TAKER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(1.0)
        terminal.type(b"d")
        assert terminal.wait_for(b"stolen", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists()
    assert [(a["answer"], a["via"]) for a in _approvals(sandbox)] == [("deny", "tty")]
    assert b"stolen b''" in terminal.screen, terminal.screen[-2000:]
    assert b"refused" in terminal.screen and b"Traceback" not in terminal.screen


# Before it writes outside the writable set, the command leaves the terminal in modes that would
# hide or deform what is drawn next: concealed text, white on white, the line-drawing set in G0
# and G1 (shifted in), insert mode, reverse video, a one-line scroll region, mouse reports.
SCREEN_SPOILER = r"""
import os, sys
os.write(1, b"\x1b[8m\x1b[37;47m\x1b(0\x1b)0\x0e\x1b[4h\x1b[?5h\x1b[5;5r\x1b]4;7;#000000\x1b\\\x1b[?1003h")
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
"""

RESETS = {  # each mode the command set, and what must put it back before the panel is drawn
    "concealed, white on white": b"\x1b[0m", "line drawing in G0": b"\x1b(B", "line drawing in G1": b"\x1b)B",
    "shifted out": b"\x0f", "insert mode": b"\x1b[4l", "reverse video": b"\x1b[?5l",
    "one-line scroll region": b"\x1b[r", "palette": b"\x1b]104", "mouse reports": b"\x1b[?1003l",
}


def test_modes_the_command_left_do_not_hide_or_deform_the_panel(sandbox, outside):
    target = outside / "hidden"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", SCREEN_SPOILER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(0.8)  # read first: a key in the panel's first half second is no answer
        terminal.type(b"d")
        assert terminal.wait_for(b"refused", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    screen = terminal.screen
    spoiled = screen.index(b"\x1b[?1003h") + len(b"\x1b[?1003h")  # the command's last mode
    between = screen[spoiled:screen.index(b"approval needed")]
    missing = [mode for mode, reset in RESETS.items() if reset not in between]
    assert not missing, (missing, between)
    assert not target.exists() and [a["answer"] for a in _approvals(sandbox)] == ["deny"]


# Two writes queued at once: a harmless one first, the one that matters right behind it.
TWO_WRITES = r"""
import sys, threading, time
def write(path):
    try:
        with open(path, "w") as handle:
            handle.write("written in the sandbox")
        print("\r\nwrote", path, flush=True)
    except OSError as exc:
        print("\r\nrefused", path, exc.errno, flush=True)
first = threading.Thread(target=write, args=(sys.argv[1],))
first.start()
time.sleep(0.3)
second = threading.Thread(target=write, args=(sys.argv[2],))
second.start()
first.join()
second.join()
print("\r\nboth done", flush=True)
"""


def test_a_held_or_doubled_key_does_not_answer_the_next_request(sandbox, outside):
    """The human answers the first prompt with "o", pressed three times and held a moment: the
    later presses land after the second panel is drawn, but they were meant for the first one.
    The second request waits for a key typed after it could be read."""
    notes, bashrc = outside / "notes.txt", outside / "bashrc"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", TWO_WRITES, str(notes), str(bashrc)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(1.0)  # the human reads the first prompt
        for _ in range(3):  # pressed again, to be sure, as people do
            terminal.type(b"o")
            time.sleep(0.18)
        for _ in range(10):  # and held: the terminal's key repeat, every 33 ms
            terminal.type(b"o")
            time.sleep(0.033)
        with terminal.lock:
            first = terminal.screen.find(b"approval needed")
        assert terminal.wait_for(b"approval needed", 10, after=first + 1), terminal.screen[-600:]
        time.sleep(1.0)
        terminal.type(b"d")  # the second prompt read, and answered
        assert terminal.wait_for(b"both done", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert notes.exists() and not bashrc.exists(), _approvals(sandbox)
    assert [(a["target"], a["answer"]) for a in _approvals(sandbox)] == [(str(notes), "once"), (str(bashrc), "deny")]


# Once the panel is up, the command moves the cursor back over it and draws a harmless target
# where the real one is: a process that ignores SIGTTOU writes to a terminal whatever its
# foreground group (job control is no wall), so the sandbox is stopped while the panel waits.
OVERDRAWER = r"""
import os, signal, sys, threading, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
def overdraw():
    time.sleep(1.5)
    os.write(1, b"\x1b7\x1b[7A\r\xe2\x94\x82 write    ./NOTES.md FAKE-TARGET\x1b[K\x1b8")
threading.Thread(target=overdraw, daemon=True).start()
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
"""


def test_nothing_the_command_writes_reaches_the_screen_while_the_panel_waits(sandbox, outside):
    target = outside / "authorized_keys"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", OVERDRAWER, str(target)],
                                 policy=_policy(sandbox, outside, timeout="20s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(BOTTOM_RIGHT), terminal.screen[-2000:]
        time.sleep(2.5)
        terminal.type(b"d")
        assert terminal.wait_for(b"refused", 15), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    screen = terminal.screen
    panel_end = screen.index(BOTTOM_RIGHT)
    answered = screen.index(b"-> denied")
    assert b"FAKE-TARGET" not in screen[panel_end:answered], screen[panel_end:answered]


FLOOD = r"""
import sys, threading
results = []
def write(path):
    try:
        open(path, "w").write("x")
        results.append("wrote")
    except OSError as exc:
        results.append(exc.errno)
threads = [threading.Thread(target=write, args=(f"{sys.argv[1]}/f{n}",)) for n in range(int(sys.argv[2]))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("\r\nflood done", results.count("wrote"), results.count(13), flush=True)
"""


def _most_waiting_at_once(approvals: list[dict]) -> int:
    """How many requests waited out their timeout together at most: each waited from its record's
    time less `waited_s` to its record's time, less 50 ms (the record is written a moment after the
    request left the queue, and the next one may enter meanwhile)."""
    from datetime import datetime

    events = []
    for record in approvals:
        if record["answer"] != "timeout":
            continue
        settled = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
        events += [(settled - record["waited_s"], 1), (settled - 0.05, -1)]
    most = waiting = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        waiting += change
        most = max(most, waiting)
    return most


def test_a_flood_of_requests_is_bounded_and_denied(sandbox, outside):
    """300 writes outside at once, nobody answering: at most MAX_PENDING wait (the rest are denied
    at once), the supervisor's threads stay bounded, nothing is written, and the run ends."""
    from sandboxctl.approval.broker import MAX_PENDING

    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", FLOOD, str(outside), "300"],
                                 policy=_policy(sandbox, outside, timeout="3s"))
    terminal = FakeTerminal(master, {})
    peak = 0
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not terminal.wait_for(b"flood done", 0.2):
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            peak = max(peak, int(status.split("Threads:")[1].split()[0]))
        assert terminal.wait_for(b"flood done 0 300", 5), terminal.screen[-2000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    answers = [a["answer"] for a in _approvals(sandbox)]
    assert len(answers) == 300 and set(answers) <= {"timeout", "deny"}, set(answers)
    # never more than MAX_PENDING waiting at once (the log's settle time and wait of each); the
    # sandbox is stopped while the panel waits, so threads that had not asked yet ask in a later round
    assert _most_waiting_at_once(_approvals(sandbox)) <= MAX_PENDING
    assert not list(outside.iterdir())
    assert peak < MAX_PENDING + 40, peak
    assert terminal.screen.count(b"approval needed") <= MAX_PENDING


# While the prompt waits, the command tries to type the answer itself: TIOCSTI on fd 0 and on a
# fresh /dev/tty (this kernel still allows TIOCSTI: dev.tty.legacy_tiocsti), TIOCLINUX, and a new
# session that steals the terminal as its controlling one (TIOCSCTTY with force).
INJECTOR = r"""
import fcntl, os, sys, threading, time
TIOCSTI, TIOCLINUX, TIOCSCTTY = 0x5412, 0x541C, 0x540E
tried = {}
def inject():
    time.sleep(1.0)
    for name, fd_of in (("fd0", lambda: 0), ("devtty", lambda: os.open("/dev/tty", os.O_RDWR))):
        try:
            fd = fd_of()
            for key in b"oooo":
                fcntl.ioctl(fd, TIOCSTI, bytes((key,)))
            tried[name] = "typed"
        except OSError as exc:
            tried[name] = exc.errno
    try:
        fcntl.ioctl(0, TIOCLINUX, b"\x02" + b"\0" * 16)
        tried["tioclinux"] = "done"
    except OSError as exc:
        tried["tioclinux"] = exc.errno
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        try:
            fcntl.ioctl(0, TIOCSCTTY, 1)
            fcntl.ioctl(0, TIOCSTI, b"o")
            os.write(write, b"stolen")
        except OSError as exc:
            os.write(write, str(exc.errno).encode())
        os._exit(0)
    tried["sctty"] = os.read(read, 64).decode()
threading.Thread(target=inject, daemon=True).start()
try:
    with open(sys.argv[1], "w") as handle:
        handle.write("written in the sandbox")
    print("\r\nwrote", flush=True)
except OSError as exc:
    print("\r\nrefused", exc.errno, flush=True)
time.sleep(0.5)
print("\r\ntried", sorted(tried.items()), flush=True)
"""


def test_the_command_cannot_type_the_answer_through_the_kernel(sandbox, outside):
    target = outside / "bash_profile"
    proc, master = _spawn_on_pty(sandbox, ["--", "python3", "-c", INJECTOR, str(target)],
                                 policy=_policy(sandbox, outside, timeout="4s"))
    terminal = FakeTerminal(master, {})
    try:
        assert terminal.wait_for(b"tried", 30), terminal.screen[-3000:]
        proc.wait(timeout=30)
    finally:
        proc.kill()
        terminal.close()
        os.close(master)
    assert not target.exists(), _approvals(sandbox)
    assert [a["answer"] for a in _approvals(sandbox)] == ["timeout"]
    tried = terminal.screen[terminal.screen.rindex(b"tried"):].decode(errors="replace")
    assert "typed" not in tried and "stolen" not in tried and "'done'" not in tried, tried
