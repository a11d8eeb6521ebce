"""Denials collapsed for people: one row per distinct (kind, target, rule), counts kept."""

from __future__ import annotations

from sandboxctl.supervise.denials import collapse, total


def test_collapse_keeps_first_order_and_counts():
    denials = [{"kind": "file", "target": "create /etc/x", "rule": "ro"}] * 6 + [
        {"kind": "net", "target": "a:443", "rule": "not allowed"},
        {"kind": "file", "target": "create /etc/x", "rule": "other rule"},
        {"kind": "net", "target": "a:443", "rule": "not allowed", "count": 40},  # a collapsed burst
    ]
    rows = collapse(denials)
    assert [(r["kind"], r["target"], r["rule"], r["count"]) for r in rows] == [
        ("file", "create /etc/x", "ro", 6), ("net", "a:443", "not allowed", 41),
        ("file", "create /etc/x", "other rule", 1)]
    assert total(denials) == total(rows) == 48
    assert collapse([]) == [] and total([]) == 0
