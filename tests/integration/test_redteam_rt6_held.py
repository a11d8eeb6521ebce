"""Red team rt6 on the Resolver's held directories: a call through a held directory is judged
and done as if its path were resolved afresh. Judged from outside: the host's files."""

from __future__ import annotations

SEARCH_REVOKED = """
import os
os.makedirs('a/b'); open('a/b/x', 'w').close()  # a/b is resolved, and held
os.chmod('a', 0)
try:
    open('a/b/y', 'w').close(); print('created')
except OSError as exc:
    print('refused', exc.errno)
os.chmod('a', 0o755)
"""


def test_a_held_directory_is_not_reached_once_an_ancestor_forbids_the_way_there(sandbox):
    """A fresh resolution needs search permission on every directory on the way (the supervisor
    resolves as the caller); a held descriptor needs none: with `a` made 0 after `a/b` was
    held, a/b/y was created on the host all the same. A directory's mode changed by the
    mediator drops the held ones."""
    result = sandbox.py(SEARCH_REVOKED, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (sandbox.workspace / "a" / "b" / "y").exists(), result.stdout
    assert "refused 13" in result.stdout, result.stdout
