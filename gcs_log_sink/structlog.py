"""structlog integration: send structlog's rendered lines to a :class:`GCSHandler`.

Needs the ``structlog`` extra (``pip install 'gcs-log-sink[structlog]'``); ``gcs_log_sink``
itself never imports this module, so the extra stays optional.

There are two ways to wire structlog to GCS.

**Direct**, without the stdlib: structlog renders each event and :class:`GCSLogger` queues the
line on the handler. Cheapest, and only structlog's events go to GCS::

    import structlog
    from gcs_log_sink import GCSHandler
    from gcs_log_sink.structlog import GCSLoggerFactory

    handler = GCSHandler("my-logs", prefix="app/")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=GCSLoggerFactory(handler),
    )

**Through the stdlib**, when plain ``logging`` calls (yours and your libraries') must land in
the same objects: structlog hands its event dicts to ``logging``, and a
``structlog.stdlib.ProcessorFormatter`` on the GCSHandler renders both kinds of record::

    import logging
    import structlog

    shared = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    handler = GCSHandler("my-logs", prefix="app/")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=shared,
        )
    )
    logging.getLogger().addHandler(handler)

Keep ``format_exc_info`` (or ``dict_tracebacks``) in the shared chain: a plain ``logging``
record's ``exc_info`` otherwise reaches the renderer as a raw tuple. The renderer must put one
event on one line; ``JSONRenderer`` does, as it escapes newlines. A helper wrapping this
recipe would save no lines and hide structlog's own, documented API, so there is none.

Both examples in ``examples/`` run these recipes against a local server.
"""

from __future__ import annotations

import copy
from pickle import PicklingError
from typing import Any, Protocol

try:
    # Absolute import, so this module's own name does not shadow the real package. Imported
    # only to fail here, naming the extra, rather than at the first log call.
    import structlog  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "gcs_log_sink.structlog needs structlog: pip install 'gcs-log-sink[structlog]'",
        name="structlog",
    ) from exc

__all__ = ["GCSLogger", "GCSLoggerFactory", "SupportsEnqueue"]


class SupportsEnqueue(Protocol):
    """What :class:`GCSLogger` needs of a handler: ``GCSHandler.enqueue``."""

    def enqueue(self, line: bytes, /) -> None:
        """Queue one complete line (ending in ``b"\\n"``); never blocks long, never raises."""


class GCSLogger:
    """A structlog logger whose ``msg`` queues the rendered line on a GCS handler.

    Like structlog's ``BytesLogger`` with two differences. It never flushes: a handler's
    flush waits for GCS to confirm, so flushing per message, as ``BytesLogger`` does for a
    file, would make every log call a network round trip. And it takes no lock: the handler's
    queue is already safe across threads, and one ``enqueue`` call holds one whole line.

    ``str`` messages are encoded as UTF-8 with ``backslashreplace``, so a lone surrogate turns
    into ``\\udcff`` text (a valid JSON escape) instead of an error. A line gets ``b"\\n"``
    appended unless it already ends with one.

    Args:
        handler: Where lines go; a :class:`gcs_log_sink.GCSHandler`.
        name: Picked up by ``structlog.stdlib.add_logger_name``; unused here.
    """

    __slots__ = ("_enqueue", "handler", "name")

    def __init__(self, handler: SupportsEnqueue, *, name: str | None = None) -> None:
        self.handler = handler
        self.name = name
        self._enqueue = handler.enqueue

    def __repr__(self) -> str:
        if self.name is None:
            return f"<GCSLogger(handler={self.handler!r})>"
        return f"<GCSLogger(name={self.name!r}, handler={self.handler!r})>"

    def __getstate__(self) -> Any:
        """Refuse plainly: the handler owns a thread and connections, which do not travel."""
        raise PicklingError(
            "GCSLogger cannot be pickled: it is bound to a live handler; "
            "configure a GCSLoggerFactory in each process instead"
        )

    def __copy__(self) -> GCSLogger:
        """A logger bound to the same handler: the handler is shared, like a file."""
        return self.__class__(self.handler, name=self.name)

    def __deepcopy__(self, memodict: dict[int, object]) -> GCSLogger:
        """As :meth:`__copy__`: copying the handler would copy its thread and queue."""
        return copy.copy(self)

    def msg(self, message: str | bytes) -> None:
        """Queue ``message`` as one line; no I/O, no flush."""
        line = message.encode("utf-8", "backslashreplace") if isinstance(message, str) else message
        if not line.endswith(b"\n"):
            line += b"\n"
        self._enqueue(line)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class GCSLoggerFactory:
    """Produce :class:`GCSLogger`\\ s for ``structlog.configure(logger_factory=...)``.

    structlog calls the factory with ``get_logger``'s positional arguments; the first, if any,
    becomes the logger's ``name``, as with ``BytesLoggerFactory``.
    """

    __slots__ = ("handler",)

    def __init__(self, handler: SupportsEnqueue) -> None:
        self.handler = handler

    def __repr__(self) -> str:
        return f"<GCSLoggerFactory(handler={self.handler!r})>"

    def __call__(self, *args: Any) -> GCSLogger:
        return GCSLogger(self.handler, name=args[0] if args else None)
