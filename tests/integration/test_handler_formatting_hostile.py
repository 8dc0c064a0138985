"""Hostile tests of what GCSHandler stores for a record, against the local server (#13).

They were written to break formatting deferred to the shipping thread, which issue 13
measured and did not keep (it moved the caller's cost to the other thread under the same
GIL, and broke most of what follows); they hold for whatever way the handler formats, and
where a docstring says "deferred" it means "a record that waits in the queue".

The promise under attack: what is stored is exactly the text the handler's formatter
(``logging.Formatter.format`` itself, never a re-implementation) gives for the record at the
moment of the call, in call order, nothing lost, nothing doubled, memory bounded by
``max_queue_bytes``. Each test takes its reference text with :class:`Reference`, which calls
the real ``Formatter.format`` on a copy of the record at the call, and compares it line for
line with the objects read back from the server.

Where a test needs records to wait in the queue (so that something can change between the
call and the shipping thread's formatting), :func:`hold_shipper` makes the proxy delay the
initiate of the first object: the shipping thread is stuck there with a warm-up record, and
everything logged meanwhile stays queued.
"""

from __future__ import annotations

import contextvars
import copy
import enum
import gzip
import json
import logging
import math
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, is_initiate
from helpers import bucket_text
from test_handler_hostile import run_script as run_child

from gcs_log_sink import GCSHandler
from gcs_log_sink._localgcs import LocalGCS

FULL = (
    "%(asctime)s|%(msecs)03d|%(created).6f|%(relativeCreated)d|%(levelname)s|%(levelno)d|"
    "%(name)s|%(funcName)s|%(lineno)d|%(module)s|%(filename)s|%(thread)d|%(threadName)s|"
    "%(process)d|%(processName)s|%(message)r|%(message)s"
)


class Reference(logging.Handler):
    """The expected text: ``formatter.format`` (the real one) of a copy of the record, at
    the call. ``source`` is a handler whose *current* formatter is used, so a
    ``setFormatter`` between calls is followed."""

    def __init__(self, source: logging.Handler) -> None:
        super().__init__()
        self.source = source
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        formatter = self.source.formatter or logging.Formatter()
        self.lines.append(formatter.format(copy.copy(record)))


def shipped_lines(client: Any, bucket: str) -> list[str]:
    text: str = bucket_text(client, bucket)
    return text.splitlines()


def prefix_lines(client: Any, bucket: str, prefix: str) -> list[str]:
    names = sorted(blob.name for blob in client.list_blobs(bucket, prefix=prefix))
    text = "".join(client.bucket(bucket).blob(name).download_as_text() for name in names)
    return text.splitlines()


def expected_lines(reference: Reference) -> list[str]:
    """The reference text as the handler stores it: UTF-8, what cannot be encoded (lone
    surrogates) backslash-escaped, as the caller's path always stored it."""
    text = "\n".join(reference.lines).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.splitlines()


def run_script(endpoint: str, code: str, timeout: float = 60.0) -> str:
    """Run ``code`` in a fresh interpreter pointed at ``endpoint``; its stdout, once it
    exited 0 (a hang fails the test, as in test_handler_hostile)."""
    done = run_child(endpoint, code, timeout=timeout)
    assert 0 == done.returncode, done.stderr
    return done.stdout


def hold_shipper(proxy: FaultProxy, handler: GCSHandler, logger: logging.Logger) -> float:
    """Log a warm-up record and return once the shipping thread is stuck opening the first
    object (its initiate held by the proxy): records logged until the returned monotonic
    deadline stay queued."""
    proxy.stall_seconds = 1.0
    proxy.script(["delay_before"], match=is_initiate)
    logger.info("warm-up")
    start = time.monotonic()
    while time.monotonic() - start < 5:
        stats = handler.stats()
        if stats.queued_records == 0 and stats.in_flight == 1:
            # The warm-up is taken: the batch is formatted, the thread waits on the open.
            return start + 0.8
        time.sleep(0.002)
    pytest.fail("the shipping thread never took the warm-up record")


@pytest.fixture
def reset_formatter_class() -> Iterator[None]:
    """Tests patch logging.Formatter's class attributes: put them back."""
    saved = {
        name: logging.Formatter.__dict__[name]
        for name in ("converter", "formatTime", "default_msec_format", "default_time_format")
    }
    yield
    for name, value in saved.items():
        setattr(logging.Formatter, name, value)


class Colour(enum.IntEnum):
    RED = 1


class Count(int):
    def __str__(self) -> str:
        return f"Count<{int(self)}>"


PHASE = ["a"]


class Shifty(str):
    """A str whose text is whatever phase the program is in when it is read."""

    def __str__(self) -> str:
        return f"shifty-{PHASE[0]}"


class ShiftyMsg(str):
    """A str message whose text (and so its one conversion) depends on the phase."""

    def __str__(self) -> str:
        return f"msg-{PHASE[0]} %s"


class Sink(logging.Handler):
    """A later handler that only runs its filters (and so their in-place rewrites)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def _colourize(record: logging.LogRecord) -> bool:
    """What colouring console handlers and redacting filters do, in place, after us."""
    record.msg = f"\x1b[31m{record.msg}\x1b[0m"
    record.args = tuple(f"<{a}>" for a in record.args) if isinstance(record.args, tuple) else ()
    record.levelname = "\x1b[1mCOLOURED\x1b[0m"
    record.name = "renamed"
    record.created += 3600.0
    record.msecs = 999.0
    record.relativeCreated = -1.0
    record.lineno = 0
    record.funcName = "nobody"
    record.threadName = "stolen"
    record.exc_text = "injected traceback text"
    return True


def test_hostile_args_and_later_in_place_rewrites_give_the_formatter_text_at_the_call(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Every kind of scalar and near-scalar arg (IntEnum, int subclass, nan/inf/-0.0 in
    %f/%g/%r/%e, bool in %d, None, bytes, big ints, a str subclass whose text changes,
    non-ASCII, lone surrogates), a LoggerAdapter, extra= fields, a record factory adding a
    field, and a later handler rewriting msg/args/levelname/name/created/msecs/lineno/
    exc_text in place: each stored line is Formatter.format of the record at the call."""
    formatter = logging.Formatter(FULL + "|%(req)s|%(tenant)s")
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(formatter)
    reference = Reference(handler)
    later = Sink()
    later.addFilter(_colourize)
    logger.addHandler(reference)
    logger.addHandler(handler)
    logger.addHandler(later)
    old_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old_factory(*args, **kwargs)
        record.tenant = f"t{record.lineno % 7}"
        return record

    logging.setLogRecordFactory(factory)
    try:
        adapter = logging.LoggerAdapter(logger, {"req": "r-adapter"})
        nan, inf = math.nan, math.inf
        for i in range(60):
            PHASE[0] = f"p{i}"
            extra = {"req": f"r{i}"}
            logger.info("enum %d %s %r", Colour.RED, Colour.RED, Colour.RED, extra=extra)
            logger.info("int sub %d %s %x", Count(i), Count(i), Count(255), extra=extra)
            logger.info(
                "floats %.3f %g %r %e %s %10.4f %-8.2g|",
                i / 7, nan, inf, -inf, -0.0, 1e300 * 10, 1 / 3, extra=extra,
            )  # fmt: skip
            logger.info("bool %d %s none %s %r", True, False, None, None, extra=extra)
            logger.info("bytes %s %r", b"\xff\x00", b"ab", extra=extra)
            logger.info("big %d %x", 10**400 + i, -(2**200), extra=extra)
            logger.info("shifty %s", Shifty("x"), extra=extra)
            logger.info(ShiftyMsg("as msg %s"), i, extra=extra)
            logger.info("ünï €ode %s \u2028 %s", "日本語", "\U0001f600", extra=extra)
            logger.info("surrogate %s", "\udcff\ud800", extra=extra)
            logger.info("\udc80 lone in msg %d", i, extra=extra)
            logger.info("percent %% %s", "%(name)s %d", extra=extra)
            logger.info("no args but %s and %(x)s", extra=extra)
            logger.info("char %c %c", 65, "é", extra=extra)
            adapter.warning("adapter %s", i)
            PHASE[0] = "changed after the call"
    finally:
        logging.setLogRecordFactory(old_factory)
    handler.close()
    assert (0, 0) == (handler.dropped, handler.lost)
    assert expected_lines(reference) == shipped_lines(client, bucket)


def test_swapped_and_edited_formats_while_records_wait_keep_the_format_of_the_call(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """While records wait in the queue: setFormatter() to another formatter, the format
    string edited in place (``_style._fmt``), a {-style and a $-style formatter, and the
    first formatter swapped back. Each record keeps the format of its call."""
    first = logging.Formatter("first %(levelname)s %(message)s")
    handler = GCSHandler(bucket, client=proxied, close_timeout=10)
    handler.setFormatter(first)
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    until = hold_shipper(proxy, handler, logger)
    styles = [
        logging.Formatter("second %(name)s %(message)s"),
        logging.Formatter("{levelname} brace {message}", style="{"),
        logging.Formatter("$levelname dollar $message", style="$"),
        first,
    ]
    for i, formatter in enumerate(styles):
        handler.setFormatter(formatter)
        logger.info("record %d %s", i, "x")
        logger.info("again %d", i)
    first._style._fmt = "edited %(message)s"  # in place, as some config reloaders do
    logger.info("after the edit %d", 1)
    assert time.monotonic() < until, "the test outran the held shipper"
    handler.close()
    assert (0, 0) == (handler.dropped, handler.lost)
    assert expected_lines(reference) == shipped_lines(client, bucket)


def test_time_settings_changed_after_the_call_do_not_reach_records_already_logged(
    proxy: FaultProxy,
    proxied: Any,
    client: Any,
    bucket: str,
    logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    reset_formatter_class: None,
) -> None:
    """Records logged while the shipping thread is busy, then the formatter's ``datefmt``,
    ``default_msec_format`` and the class's ``converter`` (``time.gmtime``, the usual
    'log in UTC' switch, under TZ=Asia/Kolkata) are changed: the stored text is the one
    of the call. (An eager record logged at the same instant is stored so; a deferred one
    must be too, or the two paths disagree about the same record.)"""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        by_datefmt = logging.Formatter("datefmt %(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        by_msec = logging.Formatter("msec %(asctime)s %(message)s")
        by_converter = logging.Formatter("converter %(asctime)s %(message)s")
        handler = GCSHandler(bucket, client=proxied, close_timeout=10)
        reference = Reference(handler)
        logger.addHandler(reference)
        logger.addHandler(handler)
        handler.setFormatter(by_converter)
        until = hold_shipper(proxy, handler, logger)
        for formatter in (by_datefmt, by_msec, by_converter):
            handler.setFormatter(formatter)
            logger.info("logged before the change")
        by_datefmt.datefmt = "%H:%M"
        by_msec.default_msec_format = "%s#%03d"
        logging.Formatter.converter = time.gmtime
        assert time.monotonic() < until, "the test outran the held shipper"
        handler.close()
        assert expected_lines(reference) == shipped_lines(client, bucket)
    finally:
        monkeypatch.undo()
        time.tzset()


OFFSET: contextvars.ContextVar[float] = contextvars.ContextVar("tz_offset", default=0.0)


def _tenant_converter(seconds: float | None) -> time.struct_time:
    """Each tenant's requests are logged in the tenant's time zone (a contextvar)."""
    return time.gmtime((seconds or 0.0) + OFFSET.get())


def test_a_python_converter_set_after_the_first_record_runs_at_the_call(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """The formatter's ``converter`` is replaced on the instance by a Python function that
    reads a contextvar, after the handler has already deferred a record with it (the plan
    was made with ``time.localtime``): the date text is the caller's (its contextvar), not
    the shipping thread's."""
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(formatter)
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    logger.info("before the converter is set")
    handler.flush()
    formatter.converter = _tenant_converter
    for hours in (0, 5, -7):
        token = OFFSET.set(hours * 3600.0)
        try:
            logger.info("tenant at UTC%+d", hours)
        finally:
            OFFSET.reset(token)
    handler.close()
    assert expected_lines(reference) == shipped_lines(client, bucket)


def _record(logger: logging.Logger, created: float, i: int) -> logging.LogRecord:
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "at %d", (i,), None)
    record.created = created
    record.msecs = math.floor((created - math.floor(created)) * 1000)
    return record


def test_a_converter_with_a_sub_second_offset_is_not_cached_per_second_of_created(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A converter that corrects clock skew by a fraction of a second (``t + 0.5``): two
    records in the same second of ``created`` fall in different seconds of the converted
    time. The date text cache (keyed by ``int(created)``) must not give the second record
    the first one's text."""
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    formatter.converter = lambda t: time.gmtime((t or 0.0) + 0.5)
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(formatter)
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    base = math.floor(time.time()) - 10
    for i, created in enumerate((base + 0.2, base + 0.7, base + 1.2, base + 1.7)):
        logger.handle(_record(logger, created, i))
    handler.close()
    assert expected_lines(reference) == shipped_lines(client, bucket)


def _iso_time(
    self: logging.Formatter, record: logging.LogRecord, datefmt: str | None = None
) -> str:
    """The popular recipe: ISO 8601 with milliseconds, by patching formatTime."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_patched_formatTime_is_used(
    where: str, client: Any, bucket: str, logger: logging.Logger, reset_formatter_class: None
) -> None:
    """``formatTime`` replaced on ``logging.Formatter`` (a widely copied recipe for ISO
    timestamps) or on the formatter instance: ``Formatter.format`` calls it, so the
    stored text must show it too."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    if where == "class":
        logging.Formatter.formatTime = _iso_time  # type: ignore[method-assign]
    else:
        formatter.formatTime = _iso_time.__get__(formatter)  # type: ignore[method-assign]
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(formatter)
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    for i in range(5):
        logger.info("iso %d", i)
        logger.info("eager %s", [i])  # a list arg: formatted on the caller
    handler.close()
    assert expected_lines(reference) == shipped_lines(client, bucket)
    assert all("Z " in line for line in shipped_lines(client, bucket))


def _brace_message(self: logging.LogRecord) -> str:
    """The brace-style recipe: ``logger.info("{} items", 3)``."""
    return str(self.msg).format(*self.args) if self.args else str(self.msg)


def test_a_getMessage_patched_on_LogRecord_is_used(
    client: Any, bucket: str, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logging.LogRecord.getMessage`` replaced on the class (a recipe for brace-style
    messages): Formatter.format calls it, so the stored message is its text."""
    monkeypatch.setattr(logging.LogRecord, "getMessage", _brace_message)
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    for i in range(5):
        logger.info("{} items for {}", i, "bob")
    handler.close()
    assert ["INFO 0 items for bob"] == expected_lines(reference)[:1]
    assert expected_lines(reference) == shipped_lines(client, bucket)


def test_a_format_replaced_on_the_handler_instance_is_used(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``handler.format`` replaced on the instance (as instrumentation wrappers do):
    Handler.emit calls ``self.format``, so every stored line is its text, deferrable
    records included."""
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(logging.Formatter("%(message)s"))
    stock = handler.format
    handler.format = lambda record: "wrapped " + stock(record)  # type: ignore[method-assign]
    logger.addHandler(handler)
    for i in range(3):
        logger.info("n %d", i)
        logger.info("list %s", [i])
    handler.close()
    expected = [f"wrapped {line}" for i in range(3) for line in (f"n {i}", f"list {[i]}")]
    assert expected == shipped_lines(client, bucket)


def test_a_format_without_keys_formats_the_whole_record(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``Formatter("%s", validate=False)``: ``%`` formats the record's whole ``__dict__``
    (a debugging dump of every field); the stored line is that text, not a dump of a
    snapshot."""
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(logging.Formatter("%s", validate=False))
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    logger.info("dump %d", 1)
    handler.close()
    assert expected_lines(reference) == shipped_lines(client, bucket)


def test_asctime_across_second_boundaries_and_before_the_epoch(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Records stamped just before and after whole seconds (x.999, x+1.000, x+1.001),
    before the epoch and at it, deferred with time in the format and the per-second date
    cache: each gets its own second, as Formatter.format gives it."""
    formatter = logging.Formatter("%(asctime)s %(msecs)03d %(created)f %(message)s")
    handler = GCSHandler(bucket, client=client, close_timeout=10)
    handler.setFormatter(formatter)
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    base = float(math.floor(time.time()) - 100)
    stamps = [base + 0.999, base + 1.0, base + 1.001, base + 1.999, base + 2.0]
    stamps += [-1.5, -0.5, 0.0, 0.25, 86399.999, 86400.0, base + 0.999]
    for i, created in enumerate(stamps):
        logger.handle(_record(logger, created, i))
    handler.close()
    assert expected_lines(reference) == shipped_lines(client, bucket)


def test_a_padded_message_does_not_grow_memory_past_the_queue_bound(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``logger.info("%1000000s", i)``: a tiny snapshot that formats into 1 MB. 30 of
    them with max_queue_bytes=64 KiB: the queue must not hold (or the shipper format at
    once) more than about the bound plus a chunk plus a few copies of one record (the
    caller's str and bytes, the queue's, the shipper's). Measured as the peak of Python
    allocations (tracemalloc) while they are shipped; every line read back. Calibrated:
    the same records through a Formatter subclass (formatted on the caller) peak at
    6.3 MB here."""
    chunk = 256 * 1024
    handler = GCSHandler(
        bucket, client=client, max_queue_bytes=64 * 1024, chunk_size=chunk, close_timeout=20
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.info("start")
    handler.flush()
    width = 1_000_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(30):
            logger.info("%" + str(width) + "s", i)
        handler.close()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    bound = 64 * 1024 + chunk + 8 * (width + 1)
    assert ["start"] + [f"{i:>{width}}" for i in range(30)] == shipped_lines(client, bucket)
    assert peak <= bound, f"peak {peak / 1e6:.1f} MB > bound {bound / 1e6:.1f} MB"


def test_queued_bytes_stay_within_max_queue_bytes_with_big_str_args(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Six records with a 1.5 MB ASCII str arg, max_queue_bytes 4 MiB, the shipper held:
    the queue's counted bytes (stats().queued_bytes, sampled after every call) never
    pass max_queue_bytes, as with the same records formatted (1.5 MB each, two fit);
    every record is shipped, in order."""
    cap = 4 * 1024 * 1024
    handler = GCSHandler(
        bucket, client=proxied, max_queue_bytes=cap, block_timeout=20, close_timeout=20
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    hold_shipper(proxy, handler, logger)
    big = "y" * 1_500_000
    samples = []
    for i in range(6):
        logger.info("%d %s", i, big)
        samples.append(handler.stats().queued_bytes)
    handler.close()
    assert ["warm-up"] + [f"{i} {big}" for i in range(6)] == shipped_lines(client, bucket)
    assert [] == [s for s in samples if s > cap], f"samples {samples} over {cap}"


def test_many_threads_mixed_deferred_and_eager_nothing_lost_or_doubled(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Four threads log deferred and eager records (list args) interleaved, with a small
    queue so puts wait for room: every record once, each thread's in its call order,
    each line the formatter's text at the call."""
    formatter = logging.Formatter("%(threadName)s %(levelname)s %(message)s")
    handler = GCSHandler(bucket, client=client, queue_size=64, close_timeout=20)
    handler.setFormatter(formatter)
    reference = Reference(handler)

    def work(n: int) -> None:
        for i in range(400):
            if i % 9 == 0:
                logger.info("t%d eager %s", n, [i])
            else:
                logger.info("t%d deferred %d %s", n, i, "s" * (i % 5))

    logger.addHandler(reference)
    logger.addHandler(handler)
    threads = [threading.Thread(target=work, args=(n,), name=f"w{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    assert (0, 0) == (handler.dropped, handler.lost)
    shipped = shipped_lines(client, bucket)
    expected = expected_lines(reference)
    assert sorted(expected) == sorted(shipped)
    for n in range(4):
        mine = f"w{n} "
        assert [x for x in expected if x.startswith(mine)] == [
            x for x in shipped if x.startswith(mine)
        ]


def test_deferred_records_through_the_spool_gzip_and_size_rotation(
    tmp_path: Path, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Deferred and eager records through ``spool_dir`` and ``compression="gzip"`` with a
    small ``max_bytes`` (many objects, a record never split): the objects, decompressed
    in name order, hold the formatter's text at the call, each record once."""

    handler = GCSHandler(
        bucket,
        client=client,
        compression="gzip",
        spool_dir=str(tmp_path / "spool"),
        max_bytes=64 * 1024,
        close_timeout=20,
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    reference = Reference(handler)
    logger.addHandler(reference)
    logger.addHandler(handler)
    for i in range(3000):
        logger.info("spooled %d %s %.3f", i, "z" * (i % 60), i / 7)
        if i % 97 == 0:
            logger.info("eager %s", {"i": i})
    handler.close()
    assert (0, 0) == (handler.dropped, handler.lost)
    names = sorted(blob.name for blob in client.list_blobs(bucket))
    assert len(names) > 3
    text = b"".join(
        gzip.decompress(client.bucket(bucket).blob(name).download_as_bytes()) for name in names
    )
    assert expected_lines(reference) == text.decode("utf-8").splitlines()


_EXIT_SCRIPT = """
import atexit, json, logging, logging.config, sys

bucket = {bucket!r}
expected = {{"d/": [], "e/": []}}
atexit.register(lambda: print(json.dumps(expected), flush=True))  # runs after the hook below

class Upper(logging.Formatter):
    def format(self, record):
        return super().format(record).upper()

class Reference(logging.Handler):
    def emit(self, record):
        import copy
        for prefix, name in (("d/", "deferring"), ("e/", "eager")):
            fmt = HANDLERS[name].formatter
            expected[prefix].append(fmt.format(copy.copy(record)))

logging.config.dictConfig({{
    "version": 1,
    "formatters": {{
        "plain": {{"format": "%(levelname)s %(name)s %(funcName)s:%(lineno)d %(message)s"}},
        "upper": {{"()": Upper, "format": "%(levelname)s %(message)s"}},
    }},
    "handlers": {{
        "deferring": {{"class": "gcs_log_sink.GCSHandler", "bucket": bucket, "prefix": "d/",
                       "formatter": "plain", "close_timeout": 20}},
        "eager": {{"class": "gcs_log_sink.GCSHandler", "bucket": bucket, "prefix": "e/",
                   "formatter": "upper", "close_timeout": 20}},
    }},
    "loggers": {{"app": {{"handlers": ["deferring", "eager"], "level": "DEBUG",
                        "propagate": False}}}},
}})
log = logging.getLogger("app")
HANDLERS = {{h.get_name(): h for h in log.handlers}}
log.addHandler(Reference())

def at_exit():
    for i in range(200):
        log.warning("from atexit %d %s", i, "é")

atexit.register(at_exit)

def main():
    for i in range(3000):
        log.info("main %d %.2f %s", i, i / 3, None)
        if i % 100 == 0:
            log.info("eager list %s", [i])
main()
# no flush, no close: records are still queued when the interpreter exits
"""


def test_program_exit_with_queued_records_two_handlers_dictconfig_and_atexit(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A program configured by dictConfig with two GCSHandlers on one logger (the stock
    formatter: deferring; a Formatter subclass: eager) logs 3000 records and exits with
    them queued, and an atexit hook logs 200 more: logging.shutdown ships them all, each
    object holds exactly the formatters' text at the call."""
    out = run_script(gcs.url, _EXIT_SCRIPT.format(bucket=bucket))
    expected = json.loads(out.strip().splitlines()[-1])
    assert 3000 + 30 + 200 == len(expected["d/"])
    assert expected["d/"] == prefix_lines(client, bucket, "d/")
    assert expected["e/"] == prefix_lines(client, bucket, "e/")


_POOL_SCRIPT = """
import copy, json, logging, multiprocessing, os
from gcs_log_sink import GCSHandler

handler = GCSHandler({bucket!r}, prefix="mp/", close_timeout=20)
handler.setFormatter(logging.Formatter("%(process)d %(processName)s %(message)s"))
log = logging.getLogger("mp")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

def child(n):
    lines = []
    for i in range(200):
        record = log.makeRecord("mp", logging.INFO, "pool.py", 1, "child %d rec %d", (n, i), None)
        lines.append(handler.formatter.format(copy.copy(record)))
        log.handle(record)
    return lines

for i in range(50):
    log.info("parent before %d", i)
ctx = multiprocessing.get_context("fork")
pool = ctx.Pool(2)
results = pool.map(child, range(4))
pool.close()
pool.join()
handler.close()
print(json.dumps(results), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_pool_children_ship_their_deferred_records_once(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """Deferred records queued in the parent when the pool forks, and records of pool
    workers (which leave through os._exit): each record once, each worker's text as
    its formatter gave it in the worker, the parent's in order."""
    results = json.loads(run_script(gcs.url, _POOL_SCRIPT.format(bucket=bucket)).strip())
    lines = shipped_lines(client, bucket)
    parent = [line for line in lines if " parent before " in line]
    assert [f"parent before {i}" for i in range(50)] == [line.split(" ", 2)[2] for line in parent]
    children = sorted(line for line in lines if " parent before " not in line)
    assert sorted(line for task in results for line in task) == children


_TIMER_SCRIPT = """
import faulthandler, logging, signal
from gcs_log_sink import GCSHandler

faulthandler.dump_traceback_later(30, exit=True)
handler = GCSHandler({bucket!r}, prefix="timer/", queue_size=200, close_timeout=20)
handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
log = logging.getLogger("timer")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
fired = [0]
def on_alarm(signum, frame):
    fired[0] += 1
    log.warning("alarm %d %s", fired[0], "é")
log.info("started")  # the shipping thread runs before the storm (see the next test)
handler.flush()
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
for i in range(6000):
    log.info("main %d %.1f", i, i / 2)
    if i % 50 == 0:
        log.info("eager %s", [i])
signal.setitimer(signal.ITIMER_REAL, 0, 0)
handler.close()
print(fired[0], handler.dropped, flush=True)
faulthandler.cancel_dump_traceback_later()
"""


def test_a_timer_signal_storm_logging_from_its_handler_loses_and_doubles_nothing(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A SIGALRM every 0.5 ms whose handler logs, landing anywhere in the caller's deferred
    and eager puts (a small queue, so puts also wait for room): no hang; the caller's
    records all shipped once in order; each alarm's record shipped once or counted in
    the drop note."""
    out = run_script(gcs.url, _TIMER_SCRIPT.format(bucket=bucket))
    fired, dropped = (int(word) for word in out.split())
    assert fired > 50, out
    lines = shipped_lines(client, bucket)
    main = [line for line in lines if line.startswith("INFO ")]
    expected = ["INFO started"]
    for i in range(6000):
        expected.append(f"INFO main {i} {i / 2:.1f}")
        if i % 50 == 0:
            expected.append(f"INFO eager {[i]}")
    assert expected == main
    alarms = [int(line.split()[2]) for line in lines if line.startswith("WARNING alarm")]
    assert len(alarms) == len(set(alarms))
    notes = [line for line in lines if "gcs_log_sink dropped" in line]
    noted = sum(int(line.split("dropped ")[1].split()[0]) for line in notes)
    # (Alarm records need not be in alarm order: an alarm's put that waits for room is
    # overtaken by the alarms nested inside it, as with any handler.)
    assert (fired, dropped) == (len(alarms) + noted, noted)
