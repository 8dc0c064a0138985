"""Stream a large PUT body into GCS from FastAPI, with bounded memory.

The endpoint never holds the body: each piece from ``request.stream()`` goes into an
AsyncGCSObjectStream, whose ``write`` awaits GCS whenever a chunk is full. So memory stays
near one chunk whether the body is 5 MiB or 50 GiB, and the event loop keeps serving others.

A client that disconnects mid-body gets its upload cancelled (``abort``), so a truncated
body never becomes an object. Run it as written: it starts a local GCS-compatible server,
serves the app with uvicorn, PUTs 50 MiB to it and prints what arrived.

    pip install 'gcs-log-sink[local]' fastapi uvicorn httpx
    python examples/fastapi_upload.py
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.requests import ClientDisconnect

from gcs_log_sink import AsyncGCSObjectStream, ConfigurationError, UploadError


def create_app(bucket: str, client: Any = None, chunk_size: int = 8 * 1024 * 1024) -> FastAPI:
    """An app whose ``PUT /objects/{name}`` streams the body into ``gs://bucket/name``."""
    app = FastAPI()

    @app.put("/objects/{name:path}")
    async def upload(name: str, request: Request) -> dict[str, Any]:
        try:
            out = AsyncGCSObjectStream(
                bucket,
                name,
                client=client,
                chunk_size=chunk_size,
                content_type=request.headers.get("content-type", "application/octet-stream"),
            )
        except ConfigurationError as exc:  # a bad object name in the URL
            raise HTTPException(status_code=400, detail=str(exc)) from None
        try:
            await out.open()
            async for piece in request.stream():
                await out.write(piece)
            await out.close()
        except ClientDisconnect:
            await out.abort()
            raise
        except UploadError as exc:
            await out.abort()
            status = 409 if "exists" in str(exc) else 502
            raise HTTPException(status_code=status, detail=str(exc)) from None
        return {"name": name, "size": out.size, "crc32c": out.crc32c, "generation": out.generation}

    return app


def main() -> None:
    import httpx
    import uvicorn

    from gcs_log_sink.testing import LocalGCS, free_port

    with LocalGCS() as gcs:
        client = gcs.client()
        client.create_bucket("uploads")
        app = create_app("uploads", client=client)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)

        body_size = 50 * 1024 * 1024
        piece = os.urandom(64 * 1024)

        def body() -> Any:
            for _ in range(body_size // len(piece)):
                yield piece

        started = time.monotonic()
        answer = httpx.put(
            f"http://127.0.0.1:{port}/objects/demo/body.bin", content=body(), timeout=120
        )
        elapsed = time.monotonic() - started
        answer.raise_for_status()
        print(answer.json())
        print(f"{body_size / elapsed / 1e6:.0f} MB/s through FastAPI into GCS")
        server.should_exit = True
        thread.join()


if __name__ == "__main__":
    main()
