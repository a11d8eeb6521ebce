"""The gvisor backend's native launcher: a static x86-64 program made for one run, no interpreter.

gvisor_init.py (python3 -I -S inside gVisor) costs a run ~80 ms on platform ptrace: the
interpreter, ctypes and libffi are files the sandbox's gofer must find and map in a cold
sandbox. When the launcher has nothing to do but load the seccomp program and execute the
command (no proxy forwarder to start, no capabilities to drop), this program does it instead.

Its code is constant (gvisor_exec_x86_64.S, assembled into CODE; a unit test re-assembles it);
what differs per run is a table of data after it: the seccomp program, argv, the environment, the
paths to try (the PATH search done as gvisor_init.exec_command does it) and the messages for
each failure, written here. The file is one read-only, executable segment at a fixed address,
bound read-only inside the sandbox like the Python launcher's configuration (it holds the same
environment, which the command gets anyway).
"""

from __future__ import annotations

import os
import struct

from sandboxctl.errors import SandboxError

BASE = 0x400000  # where the one segment is mapped (ET_EXEC, no relocation)
CODE_OFFSET = 64 + 2 * 56  # after the ELF header and the two program headers
TABLE_OFFSET = 0x400  # TABLE in the assembly
TABLE_SLOTS = 17  # u64 slots: FPROG .. ERRNO_COUNT, EXEC_HINT, SECCOMP_HINT
ERRNO_MAX = 134  # strerror texts for 1..133 (Linux's errno range), 0 for anything else

CODE = bytes.fromhex(
    "4881ec00010000b89d000000bf26000000be0100000031d24531d24531c00f054885c00f853a010000b83d010000bf01"
    "00000031f6488b1425000440000f054885c00f851b0100004531e449c7c5ffffffff488b0425180440004e8b34e04d85"
    "f6747749ffc4b83b0000004c89f7488b342508044000488b1425100440000f054989c74983fffe74c94983ffec74c348"
    "833c252004400000742ab806010000bf9cffffff4c89f64889e24531d20f054885c0759e8b4424182500f000003d0080"
    "0000758e4983fff375564983fdff75824d8d6c24ffe978ffffff4983fdff7424488b04252804400049c1e5044a8b3428"
    "4a8b542808e8ab000000bf7e000000e999000000488b342530044000488b142538044000e88c000000bf7f000000eb7d"
    "488b042540044000498d4c24ff48c1e104488b3408488b540808e8660000004c89ffe86b000000488b34256804400048"
    "8b142570044000e849000000bf7e000000eb3a4989c7488b342548044000488b142550044000e82a0000004c89ffe82f"
    "000000488b342578044000488b142580044000e80d000000bf7d000000b8e70000000f05f4b801000000bf020000000f"
    "05c348f7df483b3c2560044000720231ff488b04255804400048c1e704488b3438488b543808ebcd"
)


def candidates(argv: list[str], env: dict[str, str]) -> tuple[list[str], bool]:
    """The paths to try, in order, and whether they come from a PATH search (gvisor_init.exec_command)."""
    name = argv[0]
    if "/" in name:
        return [name], False
    return [os.path.join(d or ".", name) for d in env.get("PATH", "/usr/bin:/bin").split(":")], True


def _encode(text: str, what: str) -> bytes:
    data = os.fsencode(text)
    if b"\0" in data:
        raise SandboxError(f"the command's {what} contains a NUL byte", "remove it: no program can receive one")
    return data


def _message(text: str) -> bytes:
    """Written straight to the caller's terminal from inside: inert, byte for byte as gvisor_init.py's."""
    from sandboxctl.launch.gvisor_init import inert

    line, newline = (text[:-1], "\n") if text.endswith("\n") else (text, "")
    return f"sandboxctl: error: {inert(line)}{newline}".encode(errors="replace")


def _hint(key: str, hints: dict[str, str] | None) -> bytes:
    """The hint line after an error of the launcher's (SPEC: one line + hint), as gvisor_init.fail writes it."""
    from sandboxctl.launch.gvisor_init import HINTS, inert

    return f"  hint: {inert((hints or {}).get(key) or HINTS[key])}\n".encode(errors="replace")


class _Image:
    """The data after the table, laid out at known addresses."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.start = TABLE_OFFSET + TABLE_SLOTS * 8

    def put(self, blob: bytes) -> int:
        while len(self.data) % 8:
            self.data.append(0)
        address = BASE + self.start + len(self.data)
        self.data += blob
        return address

    def string(self, blob: bytes) -> int:
        return self.put(blob + b"\0")

    def pointers(self, addresses: list[int]) -> int:
        return self.put(struct.pack(f"<{len(addresses) + 1}Q", *addresses, 0))

    def texts(self, blobs: list[bytes]) -> int:
        """An array of (address, length) pairs."""
        pairs = [value for blob in blobs for value in (self.put(blob), len(blob))]
        return self.put(struct.pack(f"<{len(pairs)}Q", *pairs))


def build(seccomp_program: bytes, argv: list[str], env: dict[str, str], hints: dict[str, str] | None = None) -> bytes:
    """The launcher for one run: loads seccomp_program (classic BPF, as bubblewrap gets it), then
    executes argv with exactly env. `hints`: the hint lines' words by gvisor_init.HINTS key."""
    if not seccomp_program or len(seccomp_program) % 8 or len(seccomp_program) // 8 > 0xFFFF:
        raise SandboxError("the seccomp program is not a valid BPF program", "run sandboxctl doctor")
    if not argv:
        raise SandboxError("no command to run", "give the command after --")
    paths, searching = candidates(argv, env)
    image = _Image()
    program = image.put(seccomp_program)
    fprog = image.put(struct.pack("<H6xQ", len(seccomp_program) // 8, program))
    argv_at = image.pointers([image.string(_encode(a, "arguments")) for a in argv])
    envp_at = image.pointers([image.string(_encode(f"{k}={v}", "environment")) for k, v in env.items()])
    candidates_at = image.pointers([image.string(_encode(p, "path")) for p in paths])
    exec_hint = _hint("exec", hints)
    denied = image.texts([_message(f"{p}: permission denied (the file is not executable)\n") + exec_hint
                          for p in paths])
    not_found = _message(f"{argv[0]}: command not found inside the sandbox\n") + _hint("not_found", hints)
    not_found_at = image.put(not_found)
    exec_error = image.texts([_message(f"{p}: ") for p in paths])
    seccomp_error = _message("cannot load the seccomp filter inside gVisor: ")
    seccomp_error_at = image.put(seccomp_error)
    exec_hint_at = image.put(exec_hint)
    seccomp_hint = _hint("backend", hints)
    seccomp_hint_at = image.put(seccomp_hint)
    errno_text = image.texts([b"unknown error\n"] + [f"{os.strerror(n)}\n".encode(errors="replace")
                                                        for n in range(1, ERRNO_MAX)])
    table = struct.pack(f"<{TABLE_SLOTS}Q", fprog, argv_at, envp_at, candidates_at, int(searching), denied,
                        not_found_at, len(not_found), exec_error, seccomp_error_at, len(seccomp_error), errno_text,
                        ERRNO_MAX, exec_hint_at, len(exec_hint), seccomp_hint_at, len(seccomp_hint))
    body = bytearray(TABLE_OFFSET)
    body[CODE_OFFSET:CODE_OFFSET + len(CODE)] = CODE
    body[:CODE_OFFSET] = _headers(TABLE_OFFSET + len(table) + len(image.data))
    return bytes(body + table + image.data)


def _headers(size: int) -> bytes:
    """ELF header, one PT_LOAD (read + execute) mapping the whole file at BASE, and PT_GNU_STACK
    (read + write: without it the stack would be executable)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, System V
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, BASE + CODE_OFFSET, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)
    return header + segment + stack
