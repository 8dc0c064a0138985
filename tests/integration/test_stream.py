"""GCSObjectStream against the local GCS server: every test reads the object back."""

from __future__ import annotations

import io
import os
import random
import shutil
import time
from typing import Any

import pytest
from helpers import client_for, crc32c_b64, random_writes, read_object

from gcs_log_sink import (
    BucketNotFoundError,
    ConfigurationError,
    GCSObjectStream,
    PreconditionFailedError,
    UploadError,
)
from gcs_log_sink._localgcs import LocalGCS

UNIT = 256 * 1024
CHUNK = 4 * UNIT


@pytest.mark.parametrize(
    "size",
    [0, 1, UNIT - 1, UNIT, UNIT + 1, CHUNK, 2 * CHUNK, 3 * CHUNK - 1, 3 * CHUNK + 1],
)
def test_sizes_round_trip(client: Any, bucket: str, size: int) -> None:
    """Objects of edge-case sizes arrive byte for byte, with size and CRC32C reported."""
    data = random.Random(size).randbytes(size)
    with GCSObjectStream(bucket, "obj", client=client, chunk_size=CHUNK) as out:
        out.write(data)
    assert data == read_object(client, bucket, "obj")
    assert size == out.size
    assert crc32c_b64(data) == out.crc32c
    assert out.generation is not None
    assert out.generation > 0


def test_50_mib_in_random_writes(client: Any, bucket: str) -> None:
    """50 MiB in writes of random size arrive byte for byte; memory stays near a chunk."""
    rng = random.Random(50)
    data = rng.randbytes(50 * 1024 * 1024)
    biggest_buffer = 0
    with GCSObjectStream(bucket, "big.log", client=client, chunk_size=CHUNK) as out:
        for piece in random_writes(data, rng, 200_000):
            out.write(piece)
            biggest_buffer = max(biggest_buffer, out.buffered)
    assert data == read_object(client, bucket, "big.log")
    assert biggest_buffer < CHUNK + 200_000
    assert crc32c_b64(data) == out.crc32c


def test_flush_sends_whole_units_only(client: Any, bucket: str) -> None:
    """flush() sends every whole 256 KiB unit and keeps only the unaligned tail."""
    data = os.urandom(UNIT * 2 + 100)
    with GCSObjectStream(bucket, "flushed", client=client, chunk_size=CHUNK) as out:
        out.write(data)
        assert len(data) == out.buffered
        out.flush()
        assert 100 == out.buffered
    assert data == read_object(client, bucket, "flushed")


def test_text_wrapper_print_and_copyfileobj(client: Any, bucket: str) -> None:
    """It works where a file does: print() through TextIOWrapper, shutil.copyfileobj."""
    with (
        GCSObjectStream(bucket, "printed.log", client=client) as raw,
        io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as text,
    ):
        for i in range(1000):
            print(f"line {i} ünïcode", file=text)
    expected = "".join(f"line {i} ünïcode\n" for i in range(1000)).encode()
    assert expected == read_object(client, bucket, "printed.log")

    source = os.urandom(3 * UNIT + 7)
    with GCSObjectStream(bucket, "copied", client=client, chunk_size=UNIT) as out:
        shutil.copyfileobj(io.BytesIO(source), out, length=10_000)
    assert source == read_object(client, bucket, "copied")


def test_exception_in_with_block_still_finalizes(client: Any, bucket: str) -> None:
    """A with block that raises finalizes what was written: logs must not vanish."""

    def crash_while_writing() -> None:
        with GCSObjectStream(bucket, "partial.log", client=client) as out:
            out.write(b"written before the crash\n")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash_while_writing()
    assert b"written before the crash\n" == read_object(client, bucket, "partial.log")


def test_abort_creates_nothing(client: Any, bucket: str) -> None:
    """abort() cancels the session: no object appears, and close() after it is a no-op."""
    out = GCSObjectStream(bucket, "aborted", client=client, chunk_size=UNIT)
    out.write(os.urandom(UNIT + 5))
    out.abort()
    out.close()
    assert out.closed
    assert not client.bucket(bucket).blob("aborted").exists()


def test_close_twice_and_write_after_close(client: Any, bucket: str) -> None:
    """A second close() does nothing; writing after close is a clear ValueError."""
    out = GCSObjectStream(bucket, "twice", client=client)
    out.write(b"abc")
    out.close()
    out.close()
    with pytest.raises(ValueError, match="closed"):
        out.write(b"more")
    assert b"abc" == read_object(client, bucket, "twice")


def test_default_client_honours_storage_emulator_host(
    gcs: LocalGCS, client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client=None builds google.cloud.storage.Client(), which honours STORAGE_EMULATOR_HOST."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    with GCSObjectStream(bucket, "default-client", chunk_size=UNIT) as out:
        out.write(b"hello")
    assert b"hello" == read_object(client, bucket, "default-client")


def test_metadata_and_content_type(client: Any, bucket: str) -> None:
    """content_type and metadata reach the object."""
    with GCSObjectStream(
        bucket, "meta.log", client=client, content_type="text/plain", metadata={"build": "42"}
    ) as out:
        out.write(b"x")
    blob = client.bucket(bucket).get_blob("meta.log")
    assert "text/plain" == blob.content_type
    assert {"build": "42"} == blob.metadata
    assert b"x" == read_object(client, bucket, "meta.log")


def test_existing_object_is_not_overwritten(client: Any, bucket: str) -> None:
    """if_generation_match=0 (the default) refuses to replace an existing object."""
    with GCSObjectStream(bucket, "once", client=client) as out:
        out.write(b"first")
    with pytest.raises(PreconditionFailedError, match=f"gs://{bucket}/once"):
        GCSObjectStream(bucket, "once", client=client)
    assert b"first" == read_object(client, bucket, "once")


def test_missing_bucket_is_a_clear_error(client: Any) -> None:
    """A bucket that does not exist is named in a BucketNotFoundError at construction."""
    with pytest.raises(BucketNotFoundError, match=r"gs://no-such-bucket-here/x.*404"):
        GCSObjectStream("no-such-bucket-here", "x", client=client)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": "Bad_Bucket"}, "lowercase"),
        ({"bucket": "gs://logs"}, "gs://"),
        ({"bucket": "ab"}, "3 to 63"),
        ({"name": ""}, "empty"),
        ({"name": "a\nb"}, "control character"),
        ({"name": "../up"}, r"'\.\.'"),
        ({"name": "x" * 1025}, "1024"),
        ({"chunk_size": 1000}, "multiple of 256 KiB"),
        ({"chunk_size": 0}, "multiple of 256 KiB"),
        ({"timeout": 0}, "timeout"),
        ({"metadata": {"a": 1}}, "metadata"),
    ],
)
def test_bad_arguments_fail_at_the_call(
    gcs: LocalGCS, kwargs: dict[str, Any], message: str
) -> None:
    """Bad bucket, name or options raise ConfigurationError (a ValueError) before any I/O."""
    args: dict[str, Any] = {"bucket": "fine-bucket", "name": "fine"} | kwargs

    class NoNetworkClient:
        api_endpoint = "http://127.0.0.1:9"  # nothing listens; must never be used

        @property
        def _http(self) -> Any:
            raise AssertionError("a request was attempted")

    with pytest.raises(ConfigurationError, match=message) as caught:
        GCSObjectStream(args.pop("bucket"), args.pop("name"), client=NoNetworkClient(), **args)
    assert isinstance(caught.value, ValueError)


def test_writing_str_is_a_type_error(client: Any, bucket: str) -> None:
    """Writing str is a TypeError that says what to do; the stream stays usable."""
    with GCSObjectStream(bucket, "typed", client=client) as out:
        with pytest.raises(TypeError, match="TextIOWrapper"):
            out.write("text")  # type: ignore[arg-type]
        out.write(b"bytes")
    assert b"bytes" == read_object(client, bucket, "typed")


def test_urllib3_debug_lines_never_show_the_session_id(client: Any, bucket: str) -> None:
    """With urllib3 at DEBUG, its request lines show upload_id=<redacted>, never the id."""
    import logging

    lines: list[str] = []
    capture = logging.Handler(logging.DEBUG)
    capture.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    urllib3_logger = logging.getLogger("urllib3.connectionpool")
    old_level = urllib3_logger.level
    urllib3_logger.addHandler(capture)
    urllib3_logger.setLevel(logging.DEBUG)
    try:
        with GCSObjectStream(bucket, "quiet", client=client, chunk_size=UNIT) as out:
            out.write(os.urandom(UNIT + 1))
            session_id = out._session_url.split("upload_id=")[1]
    finally:
        urllib3_logger.removeHandler(capture)
        urllib3_logger.setLevel(old_level)
    assert any("upload_id=<redacted>" in line for line in lines), lines
    assert not any(session_id in line for line in lines)
    assert b"" != read_object(client, bucket, "quiet")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("localhost:9023", "must start with http:// or https://"),
        ("127.0.0.1:9023", "must start with http:// or https://"),
        ("http://127.0.0.1:0", "port 0"),
        ("http://127.0.0.1:99999", "invalid port"),
        ("http://", "names no host"),
        ("http://127.0.0.1:9023/?x=1", "plain base URL"),
    ],
)
def test_a_bad_emulator_host_fails_at_once_in_default_client(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, message: str
) -> None:
    """STORAGE_EMULATOR_HOST that can never answer: one ConfigurationError, no retry loop."""
    from gcs_log_sink.stream import default_client

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=rf"STORAGE_EMULATOR_HOST.*{message}"):
        default_client()
    with pytest.raises(ConfigurationError, match=message):
        GCSObjectStream("fine-bucket", "fine", retry_deadline=60)
    assert time.monotonic() - started < 2


def test_a_client_with_a_schemeless_endpoint_fails_at_construction() -> None:
    """A client whose api_endpoint has no scheme: ConfigurationError before any request."""
    client = client_for("localhost:9023")
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        GCSObjectStream("fine-bucket", "fine", client=client, retry_deadline=60)
    assert time.monotonic() - started < 2


def test_a_bucket_gcs_refuses_fails_at_once(proxy: Any, proxied: Any) -> None:
    """A bucket name GCS refuses (400 on the session POST): an UploadError, one request only."""
    proxy.script(["400_before"])
    started = time.monotonic()
    with pytest.raises(UploadError, match=r"gs://refused-by-gcs/x.*400"):
        GCSObjectStream("refused-by-gcs", "x", client=proxied, retry_deadline=60)
    assert time.monotonic() - started < 2
    assert 1 == len(proxy.events)


def test_a_forked_child_opens_connections_of_its_own(client: Any, bucket: str) -> None:
    """The transport's session cache is dropped in a forked child: no socket shared with the
    parent, whose streams go on; both objects arrive."""
    with GCSObjectStream(bucket, "parent-1", client=client) as out:
        out.write(b"before the fork")
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if its own upload succeeded
        try:
            with GCSObjectStream(bucket, "child", client=client) as child:
                child.write(b"from the child")
        except BaseException:
            os._exit(1)
        os._exit(0)
    with GCSObjectStream(bucket, "parent-2", client=client) as out:
        out.write(b"after the fork")
    _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)
    assert b"from the child" == read_object(client, bucket, "child")
    assert b"after the fork" == read_object(client, bucket, "parent-2")
