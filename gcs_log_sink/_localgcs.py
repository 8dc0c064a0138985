"""A local GCS-compatible server on 127.0.0.1, for the demo, the tests and the benchmarks.

It runs gcp-storage-emulator (the ``local`` extra) in a subprocess, after patching the places
where that emulator (pinned: 2026.7.19) departs from GCS in ways that would hide bugs in a
resumable-upload client. Each patch restores what GCS does:

1. A status query on a session that holds 0 bytes answers 308 *without* ``Range`` (the
   emulator says ``bytes=0-0``: a client trusting it would resume at byte 1).
2. A non-final chunk whose length is not a multiple of 256 KiB is refused with 400 (the
   emulator accepts it, so a client could pass here and fail on GCS).
3. A status query (or any PUT) on a session that already finalized answers 200 with the
   object's metadata (the emulator answers 404, which makes a lost finalize answer look like
   a lost session).
4. ``DELETE`` on a session URL cancels it: 499, and the session is gone (the emulator answers
   501 and keeps it).
5. ``ifGenerationMatch=0`` on a resumable initiate, or on a compose, is refused with 412
   when the object exists (the emulator ignores preconditions). A composite object has a
   CRC32C and no MD5, as on GCS.
6. A download of a composite object names no MD5 in ``X-Goog-Hash`` (the emulator sends
   ``md5=None`` as text, which google-cloud-storage 2.x checks and calls corruption).

Other patches are about cost, not behaviour: in memory, the emulator copies everything a
session received on every chunk (``file_content += content``), so a 256 MiB upload in 8 MiB
chunks costs it 4 GiB of copying and benchmarks would measure the server, not the client.
With ``in_memory``, sessions append into a growing buffer instead, linear as on GCS. The
filesystem backend keeps the original, which survives a server restart. Compose joins its
sources once instead of concatenating them one by one.

The server is single-threaded: a stalled connection blocks every other client, so faults
are injected by a proxy in front of it, never by holding a request open against it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus
from types import TracebackType
from typing import Any

__all__ = ["LocalGCS", "anonymous_client", "emulator_env", "free_port"]

_UPLOAD_UNIT = 256 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def anonymous_client(endpoint: str) -> Any:
    """A ``google.cloud.storage.Client`` with anonymous credentials, talking to ``endpoint``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )


def emulator_env(endpoint: str) -> dict[str, str]:
    """This process's environment, with google-cloud-storage pointed at ``endpoint``."""
    return {**os.environ, "STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "test"}


class LocalGCS:
    """Start and stop the patched emulator as a subprocess; ``url`` is its endpoint.

    Use ``with LocalGCS() as gcs:``, then point clients at it with
    ``STORAGE_EMULATOR_HOST=gcs.url`` (or :meth:`client`).
    """

    def __init__(self, *, port: int | None = None, data_dir: str | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> LocalGCS:
        args = [sys.executable, "-m", "gcs_log_sink._localgcs", "--port", str(self.port)]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        # Our own module, as an argv list: no shell, no untrusted input.
        self._process = subprocess.Popen(  # noqa: S603
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the local GCS server exited with {self._process.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/", timeout=1) as answer,  # noqa: S310
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the local GCS server did not answer on {self.url} in {timeout} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wipe(self, *, keep_buckets: bool = True) -> None:
        """Delete every object (and, unless ``keep_buckets``, every bucket)."""
        suffix = "?keep-buckets=1" if keep_buckets else ""
        with urllib.request.urlopen(self.url + "/wipe" + suffix, timeout=10):  # noqa: S310
            pass

    def client(self) -> Any:
        """A ``google.cloud.storage.Client`` with anonymous credentials, pointed here."""
        return anonymous_client(self.url)

    def __enter__(self) -> LocalGCS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Status:
    """An ``HTTPStatus`` look-alike for codes the stdlib does not name (499)."""

    def __init__(self, value: int, phrase: str) -> None:
        self.value = value
        self.phrase = phrase


def _patch_linear_appends() -> None:  # pragma: no cover - runs in the server subprocess
    from gcp_storage_emulator.exceptions import BadRequest
    from gcp_storage_emulator.storage import Storage

    received: dict[str, bytearray] = {}

    def byte_count(self: Any, file_id: str) -> int:
        return len(received.get(file_id, b""))

    def add(
        self: Any,
        file_id: str,
        content: bytes,
        total_size: int | None = None,
        expected_start: int | None = None,
    ) -> bytes | None:
        buffer = received.setdefault(file_id, bytearray())
        if expected_start is not None and expected_start != len(buffer):
            raise BadRequest(
                f"Invalid Content-Range start: expected {len(buffer)}, got {expected_start}"
            )
        buffer += content or b""
        if total_size is None or len(buffer) < total_size:
            return None
        del received[file_id]
        with memoryview(buffer) as view:  # one copy of a finished upload, not two
            return bytes(view[:total_size])

    original_delete = Storage.delete_resumable_file_obj

    def delete(self: Any, file_id: str) -> None:
        received.pop(file_id, None)
        original_delete(self, file_id)

    Storage.get_resumable_byte_count = byte_count
    Storage.add_to_resumable_upload = add
    Storage.delete_resumable_file_obj = delete


def _patch_emulator() -> None:  # pragma: no cover - runs in the server subprocess
    from gcp_storage_emulator.exceptions import BadRequest, NotFound
    from gcp_storage_emulator.handlers import objects

    finalized: dict[str, dict[str, Any]] = {}
    original_finalize = objects._finalize_resumable_object
    original_chunk = objects._handle_resumable_chunk
    original_upload_partial = objects.upload_partial
    original_insert = objects.insert

    def resumable_incomplete(
        response: Any, storage: Any, upload_id: str, fallback_end: int = 0
    ) -> None:
        response.status = objects.GoogleHTTPStatus.RESUME_INCOMPLETE
        received = storage.get_resumable_byte_count(upload_id)
        if received > 0:  # patch 1: no Range while nothing is held
            response["Range"] = f"bytes=0-{received - 1}"

    def finalize(response: Any, storage: Any, obj: Any, data: bytes, upload_id: str) -> None:
        original_finalize(response, storage, obj, data, upload_id)
        finalized[upload_id] = obj

    def handle_chunk(response: Any, storage: Any, upload_id: str, chunk: bytes, parsed: Any) -> Any:
        if parsed["total"] is None and len(chunk) % _UPLOAD_UNIT:  # patch 2
            raise BadRequest(
                f"non-final chunk of {len(chunk)} bytes is not a multiple of {_UPLOAD_UNIT}"
            )
        return original_chunk(response, storage, upload_id, chunk, parsed)

    def upload_partial(request: Any, response: Any, storage: Any, *args: Any, **kw: Any) -> Any:
        upload_id = request.query.get("upload_id", [""])[0]
        if upload_id in finalized:  # patch 3
            response.json(finalized[upload_id])
            return None
        return original_upload_partial(request, response, storage, *args, **kw)

    def cancel(request: Any, response: Any, storage: Any, *args: Any, **kw: Any) -> None:
        upload_id = request.query.get("upload_id", [""])[0]
        try:  # patch 4
            storage.delete_resumable_file_obj(upload_id)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        with contextlib.suppress(Exception):
            storage._delete_file("_resumable", storage.safe_id(upload_id))
        response.status = _Status(499, "Client Closed Request")

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kw: Any) -> Any:
        query = request.query
        if query.get("uploadType") == ["resumable"] and query.get("ifGenerationMatch") == ["0"]:
            name = (query.get("name") or [None])[0] or (request.data or {}).get("name")
            try:  # patch 5
                storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                pass
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
        return original_insert(request, response, storage, *args, **kw)

    def compose(request: Any, response: Any, storage: Any, *args: Any, **kw: Any) -> None:
        bucket, name = request.params["bucket_name"], request.params["object_id"]
        query = request.query
        try:
            sources = [src["name"] for src in request.data["sourceObjects"]]
            first = storage.get_file_obj(bucket, sources[0])
            data = b"".join(storage.get_file(bucket, source) for source in sources)
            if query.get("ifGenerationMatch") == ["0"]:
                try:
                    storage.get_file_obj(bucket, name)
                except NotFound:
                    pass
                else:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                    return
            resource = objects._make_object_resource(
                request.base_url,
                bucket,
                name,
                first["contentType"],
                str(len(data)),
                request.data.get("destination"),
            )
            resource["crc32c"] = objects._crc32c(data)
            resource["etag"] = resource["crc32c"]
            resource["componentCount"] = len(sources)
            storage.create_file(bucket, name, data, resource)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        response.json(resource)

    original_download = objects.download

    def download(request: Any, response: Any, storage: Any, *args: Any, **kw: Any) -> Any:
        result = original_download(request, response, storage, *args, **kw)
        digest = response._headers.get("X-Goog-Hash", "")
        if digest.endswith(",md5=None"):  # patch 6: a composite has no MD5, so GCS names none
            response["X-Goog-Hash"] = digest.removesuffix(",md5=None")
        return result

    objects.download = download
    objects.compose = compose
    objects._resumable_incomplete = resumable_incomplete
    objects._finalize_resumable_object = finalize
    objects._handle_resumable_chunk = handle_chunk
    objects.upload_partial = upload_partial
    objects.insert = insert

    # server.py captures handler functions in HANDLERS when imported: import it only now.
    from gcp_storage_emulator import server

    patched = []
    for regex, handlers in server.HANDLERS:
        if handlers.get("PUT") is original_upload_partial:
            handlers = {**handlers, "PUT": upload_partial, "DELETE": cancel}
        if handlers.get("GET") is original_download:
            handlers = {**handlers, "GET": download}
        patched.append((regex, handlers))
    server.HANDLERS = tuple(patched)


def _main(argv: list[str] | None = None) -> None:  # pragma: no cover - subprocess
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    _patch_emulator()
    if not args.data_dir:
        _patch_linear_appends()
    from gcp_storage_emulator.__main__ import main as emulator_main

    emulator_args = []
    if args.data_dir:
        emulator_args += ["-d", os.path.abspath(args.data_dir)]
    emulator_args += ["start", "--host", "127.0.0.1", "--port", str(args.port), "-q"]
    if not args.data_dir:
        emulator_args.append("--in-memory")
    emulator_main(emulator_args)


if __name__ == "__main__":  # pragma: no cover
    _main()
