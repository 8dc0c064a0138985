"""``logging.Formatter.format`` for the stock formatter, without its per-record strftime.

Who runs this code: the caller's thread, in ``GCSHandler.emit``. Why: formatting is most of
what a background handler costs its caller, and half of that is ``formatTime`` calling
``time.strftime`` for every record although the text changes once a second. For a formatter
whose class is exactly ``logging.Formatter`` this does what ``Formatter.format`` does, step
for step, with the date text cached per second (``converter``, ``datefmt`` and the default
formats are read at every call, so changing them takes effect at once). Any other formatter,
and every record with exception or stack text, goes through its own ``format``.
"""

from __future__ import annotations

import logging
import time

__all__ = ["format_record"]

# (second, converter, datefmt, default_time_format, date text), replaced whole: one
# assignment, so threads never see half of it.
_cached: tuple[int, object, object, object, str] = (-1, None, None, None, "")


def format_record(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """``formatter.format(record)``, faster for the stock ``logging.Formatter``."""
    if (
        type(formatter) is not logging.Formatter
        or record.exc_info
        or record.exc_text
        or record.stack_info
    ):
        return formatter.format(record)
    record.message = record.getMessage()
    if formatter.usesTime():
        record.asctime = _format_time(formatter, record)
    return formatter.formatMessage(record)


def _format_time(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    global _cached
    created = record.created
    second = int(created) if created >= 0 else -2  # the epoch's far side: never cached
    converter = formatter.converter
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
