"""structlog straight into GCS, without the standard library.

structlog renders each event to a JSON line and ``GCSLoggerFactory`` hands it to the
handler's queue (``GCSHandler.enqueue``): no ``logging.LogRecord`` is built, and the log call
never waits for the network (the handler's thread uploads). Use this when only structlog's
events should reach GCS; ``examples/structlog_stdlib.py`` also catches plain ``logging`` calls.

Run it as written: it starts a local GCS-compatible server, logs a few events, closes the
handler (which finalizes the object) and prints what arrived.

    pip install 'gcs-log-sink[local,structlog]'
    python examples/structlog_direct.py
"""

from __future__ import annotations

import structlog

from gcs_log_sink import GCSHandler
from gcs_log_sink.structlog import GCSLoggerFactory
from gcs_log_sink.testing import LocalGCS


def configure(handler: GCSHandler) -> None:
    """Render events as JSON lines and queue them on ``handler``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),  # escapes newlines: one event, one line
        ],
        logger_factory=GCSLoggerFactory(handler),
        cache_logger_on_first_use=True,
    )


def main() -> None:
    with LocalGCS() as gcs:
        client = gcs.client()
        client.create_bucket("example-logs")
        handler = GCSHandler("example-logs", prefix="app/", client=client)
        configure(handler)

        log = structlog.get_logger().bind(request_id="r-81")
        log.info("order placed", order_id=1042, cents=2599)
        log.warning("slow payment provider", seconds=2.5, note="first line\nsecond line")
        try:
            1 / 0  # noqa: B018 - an exception to log
        except ZeroDivisionError:
            log.exception("rounding failed")

        handler.close()  # ships the queue and finalizes the object
        for blob in client.list_blobs("example-logs"):
            print(blob.name)
            print(blob.download_as_text(), end="")


if __name__ == "__main__":
    main()
