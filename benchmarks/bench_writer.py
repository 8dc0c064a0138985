"""Throughput and memory of GCSObjectStream against the other ways to stream into GCS.

Run from the repository root::

    .venv/bin/python benchmarks/bench_writer.py [--mib 256] [--repeat 3]

One local GCS server (:class:`gcs_log_sink.testing.LocalGCS`, on 127.0.0.1) takes, in turn:

- ``ours``: ``GCSObjectStream(bucket, name, chunk_size=...)``
- ``blobwriter``: google-cloud-storage's ``blob.open("wb", chunk_size=...)``
- ``smart_open``: ``smart_open.open("gs://...", "wb", transport_params={"client": ...,
  "min_part_size": chunk})``; smart_open sets ``blob.chunk_size`` from ``min_part_size``
  and returns ``blob.open("wb", ignore_flush=True)``, i.e. a BlobWriter.
- ``ceiling``: one ``blob.upload_from_file(f)`` from a file written before the clock starts
  (the library's default resumable chunk, 100 MiB).
- ``ceiling_chunk``: the same upload with ``blob.chunk_size`` set to the chunk size. Not a
  target: it tells the server's cost per chunk apart from a writer's own overhead. (The
  local server appends chunks linearly; unpatched, the emulator copies the whole session
  on every chunk and would dominate every figure here.)

The streaming writers get the same random bytes (``os.urandom``, generated once per
process) as ``bytes`` slices of ``--write-size`` bytes; the clock runs from opening the
writer to the end of ``close()``. MB/s is 10**6 bytes per second.

Each writer runs in a fresh subprocess (``--one WRITER``) so that no other writer's
allocations pollute its memory figure. The child takes its baseline RSS after generating
the data and creating the client, samples RSS every 10 ms while it writes, and reports the
peak growth over the baseline; ``ru_maxrss`` (reset through ``/proc/self/clear_refs`` at
the baseline) minus the baseline is the cross-check. After the clock stops, the child reads
the object's size and CRC32C back and fails loudly on a mismatch. Writers alternate within
each repeat; the table shows the median MB/s and the largest RSS growth over the repeats.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
WRITERS = ("ours", "blobwriter", "smart_open", "ceiling", "ceiling_chunk")
BUCKET = "bench"


def make_client(url: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )


class RssSampler:
    """Peak RSS of this process, sampled on a background thread."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = self.rss()

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def stream_into(writer: Any, data: bytes, write_size: int) -> None:
    with writer:
        for offset in range(0, len(data), write_size):
            writer.write(data[offset : offset + write_size])


def open_writer(kind: str, client: Any, name: str, chunk: int) -> Any:
    """A binary file that streams into ``gs://bench/name``, as ``kind`` makes one."""
    if kind == "ours":
        from gcs_log_sink import GCSObjectStream

        return GCSObjectStream(BUCKET, name, client=client, chunk_size=chunk)
    if kind == "blobwriter":
        return client.bucket(BUCKET).blob(name).open("wb", chunk_size=chunk)
    import smart_open

    params = {"client": client, "min_part_size": chunk}
    return smart_open.open(f"gs://{BUCKET}/{name}", "wb", transport_params=params)


def reset_peak_rss() -> None:
    """Reset the RSS high-water mark that ``ru_maxrss`` reports (Linux; best effort)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: one upload by one writer; measure it, verify it, return the figures."""
    import google_crc32c

    data = os.urandom(args.mib * MIB)
    chunk = args.chunk_mib * MIB
    client = make_client(args.url)
    name = f"{args.one}-{os.getpid()}"
    with tempfile.NamedTemporaryFile(prefix="bench-ceiling-") as source:
        if args.one.startswith("ceiling"):
            source.write(data)
            source.flush()
            source.seek(0)
        reset_peak_rss()
        sampler = RssSampler()
        baseline = sampler.rss()
        with sampler:
            started = time.perf_counter()
            if args.one.startswith("ceiling"):
                blob_chunk = chunk if args.one == "ceiling_chunk" else None
                client.bucket(BUCKET).blob(name, chunk_size=blob_chunk).upload_from_file(source)
            else:
                stream_into(open_writer(args.one, client, name, chunk), data, args.write_size)
            elapsed = time.perf_counter() - started
        ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    blob = client.bucket(BUCKET).blob(name)
    blob.reload()
    expected_crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    if blob.size != len(data) or blob.crc32c != expected_crc:
        raise SystemExit(
            f"VERIFY FAILED for {args.one}: the object holds {blob.size} bytes, CRC32C "
            f"{blob.crc32c}; {len(data)} bytes with CRC32C {expected_crc} were written"
        )
    return {
        "writer": args.one,
        "seconds": elapsed,
        "mb_per_s": len(data) / elapsed / 1e6,
        "peak_growth_mib": (sampler.peak - baseline) / MIB,
        "ru_maxrss_growth_mib": (ru_maxrss - baseline) / MIB,
    }


def run_child(args: argparse.Namespace, writer: str, url: str) -> dict[str, Any]:
    """Run ``--one writer`` in a fresh interpreter; its JSON line, or exit loudly."""
    options = {
        "--one": writer,
        "--url": url,
        "--mib": args.mib,
        "--write-size": args.write_size,
        "--chunk-mib": args.chunk_mib,
    }
    command = [sys.executable, str(Path(__file__).resolve())]
    command += [str(item) for pair in options.items() for item in pair]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {writer} run failed (exit status {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> bool:
    """Print the table and the targets; True when every target evaluated passes."""
    speed = {w: statistics.median(r["mb_per_s"] for r in rs) for w, rs in runs.items()}
    growth = {w: max(r["peak_growth_mib"] for r in rs) for w, rs in runs.items()}
    hwm = {w: max(r["ru_maxrss_growth_mib"] for r in rs) for w, rs in runs.items()}
    print(
        f"\n{args.mib} MiB in {args.write_size}-byte writes, chunk {args.chunk_mib} MiB, "
        f"{args.repeat} repeat(s); MB/s = 10**6 B/s, median; RSS growth = max over repeats"
    )
    print(
        "smart_open: transport_params min_part_size (sets blob.chunk_size; "
        "default 50 MiB); ceiling: upload_from_file, default 100 MiB chunks; "
        "ceiling_chunk: upload_from_file, chunk-size chunks"
    )
    header = (
        f"{'writer':<14}{'MB/s':>9}{'vs BlobWriter':>15}{'vs ceiling':>12}"
        f"{'peak RSS +MiB':>15}{'ru_maxrss +MiB':>16}"
    )
    print(header + "\n" + "-" * len(header))
    for writer in runs:
        print(
            f"{writer:<14}{speed[writer]:>9.1f}{ratio(speed[writer], speed.get('blobwriter')):>15}"
            f"{ratio(speed[writer], speed.get('ceiling')):>12}{growth[writer]:>15.1f}"
            f"{hwm[writer]:>16.1f}"
        )
    if "ours" not in runs:
        return True
    limit = 2 * args.chunk_mib + 30
    ours, blobwriter, ceiling = speed["ours"], speed.get("blobwriter"), speed.get("ceiling")
    targets: dict[str, bool | None] = {
        "ours >= 1.0x BlobWriter": None if blobwriter is None else ours >= blobwriter,
        "ours >= 0.8x ceiling": None if ceiling is None else ours >= 0.8 * ceiling,
        f"ours peak RSS growth < {limit} MiB (2*chunk + 30)": growth["ours"] < limit,
    }
    print("\ntargets:")
    for label, passed in targets.items():
        print(f"  {'SKIP' if passed is None else 'PASS' if passed else 'FAIL'}  {label}")
    return all(passed is not False for passed in targets.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="MiB to upload per run")
    parser.add_argument("--write-size", type=int, default=4096, help="bytes per write()")
    parser.add_argument("--chunk-mib", type=int, default=8, help="chunk size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per writer")
    parser.add_argument("--writers", default=",".join(WRITERS), help="comma-separated subset")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--one", choices=WRITERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0

    from gcs_log_sink.testing import LocalGCS

    writers = [w.strip() for w in args.writers.split(",") if w.strip()]
    unknown = set(writers) - set(WRITERS)
    if unknown:
        parser.error(f"unknown writers: {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in writers}
    with LocalGCS() as gcs:
        make_client(gcs.url).create_bucket(BUCKET)
        for round_number in range(1, args.repeat + 1):
            for writer in writers:
                result = run_child(args, writer, gcs.url)
                gcs.wipe()
                runs[writer].append(result)
                mbps, mib = result["mb_per_s"], result["peak_growth_mib"]
                print(
                    f"[{round_number}/{args.repeat}] {writer:<13} {mbps:7.1f} MB/s, "
                    f"peak RSS +{mib:.1f} MiB",
                    flush=True,
                )
    passed = report(args, runs)
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
