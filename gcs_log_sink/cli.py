"""The ``gcs-log-sink`` command.

``demo`` runs the whole path end to end on an embedded default: it starts a local
GCS-compatible server (the ``local`` extra), ships a stream of log lines into it, lists what
arrived and prints it back.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from . import __version__
from .errors import GCSLogSinkError
from .handler import GCSHandler

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
        handler = GCSHandler("demo-logs", prefix="demo/", client=client, max_bytes=4 * 1024 * 1024)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger = logging.getLogger("demo")
        logger.propagate = False
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        started = time.monotonic()
        for i in range(args.lines):
            logger.info("request served path=/api/v1/items/%d status=200 bytes=%d", i, i * 7)
        logged = time.monotonic() - started
        handler.close()
        logger.removeHandler(handler)
        shipped = time.monotonic() - started
        print(
            f"logged {args.lines} records in {logged:.2f} s on the caller's thread; "
            f"shipped and finalized in {shipped:.2f} s"
        )
        lines: list[str] = []
        for blob in client.list_blobs("demo-logs"):
            print(f"  gs://demo-logs/{blob.name}  {blob.size} bytes  crc32c {blob.crc32c}")
            lines += blob.download_as_text().splitlines()
        print("first lines:", *lines[:3], sep="\n  ")
        print("last line:\n ", lines[-1] if lines else "(none)")
        expected = [f"items/{i} " for i in range(args.lines)]
        if len(lines) != args.lines or not all(
            marker in line for marker, line in zip(expected, lines, strict=False)
        ):
            print(f"expected {args.lines} records in order, found {len(lines)}", file=sys.stderr)
            return 1
        print(f"read back {len(lines)} records: every record arrived once, in order")
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
