"""The stock formatter's fast path gives exactly what ``logging.Formatter.format`` gives."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from gcs_log_sink._fastformat import format_record


def make_record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("svc.http", logging.INFO, "x.py", 7, "served %d %s", (5, "ok"), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("fmt", "datefmt"),
    [
        ("%(asctime)s %(levelname)s %(name)s %(message)s", None),
        ("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"),
        ("%(message)s", None),
        ("{asctime} {levelname} {message}", None),
    ],
)
def test_same_text_as_the_stock_formatter_across_seconds(fmt: str, datefmt: str | None) -> None:
    """Records within a second and across seconds format as Formatter.format does."""
    style = "{" if fmt.startswith("{") else "%"
    formatter = logging.Formatter(fmt, datefmt, style=style)  # type: ignore[arg-type]
    for created in (1_790_000_000.001, 1_790_000_000.999, 1_790_000_001.5, 1_790_000_000.2):
        expected = formatter.format(make_record(created))
        assert expected == format_record(formatter, make_record(created))


def test_a_changed_converter_and_msec_format_take_effect_at_once() -> None:
    """gmtime instead of localtime, and another msec format, change the next record's text."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    first = format_record(formatter, make_record(1_790_000_000.5))
    formatter.converter = time.gmtime
    formatter.default_msec_format = "%s.%03dZ"
    expected = logging.Formatter.format(formatter, make_record(1_790_000_000.5))
    assert expected == format_record(formatter, make_record(1_790_000_000.5))
    assert first.split(" ")[0] != expected.split(" ")[0] or time.timezone == 0


def test_exceptions_and_subclasses_go_through_their_own_format() -> None:
    """A record with a traceback, and a formatter subclass, are formatted by format()."""

    class Upper(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record).upper()

    try:
        raise ValueError("boom")
    except ValueError:
        failing = make_record(1_790_000_000.0, exc_info=sys.exc_info())
    stock = logging.Formatter("%(message)s")
    assert stock.format(failing) == format_record(stock, failing)
    assert "SERVED 5 OK" == format_record(Upper("%(message)s"), make_record(1_790_000_000.0))
