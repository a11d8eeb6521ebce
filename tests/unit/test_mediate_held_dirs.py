"""The Resolver's held directories: a directory kept open between calls is used only while the
kernel still names it by the path asked for; moved, removed or replaced, the path is resolved
afresh, and a descriptor dropped during a call stays open until that call's own are closed."""

from __future__ import annotations

import os

import pytest

from sandboxctl.supervise import mediate_resolve
from sandboxctl.supervise.mediate_calls import Entry
from sandboxctl.supervise.mediate_resolve import Resolver


@pytest.fixture
def tree(tmp_path):
    """The host's own root as the sandbox's (the kernel reads back host paths here, as it reads
    back the sandbox's view there)."""
    resolver = Resolver(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    yield tmp_path.resolve(), resolver
    resolver.close()


def resolve(resolver: Resolver, path: str) -> tuple[Entry, list[int]]:
    opened: list[int] = []
    entry = resolver.entry(os.getpid(), path, opened, follow=False)
    assert isinstance(entry, Entry), entry
    return entry, opened


def close_all(opened: list[int]) -> None:
    for fd in opened:
        os.close(fd)


def identity(fd_or_path) -> tuple[int, int]:
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return st.st_dev, st.st_ino


def test_a_directory_is_held_and_used_again(tree):
    base, resolver = tree
    (base / "a").mkdir()
    first, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    assert f"{base}/a" in resolver.held and first.parent_id == identity(base / "a")
    again, opened = resolve(resolver, f"{base}/a/y")
    assert again.parent == first.parent and again.parent_path == f"{base}/a" and opened == []


def test_a_directory_moved_away_is_not_used_for_its_old_path(tree):
    base, resolver = tree
    (base / "a").mkdir()
    _, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    os.rename(base / "a", base / "moved")
    (base / "a").mkdir()  # another directory now has the path
    entry, opened = resolve(resolver, f"{base}/a/x")
    try:
        assert identity(entry.parent) == identity(base / "a") != identity(base / "moved")
        assert entry.parent_id == identity(base / "a")
    finally:
        close_all(opened)


def test_a_directory_replaced_by_a_symlink_resolves_through_the_link(tree):
    base, resolver = tree
    (base / "a").mkdir()
    (base / "c").mkdir()
    _, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    os.rename(base / "a", base / "old")
    os.symlink("c", base / "a")
    entry, opened = resolve(resolver, f"{base}/a/x")
    try:
        assert entry.parent_path == f"{base}/c" and identity(entry.parent) == identity(base / "c")
    finally:
        close_all(opened)


def test_a_removed_directory_is_not_found(tree):
    base, resolver = tree
    (base / "a").mkdir()
    _, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    os.rmdir(base / "a")
    opened = []
    assert resolver.entry(os.getpid(), f"{base}/a/x", opened, follow=False) == "ENOENT"
    close_all(opened)
    assert f"{base}/a" not in resolver.held


def test_a_directory_reached_through_a_symlink_is_not_held(tree):
    base, resolver = tree
    (base / "c").mkdir()
    os.symlink("c", base / "a")
    entry, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    assert entry.parent_path == f"{base}/c" and f"{base}/a" not in resolver.held and f"{base}/c" not in resolver.held


def test_a_descriptor_dropped_during_a_call_stays_open_until_the_call_ends(tree, monkeypatch):
    base, resolver = tree
    monkeypatch.setattr(mediate_resolve, "MAX_HELD_DIRS", 2)
    for name in ("a", "b", "c"):
        (base / name).mkdir()
    opened: list[int] = []
    first = resolver.entry(os.getpid(), f"{base}/a/x", opened, follow=False)
    resolver.entry(os.getpid(), f"{base}/b/x", opened, follow=False)
    resolver.entry(os.getpid(), f"{base}/c/x", opened, follow=False)  # /a's descriptor is dropped from the cache
    assert f"{base}/a" not in resolver.held
    assert os.readlink(f"/proc/self/fd/{first.parent}") == str(base / "a")  # still open for this call
    assert first.parent in opened
    close_all(opened)


def test_the_least_recently_used_directory_goes_first(tree, monkeypatch):
    """A directory used again stays held while newer ones come and go (git's .git between the
    objects/xx directories each commit makes)."""
    base, resolver = tree
    monkeypatch.setattr(mediate_resolve, "MAX_HELD_DIRS", 2)
    for name in ("a", "b", "c"):
        (base / name).mkdir()
    for path in (f"{base}/a/x", f"{base}/b/x", f"{base}/a/y", f"{base}/c/x"):  # /a used again before /c comes
        close_all(resolve(resolver, path)[1])
    assert set(resolver.held) == {f"{base}/a", f"{base}/c"}
    again, opened = resolve(resolver, f"{base}/a/z")
    assert opened == [] and again.parent_path == f"{base}/a"


def test_close_closes_every_held_directory(tree):
    base, resolver = tree
    (base / "a").mkdir()
    entry, opened = resolve(resolver, f"{base}/a/x")
    close_all(opened)
    resolver.close()
    assert resolver.held == {}
    with pytest.raises(OSError):
        os.fstat(entry.parent)


def test_a_removed_directory_is_not_taken_for_a_live_one_named_as_the_kernel_reads_it_back(tree):
    """Red team rt6: a directory held as `d (deleted)`, renamed to `d` and removed, reads back
    `…/d (deleted)` — the name of the live directory made there afterwards: every call in the
    live one went to the removed one (a creation answered ENOENT, for as long as it was held)."""
    base, resolver = tree
    (base / "d (deleted)").mkdir()
    _, opened = resolve(resolver, f"{base}/d (deleted)/x")
    close_all(opened)
    os.rename(base / "d (deleted)", base / "d")
    os.rmdir(base / "d")
    (base / "d (deleted)").mkdir()
    entry, opened = resolve(resolver, f"{base}/d (deleted)/x")
    try:
        assert identity(entry.parent) == identity(base / "d (deleted)")
    finally:
        close_all(opened)
