"""checked_inspection: the one place a run and a standalone proxy make their Inspection; a bad
upstream CA file is one line and a hint (SPEC: user errors are 125, never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.network.inspection import checked_inspection


def test_an_unreadable_upstream_ca_is_one_line_and_a_hint(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(SandboxError) as raised:
        checked_inspection({"example.com": ["GET /**"]}, [], [str(bad)], "sandboxctl test")
    assert raised.value.message.startswith("network.upstream_ca: cannot load the CA certificates")
    assert raised.value.hint and "\n" not in raised.value.message


def test_a_good_one_is_made_and_checked() -> None:
    inspection = checked_inspection({"example.com": ["GET /**"]}, [], [], "sandboxctl test")
    assert b"BEGIN CERTIFICATE" in inspection.ca_pem
