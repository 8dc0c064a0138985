"""The structlog integration, against a fake of our own handler interface (no server)."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

import gcs_log_sink.structlog as gls_structlog
from gcs_log_sink.structlog import GCSLogger, GCSLoggerFactory


class FakeHandler:
    """Records what GCSLogger hands to ``enqueue``; counts flushes, which must never come."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.flushes = 0

    def enqueue(self, line: bytes, /) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        self.flushes += 1

    def __repr__(self) -> str:
        return "<FakeHandler>"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _json_lines(lines: list[bytes]) -> list[dict[str, object]]:
    """Check each queued item is one complete line, and parse it."""
    for line in lines:
        assert line.endswith(b"\n")
        assert 1 == line.count(b"\n")
    return [json.loads(line) for line in lines]


def test_rendered_events_become_complete_json_lines() -> None:
    """Each event is queued as one JSON line, newlines and surrogates included."""
    fake = FakeHandler()
    log = structlog.wrap_logger(
        GCSLogger(fake),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    )

    log.info("started", port=8080)
    log.warning("two\nlines")
    log.error("bad name", path="x\udcff")

    assert [
        {"port": 8080, "event": "started", "level": "info"},
        {"event": "two\nlines", "level": "warning"},
        {"path": "x\udcff", "event": "bad name", "level": "error"},
    ] == _json_lines(fake.lines)
    assert 0 == fake.flushes


def test_surrogate_that_reaches_msg_raw_is_backslash_escaped() -> None:
    """A renderer that leaves a lone surrogate in the text cannot make msg raise."""
    fake = FakeHandler()
    log = structlog.wrap_logger(
        GCSLogger(fake), processors=[structlog.processors.JSONRenderer(ensure_ascii=False)]
    )

    log.info("bad \ud800 é")

    assert b'{"event": "bad \\ud800 \xc3\xa9"}\n' == fake.lines[0]
    assert [{"event": "bad \ud800 é"}] == _json_lines(fake.lines)


def test_msg_adds_exactly_one_newline() -> None:
    """str and bytes get b"\\n" appended, unless they already end with one."""
    fake = FakeHandler()
    logger = GCSLogger(fake)

    logger.msg("text")
    logger.info(b"bytes")
    logger.error("ends\n")
    logger.msg(b"")

    assert [b"text\n", b"bytes\n", b"ends\n", b"\n"] == fake.lines


def test_every_level_alias_queues() -> None:
    """All the method names structlog may call end in msg, as with BytesLogger."""
    fake = FakeHandler()
    logger = GCSLogger(fake)
    names = ["log", "debug", "info", "warn", "warning", "err", "error", "critical"]
    names += ["exception", "fatal", "failure"]

    for name in names:
        getattr(logger, name)(name)

    assert [f"{name}\n".encode() for name in names] == fake.lines
    assert 0 == fake.flushes


def test_factory_with_configure() -> None:
    """structlog.configure(logger_factory=GCSLoggerFactory(h)) sends get_logger's events to h."""
    fake = FakeHandler()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=GCSLoggerFactory(fake),
    )

    structlog.get_logger("billing").info("charged", cents=250)
    structlog.get_logger().debug("anonymous")

    assert [
        {"cents": 250, "event": "charged", "level": "info", "logger": "billing"},
        {"event": "anonymous", "level": "debug", "logger": None},  # as with BytesLogger
    ] == _json_lines(fake.lines)
    assert 0 == fake.flushes


def test_factory_names_loggers_like_bytes_logger_factory() -> None:
    """The first positional argument becomes the name; none means no name."""
    factory = GCSLoggerFactory(FakeHandler())

    assert ("api", None) == (factory("api").name, factory().name)


def test_repr_shows_name_and_handler() -> None:
    """repr names the handler, and the name when there is one."""
    fake = FakeHandler()

    assert "<GCSLogger(handler=<FakeHandler>)>" == repr(GCSLogger(fake))
    assert "<GCSLogger(name='api', handler=<FakeHandler>)>" == repr(GCSLogger(fake, name="api"))
    assert "<GCSLoggerFactory(handler=<FakeHandler>)>" == repr(GCSLoggerFactory(fake))


def test_copies_share_the_handler() -> None:
    """copy and deepcopy give a logger on the same handler, never a copied handler."""
    fake = FakeHandler()
    logger = GCSLogger(fake, name="api")

    for copied in (copy.copy(logger), copy.deepcopy(logger)):
        copied.msg("x")
        assert (fake, "api") == (copied.handler, copied.name)
    assert [b"x\n", b"x\n"] == fake.lines


def test_pickling_is_refused_plainly() -> None:
    """A logger bound to a live handler cannot travel; the error says what to do instead."""
    with pytest.raises(pickle.PicklingError, match="GCSLoggerFactory in each process"):
        pickle.dumps(GCSLogger(FakeHandler()))


def test_import_structlog_inside_resolves_to_the_real_package() -> None:
    """The module's own name does not shadow structlog: absolute imports find the real one."""
    assert structlog is gls_structlog.structlog  # type: ignore[attr-defined]
    assert hasattr(gls_structlog.structlog, "configure")  # type: ignore[attr-defined]


def test_package_import_does_not_import_structlog() -> None:
    """``import gcs_log_sink`` leaves structlog unimported: the extra stays optional."""
    code = "import gcs_log_sink, sys; assert 'structlog' not in sys.modules"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert (0, "") == (result.returncode, result.stderr)


def test_missing_structlog_names_the_extra() -> None:
    """Without structlog, importing the integration fails with the pip command to fix it."""
    code = (
        "import sys; sys.modules['structlog'] = None\n"
        "try:\n"
        "    import gcs_log_sink.structlog\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert (
        "gcs_log_sink.structlog needs structlog: pip install 'gcs-log-sink[structlog]'\n"
    ) == result.stdout
