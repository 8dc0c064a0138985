"""A ``logging.Formatter`` that writes each record as one line of JSON.

Logs in GCS are read by machines (BigQuery external tables, ``jq``, log pipelines) that split
objects on newlines, so one record must be exactly one line and every line must parse. Text
formats break that the first time a message or a traceback holds a newline; JSON escapes it.

A formatter runs inside ``Handler.emit`` on the thread that logs, so it must never raise
(the handler would print a traceback per record) and should be cheap. Cost goals: one dict
built directly, one ``json.dumps`` call, no regex; the time prefix is cached per second; the
slow paths (``%``-format errors, values ``json`` refuses, lone surrogates) cost more only for
the records that need them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["JSONFormatter"]

# Attributes every LogRecord has, so whatever else is in ``record.__dict__`` came from
# ``extra=``. Computed from a blank record so it follows the running Python; ``message`` and
# ``asctime`` are set by other formatters, ``taskName`` exists from Python 3.12.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# Non-ASCII characters str.splitlines() (and some JSON-lines readers) treat as line breaks,
# which json.dumps leaves raw; they can only occur inside JSON strings, so escaping is safe.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
# Keys the formatter owns: an extra with one of these names is dropped, not allowed to lie.
_CORE_KEYS = frozenset({"time", "level", "logger", "message"})
# What is not an extra, for the single membership test per record attribute.
_NOT_EXTRA = _STANDARD_ATTRS | _CORE_KEYS


def _safe_repr(value: object) -> str:
    """``repr(value)``, or a placeholder when even that fails: the formatter must not raise."""
    try:
        return repr(value)
    except Exception:  # a broken __repr__, or an int too long to print
        return f"<unrepresentable {type(value).__qualname__} object>"


def _message(record: logging.LogRecord) -> str:
    """The ``%``-formatted message, or a readable account of why it could not be formatted.

    ``logger.info("%d items", "three")`` raises inside ``getMessage``; the stdlib then prints a
    traceback to stderr and loses the record. Keeping the raw parts loses nothing.
    """
    try:
        return record.getMessage()
    except Exception:
        return f"{_safe_repr(record.msg)} % {_safe_repr(record.args)}"


class JSONFormatter(logging.Formatter):
    """Format a record as one line of JSON (without the newline, which the handler adds).

    Keys, in order: ``time`` (UTC, ISO 8601 with milliseconds and ``Z``), ``level``,
    ``logger``, ``message``, then the static ``fields``, then every attribute passed with
    ``extra=``, then ``exception`` and ``stack`` when the record has them. The core keys
    always mean what they say: an extra or static field with the same name is dropped, and an
    extra replaces a static field of its name (it is the more specific).
    Extras ``json`` cannot encode go through ``default`` (``repr`` unless given).

    The output is always valid UTF-8 JSON: a record holding a lone surrogate (from
    ``surrogateescape``-decoded file names, say) is written with ``ensure_ascii`` so the
    surrogate is an escape, not a byte sequence that would make ``.encode("utf-8")`` fail.
    NaN and infinities, which are not JSON, are written as their ``repr`` strings. U+0085,
    U+2028 and U+2029 are escaped too, so even ``str.splitlines`` sees one line.
    """

    def __init__(
        self,
        *,
        fields: Mapping[str, str] | None = None,
        ensure_ascii: bool = False,
        default: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.fields = dict(fields or {})
        self._ensure_ascii = ensure_ascii
        # Built once: json.dumps with any option set builds a new encoder on every call.
        self._encoders = {
            flag: json.JSONEncoder(
                ensure_ascii=flag,
                allow_nan=False,
                default=default if default is not None else repr,
                separators=(",", ":"),
            )
            for flag in (False, True)
        }
        # (whole seconds, "YYYY-MM-DDTHH:MM:SS"), swapped as one tuple so threads never see
        # the second of one pair with the text of another.
        self._second: tuple[int, str] = (0, "1970-01-01T00:00:00")

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one line of JSON; never raises for odd content."""
        payload: dict[Any, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for key, value in self.fields.items():
            payload.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key not in _NOT_EXTRA:
                payload[key] = value
        if record.exc_info and not record.exc_text:
            # Cached on the record as logging.Formatter does, for the next handler.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # also set alone, on records a SocketHandler sent over
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        text = self._render(payload, self._ensure_ascii)
        if not self._ensure_ascii and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: let json write it as an escape
                return self._render(payload, True)
            for char, escape in _LINE_BREAKS:
                if char in text:
                    text = text.replace(char, escape)
        return text

    def _render(self, payload: dict[Any, Any], ensure_ascii: bool) -> str:
        try:
            return self._dumps(payload, ensure_ascii)
        except Exception:  # NaN, circular or too deep values, odd keys, a failing default
            return self._dumps(self._sanitized(payload), ensure_ascii)

    def _dumps(self, payload: dict[Any, Any], ensure_ascii: bool) -> str:
        return self._encoders[ensure_ascii].encode(payload)

    def _sanitized(self, payload: dict[Any, Any]) -> dict[str, Any]:
        """``payload`` with string keys and every value ``json`` refuses replaced by its repr.

        The slow path: only records whose first ``dumps`` failed come here.
        """
        clean: dict[str, Any] = {}
        for key, value in payload.items():
            name = key if isinstance(key, str) else _safe_repr(key)
            try:
                self._dumps({name: value}, True)
            except Exception:
                value = _safe_repr(value)
            clean[name] = value
        return clean

    def _time(self, created: float) -> str:
        """``created`` as ``2026-11-26T09:30:00.123Z``; the seconds part is cached."""
        whole = math.floor(created)
        cached = self._second
        if cached[0] != whole:
            cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
            self._second = cached
        # min(): for a tiny negative float, created - whole rounds to exactly 1.0.
        return f"{cached[1]}.{min(int((created - whole) * 1000), 999):03d}Z"
