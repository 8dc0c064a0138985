"""Throughput, CPU and memory of GCSObjectStream against the other ways to stream into GCS.

Run from the repository root::

    .venv/bin/python benchmarks/bench_writer.py [--mib 256] [--repeat 3] \
        [--write-sizes 4096,65536] [--baseline-src DIR] [--start-src DIR]

``--baseline-src DIR`` adds the writer ``baseline``: GCSObjectStream imported from another
checkout (``git archive main | tar -x -C DIR``), so before and after share one run, one
server and one machine. ``--start-src DIR`` adds a second such writer, ``start`` (say, the
session's starting point next to an older baseline), with its own ``x start`` column.

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

CPU is the writer's own: ``time.process_time()`` of the child process (user + sys of all its
threads) from opening the writer to the end of ``close()``; the server runs in another
process and is not counted. CPU s/GiB is that CPU time per 2**30 bytes written.

The streaming writers get the same random bytes (``os.urandom``, generated once per
process) as ``bytes`` slices of ``--write-size`` bytes; the clock runs from opening the
writer to the end of ``close()``. MB/s is 10**6 bytes per second.

Each writer runs in a fresh subprocess (``--one WRITER``) so that no other writer's
allocations pollute its memory figure. The child takes its baseline RSS after generating
the data and creating the client, samples RSS every 10 ms while it writes, and reports the
peak growth over the baseline; ``ru_maxrss`` (reset through ``/proc/self/clear_refs`` at
the baseline) minus the baseline is the cross-check. After the clock stops, the child reads
the object's size and CRC32C back and fails loudly on a mismatch. Writers alternate within
each repeat, each run on a server wiped beforehand (``GET /wipe?keep-buckets=1``: the
emulator's memory grows with what it holds and would skew later runs); the table shows the
median MB/s and CPU s/GiB and the largest RSS growth over the repeats, per write size.
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
WRITERS = ("ours", "baseline", "start", "blobwriter", "smart_open", "ceiling", "ceiling_chunk")
DEFAULT_WRITERS = ("ours", "baseline", "start", "blobwriter")
# The writers that are GCSObjectStream from some checkout, and the option naming it.
SOURCES = {"ours": None, "baseline": "baseline_src", "start": "start_src"}
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
    if kind in SOURCES:  # baseline, start: the same import from another checkout
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
    # Imports before the clock: a first import costs ~0.1 s of CPU, which is no writer's
    # cost per byte (BlobWriter's module is already loaded by make_client).
    if args.one in SOURCES:
        import gcs_log_sink  # noqa: F401
    elif args.one == "smart_open":
        import smart_open  # noqa: F401
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
            cpu_started = time.process_time()
            if args.one.startswith("ceiling"):
                blob_chunk = chunk if args.one == "ceiling_chunk" else None
                client.bucket(BUCKET).blob(name, chunk_size=blob_chunk).upload_from_file(source)
            else:
                stream_into(open_writer(args.one, client, name, chunk), data, args.write_size)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
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
        "cpu_s_per_gib": cpu / (len(data) / 2**30),
        "module": __import__("gcs_log_sink").__file__ if args.one in SOURCES else "",
        "peak_growth_mib": (sampler.peak - baseline) / MIB,
        "ru_maxrss_growth_mib": (ru_maxrss - baseline) / MIB,
    }


def run_child(args: argparse.Namespace, writer: str, url: str, write_size: int) -> dict[str, Any]:
    """Run ``--one writer`` in a fresh interpreter; its JSON line, or exit loudly."""
    options = {
        "--one": writer,
        "--url": url,
        "--mib": args.mib,
        "--write-size": write_size,
        "--chunk-mib": args.chunk_mib,
    }
    command = [sys.executable, str(Path(__file__).resolve())]
    command += [str(item) for pair in options.items() for item in pair]
    env = dict(os.environ)
    source = SOURCES.get(writer)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(getattr(args, source)).resolve()), env.get("PYTHONPATH")) if p
        )
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {writer} run failed (exit status {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def report(
    args: argparse.Namespace, write_size: int, runs: dict[str, list[dict[str, Any]]]
) -> bool:
    """Print one write size's table and targets; True when every target evaluated passes."""
    speed = {w: statistics.median(r["mb_per_s"] for r in rs) for w, rs in runs.items()}
    cpu = {w: statistics.median(r["cpu_s_per_gib"] for r in rs) for w, rs in runs.items()}
    growth = {w: max(r["peak_growth_mib"] for r in rs) for w, rs in runs.items()}
    hwm = {w: max(r["ru_maxrss_growth_mib"] for r in rs) for w, rs in runs.items()}
    print(
        f"\n{args.mib} MiB in {write_size}-byte writes, chunk {args.chunk_mib} MiB, "
        f"{args.repeat} repeat(s); MB/s = 10**6 B/s and CPU s/GiB (writer process only), "
        "medians; RSS growth = max over repeats"
    )
    header = (
        f"{'writer':<14}{'MB/s':>8}{'x BlobW':>9}{'CPU s/GiB':>11}{'x BlobW':>9}"
        f"{'x baseline':>11}{'x start':>9}{'peak RSS +MiB':>15}{'ru_maxrss +MiB':>16}"
    )
    print(header + "\n" + "-" * len(header))
    for writer in runs:
        print(
            f"{writer:<14}{speed[writer]:>8.1f}{ratio(speed[writer], speed.get('blobwriter')):>9}"
            f"{cpu[writer]:>11.3f}{ratio(cpu[writer], cpu.get('blobwriter')):>9}"
            f"{ratio(cpu[writer], cpu.get('baseline')):>11}"
            f"{ratio(cpu[writer], cpu.get('start')):>9}"
            f"{growth[writer]:>15.1f}{hwm[writer]:>16.1f}"
        )
    if "ours" not in runs:
        return True
    cpu_limit = 0.6 if write_size <= 4096 else 0.8
    rss_limit = args.chunk_mib + write_size / MIB + 4  # one chunk + the largest write + noise
    blob_speed, blob_cpu = speed.get("blobwriter"), cpu.get("blobwriter")
    targets: dict[str, bool | None] = {
        f"ours CPU/GiB <= {cpu_limit}x BlobWriter": (
            None if blob_cpu is None else cpu["ours"] <= cpu_limit * blob_cpu
        ),
        "ours MB/s >= 1.1x BlobWriter": (
            None if blob_speed is None else speed["ours"] >= 1.1 * blob_speed
        ),
        f"ours peak RSS growth <= {rss_limit:.1f} MiB (chunk + write + 4)": (
            growth["ours"] <= rss_limit
        ),
    }
    print("targets:")
    for label, passed in targets.items():
        print(f"  {'SKIP' if passed is None else 'PASS' if passed else 'FAIL'}  {label}")
    return all(passed is not False for passed in targets.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="MiB to upload per run")
    parser.add_argument(
        "--write-sizes", default="4096,65536", help="comma-separated bytes per write()"
    )
    parser.add_argument("--write-size", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-mib", type=int, default=8, help="chunk size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per writer")
    parser.add_argument(
        "--writers", default=",".join(DEFAULT_WRITERS), help=f"comma-separated, of {WRITERS}"
    )
    parser.add_argument(
        "--baseline-src", help="a checkout whose gcs_log_sink the 'baseline' writer imports"
    )
    parser.add_argument(
        "--start-src", help="another checkout, imported by the 'start' writer (session start)"
    )
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
    for writer, source in SOURCES.items():
        if source is not None and writer in writers and not getattr(args, source):
            writers.remove(writer)
    sizes = [int(size) for size in args.write_sizes.split(",") if size.strip()]
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {s: {w: [] for w in writers} for s in sizes}
    with LocalGCS() as gcs:
        make_client(gcs.url).create_bucket(BUCKET)
        for round_number in range(1, args.repeat + 1):
            for size in sizes:
                for writer in writers:
                    gcs.wipe()  # every run on an empty server
                    result = run_child(args, writer, gcs.url, size)
                    runs[size][writer].append(result)
                    print(
                        f"[{round_number}/{args.repeat}] {size:>6} B {writer:<13} "
                        f"{result['mb_per_s']:7.1f} MB/s {result['cpu_s_per_gib']:6.3f} "
                        f"CPU s/GiB, peak RSS +{result['peak_growth_mib']:.1f} MiB "
                        f"{result['module']}",
                        flush=True,
                    )
    passed = [report(args, size, runs[size]) for size in sizes]
    return 1 if args.check and not all(passed) else 0


if __name__ == "__main__":
    sys.exit(main())
