"""The ``gcs-log-sink`` command: capture build output into GCS and read it back.

Thin over the library: ``run``/``tee`` are :mod:`.capture`, ``ls``/``cat`` are :mod:`.reader`,
``serve-local`` runs a local GCS-compatible server to try them against, ``demo`` starts one and
ships log records through ``GCSHandler``. Every error a user will meet is one line on stderr
and a non-zero status, never a traceback; informational lines (the log's URL) are not
prefixed like errors. Option values are checked here, so an error names the flag typed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import ConfigurationError, GCSLogSinkError, PreconditionFailedError
from .gsurl import parse_gs_url
from .handler import GCSHandler

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
# How long ls and cat retry a GCS that does not answer, unless --timeout says.
DEFAULT_READ_RETRY = 30.0
_SIZE_SUFFIXES = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# While shipping the rest at the end: any of these stops waiting for GCS.
_FINISH_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CLIError(Exception):
    """A failure to report as one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864: a byte count with an optional K/M/G/T suffix (powers of 1024).

    ``B``, ``KiB``/``KB``-style spellings and lower case are accepted; the result must be
    positive. Raises ValueError with a message fit for the user.
    """
    cleaned = text.strip().upper().replace("IB", "").removesuffix("B")
    multiplier = 1
    if cleaned and cleaned[-1] in _SIZE_SUFFIXES:
        multiplier = _SIZE_SUFFIXES[cleaned[-1]]
        cleaned = cleaned[:-1]
    try:
        number = float(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (examples: 65536, 64K, 64M, 1G)") from None
    if not math.isfinite(number) or int(number * multiplier) <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return int(number * multiplier)


def parse_seconds(text: str, *, zero_ok: bool = False, minimum: float = 0.0) -> float:
    """A number of seconds for an option: finite, positive (or zero when ``zero_ok``), and
    at least ``minimum``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{text!r} must be a positive number of seconds")
    if value < minimum:
        raise ValueError(f"{text!r} must be at least {minimum:g} seconds")
    return value


def _option_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse ``type`` whose error argparse reports as "argument --flag: message"."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


_SIZE = _option_type(parse_size, "size")
_SECONDS = _option_type(parse_seconds, "seconds")
_SECONDS_OR_ZERO = _option_type(lambda text: parse_seconds(text, zero_ok=True), "seconds")
# Parts roll on the handler's time windows, which are whole seconds at least.
_PART_SECONDS = _option_type(lambda text: parse_seconds(text, minimum=1.0), "seconds")


def _client() -> Any:
    # default_client() checks the endpoint first: a mistyped STORAGE_EMULATOR_HOST is one
    # ConfigurationError (one line, exit 2), not a retry loop.
    from .stream import default_client

    return default_client()


def _say(line: str) -> None:
    """One line on stderr; a closed or broken stderr is no reason to fail."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _note(message: str) -> None:
    _say(f"gcs-log-sink: {message}")


def _start_capture(args: argparse.Namespace) -> Any:
    """Check GCS (bounded), clear a re-run's prefix, and start shipping."""
    from .capture import OutputShipper, delete_previous, probe_target

    url = parse_gs_url(args.url)
    client = _client()
    reachable = probe_target(
        url,
        client,
        # --no-compose writes no build.log: one already there is no reason to refuse.
        replace=args.replace or args.no_compose,
        startup_timeout=args.startup_timeout,
        note=_note,
    )
    if not reachable:
        if args.require_gcs:
            raise CLIError(
                f"GCS did not answer within --startup-timeout {args.startup_timeout:g} s "
                "(--require-gcs): not starting"
            )
        _note(
            f"GCS still not answering after {args.startup_timeout:g} s: starting anyway; "
            f"output is kept (up to --buffer-size {args.buffer_size:,} bytes"
            + (", and the spool" if args.spool_dir else "")
            + ") and shipped once GCS answers"
        )
    elif args.replace:
        delete_previous(url, client)
    return OutputShipper(
        url,
        client=client,
        part_seconds=args.part_seconds,
        part_bytes=args.part_bytes,
        timestamps=args.timestamps,
        spool_dir=args.spool_dir,
        buffer_bytes=args.buffer_size,
        wait_when_full=args.on_full == "wait",
        ship_timeout=args.ship_timeout,
        replace=args.replace,
    )


def _finish(shipper: Any, args: argparse.Namespace, status: int) -> int:
    """Ship the rest and compose, report in a few lines; the exit status.

    A signal while waiting for GCS stops the wait: what is not shipped by then is said.
    """
    previous = {sig: signal.getsignal(sig) for sig in _FINISH_SIGNALS}

    def give_up(signum: int, frame: Any) -> None:
        shipper.give_up()

    for sig in _FINISH_SIGNALS:
        signal.signal(sig, give_up)
    try:
        result = shipper.finish(compose_parts=not args.no_compose, keep_parts=args.keep_parts)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.dropped:
        _note(
            f"{result.dropped:,} bytes of output were dropped while GCS was away (the "
            f"--buffer-size {args.buffer_size:,} buffer was full); the log says where"
        )
    if result.problem:
        _note(result.problem)
        if args.require_gcs and status == 0:
            status = EXIT_FAILURE
    elif result.composed:
        _say(f"log: {result.url} ({result.stored:,} bytes)")
    else:
        _say(f"log parts: {result.url}")
    if result.threads_busy:
        # The handler's threads still wait on GCS; exiting normally would wait for them again
        # at exit (its atexit hook). Everything to say is said: leave now.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(status)
    return status


def _run(args: argparse.Namespace) -> int:
    from .capture import run_command

    command = args.command_argv
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CLIError("run needs a command after --, e.g. gcs-log-sink run gs://b/p -- make", 2)
    shipper = _start_capture(args)
    try:
        outcome = run_command(
            command,
            shipper,
            use_pty=_isatty(sys.stdout),
            grace=args.grace,
            kill_after=args.kill_after,
        )
    except FileNotFoundError:
        shipper.abandon()
        raise CLIError(f"{command[0]}: command not found", EXIT_NOT_FOUND) from None
    except PermissionError:
        shipper.abandon()
        raise CLIError(f"{command[0]}: permission denied", EXIT_CANNOT_EXECUTE) from None
    if outcome.abandoned_pipe:
        _note(
            f"the command exited, but processes it started still hold its output open; "
            f"stopped reading after --grace {args.grace:g} s"
        )
    return _finish(shipper, args, outcome.status)


def _tee(args: argparse.Namespace) -> int:
    from .capture import tee_stdin

    shipper = _start_capture(args)
    received = tee_stdin(shipper)
    return _finish(shipper, args, 0 if received is None else 128 + received)


def _isatty(stream: Any) -> bool:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return bool(stream.isatty())
    return False


def _read_options(args: argparse.Namespace) -> Any:
    """Bounded retries for ls/cat: one progress note, then google's RetryError."""
    from google.api_core.retry import Retry

    from .reader import ReadOptions

    seconds = args.timeout if args.timeout is not None else DEFAULT_READ_RETRY
    noted = False

    def note(exc: Exception) -> None:
        nonlocal noted
        if not noted:
            noted = True
            _note(f"GCS is not answering ({_reason(exc)}); retrying for up to {seconds:g} s")

    from .compose import is_transient

    retry = Retry(predicate=is_transient, initial=0.5, maximum=4.0, timeout=seconds, on_error=note)
    return ReadOptions(retry=retry, timeout=min(30.0, seconds))


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"HTTP {code}" if isinstance(code, int) else type(exc).__name__


def _ls(args: argparse.Namespace) -> int:
    from google.api_core.exceptions import NotFound

    from .reader import list_logs

    url = parse_gs_url(args.url)
    try:
        objects = list_logs(_client(), url, _read_options(args))
    except NotFound:
        raise CLIError(f"bucket {url.bucket} not found") from None
    parts = 0
    lines = []
    for item in objects:
        when = item.updated.strftime("%Y-%m-%dT%H:%M:%SZ") if item.updated else "-"
        lines.append(f"{item.size:>14,}  {when}  gs://{url.bucket}/{item.name}")
        parts += item.is_part
    logs = len(objects) - parts
    lines.append(f"{logs} log objects, {parts} parts, {sum(o.size for o in objects):,} bytes")
    _print_lines(lines)
    return 0


def _print_lines(lines: list[str]) -> None:
    """Print to stdout; a reader that went away (``| head``) is not an error."""
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; onto a closed pipe that would print a warning.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _cat(args: argparse.Namespace) -> int:
    from .reader import cat, follow

    url = parse_gs_url(args.url)
    out = sys.stdout.buffer
    client = _client()
    options = _read_options(args)
    try:
        if args.follow:
            follow(
                client,
                url,
                out,
                poll_seconds=args.interval,
                timeout=args.timeout,
                note=_note,
                options=options,
            )
        else:
            cat(client, url, out, options)
    except BrokenPipeError:  # `gcs-log-sink cat ... | head`
        _silence_stdout()
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
    for url in tally.builds:
        print(f"log: {url} (composed from the recovered build's parts)", file=sys.stderr)
    if tally.bad:
        print(
            f"gcs-log-sink: {len(tally.bad)} spool segments were not shipped whole (see above)",
            file=sys.stderr,
        )
    return EXIT_FAILURE if problems or tally.bad else 0


def _local_gcs(command: str, port: int | None = None) -> Any:
    """A started local GCS-compatible server, or one line naming the extra it needs."""
    try:
        import gcp_storage_emulator  # noqa: F401 - only: is the 'local' extra installed?
    except ImportError:
        raise CLIError(
            f"{command} needs the 'local' extra: pip install 'gcs-log-sink[local]'"
        ) from None
    from ._localgcs import LocalGCS

    try:
        return LocalGCS(port=port).start()
    except RuntimeError as exc:
        raise CLIError(f"could not start the local GCS server: {exc}") from None


def _serve_local(args: argparse.Namespace) -> int:
    """Run a local GCS-compatible server with a bucket until Ctrl-C or SIGTERM."""
    from .naming import validate_bucket_name

    validate_bucket_name(args.bucket)
    gcs = _local_gcs("serve-local", args.port or None)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _FINISH_SIGNALS}
    try:
        gcs.client().create_bucket(args.bucket)
        _print_lines(
            [
                f"local GCS-compatible server at {gcs.url}, bucket gs://{args.bucket} "
                "(in memory: gone when this stops; Ctrl-C stops it)",
                "in another shell:",
                f"  export STORAGE_EMULATOR_HOST={gcs.url} GOOGLE_CLOUD_PROJECT=local",
                f"  gcs-log-sink run gs://{args.bucket}/try/1 -- ls -l",
                f"  gcs-log-sink cat gs://{args.bucket}/try/1",
            ]
        )
        while not stop.wait(0.5):
            pass
    finally:
        gcs.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _demo(args: argparse.Namespace) -> int:
    gcs = _local_gcs("demo")
    try:
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
    finally:
        gcs.stop()
    return 0


def _capture_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="gs://BUCKET/PREFIX", help="where the output goes")
    parser.add_argument(
        "--part-seconds",
        type=_PART_SECONDS,
        default=10.0,
        metavar="SECONDS",
        help="finalize a readable part at least this often (default %(default)g)",
    )
    parser.add_argument(
        "--part-bytes",
        type=_SIZE,
        default=64 * 1024 * 1024,
        metavar="SIZE",
        help="and whenever a part would pass this size (default 64M; K, M, G suffixes)",
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
        "--replace",
        action="store_true",
        help="a re-run on the same prefix: delete the earlier build.log and parts, overwrite",
    )
    parser.add_argument(
        "--buffer-size",
        type=_SIZE,
        default=32 * 1024 * 1024,
        metavar="SIZE",
        help="output kept in memory while GCS is slow or away; past it, output is dropped "
        "from the stored log (never from the terminal) and a marker says how much "
        "(default 32M)",
    )
    parser.add_argument(
        "--on-full",
        choices=("drop", "wait"),
        default="drop",
        help="when the buffer is full: drop (default; the build never waits for GCS) or "
        "wait (nothing is dropped; the build is slowed to GCS's pace)",
    )
    parser.add_argument(
        "--spool-dir",
        help="keep output on disk here until GCS has it: outlasts long outages and a crash "
        "of this command (ship leftovers with 'gcs-log-sink recover')",
    )
    parser.add_argument(
        "--startup-timeout",
        type=_SECONDS_OR_ZERO,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for an unreachable GCS before starting anyway (default %(default)g)",
    )
    parser.add_argument(
        "--require-gcs",
        action="store_true",
        help="do not start if GCS is unreachable after --startup-timeout, and exit 1 if the "
        "log could not be shipped whole (default: the build matters more than its log)",
    )
    parser.add_argument(
        "--ship-timeout",
        type=_SECONDS,
        default=60.0,
        metavar="SECONDS",
        help="at the end, wait at most this long for GCS to take the rest (default %(default)g)",
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
        description="Run CMD in its own process group; its stdout and stderr go to the "
        "terminal unchanged and, while it runs, into readable parts under PREFIX/parts/, "
        "composed into PREFIX/build.log at the end. GCS never slows CMD down: while GCS is "
        "away, output waits in --buffer-size (or --spool-dir). Exits with CMD's status; "
        "SIGINT, SIGTERM, SIGHUP and SIGQUIT go to CMD's whole process group (exit 128+N), "
        "a second signal or --kill-after kills the group.",
        epilog="examples:\n"
        "  gcs-log-sink run gs://ci-logs/builds/1234 -- make test\n"
        "  gcs-log-sink run --part-seconds 5 --timestamps gs://ci-logs/b/1 -- ./build.sh\n"
        "  gcs-log-sink run --replace gs://ci-logs/builds/1234 -- make test   # a re-run",
    )
    _capture_options(run)
    run.add_argument(
        "--grace",
        type=_SECONDS_OR_ZERO,
        default=5.0,
        metavar="SECONDS",
        help="after CMD exits, read its output at most this long: processes it left behind "
        "may hold it open (default %(default)g)",
    )
    run.add_argument(
        "--kill-after",
        type=_SECONDS_OR_ZERO,
        default=10.0,
        metavar="SECONDS",
        help="after passing a signal on, SIGKILL the group if it still runs (default %(default)g)",
    )
    run.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(handler=_run)

    tee = commands.add_parser(
        "tee",
        help="copy stdin to stdout and to GCS",
        formatter_class=formatter,
        description="Copy standard input to standard output and into GCS, like run. A "
        "reader that quits early (| head) does not stop the copy to GCS, as tee -p; "
        "SIGINT, SIGTERM or SIGHUP ship what was read and exit 128+N.",
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
    _read_timeout_option(ls)
    ls.set_defaults(handler=_ls)

    cat = commands.add_parser(
        "cat",
        help="print a log (an object, or a prefix's build.log or parts)",
        formatter_class=formatter,
        description="Print an object, or PREFIX/build.log, or else PREFIX's parts, or else "
        "every object under PREFIX (a GCSHandler's prefix), in order; streamed, gzip "
        "decompressed. --follow prints parts as they are finalized until build.log "
        "appears: a live view of a running build.",
        epilog="examples:\n"
        "  gcs-log-sink cat gs://ci-logs/builds/1234\n"
        "  gcs-log-sink cat --follow gs://ci-logs/builds/1234\n"
        "  gcs-log-sink cat gs://app-logs/api        # a GCSHandler(prefix='api/')",
    )
    cat.add_argument("url", metavar="gs://BUCKET/PREFIX_OR_OBJECT")
    cat.add_argument("-f", "--follow", action="store_true", help="keep printing new parts")
    cat.add_argument(
        "--interval",
        type=_SECONDS,
        default=1.0,
        metavar="SECONDS",
        help="seconds between polls (%(default)g)",
    )
    _read_timeout_option(cat, follow=True)
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

    serve = commands.add_parser(
        "serve-local",
        help="run a local GCS-compatible server with a bucket, to try the commands",
        formatter_class=formatter,
        description="Start a GCS-compatible server on 127.0.0.1 (in memory) with a bucket, "
        "print the environment that points the commands at it, and serve until Ctrl-C. "
        "Needs the 'local' extra.",
        epilog="example:\n  gcs-log-sink serve-local --port 9023 --bucket ci-logs",
    )
    serve.add_argument(
        "--port", type=int, default=9023, help="port on 127.0.0.1, 0 for any (%(default)s)"
    )
    serve.add_argument("--bucket", default="ci-logs", help="bucket to create (%(default)s)")
    serve.set_defaults(handler=_serve_local)

    demo = commands.add_parser(
        "demo",
        help="ship log records into a local GCS-compatible server and read them back",
        description="Start a local GCS-compatible server, log into it through GCSHandler, "
        "list and print what arrived. Needs the 'local' extra.",
    )
    demo.add_argument("--lines", type=int, default=100_000, help="how many records (%(default)s)")
    demo.set_defaults(handler=_demo)
    return parser


def _read_timeout_option(parser: argparse.ArgumentParser, *, follow: bool = False) -> None:
    also = "; with --follow, also stop waiting for build.log after it (default: wait)"
    parser.add_argument(
        "--timeout",
        type=_SECONDS,
        default=None,
        metavar="SECONDS",
        help=f"retry a GCS that does not answer at most this long (default "
        f"{DEFAULT_READ_RETRY:g}){also if follow else ''}",
    )


def _describe(exc: BaseException) -> tuple[str, int] | None:
    """One line (and a status) for the errors a user will meet; None for a real bug."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, CLIError):
        return str(exc), exc.status
    if isinstance(exc, PreconditionFailedError):
        return (
            f"gs://{exc.bucket}/{exc.name} already exists: pass --replace to overwrite it "
            "(a re-run on the same prefix)",
            EXIT_FAILURE,
        )
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
    if isinstance(exc, api.RetryError):
        last = exc.cause if exc.cause is not None else exc
        return f"cannot reach GCS: gave up retrying ({_reason(last)})", EXIT_FAILURE
    if isinstance(exc, api.GoogleAPICallError):
        return f"GCS refused the request: {exc.message}", EXIT_FAILURE
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return f"cannot reach GCS ({type(exc).__name__})", EXIT_FAILURE
    if isinstance(exc, requests.RequestException):
        return f"bad storage endpoint ({type(exc).__name__})", EXIT_USAGE
    return None


def _ensure_std_fds() -> None:
    """Closed stdin, stdout or stderr (``<&-``, ``>&-``) become /dev/null.

    Otherwise the first pipe opened would take fd 0, 1 or 2, and the build (or our own
    writes) would read or write the wrong thing; and ``sys.stdout`` would be None.
    """
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, mode)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    _ensure_std_fds()
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
        _note(message)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
