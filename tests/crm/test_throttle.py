"""The rate gate: after a 429 every caller waits (Retry-After, capped; else doubling pauses), and any other answer resets it."""

from __future__ import annotations

from syncd.crm.throttle import MAX_PAUSE, MAX_RETRY_AFTER, RateGate


class Clock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def gate() -> tuple[RateGate, Clock]:
    clock = Clock()
    return RateGate(sleep=clock.sleep, clock=lambda: clock.now), clock


def test_open_gate_never_sleeps():
    """Without a 429 nobody waits."""
    g, clock = gate()
    g.wait()
    g.passed()
    g.wait()
    assert clock.slept == []


def test_retry_after_is_waited_out_by_the_next_caller():
    """A 429 with Retry-After: 7 makes the next request wait those 7 s, once."""
    g, clock = gate()
    assert g.limited(7.0) == 7.0
    g.wait()
    g.wait()
    assert clock.slept == [7.0]


def test_retry_after_is_capped_so_shutdown_is_not_held_for_long():
    """An hour's Retry-After pauses the gate for MAX_RETRY_AFTER only (the message itself waits the hour in the ledger)."""
    g, clock = gate()
    assert g.limited(3600.0) == MAX_RETRY_AFTER
    g.wait()
    assert clock.slept == [MAX_RETRY_AFTER]


def test_pauses_double_with_each_429_in_a_row_and_reset_after_success():
    """Without Retry-After: 0.5-1, 1-2, 2-4 s ... up to MAX_PAUSE; a good answer starts again from the shortest."""
    g, _ = gate()
    pauses = [g.limited(None) for _ in range(8)]
    for n, pause in enumerate(pauses):
        ceiling = min(MAX_PAUSE, 2.0**n)
        assert ceiling / 2 <= pause <= ceiling
    g.passed()
    assert g.limited(None) <= 1.0
