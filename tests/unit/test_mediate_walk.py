"""The slow path of the mediator's resolution (supervise/mediate_walk.py), walked in this process's
own view: here the "caller" is the test itself, so /proc/self names it as it names the caller in a
sandbox, and every answer can be checked against the kernel's own lookup of the same path."""

from __future__ import annotations

import errno
import itertools
import os

import pytest

from sandboxctl.supervise import mediate_walk
from sandboxctl.supervise.mediate_calls import Entry
from sandboxctl.supervise.mediate_resolve import Resolver, Unresolved


@pytest.fixture
def root():
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def walked(root: int, path: str, links: int = 0):
    found = mediate_walk.walk(root, os.getpid(), path, links)
    if isinstance(found, tuple):
        os.close(found[0])
        return found[1]
    return found


def test_symlinks_through_proc_self_lead_where_the_kernel_goes(root, tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "abs").symlink_to(f"/proc/self/root{real}")
    (tmp_path / "thread").symlink_to(f"/proc/thread-self/root{real}")
    (tmp_path / "chain").symlink_to("abs")  # relative, then absolute
    (tmp_path / "pid").symlink_to(f"/proc/{os.getpid()}/cwd")
    (tmp_path / "devfd").symlink_to("/dev/fd")
    fd = os.open(real, os.O_RDONLY)
    try:
        for path in ("abs", "thread", "chain", "chain/sub/..", "abs/./sub/../../real"):
            assert walked(root, f"{tmp_path}/{path}") == os.path.realpath(f"{tmp_path}/{path}") == str(real), path
        assert walked(root, f"{tmp_path}/pid") == os.getcwd()
        assert walked(root, f"{tmp_path}/devfd/{fd}/sub") == str(real / "sub")
        assert walked(root, f"/proc/self/root/../proc/self/fd/{fd}") == str(real)  # `..` after a magic link
    finally:
        os.close(fd)


def test_certain_answers_only_where_the_kernel_fails_so(root, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to("/proc/self/root/no/such/dir")
    (tmp_path / "to-file").symlink_to(f"/proc/self/root{tmp_path}/file")
    assert walked(root, f"{tmp_path}/dangling") == "ENOENT"
    assert walked(root, f"{tmp_path}/to-file") == "ENOTDIR"
    assert walked(root, f"{tmp_path}/missing/deeper") == "ENOENT"
    for path in ("dangling", "to-file", "missing/deeper"):
        with pytest.raises((FileNotFoundError, NotADirectoryError)):
            os.open(f"{tmp_path}/{path}", os.O_PATH | os.O_DIRECTORY)


def test_forty_symlinks_are_followed_and_the_forty_first_is_eloop_as_in_the_kernel(root, tmp_path):
    (tmp_path / "d").mkdir()
    previous = f"/proc/self/root{tmp_path}/d"
    for i in range(41):
        (tmp_path / f"l{i}").symlink_to(previous)
        previous = f"l{i}"
    answers = {}
    for i in range(34, 41):  # lI leads through I+1 symlinks, then /proc/self and its root: I+3 in all
        path = f"{tmp_path}/l{i}"
        try:
            os.close(os.open(path, os.O_PATH | os.O_DIRECTORY))
            kernel = str(tmp_path / "d")
        except OSError as exc:
            assert exc.errno == errno.ELOOP
            kernel = "ELOOP"
        answers[i] = kernel
        assert walked(root, path) == kernel, i
    assert answers[37] == str(tmp_path / "d") and answers[38] == "ELOOP"  # 40 followed, the 41st refused
    assert walked(root, f"{tmp_path}/l36", links=1) == str(tmp_path / "d")
    assert walked(root, f"{tmp_path}/l36", links=2) == "ELOOP"  # counted with what the lookup followed before


def test_what_cannot_be_followed_faithfully_is_unresolved(root, tmp_path):
    read, write = os.pipe()
    try:
        assert isinstance(walked(root, f"/proc/self/fd/{read}/x"), Unresolved)  # a pipe is no directory path
        if os.getpid() != 1 and os.path.exists("/proc/1/cwd"):
            found = walked(root, "/proc/1/cwd")
            assert isinstance(found, Unresolved) and "another process" in found.why
    finally:
        os.close(read)
        os.close(write)


def test_the_resolver_confirms_a_missing_parent_without_symlinks_and_walks_one_with(tmp_path):
    resolver = Resolver(os.open("/", os.O_PATH | os.O_DIRECTORY))
    opened: list[int] = []
    try:
        (tmp_path / "l").symlink_to(f"/proc/self/./root{tmp_path}")  # not the textual /proc/self/root form
        assert resolver.entry(os.getpid(), f"{tmp_path}/no/f", opened, follow=False) == "ENOENT"
        entry = resolver.entry(os.getpid(), f"{tmp_path}/l/f", opened, follow=False)
        assert isinstance(entry, Entry) and entry.path == f"{tmp_path}/f"
    finally:
        for fd in opened:
            os.close(fd)
        resolver.close()


def test_a_walk_made_endless_by_its_links_is_cut_short(root, tmp_path):
    """40 links of 2 000 `..` each: 80 000 lookups in Python for one call. Past MAX_STEPS, unresolved
    (refused and logged) rather than a supervisor kept busy by the sandbox."""
    previous = str(tmp_path)
    for i in range(30):
        (tmp_path / f"u{i}").symlink_to("../" * 1000 + previous.lstrip("/"))
        previous = f"{tmp_path}/u{i}"
    found = walked(root, previous)
    assert isinstance(found, Unresolved) and "lookups" in found.why


class _CountingOs:
    """mediate_walk's `os`, counting the lookups its walks make (every other name is os's own)."""

    def __init__(self) -> None:
        self.opens = 0

    def open(self, *args, **kwargs):
        self.opens += 1
        return os.open(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(os, name)


def _entry(path: str):
    resolver = Resolver(os.open("/", os.O_PATH | os.O_DIRECTORY))
    opened: list[int] = []
    try:
        found = resolver.entry(os.getpid(), path, opened, follow=True)
        return found.path if isinstance(found, Entry) else found
    finally:
        for fd in opened:
            os.close(fd)
        resolver.close()


def test_the_lookup_cap_holds_for_the_call_not_for_each_of_its_walks(tmp_path, monkeypatch):
    """Review rev: a final link leading to itself through /proc/self and two links of 1 600 `..`
    each: the Resolver followed it 35 times, walking each parent afresh with a cap of its own —
    115 000 lookups, a third of a second of the supervisor's time for one open."""
    (tmp_path / "p").symlink_to(f"/proc/self/root{tmp_path}")
    (tmp_path / "d").mkdir()
    (tmp_path / "b").symlink_to("d/.." + "/d/.." * 815)
    (tmp_path / "f").symlink_to(f"{tmp_path}/p/b/b/f")
    counting = _CountingOs()
    monkeypatch.setattr(mediate_walk, "os", counting)
    found = _entry(f"{tmp_path}/f")
    assert isinstance(found, Unresolved) and "lookups" in found.why, found
    assert counting.opens <= mediate_walk.MAX_STEPS + 16, counting.opens


@pytest.mark.parametrize(("hops", "via", "per_hop"), [(10, "p/", 4), (11, "p/", 4), (13, "/proc/self/root", 3),
                                                     (14, "/proc/self/root", 3)])
def test_final_links_and_the_walks_between_them_count_as_the_kernels_forty(tmp_path, hops, via, per_hop):
    """Each of g0 -> p/g1 -> … (p -> /proc/self/root/TMP) is four links to the kernel (g, p, self,
    root), but each walk counted only the final links before it, and /proc/self/root/TMP/g1 (taken
    apart before any walk) none at all: 11 and 14 of them were resolved, and the file created,
    where the caller's own open fails with ELOOP."""
    (tmp_path / "p").symlink_to(f"/proc/self/root{tmp_path}")
    names = [f"g{i}" for i in range(hops)] + ["x"]
    for name, nxt in itertools.pairwise(names):
        (tmp_path / name).symlink_to(f"{via}{tmp_path}/{nxt}" if via.startswith("/") else f"{via}{nxt}")
    found = _entry(f"{tmp_path}/g0")
    try:
        fd = os.open(tmp_path / "g0", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        assert exc.errno == errno.ELOOP and hops * per_hop > 40
        assert found == "ELOOP"
    else:
        os.close(fd)
        assert hops * per_hop <= 40 and found == str(tmp_path / "x")
