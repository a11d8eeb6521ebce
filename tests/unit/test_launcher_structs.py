"""The kernel structures the two launchers pack by hand (launch/shim.py, launch/gvisor_init.py: no
ctypes.Structure, for start-up time) are byte for byte what ctypes.Structure declarations of the
kernel's UAPI give, and those declarations are what the C compiler makes of /usr/include/linux
(where a header has the structure). The launchers' own code is run with a libc that records what
it is handed, so a field moved by one byte, a lost padding or the wrong byte order fails here.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.launch import gvisor_init, landlock_rights, shim
from sandboxctl.plan.model import LandlockPathRule, LandlockPlan

LAUNCHERS = (shim, gvisor_init)


# ---------------------------------------------------------------- the kernel's UAPI, declared in full
class LandlockRulesetAttr(ctypes.Structure):  # include/uapi/linux/landlock.h (ABI 6: scoped)
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class LandlockPathBeneathAttr(ctypes.Structure):  # __attribute__((packed))
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockNetPortAttr(ctypes.Structure):  # ABI 4
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class SockFilter(ctypes.Structure):  # include/uapi/linux/filter.h
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


class CapHeader(ctypes.Structure):  # include/uapi/linux/capability.h: __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):  # __user_cap_data_struct
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class Winsize(ctypes.Structure):  # struct winsize (session_server's TIOCSWINSZ)
    _fields_ = [("ws_row", ctypes.c_ushort), ("ws_col", ctypes.c_ushort), ("ws_xpixel", ctypes.c_ushort),
                ("ws_ypixel", ctypes.c_ushort)]


# C name, header, ctypes declaration: what the compiler is asked about
UAPI = (
    ("struct landlock_ruleset_attr", "linux/landlock.h", LandlockRulesetAttr),
    ("struct landlock_path_beneath_attr", "linux/landlock.h", LandlockPathBeneathAttr),
    ("struct landlock_net_port_attr", "linux/landlock.h", LandlockNetPortAttr),
    ("struct sock_filter", "linux/filter.h", SockFilter),
    ("struct sock_fprog", "linux/filter.h", SockFprog),
    ("struct __user_cap_header_struct", "linux/capability.h", CapHeader),
    ("struct __user_cap_data_struct", "linux/capability.h", CapData),
    ("struct winsize", "sys/ioctl.h", Winsize),
)


def _header_text(header: str) -> str:
    path = Path("/usr/include") / header
    return path.read_text(errors="replace") if path.is_file() else ""


def _compiled_layout(tmp_path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """sizeof and offsetof of every structure and field the installed headers have, from gcc.
    A header older than the kernel lacks later fields (landlock.h before ABI 4 has no
    handled_access_net): those are held by the ctypes declarations and the kernel tests only."""
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += sorted({f"#include <{header}>" for _c, header, _decl in UAPI
                     if _header_text(header) or header == "sys/ioctl.h"})  # (under a multiarch directory)
    lines.append("int main(void) {")
    asked = []
    for c_name, header, decl in UAPI:
        text = _header_text(header)
        if c_name not in text and header != "sys/ioctl.h":
            continue
        lines.append(f'printf("{c_name}|sizeof|%zu|0\\n", sizeof({c_name}));')
        for field, _type in decl._fields_:
            if header != "sys/ioctl.h" and field not in text.split(c_name, 1)[1].split("};", 1)[0]:
                continue
            lines.append(f'printf("{c_name}|{field}|%zu|%zu\\n", offsetof({c_name}, {field}), '
                         f"sizeof((({c_name} *)0)->{field}));")
        asked.append(c_name)
    lines.append("return 0; }")
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines) + "\n")
    program = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(program), str(source)], check=True, capture_output=True)
    out = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    layout: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in asked}
    for line in out.splitlines():
        c_name, field, first, second = line.split("|")
        layout[c_name][field] = (int(first), int(second))
    return layout


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler to read the UAPI headers with")
def test_the_ctypes_declarations_are_the_installed_uapi_headers(tmp_path: Path) -> None:
    layout = _compiled_layout(tmp_path)
    # the headers every supported system has: these must have been compared
    assert {"struct landlock_path_beneath_attr", "struct sock_fprog", "struct sock_filter",
            "struct __user_cap_header_struct", "struct __user_cap_data_struct", "struct winsize"} <= set(layout)
    for c_name, _header, decl in UAPI:
        if c_name not in layout:
            continue
        fields = layout[c_name]
        if c_name != "struct landlock_ruleset_attr" or len(fields) == 4:  # a grown struct: its full size
            assert fields["sizeof"][0] == ctypes.sizeof(decl), c_name
        for name, (offset, size) in fields.items():
            if name != "sizeof":
                described = getattr(decl, name)
                assert (described.offset, described.size) == (offset, size), (c_name, name)


def test_the_declarations_are_the_kernels_abi() -> None:
    """Held without a compiler too: the sizes Landlock's build_check_abi() asserts, and sock_fprog's
    padding before its pointer."""
    assert ctypes.sizeof(LandlockRulesetAttr) == 24
    assert ctypes.sizeof(LandlockPathBeneathAttr) == 12 and LandlockPathBeneathAttr.parent_fd.offset == 8
    assert ctypes.sizeof(LandlockNetPortAttr) == 16 and LandlockNetPortAttr.port.offset == 8
    assert ctypes.sizeof(SockFilter) == 8
    pointer = ctypes.sizeof(ctypes.c_void_p)
    assert SockFprog.filter.offset == pointer and ctypes.sizeof(SockFprog) == 2 * pointer
    assert ctypes.sizeof(CapHeader) == 8 and ctypes.sizeof(CapData) == 12


# ---------------------------------------------------------------- the launchers' packing, recorded
class RecordingLibc:
    """Stands for Libc in apply_landlock: answers like a kernel of the given ABI and records every
    call's arguments, with the file each descriptor argument names while the call runs."""

    def __init__(self, abi: int) -> None:
        self.abi = abi
        self.calls: list[tuple[int, tuple]] = []
        self.ruleset_fd = -1

    def syscall(self, number: int, *args):
        if number == shim.SYS_LANDLOCK_CREATE_RULESET and args[2] == shim.CREATE_RULESET_VERSION:
            return self.abi
        if number == shim.SYS_LANDLOCK_CREATE_RULESET:
            self.ruleset_fd = os.open("/dev/null", os.O_RDONLY)
        if number == shim.SYS_LANDLOCK_ADD_RULE and args[1] == shim.RULE_PATH_BENEATH:
            rule = LandlockPathBeneathAttr.from_buffer_copy(args[2])
            args = (*args, os.readlink(f"/proc/self/fd/{rule.parent_fd}"))
        self.calls.append((number, args))
        return self.ruleset_fd if number == shim.SYS_LANDLOCK_CREATE_RULESET else 0

    def prctl(self, option: int, *args) -> int:
        self.calls.append((-option, args))
        return 0

    def of(self, number: int) -> list[tuple]:
        return [args for n, args in self.calls if n == number]


def _plan(tmp_path: Path, scopes: tuple[str, ...] = ("abstract_unix_socket",)) -> tuple[dict, Path, Path]:
    directory = tmp_path / "tree"
    directory.mkdir()
    file = tmp_path / "one-file"
    file.write_text("x")
    plan = LandlockPlan(required=True, minimum_abi=1,
                        paths=(LandlockPathRule(str(directory), ("read", "write", "execute")),
                               LandlockPathRule(str(file), ("read", "write"))),
                        restrict_tcp_bind=False, restrict_tcp_connect=True, connect_tcp_ports=(51234, 3128),
                        bind_tcp_ports=(), scopes=scopes)
    return landlock_rights.shim_config(plan), directory, file


@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6, 7])
def test_the_ruleset_attr_is_the_kernels_for_every_abi(tmp_path: Path, abi: int) -> None:
    """One 24-byte landlock_ruleset_attr for every ABI: a kernel with a shorter one accepts it only
    while the fields it does not know are zero (copy_struct_from_user)."""
    config, _directory, _file = _plan(tmp_path)
    libc = RecordingLibc(abi)
    report = shim.apply_landlock(libc, config)
    [(attr, size, flags)] = [args for args in libc.of(shim.SYS_LANDLOCK_CREATE_RULESET) if args[0] is not None]
    assert (size, flags) == (len(attr), 0) and len(attr) == ctypes.sizeof(LandlockRulesetAttr)
    fs = landlock_rights.for_abi(landlock_rights.FS, abi)
    net = landlock_rights.NET["CONNECT_TCP"][0] if abi >= 4 else 0
    scoped = landlock_rights.SCOPE["ABSTRACT_UNIX_SOCKET"][0] if abi >= 6 else 0
    assert attr == bytes(LandlockRulesetAttr(fs, net, scoped))
    decoded = LandlockRulesetAttr.from_buffer_copy(attr)
    assert (decoded.handled_access_fs, decoded.handled_access_net, decoded.scoped) == (fs, net, scoped)
    assert (report["handled_fs"], report["handled_net"], report["scoped"]) == (fs, net, scoped)


def test_distinct_values_sit_in_distinct_fields(tmp_path: Path) -> None:
    """net and scoped differ (CONNECT_TCP is 2, ABSTRACT_UNIX_SOCKET 1) so that swapped fields fail,
    and handled_access_fs is not a palindrome of bytes so that the wrong byte order fails."""
    config, _directory, _file = _plan(tmp_path)
    libc = RecordingLibc(7)
    shim.apply_landlock(libc, config)
    [(attr, _size, _flags)] = [args for args in libc.of(shim.SYS_LANDLOCK_CREATE_RULESET) if args[0] is not None]
    assert attr[:8] != attr[7::-1] and attr[8:16] != attr[16:24]


def test_path_beneath_rules_name_the_opened_path_with_its_rights(tmp_path: Path) -> None:
    config, directory, file = _plan(tmp_path)
    libc = RecordingLibc(7)
    shim.apply_landlock(libc, config)
    rules = [args for args in libc.of(shim.SYS_LANDLOCK_ADD_RULE) if args[1] == shim.RULE_PATH_BENEATH]
    assert len(rules) == 2
    handled = landlock_rights.for_abi(landlock_rights.FS, 7)
    for (ruleset, _kind, rule, flags, named), (path, wanted) in zip(rules, config["paths"], strict=True):
        assert ruleset == libc.ruleset_fd and flags == 0
        assert len(rule) == ctypes.sizeof(LandlockPathBeneathAttr)
        decoded = LandlockPathBeneathAttr.from_buffer_copy(rule)
        access = wanted & handled if path == str(directory) else wanted & handled & config["file_only"]
        assert decoded.allowed_access == access and named == path
        assert rule == bytes(LandlockPathBeneathAttr(access, decoded.parent_fd))
    assert named == str(file)


def test_net_port_rules_are_the_kernels(tmp_path: Path) -> None:
    config, _directory, _file = _plan(tmp_path)
    libc = RecordingLibc(7)
    report = shim.apply_landlock(libc, config)
    rules = [args for args in libc.of(shim.SYS_LANDLOCK_ADD_RULE) if args[1] == shim.RULE_NET_PORT]
    connect = landlock_rights.NET["CONNECT_TCP"][0]
    assert [rule for _fd, _kind, rule, _flags in rules] == [bytes(LandlockNetPortAttr(connect, port))
                                                            for port in (51234, 3128)]
    assert [LandlockNetPortAttr.from_buffer_copy(rule).port for _fd, _kind, rule, _flags in rules] == [51234, 3128]
    assert report["tcp_connect_ports"] == [51234, 3128]
    below = RecordingLibc(3)
    shim.apply_landlock(below, config)  # no TCP rights before ABI 4: no port rule either
    assert not [args for args in below.of(shim.SYS_LANDLOCK_ADD_RULE) if args[1] == shim.RULE_NET_PORT]


def _program(count: int) -> bytes:
    return b"".join(bytes(SockFilter(0x06 + i, i % 7, 255 - i % 5, 0x7FFF0000 + i)) for i in range(count))


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=["shim", "gvisor_init"])
def test_sock_fprog_names_a_copy_of_the_program(launcher, monkeypatch) -> None:
    """Libc.seccomp_filter's sock_fprog: the instruction count, then (after the padding) a pointer
    to the whole program, read back here while the call runs as the kernel would read it."""
    seen = {}
    program = _program(3)

    def syscall(number: int, *args):
        operation, flags, fprog = args
        decoded = SockFprog.from_buffer_copy(fprog[:ctypes.sizeof(SockFprog)].ljust(ctypes.sizeof(SockFprog), b"\0"))
        address = ctypes.cast(decoded.filter, ctypes.c_void_p).value or 0
        try:  # read as the kernel would, through /proc/self/mem: a wrong pointer is EIO here, not a crash
            fd = os.open("/proc/self/mem", os.O_RDONLY)
            try:
                loaded = os.pread(fd, decoded.len * 8, address)
            finally:
                os.close(fd)
        except OSError as exc:
            loaded = exc
        seen.update(number=number, operation=operation, flags=flags, size=len(fprog), len=decoded.len,
                    bytes=fprog, program=loaded, address=address)
        return 7

    libc = launcher.Libc()
    monkeypatch.setattr(libc, "syscall", syscall)
    assert libc.seccomp_filter(317, 8, program) == 7
    assert (seen["number"], seen["operation"], seen["flags"]) == (317, 1, 8)  # SECCOMP_SET_MODE_FILTER
    assert seen["size"] == ctypes.sizeof(SockFprog) and seen["len"] == 3
    assert seen["program"] == program
    loaded = (SockFilter * 3).from_buffer_copy(seen["program"])
    assert (loaded[0].code, loaded[1].jt, loaded[2].jf, loaded[2].k) == (0x06, 1, 253, 0x7FFF0002)
    assert seen["bytes"] == bytes(SockFprog(3, ctypes.cast(seen["address"], ctypes.POINTER(SockFilter))))


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=["shim", "gvisor_init"])
@pytest.mark.parametrize("program", [b"", b"\0" * 12, b"\0" * 8 * 65536], ids=["empty", "1.5", "65536"])
def test_a_program_that_is_not_whole_instructions_is_never_loaded(launcher, monkeypatch, program) -> None:
    """len is instructions in an unsigned short: a program of part of one, none, or more than fit
    would be loaded cut short (or raise OverflowError, not an OSError the launchers answer)."""
    libc = launcher.Libc()
    monkeypatch.setattr(libc, "syscall", lambda *args: pytest.fail("loaded"))
    with pytest.raises(OSError) as caught:
        libc.seccomp_filter(317, 0, program)
    assert caught.value.errno == 22  # EINVAL, as the kernel would answer


def test_the_capability_structures_are_the_kernels() -> None:
    """gvisor_init's capset/capget: a v3 header (version, pid 0) and two data structures."""
    calls = []
    machine = os.uname().machine
    if machine not in gvisor_init.CAPGET_CAPSET:
        pytest.skip(f"no capget numbers for {machine}")
    capget, capset = gvisor_init.CAPGET_CAPSET[machine]

    class Recording:
        def prctl(self, option, *args):
            if option == gvisor_init.PR_CAPBSET_READ:
                raise OSError(22, "past the last capability")  # an empty bounding set
            return 0

        def syscall(self, number, header, data):
            calls.append((number, bytes(header), bytes(data), len(bytes(data))))
            return 0

        def address_of_copy(self, data):
            return shim.Libc().address_of_copy(data)

    gvisor_init.drop_capabilities(Recording())
    [(set_nr, header, data, _), (get_nr, get_header, _got, get_size)] = calls
    assert (set_nr, get_nr) == (capset, capget)
    assert header == get_header == bytes(CapHeader(gvisor_init._LINUX_CAPABILITY_VERSION_3, 0))
    assert data == bytes((CapData * 2)()) and get_size == ctypes.sizeof(CapData * 2)


def test_the_session_servers_winsize_is_the_kernels() -> None:
    import struct

    assert struct.pack("HHHH", 24, 80, 1, 2) == bytes(Winsize(24, 80, 1, 2))


# ---------------------------------------------------------------- the kernel reads them as meant
_LANDLOCK_CHILD = r"""
import os, socket, sys, marshal
sys.path[:0] = [sys.argv[1]]
from sandboxctl.launch import shim
config, granted, hidden, port_ok, port_no = marshal.loads(bytes.fromhex(sys.argv[2]))
report = shim.apply_landlock(shim.Libc(), config)
out = {"report": report}
for name, path in (("granted", granted), ("hidden", hidden)):
    try:
        with open(path) as handle:
            out[name] = handle.read()
    except OSError as exc:
        out[name] = exc.errno
try:
    open(os.path.join(os.path.dirname(granted), "new"), "w")
    out["write"] = "written"
except OSError as exc:
    out["write"] = exc.errno
for name, port in (("port_ok", port_ok), ("port_no", port_no)):
    sock = socket.socket()
    try:
        sock.connect(("127.0.0.1", port))
        out[name] = "connected"
    except OSError as exc:
        out[name] = exc.errno
    sock.close()
print(marshal.dumps(out).hex())
"""


def _landlock_abi() -> int:
    try:
        return shim.abi_version(shim.Libc())
    except OSError:
        return 0


@pytest.mark.skipif(_landlock_abi() < 4, reason="needs Landlock ABI 4 (TCP rules)")
def test_the_kernel_enforces_what_was_packed(tmp_path: Path) -> None:
    """The real calls, in a child (Landlock cannot be undone): 200 read rules, one of which grants
    the file read here; a file beside none of them is refused; TCP connect only to the port granted.
    A rule packed wrong is refused by the kernel (the child fails) or grants something else."""
    import marshal
    import socket

    import sandboxctl

    dirs = []
    for i in range(200):
        d = tmp_path / f"d{i:03}"
        d.mkdir()
        dirs.append(d)
    granted = dirs[137] / "canary"
    granted.write_text("readable")
    hidden_dir = tmp_path / "not-granted"
    hidden_dir.mkdir()
    hidden = hidden_dir / "canary"
    hidden.write_text("secret")
    listeners = [socket.socket() for _ in range(2)]
    for sock in listeners:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
    port_ok, port_no = (sock.getsockname()[1] for sock in listeners)
    plan = LandlockPlan(required=True, minimum_abi=4,
                        paths=(*(LandlockPathRule(str(d), ("read",)) for d in dirs),
                               LandlockPathRule(sys.prefix, ("read", "execute")),
                               LandlockPathRule(sys.base_prefix, ("read", "execute")),
                               LandlockPathRule(str(Path(sandboxctl.__file__).parents[1]), ("read",)),
                               *(LandlockPathRule(p, ("read", "execute")) for p in ("/usr", "/lib", "/lib64", "/etc",
                                                                                    "/proc", "/dev"))),
                        restrict_tcp_bind=True, restrict_tcp_connect=True, connect_tcp_ports=(port_ok,),
                        bind_tcp_ports=(), scopes=("signal", "abstract_unix_socket"))
    argument = marshal.dumps([landlock_rights.shim_config(plan), str(granted), str(hidden), port_ok, port_no]).hex()
    try:
        done = subprocess.run([sys.executable, "-c", _LANDLOCK_CHILD, str(Path(sandboxctl.__file__).parents[1]),
                               argument], capture_output=True, text=True, timeout=60)
    finally:
        for sock in listeners:
            sock.close()
    assert done.returncode == 0, done.stderr
    out = marshal.loads(bytes.fromhex(done.stdout.strip()))
    assert out["report"]["enforced"] and out["report"]["path_rules"] >= 200
    assert out["granted"] == "readable"
    assert out["hidden"] == 13 and out["write"] == 13  # EACCES: Landlock's answer
    assert out["port_ok"] == "connected" and out["port_no"] == 13
    assert not (dirs[137] / "new").exists()


_SECCOMP_CHILD = r"""
import errno, os, sys
sys.path[:0] = [sys.argv[1]]
from sandboxctl.launch import {launcher} as launcher
libc = launcher.Libc()
nr, getpid, arch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
libc.prctl(38, 1, 0, 0, 0)
def insn(code, jt, jf, k):
    return code.to_bytes(2, sys.byteorder) + bytes([jt, jf]) + k.to_bytes(4, sys.byteorder)
program = (insn(0x20, 0, 0, 4) + insn(0x15, 1, 0, arch) + insn(0x06, 0, 0, 0x7FFF0000)  # arch, else allow
           + insn(0x20, 0, 0, 0) + insn(0x15, 0, 1, getpid)                              # nr == getpid?
           + insn(0x06, 0, 0, 0x00050000 | errno.EXDEV) + insn(0x06, 0, 0, 0x7FFF0000))  # EXDEV, else allow
libc.seccomp_filter(nr, 0, program)
try:
    libc.syscall(getpid)
    print("allowed")
except OSError as exc:
    print(errno.errorcode[exc.errno])
with open("/proc/self/status") as status:
    print([line.split()[1] for line in status if line.startswith("Seccomp:")][0])
"""

_SECCOMP_NUMBERS = {"x86_64": (317, 39, 0xC000003E), "aarch64": (277, 172, 0xC00000B7)}


@pytest.mark.parametrize("launcher", ["shim", "gvisor_init"])
def test_the_kernel_loads_the_packed_sock_fprog(launcher: str) -> None:
    """A real seccomp filter through each launcher's Libc (in a child): getpid answers EXDEV, an
    errno nothing else gives it, so the program the kernel runs is the one that was packed."""
    import sandboxctl

    machine = os.uname().machine
    if machine not in _SECCOMP_NUMBERS:
        pytest.skip(f"no seccomp numbers for {machine}")
    done = subprocess.run([sys.executable, "-c", _SECCOMP_CHILD.replace("{launcher}", launcher),
                           str(Path(sandboxctl.__file__).parents[1]), *map(str, _SECCOMP_NUMBERS[machine])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EXDEV", "2"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the native launcher is x86-64 code")
def test_the_native_launchers_sock_fprog_is_the_kernels() -> None:
    """gvisor_exec packs its sock_fprog into the image ('<H6xQ'): the table's first slot points at
    it, and it must be the struct with the count and the address of the program in the image."""
    from sandboxctl.launch import gvisor_exec

    program = _program(5)
    image = gvisor_exec.build(program, ["/bin/true"], {})
    at = gvisor_exec.TABLE_OFFSET
    fprog_address = int.from_bytes(image[at:at + 8], "little")
    offset = fprog_address - gvisor_exec.BASE
    fprog = SockFprog.from_buffer_copy(image[offset:offset + ctypes.sizeof(SockFprog)])
    program_offset = ctypes.cast(fprog.filter, ctypes.c_void_p).value - gvisor_exec.BASE
    assert fprog.len == 5 and image[program_offset:program_offset + len(program)] == program
    assert image[offset:offset + ctypes.sizeof(SockFprog)] == bytes(SockFprog(5, fprog.filter))
