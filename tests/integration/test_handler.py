"""GCSHandler against the local GCS server: records are read back and compared, one by one."""

from __future__ import annotations

import gzip
import logging
import logging.config
import re
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from helpers import emulator_env

from gcs_log_sink import ConfigurationError, GCSHandler
from gcs_log_sink._localgcs import LocalGCS

HOUR = 3600.0


def read_all(client: Any, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by name (names sort in shipping order)."""
    return {blob.name: blob.download_as_bytes() for blob in client.list_blobs(bucket)}


def lines_of(objects: dict[str, bytes]) -> list[str]:
    """All records, in object-name order, as text lines."""
    return [line for name in sorted(objects) for line in objects[name].decode("utf-8").splitlines()]


class FakeClock:
    """A wall clock the test moves by hand (rotation without sleeping through windows)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_dictconfig_four_threads_every_record_once_in_order(client: Any, bucket: str) -> None:
    """4 threads x 25,000 records via dictConfig: each once, per-thread order kept."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(threadName)s %(message)s"}},
            "handlers": {
                "gcs": {
                    "class": "gcs_log_sink.GCSHandler",
                    "bucket": bucket,
                    "prefix": "svc/",
                    "client": client,
                    "max_bytes": 1024 * 1024,
                    "chunk_size": 256 * 1024,
                    "formatter": "plain",
                }
            },
            "loggers": {
                "dictconfig.test": {"handlers": ["gcs"], "level": "INFO", "propagate": False}
            },
        }
    )
    log = logging.getLogger("dictconfig.test")
    (handler,) = log.handlers

    def produce(thread: int) -> None:
        for i in range(25_000):
            log.info("t%d record %d", thread, i)

    threads = [threading.Thread(target=produce, args=(t,), name=f"T{t}") for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    log.removeHandler(handler)

    objects = read_all(client, bucket)
    pattern = re.compile(r"svc/\d{4}/\d{2}/\d{2}/\d{6}-[^/]+-\d+-[0-9a-f]{8}-\d{5}\.log")
    assert all(pattern.fullmatch(name) for name in objects), sorted(objects)
    assert len(objects) > 1  # max_bytes rolled
    seen: dict[int, list[int]] = {t: [] for t in range(4)}
    for line in lines_of(objects):
        match = re.fullmatch(r"T(\d) t\1 record (\d+)", line)
        assert match, line
        seen[int(match[1])].append(int(match[2]))
    assert {t: list(range(25_000)) for t in range(4)} == seen
    assert 0 == handler.dropped


def test_size_rotation_never_splits_records_and_makes_no_empty_objects(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Objects stay under max_bytes, records are whole, a huge record gets its own object."""
    handler = GCSHandler(bucket, client=client, max_bytes=10_000)
    logger.addHandler(handler)
    records = [f"record {i} " + "x" * (i % 300) for i in range(2_000)]
    for record in records[:1000]:
        logger.info(record)
    logger.info("huge " + "y" * 50_000)
    for record in records[1000:]:
        logger.info(record)
    handler.close()

    objects = read_all(client, bucket)
    assert [*records[:1000], "huge " + "y" * 50000, *records[1000:]] == lines_of(objects)
    sizes = sorted(len(data) for data in objects.values())
    assert 0 not in sizes
    assert [50_006] == [size for size in sizes if size > 10_000]
    assert all(data.endswith(b"\n") for data in objects.values())


def test_time_rotation_on_window_boundaries_with_an_injected_clock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Hourly windows start on the hour; an idle window makes no object."""
    clock = FakeClock(1_790_000_000.0)  # 2026-09-21T14:13:20Z
    handler = GCSHandler(bucket, client=client, clock=clock)
    logger.addHandler(handler)
    logger.info("first hour a")
    logger.info("first hour b")
    handler.flush()
    clock.now += HOUR  # next window
    logger.info("second hour")
    handler.flush()
    clock.now += 3 * HOUR  # two idle windows skipped
    logger.info("fifth hour")
    handler.close()

    objects = read_all(client, bucket)
    hours = sorted(name.split("-")[0] for name in objects)
    assert ["2026/09/21/140000", "2026/09/21/150000", "2026/09/21/180000"] == hours
    assert ["first hour a", "first hour b", "second hour", "fifth hour"] == lines_of(objects)


def test_a_window_is_finalized_promptly_without_more_records(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """When its window ends, the object becomes readable within seconds, no record needed."""
    clock = FakeClock(1_790_000_000.0)
    handler = GCSHandler(bucket, client=client, clock=clock)
    logger.addHandler(handler)
    logger.info("in the window")
    handler.flush()
    assert {} == read_all(client, bucket)  # open, so not yet visible
    clock.now += HOUR
    deadline = time.monotonic() + 5
    while not read_all(client, bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ["in the window"] == lines_of(read_all(client, bucket))
    handler.close()


def test_rotate_makes_records_readable_now(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """rotate() finalizes the open object; later records go to the next one."""
    handler = GCSHandler(bucket, client=client)
    logger.addHandler(handler)
    logger.info("before rotate")
    handler.rotate()
    assert ["before rotate"] == lines_of(read_all(client, bucket))
    logger.info("after rotate")
    handler.close()
    objects = read_all(client, bucket)
    assert 2 == len(objects)
    assert ["before rotate", "after rotate"] == lines_of(objects)


def test_gzip_objects_are_valid_gzip_streams(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """compression='gzip': .gz objects that decompress to exactly the records."""
    handler = GCSHandler(bucket, client=client, compression="gzip", max_bytes=200_000)
    logger.addHandler(handler)
    records = [f"compressed record {i} " + "z" * (i % 50) for i in range(20_000)]
    for i, record in enumerate(records):
        logger.info(record)
        if i == 5_000:
            handler.flush()
    handler.close()
    objects = read_all(client, bucket)
    assert len(objects) > 1
    assert all(name.endswith(".log.gz") for name in objects)
    blob = next(iter(client.list_blobs(bucket)))
    assert "application/gzip" == blob.content_type
    text = b"".join(gzip.decompress(objects[name]) for name in sorted(objects))
    assert records == text.decode().splitlines()


def test_awkward_records_are_all_shipped_and_none_raise(
    client: Any, bucket: str, logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    """Newlines, bad bytes, lone surrogates, 10 MiB, non-str messages, tracebacks: shipped."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    big = "m" * (10 * 1024 * 1024)
    logger.info("two\nlines")
    logger.info("bytes %r", b"\xff\xfe")
    logger.info("surrogate \ud800 here")
    logger.info(big)
    logger.info(42)
    logger.info({"a": 1})
    try:
        raise ValueError("kaboom")
    except ValueError:
        logger.exception("caught")
    handler.close()
    text = b"".join(read_all(client, bucket).values()).decode("utf-8")
    assert "INFO two\nlines\n" in text
    assert "bytes b'\\xff\\xfe'" in text
    assert "surrogate \\ud800 here" in text
    assert f"INFO {big}\n" in text
    assert "INFO 42\n" in text
    assert "INFO {'a': 1}\n" in text
    assert "ERROR caught\nTraceback (most recent call last):" in text
    assert 'raise ValueError("kaboom")\nValueError: kaboom' in text
    assert "" == capfd.readouterr().err


def test_worker_logs_are_not_shipped(client: Any, bucket: str) -> None:
    """The root logger at DEBUG with the handler: urllib3's records from the worker are dropped."""
    root = logging.getLogger()
    handler = GCSHandler(bucket, client=client)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for i in range(10):
            logging.getLogger("app").debug("app record %d", i)
        handler.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert [f"app record {i}" for i in range(10)] == lines_of(read_all(client, bucket))


def test_close_is_idempotent_and_late_records_are_counted(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """close() twice is fine; a record after close is dropped and counted, never raised."""
    handler = GCSHandler(bucket, client=client)
    logger.addHandler(handler)
    logger.info("kept")
    handler.close()
    handler.close()
    logger.info("too late")
    assert 1 == handler.dropped
    assert ["kept"] == lines_of(read_all(client, bucket))


def test_missing_bucket_is_reported_once_and_never_raised(
    client: Any, logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    """A bucket that does not exist: one stderr line naming it, the app goes on."""
    handler = GCSHandler("no-such-bucket-for-logs", client=client)
    logger.addHandler(handler)
    for i in range(100):
        logger.info("into the void %d", i)
    handler.close()
    err = capfd.readouterr().err
    assert 1 == err.count("bucket not found"), err
    assert "gs://no-such-bucket-for-logs" in err
    assert "upload_id" not in err
    assert handler.lost > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bucket": "Bad"}, "bucket name"),
        ({"name_template": "{prefix}{start}.log"}, "lacks {seq}"),
        ({"name_template": "{prefix}{seq}{nope}"}, "uses {nope}"),
        ({"prefix": "../"}, "'..'"),
        ({"prefix": "a\n"}, "control character"),
        ({"rotate_seconds": 0}, "rotate_seconds"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"overflow": "spill"}, "overflow"),
        ({"compression": "zstd"}, "compression"),
        ({"queue_size": 0}, "queue_size"),
        ({"chunk_size": 1000}, "256 KiB"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    """Each bad option is a ConfigurationError naming it, before any I/O."""
    kwargs: dict[str, Any] = {"bucket": "fine-bucket"} | options
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        GCSHandler(kwargs.pop("bucket"), **kwargs)


def test_dictconfig_with_a_wrong_key_names_it() -> None:
    """dictConfig fails with a message naming the unknown key."""
    config = {
        "version": 1,
        "handlers": {"gcs": {"class": "gcs_log_sink.GCSHandler", "bucket": "b-ok", "rotate": 5}},
    }
    with pytest.raises(ValueError, match="gcs") as caught:
        logging.config.dictConfig(config)
    assert "rotate" in str(caught.value.__cause__)


def _run_child(gcs: LocalGCS, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = emulator_env(gcs.url)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_process_that_exits_without_close_ships_everything(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """A short-lived process that never calls close(): atexit ships every record."""
    result = _run_child(
        gcs,
        f"""
        import logging
        from gcs_log_sink import GCSHandler
        logging.basicConfig(level=logging.INFO, handlers=[GCSHandler({bucket!r})],
                            format="%(message)s")
        for i in range(5000):
            logging.info("short-lived %d", i)
        """,
    )
    assert 0 == result.returncode, result.stderr
    assert "" == result.stderr
    assert [f"short-lived {i}" for i in range(5000)] == lines_of(read_all(client, bucket))


def test_fork_parent_and_child_both_ship_nothing_doubled(
    gcs: LocalGCS, client: Any, bucket: str
) -> None:
    """After fork, each process ships its own records into its own objects."""
    result = _run_child(
        gcs,
        f"""
        import logging, os
        from gcs_log_sink import GCSHandler
        handler = GCSHandler({bucket!r})
        logging.basicConfig(level=logging.INFO, handlers=[handler], format="%(message)s")
        for i in range(100):
            logging.info("before fork %d", i)
        pid = os.fork()
        who = "child" if pid == 0 else "parent"
        for i in range(1000):
            logging.info("%s %d", who, i)
        if pid == 0:
            logging.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        """,
    )
    assert 0 == result.returncode, result.stderr
    objects = read_all(client, bucket)
    pids = {name.split("-")[-2] for name in objects}
    assert 2 == len(pids)
    lines = lines_of(objects)
    expected = (
        [f"before fork {i}" for i in range(100)]
        + [f"parent {i}" for i in range(1000)]
        + [f"child {i}" for i in range(1000)]
    )
    assert sorted(expected) == sorted(lines)
    assert [f"child {i}" for i in range(1000)] == [x for x in lines if x.startswith("child")]


def test_a_handler_whose_construction_failed_does_not_break_shutdown() -> None:
    """A bad option raises at construction; logging.shutdown() later flushes nothing, quietly."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gcs_log_sink import GCSHandler\n"
            "try:\n    GCSHandler('ok-bucket', queue_size=0)\nexcept ValueError as e:\n"
            "    keep = e\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode
    assert "" == result.stderr


@pytest.mark.parametrize("endpoint", ["localhost:9023", "http://127.0.0.1:0", "ftp://x"])
def test_a_bad_emulator_host_fails_the_constructor(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STORAGE_EMULATOR_HOST without a scheme (or otherwise unusable) fails at construction,
    where dictConfig shows it, not on the shipping thread after a retry loop."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    with pytest.raises(ConfigurationError, match="STORAGE_EMULATOR_HOST"):
        GCSHandler("some-bucket")


class _OneAtATimeFormatter(logging.Formatter):
    """A formatter with state of its own, as some are: it counts on ``handler.lock``."""

    def __init__(self) -> None:
        super().__init__("%(threadName)s %(message)s")
        self.inside = 0
        self.overlaps = 0

    def format(self, record: logging.LogRecord) -> str:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0)  # let another thread in, if the handler would let it
        text = super().format(record)
        self.inside -= 1
        return text


def test_handle_keeps_the_handler_lock_for_formatters_it_does_not_know(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """The stock formatter runs without ``handler.lock`` (it has no state); any other
    formatter is still called under it, one record at a time, as logging promises."""
    handler = GCSHandler(bucket, client=client)
    formatter = _OneAtATimeFormatter()
    handler.setFormatter(formatter)
    logger.addHandler(handler)

    def produce(tag: str) -> None:
        for i in range(2000):
            logger.info("%s %d", tag, i)

    threads = [threading.Thread(target=produce, args=(f"t{n}",), name=f"t{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    assert 0 == formatter.overlaps
    lines = lines_of(read_all(client, bucket))
    for n in range(4):
        assert [f"t{n} t{n} {i}" for i in range(2000)] == [
            line for line in lines if line.startswith(f"t{n} ")
        ]


def test_handle_applies_the_handlers_filters_without_the_lock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Filters on the handler still decide, and see every record, on the lock-free path."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter("%(message)s"))
    seen: list[str] = []

    def only_even(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return int(record.args[0]) % 2 == 0  # type: ignore[index]

    handler.addFilter(only_even)
    logger.addHandler(handler)
    for i in range(100):
        logger.info("%d", i)
    handler.close()
    assert [str(i) for i in range(100)] == seen
    assert [str(i) for i in range(0, 100, 2)] == lines_of(read_all(client, bucket))
