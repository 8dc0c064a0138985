"""Caller-thread cost, end-to-end throughput and memory of GCSHandler against stdlib handlers.

Run from the repository root::

    .venv/bin/python benchmarks/bench_handler.py [--calls 200000] [--repeat 3]
        [--records 1000000] [--no-rss-scaling] [--check]

Workload (the team's field notes): ``logger.info("request served path=/api/v1/items/%d
status=200 bytes=%d", i, i * 7)``, formatter ``"%(asctime)s %(levelname)s %(name)s
%(message)s"``, a logger with ``propagate=False`` and only the handler under test, whose
name makes a line ~115-120 bytes. Handlers: ``NullHandler`` (the logging module's own cost;
it never formats); ``QueueHandler`` + ``QueueListener(NullHandler)`` on ``queue.Queue(-1)``
(the cookbook's setup) and on ``queue.SimpleQueue()``, the faster of the two being the floor
for a background handler; ``FileHandler`` to a temporary file on local disk; ``GCSHandler``
(defaults: max_bytes 64 MiB, chunk 8 MiB, queue 10,000 records / 64 MiB, overflow "block")
against :class:`gcs_log_sink._localgcs.LocalGCS` on 127.0.0.1.

1. Caller-thread cost: ``--calls`` calls, only the loop timed, median of ``--repeat``,
   handlers alternating. Two clocks: ``perf_counter`` (wall: includes whatever the
   handler's own threads take from the caller while it runs, through the GIL) and
   ``thread_time`` of the calling thread (its CPU only; steadier on this noisy machine).
   Target (issue 13): GCSHandler <= 0.6x the QueueHandler floor, i.e. the handler's share
   above NullHandler under half of QueueHandler's; both ratios are printed.
2. End to end: ``--records`` records from one thread, from the first call until close()
   returns (GCSHandler: objects finalized, so readable; QueueHandler: listener stopped),
   each in a fresh subprocess (``--one e2e-KIND``), median of ``--e2e-repeat``, kinds
   alternating. Target (issue 13): GCSHandler >= 1.3x FileHandler.
3. Peak RSS growth in that subprocess over its RSS after setup, sampled every 10 ms. Target:
   GCSHandler <= max_queue_bytes + 2 x chunk_size + 30 MiB, also with 3x the records (skip
   that run, ~1 min, with ``--no-rss-scaling``): the peak must not grow with the count.

Every GCSHandler round starts on a wiped server (objects deleted, buckets kept): the
emulator's memory grows with what it holds and would slow later rounds.
Draining, closing and verifying happen after the clock stops: GCSHandler's objects and
FileHandler's file are read back and every line checked in order; a drop (``dropped``), a
loss or a mismatch stops the run. Other processes on this 2-core machine skew the figures:
the load average is printed.

Baselines from the field notes (2026-11-24, this kind of machine, Python 3.11; noisy, compare
ratios; they do not say which queue): NullHandler 3.3 us/call, QueueHandler +
QueueListener(NullHandler) 10.1, FileHandler 8.0; end to end NullHandler 305,000 records/s,
QueueHandler 99,000, FileHandler 125,000.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_writer import RssSampler  # the script's own folder is first on sys.path

import gcs_log_sink
from gcs_log_sink import GCSHandler
from gcs_log_sink._localgcs import LocalGCS

MIB = 1024 * 1024
BUCKET = "bench"
MESSAGE = "request served path=/api/v1/items/%d status=200 bytes=%d"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOGGER_NAME = "bench.api.http.access"  # makes a line ~115-120 bytes
CHUNK_SIZE = 8 * MIB
MAX_QUEUE_BYTES = 64 * MIB  # GCSHandler's default, named here for the RSS bound
RSS_BOUND_MIB = (MAX_QUEUE_BYTES + 2 * CHUNK_SIZE) / MIB + 30
LABELS = {
    "null": "NullHandler",
    "queue": "QueueHandler(Queue)",
    "simplequeue": "QueueHandler(SimpleQ)",
    "file": "FileHandler",
    "gcs": "GCSHandler",
    "gcs-spool": "GCSHandler(spool_dir)",
}
KINDS = tuple(LABELS)
QUEUE_KINDS = ("queue", "simplequeue")
# The field notes, 2026-11-24 (they do not say which queue QueueHandler had).
NOTES_US = {"null": "3.3", "queue": "10.1", "simplequeue": "10.1", "file": "8.0"}
NOTES_RATE = {"null": "305,000", "queue": "99,000", "simplequeue": "99,000", "file": "125,000"}


@dataclass
class Target:
    """A handler under test, how to drain and close it, and how to check what it wrote."""

    handler: logging.Handler
    finish: Callable[[], None]
    verify: Callable[[int], None]


def check_lines(data: bytes, count: int, where: str) -> None:
    """Stop the run unless ``data`` holds exactly records 0..count-1, in order."""
    lines = data.splitlines()
    if len(lines) != count:
        raise SystemExit(f"VERIFY FAILED ({where}): {len(lines)} lines, expected {count}")
    for i, line in enumerate(lines):
        if not line.endswith((MESSAGE % (i, i * 7)).encode()):
            raise SystemExit(f"VERIFY FAILED ({where}): line {i} is {line[:200]!r}")


def make_target(kind: str, port: int, workdir: str, tag: str) -> Target:
    formatter = logging.Formatter(FORMAT)
    if kind == "null":
        return Target(logging.NullHandler(), lambda: None, lambda count: None)
    if kind in QUEUE_KINDS:
        records: Any = queue.Queue(-1) if kind == "queue" else queue.SimpleQueue()
        listener = logging.handlers.QueueListener(records, logging.NullHandler())
        listener.start()
        handler: logging.Handler = logging.handlers.QueueHandler(records)
        handler.setFormatter(formatter)  # prepare() formats on the caller's thread
        return Target(handler, listener.stop, lambda count: None)
    if kind == "file":
        path = Path(workdir) / f"{tag}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(formatter)

        def verify_file(count: int) -> None:
            check_lines(path.read_bytes(), count, f"FileHandler {path}")
            path.unlink()

        return Target(handler, handler.close, verify_file)
    client = LocalGCS(port=port).client()  # a client for the server the parent started
    spool_dir = str(Path(workdir) / f"spool-{tag}") if kind == "gcs-spool" else None
    gcs = GCSHandler(
        BUCKET, prefix=f"{tag}/", client=client, chunk_size=CHUNK_SIZE, spool_dir=spool_dir
    )
    gcs.setFormatter(formatter)

    def verify_gcs(count: int) -> None:
        if gcs.dropped or gcs.lost:
            raise SystemExit(f"VERIFY FAILED (GCSHandler): dropped {gcs.dropped}, lost {gcs.lost}")
        blobs = sorted(client.list_blobs(BUCKET, prefix=f"{tag}/"), key=lambda blob: blob.name)
        data = b"".join(blob.download_as_bytes() for blob in blobs)
        check_lines(data, count, f"GCSHandler gs://{BUCKET}/{tag}/, {len(blobs)} objects")
        for blob in blobs:
            blob.delete()  # the server keeps objects in memory

    return Target(gcs, gcs.close, verify_gcs)


def attach(handler: logging.Handler) -> logging.Logger:
    """The benchmark's logger, with ``handler`` as its only handler."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def log_records(logger: logging.Logger, count: int) -> None:
    for i in range(count):
        logger.info(MESSAGE, i, i * 7)


def caller_cost(kind: str, port: int, workdir: str, calls: int, tag: str) -> tuple[float, float]:
    """Microseconds per call on the caller's thread, by perf_counter and by thread_time;
    drained and verified after the clocks."""
    target = make_target(kind, port, workdir, tag)
    logger = attach(target.handler)
    started, cpu_started = time.perf_counter(), time.thread_time()
    log_records(logger, calls)
    cpu = time.thread_time() - cpu_started
    elapsed = time.perf_counter() - started
    target.finish()
    target.verify(calls)
    return elapsed / calls * 1e6, cpu / calls * 1e6


def run_one_e2e(kind: str, port: int, workdir: str, records: int) -> dict[str, float]:
    """Child process: ``records`` records through one handler until close() returns."""
    target = make_target(kind, port, workdir, f"e2e-{kind}-{records}")
    logger = attach(target.handler)
    sampler = RssSampler()
    baseline = sampler.rss()
    with sampler:
        started = time.perf_counter()
        log_records(logger, records)
        logged = time.perf_counter()
        target.finish()
        finished = time.perf_counter()
    target.verify(records)
    return {
        "seconds": finished - started,
        "finish_seconds": finished - logged,
        "rate": records / (finished - started),
        "rss_mib": (sampler.peak - baseline) / MIB,
    }


def run_e2e(kind: str, port: int, workdir: str, records: int) -> dict[str, float]:
    """One end-to-end run in a fresh subprocess; prints a progress line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", f"e2e-{kind}"]
    command += ["--port", str(port), "--workdir", workdir, "--records", str(records)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)  # GCSHandler reports its failures there
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"the end-to-end {LABELS[kind]} run failed (exit {done.returncode})")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"[end to end] {LABELS[kind]:<22} {records:>9,} records {result['rate']:>9,.0f}/s "
        f"{result['seconds']:6.2f} s (close/stop {result['finish_seconds']:.2f} s)  "
        f"peak RSS +{result['rss_mib']:.1f} MiB",
        flush=True,
    )
    return result


def report(
    args: argparse.Namespace,
    us: dict[str, float],
    cpu_us: dict[str, float],
    e2e: dict[str, dict[str, float]],
    scaled: dict[str, float] | None,
) -> bool:
    """Print the table and the targets; True when every target passes."""
    floor_kind = min(QUEUE_KINDS, key=us.__getitem__)
    cpu_floor_kind = min(QUEUE_KINDS, key=cpu_us.__getitem__)
    floor, cpu_floor, file_rate = us[floor_kind], cpu_us[cpu_floor_kind], e2e["file"]["rate"]
    print(
        f"\n{args.calls:,} calls (median of {args.repeat}); end to end {args.records:,} records"
        f" (median of {args.e2e_repeat});\nfloor = the faster QueueHandler by each clock "
        f"(wall: {LABELS[floor_kind]}, cpu: {LABELS[cpu_floor_kind]}); [notes] = field notes; "
        "cpu = thread_time of the calling thread; RSS = peak growth over the baseline"
    )
    header = (
        f"{'handler':<23}{'us/call':>8}{'[notes]':>8}{'vs floor':>10}{'cpu us':>8}{'vs floor':>10}"
        f"{'records/s':>11}{'[notes]':>10}{'vs File':>9}{'peak RSS MiB':>14}"
    )
    print(header + "\n" + "-" * len(header))
    for kind in KINDS:
        rate = e2e[kind]["rate"]
        print(
            f"{LABELS[kind]:<23}{us[kind]:>8.2f}{NOTES_US.get(kind, '-'):>8}"
            f"{us[kind] / floor:>9.2f}x{cpu_us[kind]:>8.2f}{cpu_us[kind] / cpu_floor:>9.2f}x"
            f"{rate:>11,.0f}{NOTES_RATE.get(kind, '-'):>10}"
            f"{rate / file_rate:>8.2f}x{e2e[kind]['rss_mib']:>14.1f}"
        )
    peaks = [(args.records, e2e["gcs"]["rss_mib"])]
    if scaled is not None:
        peaks.append((3 * args.records, scaled["rss_mib"]))
    print(
        "\nGCSHandler peak RSS growth: "
        + "; ".join(f"{n:,} records: {mib:.1f} MiB" for n, mib in peaks)
        + f"\n  bound {RSS_BOUND_MIB:.0f} MiB = max_queue_bytes {MAX_QUEUE_BYTES // MIB} MiB"
        f" + 2 x chunk_size {CHUNK_SIZE // MIB} MiB + 30 MiB"
    )
    if scaled is None:
        print("note: the 3x-records RSS run was skipped (--no-rss-scaling)")
    else:
        print(f"  3x/1x peak ratio {scaled['rss_mib'] / max(e2e['gcs']['rss_mib'], 0.1):.2f}")
    null, cpu_null = us["null"], cpu_us["null"]
    cost_ratio, cpu_ratio = us["gcs"] / floor, cpu_us["gcs"] / cpu_floor
    # The handler's own share above NullHandler, against QueueHandler's share.
    share = (us["gcs"] - null) / max(floor - null, 1e-9)
    cpu_share = (cpu_us["gcs"] - cpu_null) / max(cpu_floor - cpu_null, 1e-9)
    rate_ratio = e2e["gcs"]["rate"] / file_rate
    spool_ratio = e2e["gcs-spool"]["rate"] / e2e["gcs"]["rate"]
    print(
        f"\nGCSHandler's share above NullHandler vs QueueHandler's: wall {share:.2f}, "
        f"cpu {cpu_share:.2f} (the issue's reading of 0.6x: under 0.5)"
    )
    targets = [
        (f"GCSHandler cpu us/call <= 0.6x the floor ({cpu_ratio:.2f}x)", cpu_ratio <= 0.6),
        (f"GCSHandler wall us/call <= 0.6x the floor ({cost_ratio:.2f}x)", cost_ratio <= 0.6),
        (f"GCSHandler records/s >= 1.3x FileHandler ({rate_ratio:.2f}x)", rate_ratio >= 1.3),
        (
            f"GCSHandler(spool_dir) records/s >= 0.7x GCSHandler ({spool_ratio:.2f}x)",
            spool_ratio >= 0.7,
        ),
    ] + [
        (f"GCSHandler RSS growth, {n:,} records <= {RSS_BOUND_MIB:.0f} MiB", mib <= RSS_BOUND_MIB)
        for n, mib in peaks
    ]
    print("\ntargets (every GCSHandler run: dropped == 0, lost == 0, all records read back):")
    for label, passed in targets:
        print(f"  {'PASS' if passed else 'FAIL'}  {label}")
    return all(passed for _, passed in targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per caller-cost run")
    parser.add_argument("--repeat", type=int, default=3, help="caller-cost runs per handler")
    parser.add_argument("--records", type=int, default=1_000_000, help="end-to-end records")
    parser.add_argument("--e2e-repeat", type=int, default=3, help="end-to-end runs per handler")
    parser.add_argument(
        "--rss-scaling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run GCSHandler end to end with 3x --records (default: on)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--one", choices=[f"e2e-{kind}" for kind in KINDS], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        kind = args.one.removeprefix("e2e-")
        print(json.dumps(run_one_e2e(kind, args.port, args.workdir, args.records)))
        return 0

    began = time.monotonic()
    print("load average at start:", *(f"{load:.2f}" for load in os.getloadavg()), flush=True)
    # Which code is measured: A/B runs put another checkout first on PYTHONPATH.
    print("gcs_log_sink from", Path(gcs_log_sink.__file__).parent, flush=True)
    costs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu_costs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    scaled: dict[str, float] | None = None
    with LocalGCS() as gcs, tempfile.TemporaryDirectory(prefix="bench-handler-") as workdir:
        gcs.client().create_bucket(BUCKET)
        for round_number in range(1, args.repeat + 1):
            for kind in KINDS:
                gcs.wipe()
                tag = f"calls-{round_number}"
                cost, cpu = caller_cost(kind, gcs.port, workdir, args.calls, tag)
                costs[kind].append(cost)
                cpu_costs[kind].append(cpu)
                print(
                    f"[calls {round_number}/{args.repeat}] {LABELS[kind]:<22} {cost:6.2f} us/call"
                    f"  cpu {cpu:6.2f} us/call",
                    flush=True,
                )
        for round_number in range(args.e2e_repeat):
            order = KINDS if round_number % 2 == 0 else KINDS[::-1]
            for kind in order:
                gcs.wipe()
                runs[kind].append(run_e2e(kind, gcs.port, workdir, args.records))
        if args.rss_scaling:
            gcs.wipe()
            scaled = run_e2e("gcs", gcs.port, workdir, 3 * args.records)
    us = {kind: statistics.median(values) for kind, values in costs.items()}
    cpu_us = {kind: statistics.median(values) for kind, values in cpu_costs.items()}
    e2e = {
        kind: {
            "rate": statistics.median(run["rate"] for run in kind_runs),
            "rss_mib": max(run["rss_mib"] for run in kind_runs),
        }
        for kind, kind_runs in runs.items()
    }
    passed = report(args, us, cpu_us, e2e, scaled)
    print("\nload average at end:", *(f"{load:.2f}" for load in os.getloadavg()))
    print(f"total {time.monotonic() - began:.0f} s")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
