"""The README's Python examples are run as they are written (each block alone, from a workspace).

Nothing is copied into this file: the blocks are read from README.md, so an example that stops
working fails here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def test_the_readme_has_library_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_example_runs(number, workspace, home, tmp_path):
    code = BLOCKS[number]
    if "from agents" in code and importlib.util.find_spec("agents") is None:
        pytest.skip("the `agents` extra is not installed (pip install 'sandboxctl[agents]')")
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_RUNTIME_DIR": str(runtime), "LANG": "C.UTF-8"}
    result = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"README example {number + 1} failed:\n{code}\n--- stderr\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert list(runtime.iterdir()) == []  # library sessions leave nothing on disk
