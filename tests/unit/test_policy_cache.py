"""The policy cache: used only while every file of the chain has the bytes it was built from."""

from __future__ import annotations

import os
import sys

from sandboxctl.policy.load import load_source, read_source


def _write(path, text):
    path.write_text(text)
    return path


def test_cache_hit_skips_the_yaml_parser(tmp_path):
    _write(tmp_path / "parent.yaml", "version: 1\nextends: default\nlimits:\n  pids: 7\n")
    child = _write(tmp_path / "child.yaml", "version: 1\nextends: parent.yaml\nworkspace: ro\n")
    cache = tmp_path / "cache"
    first = load_source(read_source(child), cache)
    assert list(cache.glob("policy-*.marshal"))
    for name in [m for m in sys.modules if m.startswith("sandboxctl.policy.yamlpos")]:
        del sys.modules[name]
    import sandboxctl.policy.yamlpos as yamlpos

    calls = []
    original = yamlpos.load_yaml
    yamlpos.load_yaml = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        second = load_source(read_source(child), cache)
    finally:
        yamlpos.load_yaml = original
    assert not calls
    assert second.policy == first.policy and second.chain_sha256 == first.chain_sha256
    assert second.policy.limits.pids == 7 and second.policy.workspace == "ro"


def test_a_changed_parent_invalidates_the_entry(tmp_path):
    parent = _write(tmp_path / "parent.yaml", "version: 1\nlimits:\n  pids: 7\n")
    child = _write(tmp_path / "child.yaml", "version: 1\nextends: parent.yaml\n")
    cache = tmp_path / "cache"
    assert load_source(read_source(child), cache).policy.limits.pids == 7
    _write(parent, "version: 1\nlimits:\n  pids: 9\n")
    assert load_source(read_source(child), cache).policy.limits.pids == 9


def test_a_group_writable_entry_is_ignored(tmp_path):
    child = _write(tmp_path / "p.yaml", "version: 1\nlimits:\n  pids: 7\n")
    cache = tmp_path / "cache"
    load_source(read_source(child), cache)
    entry = next(cache.glob("policy-*.marshal"))
    import marshal

    forged = marshal.loads(entry.read_bytes())
    forged["data"]["limits"]["pids"] = 99999
    entry.write_bytes(marshal.dumps(forged))
    os.chmod(entry, 0o666)
    assert load_source(read_source(child), cache).policy.limits.pids == 7


def test_a_policy_at_a_path_that_is_not_utf8_is_cached_by_its_bytes(tmp_path):
    """A name os.fsdecode could not decode holds a surrogate escape; the key hashes the bytes."""
    path = os.fsdecode(bytes(tmp_path) + b"/mine\xff.yaml")
    _write(type(tmp_path)(path), "version: 1\nextends: default\nlimits:\n  pids: 9\n")
    cache = tmp_path / "cache"
    first = load_source(read_source(path), cache)
    second = load_source(read_source(path), cache)
    assert first.policy.limits.pids == second.policy.limits.pids == 9
    assert len(list(cache.glob("policy-*.marshal"))) == 1
