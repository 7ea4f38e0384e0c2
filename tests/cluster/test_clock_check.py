"""ClockCheck: judging a node's clock from the other nodes' heartbeats."""

from __future__ import annotations

from datetime import datetime, timedelta

from fantasma import ClusterSettings
from fantasma.cluster import ClockCheck
from fantasma.jobs import NodeInfo
from fantasma_testing import DEFAULT_START

START = DEFAULT_START
SETTINGS = ClusterSettings()  # tolerance: 2 x 2 s + 1 s = 5 s


def at(second: float) -> datetime:
    return START + timedelta(seconds=second)


def rows(**last_seen: float) -> list[NodeInfo]:
    return [
        NodeInfo(node_id, START, at(second)) for node_id, second in last_seen.items()
    ]


def test_tolerance_from_settings() -> None:
    assert SETTINGS.clock_check_tolerance == timedelta(seconds=5)


def test_alone_in_step() -> None:
    check = ClockCheck("me", SETTINGS)

    verdict = check.observe(rows(me=0), at(0))

    assert verdict.in_step is True
    assert verdict.live_peers == 0
    assert check.ready_to_take_over is True


def test_first_look_not_ready() -> None:
    check = ClockCheck("me", SETTINGS)

    check.observe(rows(me=0, other=0), at(0))

    assert check.ready_to_take_over is False


def test_second_look_ready() -> None:
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(me=0, other=0), at(0))

    check.observe(rows(me=2, other=2), at(2))

    assert check.ready_to_take_over is True


def test_first_look_judges_nobody() -> None:
    """Rows seen once may belong to nodes that died long ago."""
    check = ClockCheck("me", SETTINGS)

    verdict = check.observe(rows(me=3600, a=0, b=0), at(3600))

    assert verdict.in_step is True
    assert verdict.live_peers == 0


def test_changed_rows_count_as_live() -> None:
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0, b=0), at(0))

    verdict = check.observe(rows(a=2, b=1), at(2))

    assert verdict.live_peers == 2
    assert verdict.in_step is True
    assert verdict.lead == timedelta(0)


def test_fast_clock_out_of_step() -> None:
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0, b=0), at(0))

    verdict = check.observe(rows(a=2, b=2), at(3602))

    assert verdict.in_step is False
    assert verdict.ahead_of == 2
    assert verdict.lead == timedelta(seconds=3600)


def test_tolerance_boundary_in_step() -> None:
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0), at(0))

    verdict = check.observe(rows(a=2), at(7))

    assert verdict.in_step is True


def test_past_tolerance_out_of_step() -> None:
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0), at(0))

    verdict = check.observe(rows(a=2), at(7.001))

    assert verdict.in_step is False


def test_slow_clock_in_step() -> None:
    """A clock behind the others is not flagged: as a leader it is only late."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0, b=0), at(-3600))

    verdict = check.observe(rows(a=2, b=2), at(-3598))

    assert verdict.in_step is True
    assert verdict.ahead_of == 0


def test_minority_slow_peer_ignored() -> None:
    """Ahead of one slow peer out of two, the node keeps the majority's time."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0, slow=-3600), at(0))

    verdict = check.observe(rows(a=2, slow=-3598), at(2))

    assert verdict.in_step is True
    assert verdict.ahead_of == 1


def test_half_ahead_in_step() -> None:
    """With two peers split, the node is ahead of only half, not most."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0, b=0), at(0))

    verdict = check.observe(rows(a=2, b=-100), at(2))

    assert verdict.in_step is True


def test_unchanged_row_stops_counting() -> None:
    """A row unchanged for two looks belongs to a node that stopped."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0), at(0))
    check.observe(rows(a=2), at(2))
    check.observe(rows(a=2), at(4))

    verdict = check.observe(rows(a=2), at(60))

    assert verdict.live_peers == 0
    assert verdict.in_step is True


def test_row_unchanged_once_still_live() -> None:
    """One look may fall between two heartbeats of a live node."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0), at(0))
    check.observe(rows(a=2), at(2))

    verdict = check.observe(rows(a=2), at(4))

    assert verdict.live_peers == 1


def test_new_row_counts_as_live() -> None:
    """A row that appeared since the last look was written after it."""
    check = ClockCheck("me", SETTINGS)
    check.observe(rows(a=0), at(0))

    verdict = check.observe(rows(a=2, joined=-3600), at(2))

    assert verdict.live_peers == 2
    assert verdict.ahead_of == 1
