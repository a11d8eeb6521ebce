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


def test_identical_denials_are_kept_a_few_times_then_counted():
    from sandboxctl.supervise.denials import KEEP, DenialList, LogThrottle, collapse, total

    kept = DenialList()
    throttle = LogThrottle()
    written = 0
    for _ in range(5000):
        kept.append({"kind": "file", "target": "write /ws/.git/config", "rule": "protected"})
        written += throttle.admit("file", {"decision": "deny", "path": "/ws/.git/config", "op": "write",
                                           "rule": "protected"})
    kept.append({"kind": "net", "target": "a:1", "rule": "not allowed"})
    assert len(kept) == KEEP + 2 and total(kept) == 5001
    assert collapse(kept) == [{"kind": "file", "target": "write /ws/.git/config", "rule": "protected", "count": 5000},
                              {"kind": "net", "target": "a:1", "rule": "not allowed", "count": 1}]
    assert written == KEEP
    [(event, summary)] = throttle.pending()
    assert event == "file" and summary["repeated"] == 5000 - KEEP and summary["path"] == "/ws/.git/config"
    assert throttle.admit("exec", {"path": "/usr/bin/true"})  # only denials are throttled
