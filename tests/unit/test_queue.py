"""The handler's record queue: bounds, exact counts, drop notes, flush targets, re-entry."""

from __future__ import annotations

import threading

from gcs_log_sink._queue import ROTATE, Batch, DropReason, RecordQueue


def test_bounded_by_records_and_bytes_and_drops_are_counted_by_reason() -> None:
    """Past either bound a record is refused at once (timeout 0) and counted."""
    queue = RecordQueue(max_records=3, max_bytes=10)
    assert queue.put(1.0, b"aaaa", 0)
    assert queue.put(2.0, b"bbbb", 0)
    assert not queue.put(3.0, b"cccc", 0)  # 12 bytes > 10
    assert queue.put(3.0, b"cc", 0)
    assert not queue.put(4.0, b"d", 0)  # 4 records > 3
    ledger = queue.ledger()
    assert (3, 10, 2) == (ledger.queued_records, ledger.queued_bytes, ledger.dropped)
    assert (2, DropReason.QUEUE_FULL) == queue.pop_drop_note()
    assert None is queue.pop_drop_note()


def test_one_record_larger_than_the_byte_bound_fits_an_empty_queue() -> None:
    """A huge record is not refused forever: it goes when the queue is empty."""
    queue = RecordQueue(max_records=10, max_bytes=4)
    assert queue.put(1.0, b"0123456789", 0)
    assert not queue.put(2.0, b"x", 0)


def test_counts_stay_exact_through_take_settle_and_objects() -> None:
    """Every record is in one place at a time: queued, in flight, open, shipped or lost."""
    queue = RecordQueue(max_records=100, max_bytes=1000)
    for i in range(5):
        queue.put(float(i), b"12345", 0)
    queue.put_marker()
    batch = queue.take(max_bytes=12, max_records=100)
    assert (3, 15) == (batch.records, batch.size)
    queue.settle(2, written=2, first_created=0.0)
    queue.settle(1, lost=1)
    ledger = queue.ledger()
    assert (2, 10, 0, 2, 1) == (
        ledger.queued_records, ledger.queued_bytes, ledger.in_flight, ledger.open_records,
        ledger.lost,
    )  # fmt: skip
    assert 0.0 == ledger.oldest_unshipped
    queue.object_done(2, 10, "shipped", first_created=0.0)
    rest = queue.take(max_bytes=1000, max_records=100)
    assert [(3.0, b"12345"), (4.0, b"12345"), ROTATE] == rest.entries
    assert not rest.final
    queue.close()
    assert queue.take(1000, 100).final
    ledger = queue.ledger()
    assert (2, 10, 1, 0) == (
        ledger.shipped_records,
        ledger.shipped_bytes,
        ledger.shipped_objects,
        ledger.queued_bytes,
    )


def test_a_drop_note_stays_inside_the_byte_bound() -> None:
    """The handler's own note never pushes the queue past max_bytes; it waits for room."""
    queue = RecordQueue(max_records=10, max_bytes=10)
    queue.put(1.0, b"0123456789", 0)
    assert not queue.put(2.0, b"x", 0)
    assert not queue.put_note(3.0, b"dropped 1")
    queue.take(100, 100)
    assert queue.put_note(3.0, b"dropped 1")
    assert 9 == queue.ledger().queued_bytes


def test_records_after_close_are_dropped_and_counted() -> None:
    """After close nothing is queued; each refusal is counted as logged after close."""
    queue = RecordQueue(max_records=10, max_bytes=100)
    queue.close()
    assert not queue.put(1.0, b"late", 5.0)
    assert (1, DropReason.AFTER_CLOSE) == queue.pop_drop_note()


def test_a_blocked_producer_is_released_by_close() -> None:
    """A producer waiting for room returns (dropped) as soon as the queue closes."""
    queue = RecordQueue(max_records=1, max_bytes=100)
    queue.put(1.0, b"a", 0)
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(queue.put(2.0, b"b", 60.0)))
    producer.start()
    queue.close()
    producer.join(5)
    assert [False] == results
    assert 1 == queue.dropped


def test_a_re_entered_put_never_blocks() -> None:
    """Called while this thread is already inside put (a signal handler interrupting it:
    holding the lock, or waiting for room), a full queue drops at once instead of waiting,
    and a free one takes the record."""
    queue = RecordQueue(max_records=1, max_bytes=100)
    with queue._lock:
        assert queue.put(1.0, b"a", 60.0)
        assert not queue.put(2.0, b"b", 60.0)
    queue._waiting.add(threading.get_ident())
    assert not queue.put(3.0, b"c", 60.0)
    assert (1, 2) == (queue.ledger().queued_records, queue.dropped)


def test_flush_requests_are_ready_once_their_entries_are_settled() -> None:
    """A flush waits for everything accepted before it, markers included."""
    queue = RecordQueue(max_records=10, max_bytes=100)
    queue.put(1.0, b"a", 0)
    queue.put_marker()
    request = queue.request_flush()
    assert 2 == request.target
    queue.take(100, 100)
    queue.settle(1, written=1, first_created=1.0)
    assert [] == queue.ready_flushes()
    queue.settle(1)
    assert [request] == queue.ready_flushes()


# -- take() of the whole queue at once (issue 13) ---------------------------------------------


def loop_take(entries: list[tuple[float, bytes]], max_bytes: int, max_records: int) -> Batch:
    """What take() gives through its per-entry loop: a marker queued first forces it."""
    queue = RecordQueue(max_records=10_000, max_bytes=1 << 30)
    queue.put_marker()
    for created, data in entries:
        queue.put(created, data, 0)
    assert [ROTATE] == queue.take(max_bytes=1, max_records=1).entries
    queue.put_marker()  # keeps the loop for the next take
    return queue.take(max_bytes, max_records)


def test_a_queue_within_the_bounds_is_taken_whole_with_the_loop_s_counts() -> None:
    """All records, in order, with the size, count, newest and oldest the loop gives."""
    entries = [(5.0, b"aa"), (3.0, b"bbb"), (9.5, b"c"), (7.0, b"dddd")]
    queue = RecordQueue(max_records=100, max_bytes=1000)
    for created, data in entries:
        queue.put(created, data, 0)
    batch = queue.take(max_bytes=1000, max_records=100)
    expected = loop_take(entries, 1000, 100)
    assert entries == batch.entries
    assert expected.entries[:-1] == batch.entries  # the loop also took the trailing marker
    assert (expected.size, expected.records, expected.newest) == (
        batch.size,
        batch.records,
        batch.newest,
    )
    ledger = queue.ledger()
    assert (0, 0, 4, 5.0) == (
        ledger.queued_records,
        ledger.queued_bytes,
        ledger.in_flight,
        ledger.oldest_unshipped,
    )
    assert not batch.final


def test_a_nan_creation_time_is_skipped_as_the_loop_skips_it() -> None:
    """newest ignores NaN wherever it stands, as the loop's ``>`` does."""
    nan = float("nan")
    for entries in (
        [(nan, b"a"), (2.0, b"b"), (1.0, b"c")],
        [(1.0, b"a"), (nan, b"b"), (2.0, b"c")],
        [(nan, b"a")],
    ):
        queue = RecordQueue(max_records=100, max_bytes=1000)
        for created, data in entries:
            queue.put(created, data, 0)
        assert loop_take(entries, 1000, 100).newest == queue.take(1000, 100).newest


def test_past_a_bound_or_with_a_marker_take_goes_entry_by_entry() -> None:
    """Over max_bytes or max_records, or a marker queued: the loop's bounded batches, and
    the whole-queue take again once the marker is gone."""
    queue = RecordQueue(max_records=100, max_bytes=1000)
    for i in range(6):
        queue.put(float(i), b"xx", 0)
    assert 3 == queue.take(max_bytes=1000, max_records=3).records
    assert 2 == queue.take(max_bytes=4, max_records=100).records  # 4 bytes: not < 4
    queue.put_marker()
    queue.put(9.0, b"yy", 0)
    assert [(5.0, b"xx"), ROTATE, (9.0, b"yy")] == queue.take(1000, 100).entries
    queue.put(10.0, b"zz", 0)
    queue.close()
    last = queue.take(1000, 100)
    assert ([(10.0, b"zz")], True) == (last.entries, last.final)
    assert 8 == queue.ledger().in_flight


def test_records_put_after_a_whole_take_go_into_the_next_batch() -> None:
    """The queue hands its deque over and starts a new one: nothing is lost between them."""
    queue = RecordQueue(max_records=100, max_bytes=1000)
    queue.put(1.0, b"a", 0)
    first = queue.take(1000, 100)
    queue.put(2.0, b"b", 0)
    queue.put(3.0, b"c", 0)
    assert [(1.0, b"a")] == first.entries
    assert [(2.0, b"b"), (3.0, b"c")] == queue.take(1000, 100).entries
    assert (0, 3) == (queue.ledger().queued_records, queue.ledger().in_flight)
