"""JSONFormatter: one valid JSON line per record, whatever the record holds."""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gcs_log_sink.formatters import JSONFormatter


class _Keep(logging.Handler):
    """Keeps the records a logger makes, so tests format real ones (``extra=``, exc_info)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, _Keep]]:
    """A fresh logger whose records land in a list."""
    logger = logging.getLogger(f"test.formatters.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    keep = _Keep()
    logger.addHandler(keep)
    yield logger, keep
    logger.removeHandler(keep)


def _record(msg: Any, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("app.db", logging.WARNING, "db.py", 7, msg, args or None, None)
    record.__dict__.update(extra)
    return record


def _parsed(text: str) -> dict[str, Any]:
    """Check the shape every output must have, and return it parsed."""
    assert 1 == len(text.splitlines())
    assert not text.endswith("\n")
    text.encode("utf-8")
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_plain_record_has_the_core_keys() -> None:
    """time, level, logger and message, in that order, and nothing else."""
    record = _record("disk %d%% full", 93)
    record.created = 1795685400.123456

    parsed = _parsed(JSONFormatter().format(record))

    assert {
        "time": "2026-11-26T09:30:00.123Z",
        "level": "WARNING",
        "logger": "app.db",
        "message": "disk 93% full",
    } == parsed
    assert ["time", "level", "logger", "message"] == list(parsed)


def test_time_follows_each_record_across_seconds() -> None:
    """The cached seconds part is replaced when a record falls in another second."""
    formatter = JSONFormatter()
    times = []
    for created in (1795685400.999, 1795685401.0, 1795685400.5, 0.0, -1.5):
        record = _record("x")
        record.created = created
        times.append(_parsed(formatter.format(record))["time"])

    assert [
        "2026-11-26T09:30:00.999Z",
        "2026-11-26T09:30:01.000Z",
        "2026-11-26T09:30:00.500Z",
        "1970-01-01T00:00:00.000Z",
        "1969-12-31T23:59:58.500Z",
    ] == times


def test_extras_are_included_and_standard_attributes_are_not(
    kept: tuple[logging.Logger, _Keep],
) -> None:
    """Everything passed with extra= is a key; LogRecord's own attributes are not."""
    logger, keep = kept
    logger.info("login", extra={"user": "ada", "attempt": 2, "tags": ["a", "b"]})
    record = keep.records[0]
    logging.Formatter("%(asctime)s %(message)s").format(record)  # sets message and asctime

    parsed = _parsed(JSONFormatter().format(record))

    assert {"user": "ada", "attempt": 2, "tags": ["a", "b"]} == {
        key: parsed[key] for key in list(parsed)[4:]
    }


def test_static_fields_extras_and_core_keys_precedence(
    kept: tuple[logging.Logger, _Keep],
) -> None:
    """Static fields are added, an extra overrides one, and neither overrides a core key."""
    logger, keep = kept
    logger.error("boom", extra={"env": "canary", "level": "fine", "logger": "me"})
    formatter = JSONFormatter(fields={"service": "billing", "env": "prod", "time": "never"})

    parsed = _parsed(formatter.format(keep.records[0]))

    assert ("ERROR", logger.name) == (parsed["level"], parsed["logger"])
    assert "never" != parsed["time"]
    assert ("billing", "canary") == (parsed["service"], parsed["env"])


def test_exception_only_with_exc_info(kept: tuple[logging.Logger, _Keep]) -> None:
    """A logged exception becomes the formatted traceback under ``exception``."""
    logger, keep = kept
    logger.info("fine")
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")

    plain, failed = (_parsed(JSONFormatter().format(record)) for record in keep.records)

    assert "exception" not in plain
    assert failed["exception"].startswith("Traceback (most recent call last):\n")
    assert failed["exception"].endswith("KeyError: 'missing'")
    assert failed["exception"] == keep.records[1].exc_text  # cached, as logging.Formatter does


def test_exception_text_alone_is_kept() -> None:
    """A record rebuilt from a SocketHandler's pickle keeps its traceback text."""
    record = logging.makeLogRecord({"msg": "remote failure", "exc_text": "Traceback: ..."})

    assert "Traceback: ..." == _parsed(JSONFormatter().format(record))["exception"]


def test_stack_only_with_stack_info(kept: tuple[logging.Logger, _Keep]) -> None:
    """stack_info=True adds the stack under ``stack``; without it there is no such key."""
    logger, keep = kept
    logger.info("plain")
    logger.info("where am I", stack_info=True)

    plain, stacked = (_parsed(JSONFormatter().format(record)) for record in keep.records)

    assert "stack" not in plain
    assert stacked["stack"].startswith("Stack (most recent call last):\n")
    assert "test_stack_only_with_stack_info" in stacked["stack"]


def test_newlines_stay_inside_one_line() -> None:
    """Line breaks, Unicode ones included, are escaped: one record, one line."""
    message = "first\nsecond\r\nthird\u2028fourth\x85fifth\u2029é"

    text = JSONFormatter().format(_record(message))

    assert message == _parsed(text)["message"]
    assert "\\u2028fourth\\u0085fifth\\u2029é" in text


def test_lone_surrogate_is_escaped() -> None:
    """A lone surrogate becomes a \\ud800 escape, so the line encodes as UTF-8."""
    text = JSONFormatter().format(_record("bad \ud800 name", path="x\udcff"))

    parsed = _parsed(text)

    assert "\\ud800" in text
    assert ("bad \ud800 name", "x\udcff") == (parsed["message"], parsed["path"])


def test_non_ascii_is_written_as_utf8_by_default() -> None:
    """Without surrogates, non-ASCII text stays as itself (compact); ensure_ascii escapes it."""
    record = _record("café 名前")

    assert '"message":"café 名前"' in JSONFormatter().format(record)
    assert '"message":"caf\\u00e9 \\u540d\\u524d"' in JSONFormatter(ensure_ascii=True).format(
        record
    )


def test_bytes_args_are_formatted_like_logging_does() -> None:
    """Bytes arguments show as their repr, exactly as getMessage renders them."""
    parsed = _parsed(JSONFormatter().format(_record("got %s", b"\xff\x00")))

    assert "got b'\\xff\\x00'" == parsed["message"]


@pytest.mark.parametrize(
    ("msg", "expected"), [(42, "42"), ({"a": 1}, "{'a': 1}"), (None, "None"), (b"raw", "b'raw'")]
)
def test_non_str_messages_become_their_str(msg: Any, expected: str) -> None:
    """logger.info(42) and logger.info({"a": 1}) log str(msg), as getMessage does."""
    assert expected == _parsed(JSONFormatter().format(_record(msg)))["message"]


def test_format_errors_keep_the_raw_parts() -> None:
    """Arguments that do not fit the format give ``repr(msg) % repr(args)``, not an error."""
    parsed = _parsed(JSONFormatter().format(_record("%d items from %s", "three")))

    assert "'%d items from %s' % ('three',)" == parsed["message"]


def test_unserializable_extras_go_through_repr() -> None:
    """Objects, sets and datetimes json refuses are written as their repr by default."""
    when = datetime.datetime(2026, 11, 26, 9, 30, tzinfo=datetime.timezone.utc)
    record = _record("x", when=when, ids={3}, blob=b"\x00", nested={"k": {1}})

    parsed = _parsed(JSONFormatter().format(record))

    assert repr(when) == parsed["when"]
    assert "{3}" == parsed["ids"]
    assert "b'\\x00'" == parsed["blob"]
    assert {"k": "{1}"} == parsed["nested"]


def test_custom_default_is_used() -> None:
    """``default`` decides how unserializable extras look."""
    when = datetime.datetime(2026, 11, 26, 9, 30, tzinfo=datetime.timezone.utc)
    formatter = JSONFormatter(default=lambda value: value.isoformat())

    assert "2026-11-26T09:30:00+00:00" == _parsed(formatter.format(_record("x", when=when)))["when"]


def test_values_json_refuses_outright_fall_back_to_repr() -> None:
    """NaN, cycles, tuple keys, a raising default and a raising repr never stop the record."""

    def strict(value: Any) -> Any:
        raise TypeError(f"cannot serialize {type(value).__name__}")

    cycle: list[Any] = []
    cycle.append(cycle)
    record = _record(
        "x", nan=float("nan"), cycle=cycle, keys={(1, 2): "pair"}, obj={1}, bad=_BadRepr()
    )

    parsed = _parsed(JSONFormatter(default=strict).format(record))

    assert "nan" == parsed["nan"]
    assert "[[...]]" == parsed["cycle"]
    assert "{(1, 2): 'pair'}" == parsed["keys"]
    assert "{1}" == parsed["obj"]
    assert "<unrepresentable _BadRepr object>" == parsed["bad"]
    assert "x" == parsed["message"]


def test_unprintable_message_falls_back_too() -> None:
    """A message whose str and repr both fail still yields a line."""
    parsed = _parsed(JSONFormatter().format(_record(_BadRepr())))

    assert "<unrepresentable _BadRepr object> % None" == parsed["message"]


ODD_RECORDS = {
    "newlines": _record("a\nb\n\nc\r\u2028\x85", extra_text="x\ny\u2029"),
    "surrogate": _record("\ud800", extra_text="\udfff"),
    "bytes args": _record("%s %r", b"\xff", b"\n"),
    "int message": _record(42),
    "dict message": _record({"a": 1}),
    "format error": _record("%d", "x"),
    "unserializable extras": _record("x", obj=object(), s={1}, when=datetime.datetime(2026, 1, 1)),
    "nan extra": _record("x", inf=float("inf")),
    "bad repr": _record(_BadRepr(), bad=_BadRepr()),
    "non-str key": _record("x", **{"ok": 1}),
}


@pytest.mark.parametrize("record", list(ODD_RECORDS.values()), ids=list(ODD_RECORDS))
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_every_odd_record_is_one_valid_json_line(
    record: logging.LogRecord, ensure_ascii: bool
) -> None:
    """Each odd case gives exactly one line of valid, UTF-8-encodable JSON."""
    text = JSONFormatter(ensure_ascii=ensure_ascii).format(record)

    parsed = _parsed(text)

    assert {"time", "level", "logger", "message"} <= parsed.keys()
    assert ensure_ascii <= text.isascii()
