"""The ``gcs-log-sink`` command: capture build output into GCS and read it back.

Thin over the library: ``run``/``tee`` are :mod:`.capture`, ``ls``/``cat`` are :mod:`.reader`,
``demo`` starts a local GCS-compatible server and ships log records through ``GCSHandler``.
Every error a user will meet is one line on stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import ConfigurationError, GCSLogSinkError
from .gsurl import parse_gs_url
from .handler import GCSHandler

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class CLIError(Exception):
    """A failure to report as one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def _client() -> Any:
    from google.cloud import storage

    return storage.Client()


def _shipper(args: argparse.Namespace, client: Any) -> Any:
    from .capture import OutputShipper

    shipper = OutputShipper(
        parse_gs_url(args.url),
        client=client,
        part_seconds=args.part_seconds,
        part_bytes=args.part_bytes,
        timestamps=args.timestamps,
        spool_dir=args.spool_dir,
    )
    if not args.no_compose:
        shipper.check_target()
    return shipper


def _finish(shipper: Any, args: argparse.Namespace) -> None:
    url = shipper.finish(compose_parts=not args.no_compose, keep_parts=args.keep_parts)
    print(f"gcs-log-sink: {url}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from .capture import run_command

    command = args.command_argv
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("run needs a command after --, e.g. gcs-log-sink run gs://b/p -- make", 2)
    client = _client()
    shipper = _shipper(args, client)
    try:
        status = run_command(command, shipper, use_pty=sys.stdout.isatty())
    except FileNotFoundError:
        shipper.abandon()
        raise CLIError(f"{command[0]}: command not found", EXIT_NOT_FOUND) from None
    except PermissionError:
        shipper.abandon()
        raise CLIError(f"{command[0]}: permission denied", EXIT_CANNOT_EXECUTE) from None
    _finish(shipper, args)
    return status


def _tee(args: argparse.Namespace) -> int:
    from .capture import tee_stdin

    shipper = _shipper(args, _client())
    tee_stdin(shipper)
    _finish(shipper, args)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from google.api_core.exceptions import NotFound

    from .reader import list_logs

    url = parse_gs_url(args.url)
    try:
        objects = list_logs(_client(), url)
    except NotFound:
        raise CLIError(f"bucket {url.bucket} not found") from None
    parts = 0
    for item in objects:
        when = item.updated.strftime("%Y-%m-%dT%H:%M:%SZ") if item.updated else "-"
        print(f"{item.size:>14,}  {when}  gs://{url.bucket}/{item.name}")
        parts += item.is_part
    logs = len(objects) - parts
    print(f"{logs} log objects, {parts} parts, {sum(o.size for o in objects):,} bytes")
    return 0


def _cat(args: argparse.Namespace) -> int:
    from .reader import cat, follow

    url = parse_gs_url(args.url)
    out = sys.stdout.buffer
    try:
        if args.follow:
            follow(_client(), url, out, poll_seconds=args.interval)
        else:
            cat(_client(), url, out)
    except BrokenPipeError:  # `gcs-log-sink cat ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _recover(args: argparse.Namespace) -> int:
    from .recovery import recover_spools

    problems: list[str] = []

    def report(kind: str, message: str) -> None:
        problems.append(message)
        print(f"gcs-log-sink: {message}", file=sys.stderr)

    if not os.path.isdir(args.spool_dir):
        raise CLIError(f"{args.spool_dir}: no such spool directory", EXIT_USAGE)
    # Every segment is tried: one that fails is named (through report) and the rest go on.
    tally = recover_spools(
        args.spool_dir,
        client=_client(),
        report=report,
        options={"timeout": 60.0, "retry_deadline": 300.0},
    )
    print(
        f"gcs-log-sink: recovered {tally.objects} objects ({tally.bytes} bytes, "
        f"{tally.lines} lines) from {args.spool_dir}",
        file=sys.stderr,
    )
    if tally.bad:
        print(
            f"gcs-log-sink: {len(tally.bad)} spool segments were not shipped whole (see above)",
            file=sys.stderr,
        )
    return EXIT_FAILURE if problems or tally.bad else 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from ._localgcs import LocalGCS
    except ImportError:  # pragma: no cover - depends on the install
        raise CLIError("demo needs the 'local' extra: pip install 'gcs-log-sink[local]'") from None
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
            raise CLIError(f"expected {args.lines} records in order, found {len(lines)}")
        print(f"read back {len(lines)} records: every record arrived once, in order")
    return 0


def _capture_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="gs://BUCKET/PREFIX", help="where the output goes")
    parser.add_argument(
        "--part-seconds",
        type=float,
        default=10.0,
        help="finalize a readable part at least this often (default %(default)s)",
    )
    parser.add_argument(
        "--part-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="and whenever a part would pass this size (default %(default)s)",
    )
    parser.add_argument(
        "--timestamps", action="store_true", help="prefix each line with its arrival time (UTC)"
    )
    parser.add_argument(
        "--no-compose", action="store_true", help="keep the parts only; no PREFIX/build.log"
    )
    parser.add_argument(
        "--keep-parts", action="store_true", help="keep the parts after composing build.log"
    )
    parser.add_argument(
        "--spool-dir",
        help="keep output on disk here until GCS has it: survives a crash of this command "
        "(ship leftovers with 'gcs-log-sink recover')",
    )


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="gcs-log-sink",
        description="Ship logs and build output into Google Cloud Storage, and read them back.",
        epilog="Credentials, project and STORAGE_EMULATOR_HOST are those of google-cloud-storage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a command, tee its output to the terminal and to GCS",
        formatter_class=formatter,
        description="Run CMD; its stdout and stderr go to the terminal unchanged and, while it "
        "runs, into readable parts under PREFIX/parts/, composed into PREFIX/build.log at the "
        "end. Exits with CMD's status (128+N if killed by signal N); Ctrl-C and SIGTERM are "
        "passed to CMD.",
        epilog="examples:\n"
        "  gcs-log-sink run gs://ci-logs/builds/1234 -- make test\n"
        "  gcs-log-sink run --part-seconds 5 --timestamps gs://ci-logs/b/1 -- ./build.sh",
    )
    _capture_options(run)
    run.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(handler=_run)

    tee = commands.add_parser(
        "tee",
        help="copy stdin to stdout and to GCS",
        formatter_class=formatter,
        description="Copy standard input to standard output and into GCS, like run.",
        epilog="example:\n  make 2>&1 | gcs-log-sink tee gs://ci-logs/builds/1234",
    )
    _capture_options(tee)
    tee.set_defaults(handler=_tee)

    ls = commands.add_parser(
        "ls",
        help="list log objects under a prefix",
        formatter_class=formatter,
        description="List the objects under a prefix with size and time, and count the parts.",
        epilog="example:\n  gcs-log-sink ls gs://ci-logs/builds/1234",
    )
    ls.add_argument("url", metavar="gs://BUCKET/PREFIX")
    ls.set_defaults(handler=_ls)

    cat = commands.add_parser(
        "cat",
        help="print a log (an object, or a prefix's build.log or parts)",
        formatter_class=formatter,
        description="Print an object, or PREFIX/build.log, or else PREFIX's parts in order; "
        "streamed, gzip decompressed. --follow prints parts as they are finalized until "
        "build.log appears: a live view of a running build.",
        epilog="examples:\n"
        "  gcs-log-sink cat gs://ci-logs/builds/1234\n"
        "  gcs-log-sink cat --follow gs://ci-logs/builds/1234",
    )
    cat.add_argument("url", metavar="gs://BUCKET/PREFIX_OR_OBJECT")
    cat.add_argument("-f", "--follow", action="store_true", help="keep printing new parts")
    cat.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (%(default)s)"
    )
    cat.set_defaults(handler=_cat)

    recover = commands.add_parser(
        "recover",
        help="ship what a dead process left in a spool directory",
        formatter_class=formatter,
        description="Resume the uploads a crashed or killed process left in SPOOL_DIR (its "
        "spool_dir or --spool-dir): each session continues where GCS stands, is finalized and "
        "checked, and the spooled data is deleted. Spools of live processes are left alone. "
        "Exits 1 if anything could not be shipped intact.",
        epilog="example (a CI job's cleanup step):\n  gcs-log-sink recover /var/spool/build-logs",
    )
    recover.add_argument("spool_dir", metavar="SPOOL_DIR")
    recover.set_defaults(handler=_recover)

    demo = commands.add_parser(
        "demo",
        help="ship log records into a local GCS-compatible server and read them back",
        description="Start a local GCS-compatible server, log into it through GCSHandler, "
        "list and print what arrived. Needs the 'local' extra.",
    )
    demo.add_argument("--lines", type=int, default=100_000, help="how many records (%(default)s)")
    demo.set_defaults(handler=_demo)
    return parser


def _describe(exc: BaseException) -> tuple[str, int] | None:
    """One line (and a status) for the errors a user will meet; None for a real bug."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, CLIError):
        return str(exc), exc.status
    if isinstance(exc, ConfigurationError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, GCSLogSinkError):
        return str(exc), EXIT_FAILURE
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return (
            "no Google credentials found: run 'gcloud auth application-default login' or set "
            "GOOGLE_APPLICATION_CREDENTIALS",
            EXIT_FAILURE,
        )
    if isinstance(exc, (api.Unauthorized, api.Forbidden)):
        return f"permission denied: {exc.message}", EXIT_FAILURE
    if isinstance(exc, api.NotFound):
        return f"not found: {exc.message}", EXIT_FAILURE
    if isinstance(exc, api.GoogleAPICallError):
        return f"GCS refused the request: {exc.message}", EXIT_FAILURE
    if isinstance(exc, requests.ConnectionError):
        return "cannot reach GCS (connection failed)", EXIT_FAILURE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.handler
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        described = _describe(exc)
        if described is None:
            raise
        message, status = described
        print(f"gcs-log-sink: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
