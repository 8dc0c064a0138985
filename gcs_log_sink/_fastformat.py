"""``logging.Formatter.format`` for the stock formatter, without its per-record strftime.

Who runs this code: the caller's thread, in ``GCSHandler.emit``. Why: formatting is most of
what a background handler costs its caller, and half of that is ``formatTime`` calling
``time.strftime`` for every record although the text changes once a second. For a formatter
whose class is exactly ``logging.Formatter`` this does what ``Formatter.format`` does, step
for step, with the date text cached per second (``converter``, ``datefmt`` and the default
formats are read at every call, so changing them takes effect at once). Any other formatter,
every record with exception or stack text, and a stock formatter whose ``format`` or
``formatTime`` was replaced (on the class, as the ISO-8601 recipes do, or on the instance)
go through their own ``format``. The date text is cached only for the builtin converters
(``time.localtime``, ``time.gmtime``): another one may move the time by part of a second,
so the same second of ``created`` is not the same second of its text.
"""

from __future__ import annotations

import logging
import time

__all__ = ["format_record"]

# (second, converter, datefmt, default_time_format, date text), replaced whole: one
# assignment, so threads never see half of it.
_cached: tuple[int, object, object, object, str] = (-1, None, None, None, "")
_STOCK_FORMAT = logging.Formatter.format
_STOCK_FORMAT_TIME = logging.Formatter.formatTime
_CACHEABLE_CONVERTERS = (time.localtime, time.gmtime)


def format_record(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """``formatter.format(record)``, faster for the stock ``logging.Formatter``."""
    if (
        type(formatter) is not logging.Formatter
        or record.exc_info
        or record.exc_text
        or record.stack_info
        or logging.Formatter.format is not _STOCK_FORMAT
        or logging.Formatter.formatTime is not _STOCK_FORMAT_TIME
        or "format" in (own := formatter.__dict__)
        or "formatTime" in own
    ):
        return formatter.format(record)
    record.message = record.getMessage()
    if formatter.usesTime():
        record.asctime = _format_time(formatter, record)
    return formatter.formatMessage(record)


def _format_time(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    global _cached
    created = record.created
    converter = formatter.converter
    # Never cached: the epoch's far side, and converters that may shift by part of a second.
    second = int(created) if created >= 0 and converter in _CACHEABLE_CONVERTERS else -2
    datefmt = formatter.datefmt
    time_format = formatter.default_time_format
    cached = _cached
    if (
        cached[0] == second
        and cached[1] is converter
        and cached[2] == datefmt
        and cached[3] == time_format
    ):
        text = cached[4]
    else:
        text = time.strftime(datefmt or time_format, converter(created))
        if second >= 0:
            _cached = (second, converter, datefmt, time_format, text)
    if datefmt:
        return text
    msec_format = formatter.default_msec_format
    return msec_format % (text, record.msecs) if msec_format else text
