"""Deadlines count from a wall-clock start but run on the monotonic clock."""

from __future__ import annotations

import time

from verifier import deadline as deadlines
from verifier.deadline import Deadline


def test_a_start_in_the_past_counts():
    limit = Deadline(10.0, start=time.time() - 3.0)
    assert 2.9 < limit.elapsed() < 3.5 and 6.5 < limit.remaining() < 7.1


def test_a_wall_clock_step_neither_ends_nor_extends_a_deadline(monkeypatch):
    limit = Deadline(10.0)
    share = limit.fraction(0.5)
    real = time.time
    for step in (100.0, -100.0):  # NTP, or a sandbox's clock, jumping either way
        monkeypatch.setattr(deadlines.time, "time", lambda step=step: real() + step)
        assert 9.5 < limit.remaining() <= 10.0 and not limit.expired()
        assert 4.5 < share.remaining() <= 5.0
        assert 0.0 <= limit.elapsed() < 0.5
