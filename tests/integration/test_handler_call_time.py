"""A stored record is the text it had at the call, whatever happens to the record afterwards.

Programs do change records and the objects they point to after ``emit()`` returns: a
colouring console handler behind ours rewrites ``record.levelname`` in place, a redacting
handler rewrites ``record.msg``, the caller appends to the list it logged, a formatter
reads a context variable the caller resets. Whatever the handler does to cost its caller
less (formatting on the shipping thread, for one), each of these must store what a
``logging.Formatter`` gives for the record at the moment of the call.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

from helpers import bucket_text

from gcs_log_sink import GCSHandler

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ColouringHandler(logging.Handler):
    """Like many console handlers: colours the level name in place, on the shared record."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        record.levelname = f"\x1b[31m{record.levelname}\x1b[0m"
        self.seen += 1


class RedactingHandler(logging.Handler):
    """Rewrites the message and drops the arguments on the shared record, as some do."""

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = "<redacted>"
        record.args = ()


def expected_lines(records: list[logging.LogRecord], fmt: str = FORMAT) -> list[str]:
    formatter = logging.Formatter(fmt)
    return [formatter.format(record) for record in records]


class Capture(logging.Handler):
    """Keeps a copy of each record as it was when our handler got it (it runs first)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(logging.makeLogRecord(dict(record.__dict__)))


def stored_lines(client: Any, bucket: str) -> list[str]:
    return bucket_text(client, bucket).splitlines()


def test_a_later_handler_rewriting_the_record_does_not_change_what_is_stored(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A colouring and a redacting handler after ours: the stored lines are the call's text."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter(FORMAT))
    capture = Capture()
    for attached in (capture, handler, ColouringHandler(), RedactingHandler()):
        logger.addHandler(attached)
    for i in range(2000):
        logger.warning("request %d served in %.1f ms by %s", i, i / 3, "worker-1")
    handler.close()
    assert expected_lines(capture.records) == stored_lines(client, bucket)


def test_mutable_arguments_are_stored_as_they_were_at_the_call(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A list and a dict logged, then changed by the caller: the stored text is the old one."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    items: list[int] = []
    state = {"n": 0}
    expected = []
    for i in range(500):
        items.append(i)
        state["n"] = i
        logger.info("items=%s", items)
        logger.info("state %(n)s", state)
        expected += [f"items={items}", f"state {i}"]
    items.clear()
    state.clear()
    handler.close()
    assert expected == stored_lines(client, bucket)


class Ticket:
    """An object whose text changes after it was logged."""

    def __init__(self) -> None:
        self.state = "open"

    def __str__(self) -> str:
        return f"ticket({self.state})"


def test_an_object_logged_as_the_message_is_stored_as_it_was(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``logger.info(obj)`` and ``%s`` of an object: its text at the call, not later."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    tickets = [Ticket() for _ in range(300)]
    for ticket in tickets:
        logger.info(ticket)
        logger.info("now %s", ticket)
    for ticket in tickets:
        ticket.state = "closed"
    handler.close()
    assert ["ticket(open)", "now ticket(open)"] * 300 == stored_lines(client, bucket)


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
LOCAL = threading.local()


class ContextFormatter(logging.Formatter):
    """Adds the caller's context variable and thread-local to each line, as many services do."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{REQUEST_ID.get()} {getattr(LOCAL, 'user', '-')} {super().format(record)}"


def test_a_formatter_reading_the_callers_context_sees_the_callers_context(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A custom formatter runs where the caller's contextvars and thread-locals are."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(ContextFormatter("%(message)s"))
    logger.addHandler(handler)
    for i in range(500):
        token = REQUEST_ID.set(f"req-{i}")
        LOCAL.user = f"user-{i}"
        logger.info("served %d", i)
        REQUEST_ID.reset(token)
    LOCAL.user = "nobody"
    handler.close()
    assert [f"req-{i} user-{i} served {i}" for i in range(500)] == stored_lines(client, bucket)


def test_an_exception_is_stored_with_its_text_at_the_call(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``logger.exception``: the traceback and the message as they were when logged, even if
    the exception object is changed afterwards."""
    handler = GCSHandler(bucket, client=client)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    errors: list[ValueError] = []
    for i in range(50):
        try:
            raise ValueError(f"bad value {i}")
        except ValueError as exc:
            logger.exception("failed %d", i)
            errors.append(exc)
    for exc in errors:
        exc.args = ("changed",)
    handler.close()
    text = bucket_text(client, bucket)
    assert 0 == text.count("changed")
    for i in range(50):
        assert f"failed {i}\nTraceback (most recent call last):" in text
        assert f"ValueError: bad value {i}\n" in text
