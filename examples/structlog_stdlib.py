"""structlog and plain ``logging`` into the same GCS objects, as JSON lines.

structlog hands each event dict to the standard library (``LoggerFactory`` and
``ProcessorFormatter.wrap_for_formatter``); the GCSHandler's formatter, a
``ProcessorFormatter``, renders structlog's events and plain ``logging`` records alike with
one ``JSONRenderer``. So your structured events and your libraries' ``logging`` calls end up
side by side, one JSON object per line, in the same objects.

Run it as written: it starts a local GCS-compatible server, logs through both APIs, closes
the handler (which finalizes the object) and prints what arrived.

    pip install 'gcs-log-sink[local,structlog]'
    python examples/structlog_stdlib.py
"""

from __future__ import annotations

import logging

import structlog

from gcs_log_sink import GCSHandler
from gcs_log_sink.testing import LocalGCS

# Applied to structlog's events before they reach logging, and to plain logging records by
# the formatter (foreign_pre_chain), so both kinds carry the same keys.
SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    # A plain record's exc_info would otherwise reach the renderer as a raw tuple.
    structlog.processors.format_exc_info,
]


def configure(handler: logging.Handler) -> None:
    """Route structlog through logging, and render every record on ``handler`` as JSON."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=SHARED_PROCESSORS,
        )
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main() -> None:
    with LocalGCS() as gcs:
        client = gcs.client()
        client.create_bucket("example-logs")
        handler = GCSHandler("example-logs", prefix="app/", client=client)
        configure(handler)

        log = structlog.get_logger("checkout")
        log.info("order placed", order_id=1042, cents=2599)
        log.warning("slow payment provider", seconds=2.5, note="first line\nsecond line")
        logging.getLogger("legacy.billing").info(
            "invoice %s sent to %s", "INV-7", "ada@example.com"
        )
        try:
            1 / 0  # noqa: B018 - an exception to log
        except ZeroDivisionError:
            logging.getLogger("legacy.billing").exception("rounding failed")

        logging.getLogger().removeHandler(handler)
        handler.close()  # ships the queue and finalizes the object
        for blob in client.list_blobs("example-logs"):
            print(blob.name)
            print(blob.download_as_text(), end="")


if __name__ == "__main__":
    main()
