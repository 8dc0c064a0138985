"""Hostile cases against issue 13's caller path of GCSHandler, read back from the server.

Issue 13 compiled stock ``%``-style format strings (``_fastformat``), cached the date text per
second, unrolled ``handle()`` and made ``close()``/``flush()``/``rotate()`` wait for a first
start of the shipping thread in progress. The promise is unchanged: what is stored is what
``logging.Formatter(fmt).format(record)`` gives for the same record at the same moment, once,
and the program is never hung or taken down. Each test ships through a real handler to the
local server and compares what the server holds with the stock formatter's text for a copy of
each record taken at the call (``StockText``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload
from helpers import bucket_text
from test_handler_fastpath import StockText, ship

from gcs_log_sink import GCSHandler
from gcs_log_sink._localgcs import LocalGCS, emulator_env

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# 2023-11-14 22:13:20 UTC: a whole second, so a record's second is known.
SECOND = 1_700_000_000.0


def record_at(logger: logging.Logger, created: float, msecs: float, msg: str) -> logging.LogRecord:
    """A record made at ``created`` with the given msecs (as a clock that stepped would)."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, None, None)
    record.created = created
    record.msecs = msecs
    return record


def stored_lines(client: Any, bucket: str, stock: StockText) -> list[str]:
    """The lines the server holds for the bucket, in shipping order."""
    return bucket_text(client, bucket).splitlines()


def expected_lines(stock: StockText) -> list[str]:
    """What logging gave, without the records it raised for (reported, not stored)."""
    return [line for line in stock.lines if not line.startswith("<error ")]


@pytest.fixture
def tz_restored() -> Iterator[None]:
    """The process's TZ as it was, after a test that changes it."""
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


# -- the compiled text against logging.Formatter --------------------------------------------


class FormatsOddly(str):
    """A str subclass whose ``__format__`` differs from its text (what ``str()`` may return)."""

    def __format__(self, spec: str) -> str:
        return "FORMATTED"


class User:
    """An ``extra`` value whose ``__str__`` returns a str subclass (allowed by ``str()``)."""

    def __str__(self) -> str:
        return FormatsOddly("ann")


def test_str_returning_a_str_subclass_with_its_own_format_is_stored_as_percent_s_gives(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``%(user)s`` on an object whose ``__str__`` returns a str subclass with ``__format__``:
    ``%s`` uses the text ``str()`` gave; an f-string ``{x!s}`` formats that result again."""
    formatter = logging.Formatter("%(user)s %(message)s")
    handler, stock = ship(client, bucket, logger, formatter)
    logger.info("logged in", extra={"user": User()})
    handler.close()
    assert ["ann logged in"] == stock.lines
    assert stock.lines == stored_lines(client, bucket, stock)


class ModFormat(str):
    """A format string whose ``%`` is its own (a str subclass set as the style's ``_fmt``)."""

    def __mod__(self, values: Any) -> str:
        return "by its own mod: " + str.__mod__(self, values)


def test_a_format_string_of_a_str_subclass_with_its_own_mod_is_used_as_percent_uses_it(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """PercentStyle runs ``self._fmt % values``: a str subclass's ``__mod__`` is called there;
    a compiled format cached by the equal plain string skips it."""
    formatter = logging.Formatter("%(message)s")
    formatter._style._fmt = ModFormat("%(levelname)s %(message)s")  # type: ignore[attr-defined]
    handler, stock = ship(client, bucket, logger, formatter)
    logger.info("one")
    handler.close()
    assert ["by its own mod: INFO one"] == stock.lines
    assert stock.lines == stored_lines(client, bucket, stock)


def test_time_zone_changed_within_one_second_is_used_at_once(
    client: Any, bucket: str, logger: logging.Logger, tz_restored: None
) -> None:
    """``TZ`` changed and ``time.tzset()`` between two records of the same second (a daemon
    told its zone at run time): stock ``formatTime`` calls ``localtime`` per record, so the
    second record's text is in the new zone; a per-second date cache keeps the old one."""
    formatter = logging.Formatter(FORMAT)
    handler, stock = ship(client, bucket, logger, formatter)
    os.environ["TZ"] = "UTC"
    time.tzset()
    logger.handle(record_at(logger, SECOND + 0.25, 250.0, "in UTC"))
    os.environ["TZ"] = "Asia/Kolkata"  # +05:30, no DST
    time.tzset()
    logger.handle(record_at(logger, SECOND + 0.5, 500.0, "in IST"))
    handler.close()
    assert stock.lines[0].startswith("2023-11-14 22:13:20,250 ")
    assert stock.lines[1].startswith("2023-11-15 03:43:20,500 ")
    assert stock.lines == stored_lines(client, bucket, stock)


def test_a_method_set_on_a_formatter_with_three_attributes_is_used(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A formatter whose ``__dict__`` holds three entries, one of them a replaced
    ``formatTime`` (its unused ``_fmt`` removed): the instance's method is what logging calls.
    The fast path takes "three entries" to mean "only the constructor's"."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    del formatter._fmt  # Formatter.format reads _style, never _fmt
    formatter.formatTime = lambda record, datefmt=None: "T"  # type: ignore[method-assign]
    assert 3 == len(formatter.__dict__)
    handler, stock = ship(client, bucket, logger, formatter)
    logger.info("one")
    handler.close()
    assert ["T one"] == stock.lines
    assert stock.lines == stored_lines(client, bucket, stock)


def test_msecs_and_created_edge_values_give_logging_s_text(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Records as clocks that step make them: msecs 999.9999, 0, -0.0, 1000 and a negative,
    created on a second boundary, just under one, before the epoch, with the default and a
    changed msec format and with datefmt: the stored text is logging's, record for record."""
    formatter = logging.Formatter(FORMAT)
    handler, stock = ship(client, bucket, logger, formatter)
    cases = [
        (SECOND, 0.0),
        (SECOND + 0.9999999, 999.9999),
        (SECOND + 1, -0.0),
        (SECOND + 1, 1000.0),
        (SECOND + 1, -3.0),
        (SECOND - 1e-6, 999.999),
        (SECOND, 999.0),  # same second as the first, msecs from another record
        (-1.5, 500.0),
        (-1.0, 0.0),
        (0.0, 0.0),
        (SECOND, True),
    ]
    settings = [
        lambda: None,
        lambda: setattr(formatter, "default_msec_format", "%s.%03d"),
        lambda: setattr(formatter, "default_msec_format", None),
        lambda: setattr(formatter, "datefmt", "%Y%m%dT%H%M%S"),
        lambda: setattr(formatter, "converter", time.gmtime),
    ]
    for change in settings:
        change()
        for created, msecs in cases:
            logger.handle(record_at(logger, created, msecs, f"{created!r} {msecs!r}"))
    handler.close()
    assert len(cases) * len(settings) == len(stock.lines)
    assert stock.lines == stored_lines(client, bucket, stock)


def test_a_time_that_logging_cannot_format_is_reported_and_the_rest_shipped(
    client: Any, bucket: str, logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """created far past time_t and NaN msecs: logging raises, so the handler reports through
    handleError (once per record) and ships the records around them unchanged."""
    formatter = logging.Formatter(FORMAT)
    handler, stock = ship(client, bucket, logger, formatter)
    logger.handle(record_at(logger, SECOND, 1.0, "before"))
    logger.handle(record_at(logger, 1e20, 0.0, "huge"))
    logger.handle(record_at(logger, SECOND, float("nan"), "nan msecs"))
    logger.handle(record_at(logger, SECOND, 2.0, "after"))
    handler.close()
    assert 2 == sum(line.startswith("<error ") for line in stock.lines)
    assert expected_lines(stock) == stored_lines(client, bucket, stock)
    err = capsys.readouterr().err
    assert 2 == err.count("--- Logging error ---")


class Record(logging.LogRecord):
    """A factory's record whose message is a property-backed text and whose name is odd."""

    @property
    def tenant(self) -> str:  # a property, not in __dict__: %(tenant)s cannot see it
        return "acme"

    def getMessage(self) -> str:
        return "[r] " + super().getMessage()


def test_record_factory_properties_surrogates_and_newlines_give_logging_s_text(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setLogRecordFactory with a LogRecord subclass (own getMessage, a property that %
    cannot see), defaults filling the gap, messages with surrogates, "\\n" and odd specs:
    stored bytes equal logging's text encoded as the handler promises."""
    monkeypatch.setattr(logging, "_logRecordFactory", Record)
    formatter = logging.Formatter(
        "%(tenant)s|%(levelno)+05.1f|%(name)-3.3s|%(message)r|%(message)a|%(message)s 100%%",
        defaults={"tenant": "none"},
    )
    handler, stock = ship(client, bucket, logger, formatter)
    for message in ["plain", "two\nlines", "sur\ud800rogate", "é€😀", "%(name)s %s"]:
        logger.info(message)
    handler.close()
    assert 5 == len(stock.lines)
    expected = "".join(line + "\n" for line in stock.lines).encode("utf-8", "backslashreplace")
    names = sorted(blob.name for blob in client.list_blobs(bucket))
    stored = b"".join(client.bucket(bucket).blob(n).download_as_bytes() for n in names)
    assert expected == stored


def test_formatter_class_patched_between_records_and_on_the_instance_takes_effect(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logging.Formatter.formatTime / format / usesTime replaced on the class, then undone,
    then formatMessage set on the instance and removed, and style replaced on the instance:
    each record is stored as logging formats it at that moment."""
    formatter = logging.Formatter(FORMAT)
    handler, stock = ship(client, bucket, logger, formatter)
    original_time = logging.Formatter.formatTime
    original_format = logging.Formatter.format
    logger.info("stock")
    monkeypatch.setattr(logging.Formatter, "formatTime", lambda self, r, d=None: "ISO")
    logger.info("class formatTime")
    monkeypatch.setattr(logging.Formatter, "formatTime", original_time)
    monkeypatch.setattr(
        logging.Formatter, "format", lambda self, r: "F:" + original_format(self, r)
    )
    logger.info("class format")
    monkeypatch.setattr(logging.Formatter, "format", original_format)
    monkeypatch.setattr(logging.Formatter, "usesTime", lambda self: False)
    logger.info("class usesTime")
    monkeypatch.undo()
    formatter.formatMessage = lambda r: "M:" + r.message  # type: ignore[method-assign]
    logger.info("instance formatMessage")
    del formatter.formatMessage
    formatter._style = logging.StrFormatStyle("{levelname} {message}")
    logger.info("brace style")
    formatter._style = logging.PercentStyle("%(message)s")
    formatter._style._fmt = "%(levelname)s then %(message)s"
    logger.info("fmt mutated")
    handler.close()
    assert 7 == len(stock.lines)
    assert ["<error ValueError>"] == [line for line in stock.lines if line.startswith("<error ")]
    assert expected_lines(stock) == stored_lines(client, bucket, stock)


def test_threads_with_their_own_formatters_and_new_format_strings_ship_each_line_whole(
    client: Any, bucket: str
) -> None:
    """Eight threads, each a logger with its own handler and a fresh format string per
    record (300 new strings in all, past the 256 compiled): every object holds exactly its
    thread's lines, each as logging formats it."""
    handlers: list[tuple[GCSHandler, StockText, logging.Logger]] = []
    for t in range(8):
        log = logging.getLogger(f"s4.threads.{time.monotonic_ns()}.{t}")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        formatter = logging.Formatter(FORMAT)
        handler = GCSHandler(bucket, prefix=f"t{t}/", client=client, close_timeout=10.0)
        handler.setFormatter(formatter)
        stock = StockText(formatter)
        log.addHandler(handler)
        log.addHandler(stock)
        handlers.append((handler, stock, log))
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        handler, _stock, log = handlers[t]
        barrier.wait()
        for i in range(40):
            fmt = f"s4-{t}-{i} %(levelname)s %(message)s" if i % 3 else FORMAT
            handler.formatter._style._fmt = fmt  # type: ignore[union-attr]
            log.info("t%d i%d", t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t, (handler, stock, log) in enumerate(handlers):
        handler.close()
        log.removeHandler(handler)
        names = sorted(b.name for b in client.list_blobs(bucket, prefix=f"t{t}/"))
        text = "".join(client.bucket(bucket).blob(n).download_as_text() for n in names)
        assert 40 == len(stock.lines)
        assert stock.lines == text.splitlines()


# -- close()/flush()/rotate() against the first start of the shipping thread ---------------


def test_rotate_racing_the_first_start_from_several_threads_makes_each_own_record_readable(
    client: Any, bucket: str
) -> None:
    """Fresh handlers; four threads released at once each log one record and call rotate()
    (the first start of the shipping thread in progress on one of them): when rotate()
    returns, that thread's own record is readable on the server. After close(): every record
    stored once."""
    rounds, width = 6, 4
    missing: list[str] = []
    for r in range(rounds):
        log = logging.getLogger(f"s4.race.{time.monotonic_ns()}")
        log.propagate = False
        handler = GCSHandler(bucket, prefix=f"r{r}/", client=client, close_timeout=10.0)
        log.addHandler(handler)
        barrier = threading.Barrier(width)

        def work(
            t: int,
            r: int = r,
            log: logging.Logger = log,
            handler: GCSHandler = handler,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            log.warning("round %d thread %d", r, t)
            handler.rotate()
            names = [b.name for b in client.list_blobs(bucket, prefix=f"r{r}/")]
            text = "".join(client.bucket(bucket).blob(n).download_as_text() for n in names)
            if f"round {r} thread {t}\n" not in text:
                missing.append(f"round {r} thread {t}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        handler.close()
        log.removeHandler(handler)
    assert [] == missing
    expected = sorted(f"round {r} thread {t}" for r in range(rounds) for t in range(width))
    assert expected == sorted(bucket_text(client, bucket).splitlines())


def test_close_from_several_threads_racing_the_first_record_ships_it_once(
    client: Any, bucket: str
) -> None:
    """One thread logs the first record while three others call close() (twice each) at
    the same moment: the record is either stored once (logged before close) or dropped and
    counted (after close), never lost uncounted, doubled, or left for exit."""
    rounds = 10
    dropped = 0
    for r in range(rounds):
        log = logging.getLogger(f"s4.close.{time.monotonic_ns()}")
        log.propagate = False
        handler = GCSHandler(bucket, prefix=f"c{r}/", client=client, close_timeout=10.0)
        log.addHandler(handler)
        barrier = threading.Barrier(4)

        def logs(
            r: int = r, log: logging.Logger = log, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            log.warning("round %d", r)

        def closes(handler: GCSHandler = handler, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            handler.close()
            handler.close()

        threads = [threading.Thread(target=logs)] + [
            threading.Thread(target=closes) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
        dropped += handler.dropped
        log.removeHandler(handler)
    stored = bucket_text(client, bucket).splitlines()
    assert len(stored) == len(set(stored))
    assert rounds == len(stored) + dropped


# -- processes: fork right after the first record, a signal handler that logs and flushes -----


def run_child(gcs: LocalGCS, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=emulator_env(gcs.url), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_fork_right_after_the_first_record_ships_parent_and_child_records_once(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A parent logs one record and forks at once (the shipping thread still starting); the
    child logs, calls logging.shutdown() and leaves by os._exit (as the README says a bare
    fork child must); the parent logs more and closes. Every record is stored exactly once:
    the child does not ship the parent's queued record again, the parent loses none."""
    code = f"""
        import logging, os, sys
        from gcs_log_sink import GCSHandler
        log = logging.getLogger("forky")
        log.setLevel(logging.INFO)
        log.addHandler(GCSHandler({bucket!r}, close_timeout=10))
        for round in range(3):
            log.info("parent before fork %d", round)
            pid = os.fork()
            if pid == 0:
                log.info("child %d", round)
                logging.shutdown()
                os._exit(0)
            log.info("parent after fork %d", round)
            os.waitpid(pid, 0)
        logging.shutdown()
        """
    result = run_child(gcs, code)
    assert 0 == result.returncode, result.stderr[-2000:]
    expected = sorted(
        f"{kind} {r}"
        for r in range(3)
        for kind in ("parent before fork", "child", "parent after fork")
    )
    assert expected == sorted(bucket_text(client, bucket).splitlines())
    assert "" == result.stderr


def test_a_signal_handler_that_logs_and_flushes_during_first_starts_neither_hangs_nor_loses(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A one-shot SIGALRM 0-1.5 ms after each fresh handler's first record (so it lands in the
    start of the shipping thread, in rotate() or in close()); its handler logs one record and
    calls flush() on that handler. The process ends in time, and the server holds every
    record it says it logged, once. (A repeating 2 ms timer re-enters flush() from its own
    wait until RecursionError: the program's doing, not the handler's.)"""
    code = f"""
        import logging, random, signal, sys
        from gcs_log_sink import GCSHandler
        log = logging.getLogger("sig")
        log.setLevel(logging.INFO)
        current = None
        sent = []
        def on_alarm(signum, frame):
            if current is not None:
                text = "alarm %d" % len(sent)
                log.info(text)
                sent.append(text)
                current.flush()
        signal.signal(signal.SIGALRM, on_alarm)
        rng = random.Random(13)
        dropped = 0
        for r in range(30):
            handler = GCSHandler({bucket!r}, prefix="s%02d/" % r, close_timeout=2)
            log.addHandler(handler)
            current = handler
            text = "first %d" % r
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.00001, 0.0015))
            log.info(text)
            sent.append(text)
            handler.rotate()
            handler.close()
            signal.setitimer(signal.ITIMER_REAL, 0)
            current = None
            log.removeHandler(handler)
            dropped += handler.dropped
        print(len(sent), dropped)
        print("\\n".join(sent))
        """
    result = run_child(gcs, code)
    assert 0 == result.returncode, result.stderr[-2000:]
    head, _, body = result.stdout.partition("\n")
    count, dropped = map(int, head.split())
    sent = body.splitlines()
    assert count == len(sent)
    assert count > 30, "no alarm landed: the test did not race anything"
    stored = bucket_text(client, bucket).splitlines()
    assert len(stored) == len(set(stored))
    assert sorted(sent) == sorted(stored)
    assert 0 == dropped


def test_flush_from_a_signal_handler_that_interrupted_the_queue_s_lock_does_not_stall(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A SIGALRM every 1 ms whose handler (not re-entered) logs one record and calls
    flush() while the main thread logs in a loop against a healthy server. When the signal
    lands while the main thread holds the queue's RLock (inside put(), put_marker() or
    request_flush()), the nested flush() waits for the shipping thread, which needs that
    lock: it stalls the program for the whole close_timeout and reports "flush() gave up".
    Expected: no flush() from the signal handler takes close_timeout; every record once."""
    code = f"""
        import json, logging, signal, time
        from gcs_log_sink import GCSHandler
        log = logging.getLogger("sigflush")
        log.setLevel(logging.INFO)
        handler = GCSHandler({bucket!r}, close_timeout=1)
        log.addHandler(handler)
        sent, slow, busy = [], [], [False]
        log.info("first")
        sent.append("first")
        handler.flush()
        def on_alarm(signum, frame):
            if busy[0]:
                return
            busy[0] = True
            started = time.monotonic()
            text = "alarm %d" % len(sent)
            log.info(text)
            sent.append(text)
            handler.flush()
            if time.monotonic() - started > 0.5:
                slow.append(round(time.monotonic() - started, 2))
                signal.setitimer(signal.ITIMER_REAL, 0)
            busy[0] = False
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        deadline = time.monotonic() + 3
        i = 0
        while not slow and time.monotonic() < deadline:
            text = "main %d" % i
            log.info(text)
            sent.append(text)
            i += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        handler.close()
        print(json.dumps({{"slow": slow, "sent": sent}}))
        """
    result = run_child(gcs, code)
    assert 0 == result.returncode, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [] == report["slow"], result.stderr[-500:]
    assert "gave up" not in result.stderr
    assert sorted(report["sent"]) == sorted(bucket_text(client, bucket).splitlines())


# -- configuration paths: dictConfig and structlog -----------------------------------------


def test_dictconfig_formatter_with_datefmt_and_validate_off_gives_logging_s_text(
    client: Any, bucket: str
) -> None:
    """A handler built by logging.config.dictConfig (the handler's own keyword arguments,
    a formatter with datefmt with %z and validate off): the text is logging's, record for
    record ("defaults" is not a dictConfig key before 3.12: extra supplies svc)."""
    import logging.config

    name = f"s4.dictconfig.{time.monotonic_ns()}"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "f": {
                    "format": "%(asctime)s|%(svc)s|%(levelname)-7s|%(message)s",
                    "datefmt": "%Y-%m-%dT%H:%M:%S%z",
                    "validate": False,
                }
            },
            "handlers": {
                "gcs": {
                    "class": "gcs_log_sink.GCSHandler",
                    "bucket": bucket,
                    "client": client,
                    "formatter": "f",
                    "close_timeout": 10.0,
                }
            },
            "loggers": {name: {"handlers": ["gcs"], "level": "DEBUG", "propagate": False}},
        }
    )
    log = logging.getLogger(name)
    (handler,) = log.handlers
    assert handler.formatter is not None
    stock = StockText(handler.formatter)
    log.addHandler(stock)
    log.info("one", extra={"svc": "api"})
    log.warning("two", extra={"svc": "worker"})
    log.debug("three\nlines", extra={"svc": 3})
    handler.close()
    log.removeHandler(handler)
    assert 3 == len(stock.lines)
    assert "".join(line + "\n" for line in stock.lines) == bucket_text(client, bucket)


def test_structlog_through_the_stdlib_processor_formatter_ships_its_text(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """structlog's ProcessorFormatter (a Formatter subclass: the slow path) on our handler:
    each event's rendered line is stored as structlog renders it for that record."""
    structlog = pytest.importorskip("structlog")
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.KeyValueRenderer(key_order=["event", "user"]),
        ],
    )
    handler = GCSHandler(bucket, client=client, close_timeout=10.0)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    rendered: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            copy = logging.makeLogRecord(dict(record.__dict__))
            rendered.append(formatter.format(copy))

    logger.addHandler(Capture())
    log = structlog.wrap_logger(
        logger,
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log.info("login", user="ann")
    log.warning("odd\nevent", user="b\ud800b")
    logger.info("plain stdlib %s", "record")
    handler.close()
    assert 3 == len(rendered)
    expected = "".join(line + "\n" for line in rendered).encode("utf-8", "backslashreplace")
    names = sorted(blob.name for blob in client.list_blobs(bucket))
    assert expected == b"".join(client.bucket(bucket).blob(n).download_as_bytes() for n in names)


# -- memory and the single-join write -------------------------------------------------------


def test_records_joined_in_one_write_respect_max_bytes_and_are_stored_whole(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A burst logged before the shipping thread takes anything (the whole queue handed over
    and joined in one write) with max_bytes=4096: no object passes 4096 bytes (no record is
    bigger), no record is split, the concatenation is what was logged."""
    handler = GCSHandler(bucket, client=client, max_bytes=4096, close_timeout=10.0)
    logger.addHandler(handler)
    lines = [f"{i:05d} " + "x" * (i % 150) for i in range(600)]
    for line in lines:
        logger.info(line)
    handler.close()
    blobs = sorted(client.list_blobs(bucket), key=lambda b: b.name)
    texts = [client.bucket(bucket).blob(b.name).download_as_text() for b in blobs]
    assert [] == [len(t.encode()) for t in texts if len(t.encode()) > 4096]
    assert all(t.endswith("\n") for t in texts)
    assert lines == "".join(texts).splitlines()


def test_huge_records_through_a_small_queue_keep_memory_bounded_and_arrive_whole(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """48 records of 256 KiB (12 MiB) through max_queue_bytes=1 MiB and chunk_size=256 KiB,
    overflow="block": the objects hold every record byte for byte, and the peak of Python
    allocations while logging (tracemalloc) stays near the queue bound plus a batch and a
    chunk, far under the 12 MiB logged."""
    import tracemalloc

    handler = GCSHandler(
        bucket,
        client=client,
        max_queue_bytes=1024 * 1024,
        chunk_size=256 * 1024,
        block_timeout=10.0,
        close_timeout=10.0,
    )
    logger.addHandler(handler)
    records = [bytes([97 + i % 26]) * (256 * 1024 - 8) for i in range(48)]
    texts = [f"{i:06d} " + r.decode() for i, r in enumerate(records)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for text in texts:
            logger.info(text)
        handler.close()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert 0 == handler.dropped
    stored = bucket_text(client, bucket)
    assert texts == stored.splitlines()
    assert peak < 6 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_a_msec_format_of_a_str_subclass_with_its_own_mod_is_used_as_format_time_uses_it(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """formatTime runs ``default_msec_format % (s, msecs)``: a str subclass equal to the stock
    "%s,%03d" but with its own ``__mod__`` is called there; a table of milliseconds skips it."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.default_msec_format = ModFormat("%s,%03d")
    handler, stock = ship(client, bucket, logger, formatter)
    logger.handle(record_at(logger, SECOND, 7.0, "one"))
    handler.close()
    assert stock.lines[0].startswith("by its own mod: ")
    assert stock.lines == stored_lines(client, bucket, stock)


def test_records_after_close_are_counted_and_said_once(
    client: Any, bucket: str, logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unrolled handle() after close(): 200 records are dropped and counted, the
    after-close notice is said once (not per record), nothing after close is stored."""
    handler = GCSHandler(bucket, client=client, close_timeout=10.0)
    logger.addHandler(handler)
    logger.info("before")
    handler.close()
    for i in range(200):
        logger.info("after %d", i)
    handler.close()
    assert 200 == handler.dropped
    assert "before\n" == bucket_text(client, bucket)
    err = capsys.readouterr().err
    assert 1 == err.count("after close()"), err


def test_large_records_joined_into_chunk_sized_writes_survive_partial_persistence_and_resets(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Records of ~100 KiB logged in bursts, so one joined write spans several chunks sent
    from the caller's bytes (no copy), while chunks are partly persisted, reset before and
    after the server saw them, and 503'd: every record stored once, byte for byte."""
    handler = GCSHandler(
        bucket, client=proxied, chunk_size=256 * 1024, timeout=1.0, close_timeout=30.0
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    proxy.plan(
        rate=0.4,
        kinds=["partial", "partial_reset", "503_after", "reset_after", "reset_before", "cut_body"],
        match=is_chunk_upload,
    )
    texts = [f"{i:04d} " + chr(97 + i % 26) * (100_000 + i) for i in range(48)]
    for burst in range(4):
        for text in texts[burst * 12 : (burst + 1) * 12]:
            logger.info(text)
        handler.flush()
    handler.close()
    assert len(proxy.faults()) >= 3
    assert 0 == handler.dropped
    assert texts == bucket_text(client, bucket).splitlines()


def test_set_formatter_and_fmt_swapped_while_threads_log_store_each_line_in_one_format(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Four threads log while a fifth swaps the handler's formatter (setFormatter) and
    mutates the current one's style._fmt: every stored line is whole and in exactly one of
    the formats in play, and every record is stored once."""
    handler = GCSHandler(bucket, client=client, close_timeout=10.0)
    logger.addHandler(handler)
    formats = ["A|%(message)s", "B|%(levelname)s|%(message)s", "C|%(message)r"]
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            formatter = logging.Formatter(formats[i % 3])
            handler.setFormatter(formatter)
            formatter._style._fmt = formats[(i + 1) % 3]  # type: ignore[attr-defined]
            i += 1

    def work(t: int) -> None:
        for i in range(500):
            logger.info("t%d-%d", t, i)

    swapper = threading.Thread(target=swap)
    swapper.start()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    swapper.join()
    handler.close()
    messages = []
    for line in bucket_text(client, bucket).splitlines():
        kind, _, rest = line.partition("|")
        if kind == "A":
            messages.append(rest)
        elif kind == "B":
            level, _, message = rest.partition("|")
            assert "INFO" == level, line
            messages.append(message)
        else:
            assert "C" == kind, line
            assert ("'", "'") == (rest[:1], rest[-1:]), line
            messages.append(rest[1:-1])
    assert sorted(f"t{t}-{i}" for t in range(4) for i in range(500)) == sorted(messages)
