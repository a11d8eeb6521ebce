"""Signals that come as a run ends wait for run.end, then are raised again (restore_signals) —
except a terminal's Ctrl-C, which the kernel gave the command too: its own exit status stands."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from sandboxctl.supervise import runner
from sandboxctl.supervise.runner import Supervisor


def _restore(monkeypatch: pytest.MonkeyPatch, pending: list[int], on_terminal: bool) -> list[int]:
    seen: list[int] = []
    monkeypatch.setattr(runner, "terminal_delivered", lambda: on_terminal)
    originals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        for signum in originals:
            signal.signal(signum, lambda n, _f: seen.append(n))
        fake = SimpleNamespace(signal_originals={s: signal.getsignal(s) for s in originals},
                               pending_signals=list(pending))
        Supervisor.restore_signals(fake)  # type: ignore[arg-type]
        assert fake.pending_signals == [] and fake.signal_originals is None
    finally:
        for signum, handler in originals.items():
            signal.signal(signum, handler)
    return seen


def test_a_deferred_sigint_from_elsewhere_is_raised_again(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _restore(monkeypatch, [signal.SIGINT, signal.SIGHUP, signal.SIGINT], on_terminal=False) == \
        [signal.SIGINT, signal.SIGHUP]


def test_a_terminals_ctrl_c_as_the_run_ends_leaves_the_commands_status(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CI failure this guards: Ctrl-C caught by the command (exit 42) came back as 130
    assert _restore(monkeypatch, [signal.SIGINT, signal.SIGHUP], on_terminal=True) == [signal.SIGHUP]


def test_sigquit_is_never_raised_again(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _restore(monkeypatch, [signal.SIGQUIT], on_terminal=False) == []
