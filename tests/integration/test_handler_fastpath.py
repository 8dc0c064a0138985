"""GCSHandler's compiled formats, read back from the server: the text logging gives at the call.

Issue 13 cut the caller's work per record: a stock ``PercentStyle`` format string is
compiled once per string (``_fastformat.compile_format``), ``usesTime()`` is cached with
it, the milliseconds come from a table and the newline is part of the compiled text. Each
test here ships records through a real handler to the local server and compares what the
server holds, line for line, with what ``logging.Formatter.format`` gives for a copy of the
record taken at the call, with the formatter's settings of that moment.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from helpers import bucket_text

from gcs_log_sink import GCSHandler
from gcs_log_sink._fastformat import _COMPILED_LIMIT

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class StockText(logging.Handler):
    """Runs after ours: formats a copy of each record with ``logging.Formatter.format``."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.shared = formatter
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        copy = logging.makeLogRecord(dict(record.__dict__))
        try:
            self.lines.append(logging.Formatter.format(self.shared, copy))
        except Exception as exc:  # what ours must report, not store
            self.lines.append(f"<error {type(exc).__name__}>")


class Shown:
    """An object whose ``__format__`` and ``__str__`` differ: ``%s`` calls ``__str__``."""

    def __format__(self, spec: str) -> str:
        return "FORMAT"

    def __str__(self) -> str:
        return "STR"


class Loud(str):
    """A str subclass whose ``__str__`` shouts."""

    def __str__(self) -> str:
        return self.upper()


def ship(
    client: Any,
    bucket: str,
    logger: logging.Logger,
    formatter: logging.Formatter,
    close_timeout: float = 10.0,
) -> tuple[GCSHandler, StockText]:
    """Ours and a StockText with the same formatter, both on ``logger``."""
    handler = GCSHandler(bucket, client=client, close_timeout=close_timeout)
    handler.setFormatter(formatter)
    stock = StockText(formatter)
    logger.addHandler(handler)
    logger.addHandler(stock)
    return handler, stock


def test_settings_changed_between_records_are_stored_as_at_each_call(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """fmt, style, datefmt, msec format, time format and converter changed record by record."""
    formatter = logging.Formatter(FORMAT)
    handler, stock = ship(client, bucket, logger, formatter)
    changes = [
        lambda: None,
        lambda: setattr(formatter._style, "_fmt", "%(levelname)-8s|%(message)s"),  # no time
        lambda: setattr(formatter._style, "_fmt", "%(asctime)s %(msecs)03d %(message)s"),
        lambda: setattr(formatter, "datefmt", "%H:%M:%S"),
        lambda: setattr(formatter, "datefmt", None),
        lambda: setattr(formatter, "default_msec_format", "%s.%03dZ"),
        lambda: setattr(formatter, "default_msec_format", None),
        lambda: setattr(formatter, "default_time_format", "%Y-%m-%dT%H:%M:%S"),
        lambda: setattr(formatter, "converter", time.gmtime),
        lambda: setattr(formatter, "_style", logging.StrFormatStyle("{asctime} {message}")),
        lambda: setattr(
            formatter, "_style", logging.PercentStyle("%(relativeCreated)f %(message)r")
        ),
        lambda: setattr(
            formatter, "_style", logging.PercentStyle("100%% %(name)10.4s %(message)s")
        ),
    ]
    for round_number in range(3):
        for i, change in enumerate(changes):
            change()
            logger.info("change %d round %d", i, round_number)
            logger.warning(Shown())
            logger.error(Loud("loud"))
            logger.error("%s and %r", Loud("arg"), Loud("arg"))
    handler.close()
    assert stock.lines == bucket_text(client, bucket).splitlines()
    assert 3 * 4 * len(changes) == len(stock.lines)


def test_a_format_missing_a_key_reports_logging_s_error_and_ships_the_rest(
    client: Any, bucket: str, logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key the record lacks: handleError() says what PercentStyle says; nothing half-written."""
    formatter = logging.Formatter("%(user)s %(message)s")
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.info("with a user", extra={"user": "ann"})
    logger.info("without one")
    logger.info("with a user again", extra={"user": "bob"})
    handler.close()
    assert "ann with a user\nbob with a user again\n" == bucket_text(client, bucket)
    assert "ValueError: Formatting field not found in record: 'user'" in capsys.readouterr().err


def test_formatter_defaults_fill_what_the_record_lacks(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Formatter(defaults=...) through the handler: defaults for missing keys, extra wins."""
    formatter = logging.Formatter("%(svc)s %(message)s", defaults={"svc": "api"})
    handler, stock = ship(client, bucket, logger, formatter)
    logger.info("default")
    logger.info("own", extra={"svc": "worker"})
    handler.close()
    assert ["api default", "worker own"] == stock.lines
    assert stock.lines == bucket_text(client, bucket).splitlines()


def test_methods_replaced_on_the_formatter_class_after_the_first_record_take_effect(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """formatMessage and usesTime replaced on logging.Formatter mid-stream: used at once."""
    formatter = logging.Formatter("%(message)s")
    handler, stock = ship(client, bucket, logger, formatter)
    logger.info("before")
    original = logging.Formatter.formatMessage
    monkeypatch.setattr(
        logging.Formatter, "formatMessage", lambda self, record: "[" + original(self, record) + "]"
    )
    logger.info("bracketed")
    monkeypatch.setattr(logging.Formatter, "usesTime", lambda self: True)
    monkeypatch.setattr(logging.PercentStyle, "_format", lambda self, record: record.asctime)
    logger.info("the time only")
    monkeypatch.undo()
    logger.info("after")
    handler.close()
    stored = bucket_text(client, bucket).splitlines()
    assert stock.lines == stored
    assert ["before", "[bracketed]", "after"] == [stored[0], stored[1], stored[3]]


def test_threads_with_more_format_strings_than_the_cache_keeps(client: Any, bucket: str) -> None:
    """4 threads, each with its own handler, changing format strings past the cache's limit."""
    per_thread = _COMPILED_LIMIT // 2 + 10  # together past the limit: the cache restarts
    handlers = [GCSHandler(bucket, client=client, prefix=f"w{w}/") for w in range(4)]
    expected: list[list[str]] = [[] for _ in handlers]

    def log_from(worker: int) -> None:
        handler = handlers[worker]
        for i in range(per_thread):
            fmt = f"w{worker} f{i} %(levelname).1s %(message)s %(lineno)5d %(msecs)03d"
            record = logging.LogRecord("t", logging.INFO, "x.py", i, "m %d", (i,), None)
            copy = logging.makeLogRecord(dict(record.__dict__))
            expected[worker].append(logging.Formatter(fmt).format(copy))
            handler.setFormatter(logging.Formatter(fmt))
            handler.handle(record)

    threads = [threading.Thread(target=log_from, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for handler in handlers:
        handler.close()
    for worker, lines in enumerate(expected):
        names = sorted(blob.name for blob in client.list_blobs(bucket, prefix=f"w{worker}/"))
        stored = "".join(client.bucket(bucket).blob(n).download_as_text() for n in names)
        assert lines == stored.splitlines()


# -- close() racing the shipping thread's start (found while measuring issue 13) ------------


def test_close_while_the_first_record_is_still_starting_the_thread_ships_it(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() on another thread while the first record's Thread.start() runs: the record
    is in the bucket when close() returns (it returned at once, and shipped nothing)."""
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    logger.addHandler(handler)
    starting = threading.Event()
    original_start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        if thread.name.startswith("gcs_log_sink:"):
            starting.set()
            time.sleep(0.3)  # the start lock is held meanwhile
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    producer = threading.Thread(target=logger.warning, args=("the first record",))
    original_start(producer)
    assert starting.wait(5)
    handler.close()
    assert "the first record\n" == bucket_text(client, bucket)
    producer.join()


def test_close_before_the_first_record_s_caller_starts_the_thread_ships_it(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A record queued, its caller not yet at Shipper.start() when close() runs: close()
    starts the thread itself and the record is in the bucket when it returns."""
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    logger.addHandler(handler)
    queued, closed = threading.Event(), threading.Event()
    shipper = handler._shipper
    original_start = shipper.start

    def late_start() -> None:
        if threading.current_thread() is producer:
            queued.set()
            closed.wait(5)  # the caller is descheduled between put() and start()
        original_start()

    shipper.start = late_start  # type: ignore[method-assign]
    producer = threading.Thread(target=logger.warning, args=("queued before close",))
    producer.start()
    assert queued.wait(5)
    handler.close()
    try:
        assert "queued before close\n" == bucket_text(client, bucket)
    finally:
        closed.set()
        producer.join()
    assert 0 == handler.dropped


def test_flush_while_another_thread_is_starting_the_shipper_waits_for_own_records(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread A's first record is starting the shipping thread (slowly); thread B logs and
    flushes meanwhile: B's flush() returns only once B's record is written (it returned at
    once, its start() having found A's start under way)."""
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    logger.addHandler(handler)
    starting = threading.Event()
    original_start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        if thread.name.startswith("gcs_log_sink:"):
            starting.set()
            time.sleep(0.3)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    first = threading.Thread(target=logger.warning, args=("from A",))
    original_start(first)
    assert starting.wait(5)
    logger.warning("from B")
    handler.flush()
    stats = handler.stats()
    assert (0, 0) == (stats.queued_records, stats.in_flight)
    first.join()
    handler.close()
    assert ["from A", "from B"] == sorted(bucket_text(client, bucket).splitlines())
