"""The shipper's decisions as pure functions: where each record goes, when a window is over."""

from __future__ import annotations

import math

from gcs_log_sink.rotation import (
    FINISH,
    OpenState,
    RotationPolicy,
    Write,
    fits_whole,
    plan_batch,
    window_deadline,
    window_over,
)

HOUR = 3600.0
W0 = 1_789_999_200.0  # an hour boundary
NO_FLOOR = -math.inf


def test_a_batch_in_the_open_window_is_one_write() -> None:
    """Records of the open object's window that fit go into it in one run."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=1000)
    records: list[tuple[float, int] | None] = [(W0 + 1, 10), (W0 + 2, 10)]
    steps, floor = plan_batch(policy, records, current=OpenState(W0, 0), floor=W0)
    assert [Write(W0, 0, 2)] == steps
    assert W0 == floor


def test_nothing_open_opens_the_first_records_window_and_raises_the_floor() -> None:
    """With no object open the first run names its window; the floor rises to it."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    steps, floor = plan_batch(policy, [(W0 + 5, 1)], current=None, floor=NO_FLOOR)
    assert [Write(W0, 0, 1)] == steps
    assert W0 == floor


def test_a_window_change_finishes_between_records() -> None:
    """The record of the next window ends the open object and starts a new run."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    records: list[tuple[float, int] | None] = [(W0 + 10, 1), (W0 + HOUR + 1, 1), (W0 + HOUR, 1)]
    steps, floor = plan_batch(policy, records, current=OpenState(W0, 0), floor=W0)
    assert [Write(W0, 0, 1), FINISH, Write(W0 + HOUR, 1, 3)] == steps
    assert W0 + HOUR == floor


def test_a_clock_stepped_back_keeps_records_in_the_open_window() -> None:
    """Records created 2 h before the floor go into the open window: no object per record."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    records: list[tuple[float, int] | None] = [(W0 - 2 * HOUR + i, 1) for i in range(100)]
    steps, floor = plan_batch(policy, records, current=OpenState(W0, 0), floor=W0)
    assert [Write(W0, 0, 100)] == steps
    assert W0 == floor


def test_a_clock_stepped_forward_rolls_once() -> None:
    """Five hours ahead: one roll, then every record stays in the new window."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    ahead = W0 + 5 * HOUR
    records: list[tuple[float, int] | None] = [(W0 + 1, 1), (ahead + 1, 1), (W0 + 2, 1)]
    steps, floor = plan_batch(policy, records, current=OpenState(W0, 0), floor=W0)
    assert [Write(W0, 0, 1), FINISH, Write(ahead, 1, 3)] == steps
    assert ahead == floor


def test_max_bytes_rolls_and_a_record_is_never_split() -> None:
    """Past max_bytes a new object starts; an oversized record gets one of its own."""
    policy = RotationPolicy(rotate_seconds=None, max_bytes=100)
    records: list[tuple[float, int] | None] = [(1.0, 60), (2.0, 60), (3.0, 500), (4.0, 1)]
    steps, _ = plan_batch(policy, records, current=None, floor=NO_FLOOR)
    assert [Write(0.0, 0, 1), FINISH, Write(0.0, 1, 2), FINISH, Write(0.0, 2, 3), FINISH,
            Write(0.0, 3, 4)] == steps  # fmt: skip


def test_a_rotate_marker_finishes_the_open_object_only() -> None:
    """A marker ends what is open; a marker with nothing open is just passed over."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    records: list[tuple[float, int] | None] = [(W0 + 1, 1), None, None, (W0 + 2, 1)]
    steps, _ = plan_batch(policy, records, current=None, floor=NO_FLOOR)
    assert [Write(W0, 0, 1), FINISH, Write(W0, 3, 4)] == steps


def test_fits_whole_agrees_with_the_plan() -> None:
    """The fast path says yes exactly when the plan is one write into the open object."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=100)
    current = OpenState(W0, 50)
    assert fits_whole(policy, current, newest=W0 + 10, size=50, floor=W0)
    assert not fits_whole(policy, current, newest=W0 + 10, size=51, floor=W0)
    assert not fits_whole(policy, current, newest=W0 + HOUR, size=1, floor=W0)
    assert fits_whole(policy, current, newest=W0 - 2 * HOUR, size=1, floor=W0)


def test_the_window_deadline_is_on_the_monotonic_clock() -> None:
    """Opened 10 min into an hourly window: over 50 min later by the monotonic clock."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    deadline = window_deadline(policy, W0, wall=W0 + 600, mono=1000.0)
    assert 1000.0 + 3000 == deadline
    assert math.inf == window_deadline(RotationPolicy(rotate_seconds=None), 0.0, wall=1, mono=1)


def test_a_window_is_over_by_either_clock_but_not_by_a_step_back() -> None:
    """The monotonic deadline or a later wall-clock window ends it; a wall clock stepped
    back (before the floor) does not."""
    policy = RotationPolicy(rotate_seconds=HOUR, max_bytes=None)
    deadline = 5000.0
    assert not window_over(policy, W0, deadline, wall=W0 + 10, mono=4000.0, floor=W0)
    assert window_over(policy, W0, deadline, wall=W0 + 10, mono=5000.0, floor=W0)
    assert window_over(policy, W0, deadline, wall=W0 + HOUR, mono=4000.0, floor=W0)
    assert not window_over(policy, W0, deadline, wall=W0 - 2 * HOUR, mono=4000.0, floor=W0)
    assert not window_over(RotationPolicy(rotate_seconds=None), 0.0, 0.0, wall=1, mono=1, floor=0)
