"""``logging.Formatter.format`` for the stock formatter, with less work per record.

Who runs this code: the caller's thread, in ``GCSHandler.emit``. Why: formatting is most of
what a background handler costs its caller. For a formatter whose class is exactly
``logging.Formatter`` this does what ``Formatter.format`` does, step for step, minus three
costs that do not depend on the record:

- ``time.strftime`` per record: the date text is cached per second (``converter``,
  ``datefmt`` and the default formats are read at every call, so changing them takes effect
  at once), and the stock ``"%s,%03d"`` milliseconds come from a table;
- ``usesTime()``'s search of the format string per record;
- ``%``'s parse of the format string per record: a format string of the stock
  ``PercentStyle`` is compiled once (cached by the string itself, so a changed ``_fmt``
  takes effect at once) into a function that builds the same text with one positional
  ``%``. Only specs this module understands exactly are compiled; any other string runs
  through ``%``.

Any other formatter, every record with exception or stack text, a stock formatter or style
whose methods were replaced (on the class, as the ISO-8601 recipes do, or on the instance),
and a style other than an unpatched ``PercentStyle`` go through the stock methods. The date
text is cached only for the builtin converters (``time.localtime``, ``time.gmtime``):
another one may move the time by part of a second, so the same second of ``created`` is not
the same second of its text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

__all__ = ["compile_format", "format_line", "format_record"]

_Formatter = logging.Formatter
_PercentStyle = logging.PercentStyle
# (second, second + 1, converter, datefmt, default_time_format, date text, time.tzname),
# replaced whole: one assignment, so threads never see half of it.
_cached: tuple[float, float, object, object, object, str, object] = (
    0, -1, None, None, None, "", None,
)  # fmt: skip
_STOCK_FORMAT = _Formatter.format
_STOCK_FORMAT_TIME = _Formatter.formatTime
_STOCK_USES_TIME = _Formatter.usesTime
_STOCK_FORMAT_MESSAGE = _Formatter.formatMessage
_STOCK_STYLE_FORMAT = _PercentStyle.format
_STOCK_STYLE_INNER = _PercentStyle._format  # type: ignore[attr-defined]
_STOCK_STYLE_USES_TIME = _PercentStyle.usesTime
_ASCTIME_SEARCH = _PercentStyle.asctime_search
_CACHEABLE_CONVERTERS = (time.localtime, time.gmtime)
# By identity: an equal str subclass may have its own "%", which logging would call.
_STOCK_MSEC_FORMAT = _Formatter.default_msec_format
_MSECS = tuple(f",{ms:03d}" for ms in range(1000))  # "%03d" % ms for 0 <= ms < 1000
_PLAIN_NUMBERS = (float, int)
_PATCHABLE = frozenset(("format", "formatTime", "usesTime", "formatMessage"))

# What the stock format string syntax allows, as far as this module compiles it: "%%", or a
# "%(key)" with an identifier key, flags, width, precision, length and a conversion.
_SPEC = re.compile(
    r"%(?:(?P<percent>%)|\((?P<key>[A-Za-z_][A-Za-z0-9_]*)\)"
    r"(?P<spec>[#0 +-]*[0-9]*(?:\.[0-9]*)?[hlL]?[diouxXeEfFgGcrsa]))"
)
# Format strings compiled, for the process's life. A program that makes format strings as it
# goes (one per request, say) would otherwise compile one per record (~40 us, ~80 times what a %
# costs): past the limit, new strings run through % (kept in _by_percent_cache, which starts
# afresh when full).
_COMPILED_LIMIT = 256
_PERCENT_LIMIT = 1024

Compiled = tuple[bool, Callable[[dict[str, object]], str]]
_compiled: dict[str, Compiled] = {}
_by_percent_cache: dict[str, Compiled] = {}


def format_record(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """``formatter.format(record)``, faster for the stock ``logging.Formatter``."""
    if type(formatter) is not _Formatter or record.exc_info or record.exc_text or record.stack_info:
        return formatter.format(record)
    return format_line(formatter, record)[:-1]


def format_line(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """``formatter.format(record) + "\\n"``, faster for the stock ``logging.Formatter``.

    The newline is part of the compiled format, which saves the caller a concatenation.
    """
    if (
        type(formatter) is not _Formatter
        or record.exc_info
        or record.exc_text
        or record.stack_info
        or _Formatter.format is not _STOCK_FORMAT
        or _Formatter.formatTime is not _STOCK_FORMAT_TIME
        or _Formatter.usesTime is not _STOCK_USES_TIME
        or _Formatter.formatMessage is not _STOCK_FORMAT_MESSAGE
        # A method set on the instance (whatever else the instance holds).
        or not _PATCHABLE.isdisjoint(formatter.__dict__)
    ):
        return formatter.format(record) + "\n"
    style = formatter._style
    if (
        type(style) is not _PercentStyle
        or len(style.__dict__) != 2  # _fmt and _defaults: nothing replaced on the instance
        or _PercentStyle.format is not _STOCK_STYLE_FORMAT
        or _PercentStyle._format is not _STOCK_STYLE_INNER  # type: ignore[attr-defined]
        or _PercentStyle.usesTime is not _STOCK_STYLE_USES_TIME
        or _PercentStyle.asctime_search != _ASCTIME_SEARCH
        # A str subclass may have its own "%", which PercentStyle calls (a cached compile of
        # an equal str would not).
        or type(style._fmt) is not str
    ):
        record.message = record.getMessage()
        if formatter.usesTime():
            record.asctime = _format_time(formatter, record)
        return formatter.formatMessage(record) + "\n"
    fmt = style._fmt
    compiled = _compiled.get(fmt)
    if compiled is None:
        compiled = _remember(fmt)
    record.message = record.getMessage()
    if compiled[0]:
        record.asctime = _format_time(formatter, record)
    defaults = style._defaults  # type: ignore[attr-defined]  # 3.10+
    try:
        return compiled[1](defaults | record.__dict__ if defaults else record.__dict__)
    except KeyError as exc:  # as PercentStyle.format says it
        raise ValueError(f"Formatting field not found in record: {exc}")  # noqa: B904


def _remember(fmt: str) -> Compiled:
    """The compiled entry of a format string seen for the first time (or past the limit)."""
    if len(_compiled) < _COMPILED_LIMIT:
        compiled = _compiled[fmt] = (fmt.find(_ASCTIME_SEARCH) >= 0, compile_format(fmt))
        return compiled
    entry = _by_percent_cache.get(fmt)
    if entry is None:
        if len(_by_percent_cache) >= _PERCENT_LIMIT:
            _by_percent_cache.clear()
        entry = _by_percent_cache[fmt] = (fmt.find(_ASCTIME_SEARCH) >= 0, _by_percent(fmt))
    return entry


def compile_format(fmt: str) -> Callable[[dict[str, object]], str]:
    """A function of a record's ``__dict__`` that returns ``(fmt % values) + "\\n"``.

    ``%(key)spec`` becomes a positional ``%spec``, applied to the values a generated
    function fetches by key: the same conversion ``%`` does for each spec (an f-string's
    ``!s`` would not do: it formats again whatever ``str()`` returned, and a str subclass
    may have its own ``__format__``), without parsing the keys per record. A string with
    anything else (a key that is not an identifier, a lone ``%``, a ``*`` width) is not
    compiled: it runs through ``%`` as it is, and raises what ``%`` raises.
    """
    pieces: list[str] = []
    keys: list[str] = []
    position = 0
    for match in _SPEC.finditer(fmt):
        literal = fmt[position : match.start()]
        if "%" in literal:
            return _by_percent(fmt)
        pieces.append(literal)
        position = match.end()
        if match["percent"]:
            pieces.append("%%")
        else:
            keys.append(match["key"])
            pieces.append("%" + match["spec"])
    rest = fmt[position:]
    if "%" in rest:
        return _by_percent(fmt)
    template = "".join(pieces) + rest + "\n"
    # Generated, not a closure over operator.itemgetter: measured ~0.2 us less per record.
    # Only identifier keys (matched above) go into the source; the template is a value.
    values = "".join(f"d[{key!r}], " for key in keys)
    source = f"def _compiled(d, _template=_template):\n    return _template % ({values})\n"
    namespace: dict[str, object] = {"_template": template}
    exec(compile(source, f"<format {fmt!r}>", "exec"), namespace)  # noqa: S102
    function: Callable[[dict[str, object]], str] = namespace["_compiled"]  # type: ignore[assignment]
    return function


def _by_percent(fmt: str) -> Callable[[dict[str, object]], str]:
    def by_percent(values: dict[str, object]) -> str:
        return fmt % values + "\n"

    return by_percent


def _format_time(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    global _cached
    created = record.created
    converter = formatter.converter
    datefmt = formatter.datefmt
    time_format = formatter.default_time_format
    zone = time.tzname  # a new tuple at every time.tzset(): the zone may have changed
    cached = _cached
    # A hit: the same second of created (cached only for the builtin converters and
    # created >= 0), the same settings and the same time zone. Identity of the settings: an
    # equal but new string only costs one strftime.
    if (
        cached[0] <= created < cached[1]
        and cached[2] is converter
        and cached[3] is datefmt
        and cached[4] is time_format
        and cached[6] is zone
    ):
        text = cached[5]
    else:
        text = time.strftime(datefmt or time_format, converter(created))
        # Never cached: the epoch's far side, and converters that may shift by part of a
        # second.
        if created >= 0 and converter in _CACHEABLE_CONVERTERS:
            second = int(created)
            _cached = (second, second + 1, converter, datefmt, time_format, text, zone)
    if datefmt:
        return text
    msec_format = formatter.default_msec_format
    if msec_format is _STOCK_MSEC_FORMAT:
        msecs = record.msecs
        if type(msecs) in _PLAIN_NUMBERS and 0 <= msecs < 1000:
            return text + _MSECS[int(msecs)]
    return msec_format % (text, record.msecs) if msec_format else text
