"""Idle polls' deadlines: spread over the last part of their wait, latest of the least booked slots first."""

from __future__ import annotations

import contextlib

from gateway.poll_deadlines import BUCKET_SECONDS, SPREAD, PollDeadlines


def test_polls_that_begin_together_get_one_slot_each_from_the_end_of_their_wait() -> None:
    deadlines = PollDeadlines()
    with contextlib.ExitStack() as polls:
        ends = [polls.enter_context(deadlines.booked(100.0, 20.0)) for _ in range(12)]
        slots = [int(end / BUCKET_SECONDS) for end in ends]
        assert len(set(slots)) == 12  # one poll per slot
        assert slots == sorted(slots, reverse=True)  # the latest first
        assert all(100.0 + 20.0 * (1 - SPREAD) < end <= 120.0 for end in ends)
        assert min(ends) > 120.0 - 13 * BUCKET_SECONDS


def test_a_slot_is_free_again_when_its_poll_ends() -> None:
    deadlines = PollDeadlines()
    with deadlines.booked(100.0, 20.0) as first:
        pass
    with deadlines.booked(100.0, 20.0) as again, deadlines.booked(100.0, 20.0) as second:
        assert int(again / BUCKET_SECONDS) == int(first / BUCKET_SECONDS)
        assert int(second / BUCKET_SECONDS) == int(first / BUCKET_SECONDS) - 1


def test_when_every_slot_is_booked_once_the_next_poll_takes_the_latest_again() -> None:
    deadlines = PollDeadlines()
    with contextlib.ExitStack() as polls:
        ends = [polls.enter_context(deadlines.booked(0.0, 4.0)) for _ in range(40)]
    slots = [int(end / BUCKET_SECONDS) for end in ends]
    window = len(set(slots))
    assert 10 <= window <= 12  # 3 s of quarter-second slots, less the two at the window's edges
    assert slots[:window] == slots[window:2 * window]  # round after round, the same order


def test_a_wait_too_short_to_spread_ends_when_it_says() -> None:
    with PollDeadlines().booked(50.0, 0.2) as end:
        assert end == 50.2
