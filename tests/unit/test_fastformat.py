"""The stock formatter's fast path gives exactly what ``logging.Formatter.format`` gives."""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

import pytest

from gcs_log_sink import _fastformat
from gcs_log_sink._fastformat import compile_format, format_line, format_record


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


# -- the compiled format strings (issue 13) ------------------------------------------------


class Shown:
    """An object whose ``__format__``, ``__str__`` and ``__repr__`` all differ."""

    def __format__(self, spec: str) -> str:
        return "FORMAT"

    def __str__(self) -> str:
        return "STR"

    def __repr__(self) -> str:
        return "REPR"


class Loud(str):
    """A str subclass with its own ``__str__`` (``%s`` calls it; so must we)."""

    def __str__(self) -> str:
        return self.upper()


FORMATS = [
    "%(asctime)s %(levelname)s %(name)s %(message)s",
    "%(levelname)-8s|%(name)10s|%(message).5s|%(name)-10.3s",
    "%(msecs)d %(msecs)03d %(relativeCreated)f %(created).3f %(msecs)5.1f",
    "100%% %(message)s %%(asctime)s",  # a literal "%(asctime)": usesTime() says yes
    "%(lineno)05d %(lineno)+d %(lineno)x %(lineno)#o %(lineno)X %(levelno)c %(lineno)ld",
    "%(lineno) d %(lineno)-6d| %(created)e %(created)G %(lineno)i %(lineno)u %(created).f",
    "%(message)r %(message)a %(args)s %(args)r",
    "{braces} %(message)s }{ {{",
    "quotes ' \" \\ and a newline\n%(message)s\ttab",
    "%(message)s%",  # a dangling %: both raise
    "%(missing)s",  # not in the record: both raise ValueError
    "%(message)s %(missing)d",
    "%((odd))s",  # a key that is not an identifier: through %
    "%s",  # no key: the whole dict, through %
    "",  # the default "%(message)s"
    "%(lineno)*d",  # a * width with a mapping: both raise
    "%(message)d",  # a str for %d: both raise
    "%(message)s %(message)s %(message)s",
    "%(asctime)s",
    "no fields at all",
    "%(funcName)s %(module)s %(process)d %(thread)d %(threadName)s %(pathname)s",
]
MESSAGES: list[tuple[object, tuple[object, ...]]] = [
    ("served %d %s", (5, "ok")),
    (Shown(), ()),
    (Loud("loud msg"), ()),
    ("value %s", (Shown(),)),
    ("dict %(a)s", ({"a": Loud("x")},)),
    ("é ü \udc80 and \x00", ()),
    (12345, ()),
]


def record_for(msg: object, args: tuple[object, ...], created: float) -> logging.LogRecord:
    record = logging.LogRecord("svc.http", logging.INFO, "x.py", 7, msg, args or None, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.relativeCreated = 1234.5678
    record.__dict__["(odd)"] = "odd key"
    return record


def outcome(call: Any) -> tuple[str, object]:
    """What a call returned, or the type and text of what it raised."""
    try:
        return ("text", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("message", range(len(MESSAGES)))
def test_compiled_formats_give_the_stock_text_or_the_stock_error(fmt: str, message: int) -> None:
    """Every format string and message: the same text (plus a newline) or the same error."""
    msg, args = MESSAGES[message]
    formatter = logging.Formatter(fmt, validate=False)
    for created in (1_790_000_000.0, 1_790_000_000.9996, 1_790_000_001.25):
        stock_record, our_record = record_for(msg, args, created), record_for(msg, args, created)
        stock = logging.Formatter(fmt, validate=False)
        kind, text = outcome(functools.partial(stock.format, stock_record))
        expected = (kind, text + "\n" if kind == "text" else text)  # type: ignore[operator]
        assert expected == outcome(functools.partial(format_line, formatter, our_record))
        assert (kind, text) == outcome(functools.partial(format_record, formatter, our_record))
        # What Formatter.format leaves on the record, later handlers see.
        assert stock_record.__dict__.get("message") == our_record.__dict__.get("message")
        assert stock_record.__dict__.get("asctime") == our_record.__dict__.get("asctime")


def test_a_missing_key_raises_what_logging_raises() -> None:
    """The text of the ValueError is PercentStyle's own."""
    with pytest.raises(ValueError, match="Formatting field not found") as stock:
        logging.Formatter("%(nope)s").format(make_record(1_790_000_000.0))
    with pytest.raises(ValueError, match="Formatting field not found") as ours:
        format_line(logging.Formatter("%(nope)s"), make_record(1_790_000_000.0))
    assert str(stock.value) == str(ours.value)


def test_defaults_fill_missing_keys_and_the_record_wins() -> None:
    """Formatter(defaults=...) as in logging: defaults for missing keys, the record first."""
    formatter = logging.Formatter(
        "%(svc)s %(name)s %(message)s", defaults={"svc": "api", "name": "x"}
    )
    expected = formatter.format(make_record(1_790_000_000.0)) + "\n"
    assert expected == format_line(formatter, make_record(1_790_000_000.0))
    assert "api svc.http served 5 ok\n" == expected


def test_fmt_style_and_datefmt_changed_between_two_records_take_effect_at_once() -> None:
    """One formatter changed in place between records: each record gets its call's settings."""
    formatter = logging.Formatter("%(levelname)s %(message)s")
    changes = [
        lambda: None,
        lambda: setattr(formatter._style, "_fmt", "%(asctime)s|%(message)s"),  # usesTime flips on
        lambda: setattr(formatter, "datefmt", "%H:%M:%S"),
        lambda: setattr(formatter._style, "_fmt", "%(message)s"),  # and off again
        lambda: setattr(formatter, "_style", logging.StrFormatStyle("{asctime} {message}")),
        lambda: setattr(formatter, "datefmt", None),
        lambda: setattr(formatter, "_style", logging.PercentStyle("%(name)s: %(message)s")),
        lambda: setattr(formatter, "default_msec_format", "%s.%03dZ"),
        lambda: setattr(formatter, "default_msec_format", None),
        lambda: setattr(formatter, "default_time_format", "%Y"),
        lambda: setattr(formatter._style, "_fmt", "%(asctime)s %(message)s"),
        lambda: setattr(formatter, "converter", time.gmtime),
    ]
    for change in changes:
        change()
        expected = logging.Formatter.format(formatter, make_record(1_790_000_000.5)) + "\n"
        assert expected == format_line(formatter, make_record(1_790_000_000.5))


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (logging.Formatter, "usesTime"),
        (logging.Formatter, "formatMessage"),
        (logging.PercentStyle, "format"),
        (logging.PercentStyle, "_format"),
        (logging.PercentStyle, "usesTime"),
    ],
)
def test_methods_replaced_on_the_classes_are_used(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    """A method replaced on Formatter or PercentStyle changes our text as it changes logging's."""
    original = getattr(owner, name)

    def replaced(self: Any, *args: Any) -> Any:
        result = original(self, *args)
        return (not result) if isinstance(result, bool) else f"<{result}>"

    formatter = logging.Formatter("%(asctime)s %(message)s")
    format_line(formatter, make_record(1_790_000_000.5))  # compiled and cached before the patch
    monkeypatch.setattr(owner, name, replaced)
    kind, text = outcome(lambda: formatter.format(make_record(1_790_000_000.5)))
    expected = (kind, text + "\n" if kind == "text" else text)  # type: ignore[operator]
    assert expected == outcome(lambda: format_line(formatter, make_record(1_790_000_000.5)))
    if name != "usesTime":  # without the date text the format raises: nothing else to see
        assert "text" == kind


def test_asctime_search_replaced_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """usesTime() reads asctime_search: replaced on the class or the style, it decides."""
    formatter = logging.Formatter("%(message)s %(asctime)s")
    format_line(formatter, make_record(1_790_000_000.5))
    formatter._style.asctime_search = "%(nothing)"  # type: ignore[attr-defined]
    stock, ours = make_record(1_790_000_000.5), make_record(1_790_000_000.5)
    stock.asctime = ours.asctime = "old"
    assert logging.Formatter.format(formatter, stock) + "\n" == format_line(formatter, ours)
    del formatter._style.asctime_search  # type: ignore[attr-defined]
    monkeypatch.setattr(logging.PercentStyle, "asctime_search", "%(nothing)")
    stock, ours = make_record(1_790_000_000.5), make_record(1_790_000_000.5)
    stock.asctime = ours.asctime = "older"
    assert logging.Formatter.format(formatter, stock) + "\n" == format_line(formatter, ours)


def test_methods_replaced_on_the_instances_are_used() -> None:
    """formatMessage/usesTime on the formatter, format on its style: theirs run."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    formatter.formatMessage = lambda record: "message:" + record.message  # type: ignore[method-assign]
    assert "message:served 5 ok\n" == format_line(formatter, make_record(1_790_000_000.5))
    formatter = logging.Formatter("%(message)s")
    formatter.usesTime = lambda: True  # type: ignore[method-assign]
    record = make_record(1_790_000_000.5)
    format_line(formatter, record)
    assert logging.Formatter("%(asctime)s").format(make_record(1_790_000_000.5)) == record.asctime
    formatter = logging.Formatter("%(message)s")
    formatter._style.format = lambda record: "styled"  # type: ignore[method-assign]
    assert "styled\n" == format_line(formatter, make_record(1_790_000_000.5))


@pytest.mark.parametrize("msecs", [0, 0.0, 999.9999, 1000.0, 1500, -1.0, float("nan"), True, "7"])
def test_odd_msecs_give_the_stock_text_or_error(msecs: object) -> None:
    """msecs set by hand (tests and adapters do): the table is used only where % agrees."""
    formatter = logging.Formatter("%(asctime)s %(message)s")
    stock, ours = make_record(1_790_000_000.5), make_record(1_790_000_000.5)
    stock.msecs = ours.msecs = msecs
    kind, text = outcome(lambda: formatter.format(stock))
    assert (kind, text + "\n" if kind == "text" else text) == outcome(  # type: ignore[operator]
        lambda: format_line(formatter, ours)
    )


def test_many_distinct_format_strings_stay_exact_past_the_cache_limit() -> None:
    """More format strings than the cache keeps: each still gives its own text."""
    for i in range(600):
        formatter = logging.Formatter(f"{i} %(levelname)s %(message)s")
        expected = formatter.format(make_record(1_790_000_000.0)) + "\n"
        assert expected == format_line(formatter, make_record(1_790_000_000.0))


def test_compile_format_keeps_percent_for_what_it_does_not_parse() -> None:
    """A key with parentheses, a lone %, no key: the compiled function is plain %."""
    values: dict[str, object] = {"(a)": 1, "b": 2}
    assert "1 2\n" == compile_format("%((a))s %(b)s")(values)
    assert str(values) + "\n" == compile_format("%s")(values)
    with pytest.raises(ValueError, match="incomplete format"):
        compile_format("%(b)s %")(values)


def test_past_the_compile_limit_new_format_strings_run_through_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program making a format string per request must not pay a compile per record:
    past the limit nothing more is compiled, and the text is still exact."""
    monkeypatch.setattr(_fastformat, "_compiled", {})
    monkeypatch.setattr(_fastformat, "_by_percent_cache", {})
    compiles: list[str] = []
    real_compile = _fastformat.compile_format

    def counting(fmt: str) -> Any:
        compiles.append(fmt)
        return real_compile(fmt)

    monkeypatch.setattr(_fastformat, "compile_format", counting)
    limit = _fastformat._COMPILED_LIMIT
    for i in range(limit + _fastformat._PERCENT_LIMIT + 50):
        formatter = logging.Formatter(f"req-{i} %(levelname)-7s %(message)s")
        expected = formatter.format(make_record(1_790_000_000.0)) + "\n"
        assert expected == format_line(formatter, make_record(1_790_000_000.0))
    assert limit == len(compiles)
    first = logging.Formatter("req-0 %(levelname)-7s %(message)s")  # compiled, kept
    assert "req-0 INFO    served 5 ok\n" == format_line(first, make_record(1_790_000_000.0))
    assert limit == len(compiles)
