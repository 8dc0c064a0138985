"""The ``gcs-log-sink`` command.

``demo`` runs the whole path end to end on an embedded default: it starts a local
GCS-compatible server (the ``local`` extra), ships a stream of log lines into it, lists what
arrived and prints it back.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from collections.abc import Sequence

from . import __version__
from .errors import GCSLogSinkError
from .stream import GCSObjectStream

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    try:
        from ._localgcs import LocalGCS
    except ImportError:  # pragma: no cover - depends on the install
        print(
            "gcs-log-sink demo needs the 'local' extra: pip install 'gcs-log-sink[local]'",
            file=sys.stderr,
        )
        return 2
    with LocalGCS() as gcs:
        client = gcs.client()
        client.create_bucket("demo-logs")
        print(f"local GCS server at {gcs.url}, bucket gs://demo-logs")
        started = time.monotonic()
        with GCSObjectStream(
            "demo-logs", "demo/app.log", client=client, content_type="text/plain; charset=utf-8"
        ) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=True)
            handler = logging.StreamHandler(text)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
            )
            logger = logging.getLogger("demo")
            logger.propagate = False
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            for i in range(args.lines):
                logger.info("request served path=/api/v1/items/%d status=200 bytes=%d", i, i * 7)
            logger.removeHandler(handler)
            text.detach()
        elapsed = time.monotonic() - started
        print(
            f"shipped {args.lines} lines ({raw.size} bytes, crc32c {raw.crc32c}) in {elapsed:.2f} s"
        )
        for blob in client.list_blobs("demo-logs"):
            print(f"  gs://demo-logs/{blob.name}  {blob.size} bytes  crc32c {blob.crc32c}")
        lines = client.bucket("demo-logs").blob("demo/app.log").download_as_text().splitlines()
        print("first lines:", *lines[:3], sep="\n  ")
        print("last line:\n ", lines[-1])
        if len(lines) != args.lines:
            print(f"expected {args.lines} lines, found {len(lines)}", file=sys.stderr)
            return 1
        print(f"read back {len(lines)} lines: every line arrived once")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcs-log-sink",
        description="Ship logs and build output into Google Cloud Storage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="ship log lines into a local GCS-compatible server and read them back",
        description="Start a local GCS-compatible server, log into it, list and print "
        "what arrived. Needs the 'local' extra.",
    )
    demo.add_argument("--lines", type=int, default=100_000, help="how many lines (%(default)s)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except GCSLogSinkError as exc:
        print(f"gcs-log-sink: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
