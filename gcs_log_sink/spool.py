"""The on-disk spool: what a handler wrote, kept until GCS has finalized it.

Layout: ``SPOOL_DIR/<stream>/`` holds a ``lock`` file (``flock``: one live process per
directory) and, per object, a segment: ``<id>.seg``, the object's bytes in checksummed
frames, appended in order, and ``<id>.json``, its upload state (bucket, name, the resumable
session URL once opened, whether it is sealed). Files are 0600, directories 0700: the
session URL is a bearer capability.

Frames (``MAGIC``, payload length, CRC32C of the payload, record count, payload) let a
reader tell a torn tail (a crash mid-append: the frame is incomplete) from corruption (a bad
magic or checksum): recovery ships every intact frame before the damage and reports the rest.

Nothing here talks to GCS; :mod:`.handler` spools and uploads, :func:`recover_all` is the
``gcs-log-sink recover`` path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import google_crc32c

from .errors import ConfigurationError, GCSLogSinkError
from .naming import safe_field

__all__ = ["Frame", "Segment", "Spool", "SpoolCorruptError", "SpoolLockedError", "dead_spools"]

MAGIC = b"GL"
_HEADER = struct.Struct(">2sIII")  # magic, payload length, payload CRC32C, records
_MAX_FRAME = 1 << 30


class SpoolLockedError(ConfigurationError):
    """Another live process writes to this spool directory."""


class SpoolCorruptError(GCSLogSinkError):
    """A segment holds a damaged frame (bad magic or checksum) at ``position``."""

    def __init__(self, path: str, position: int, why: str) -> None:
        self.path = path
        self.position = position
        super().__init__(f"spool segment {path} is damaged at byte {position}: {why}")


@dataclass(frozen=True)
class Frame:
    payload: bytes
    records: int
    end: int  # file position after this frame


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only."""
    # Unique per thread: the writer (sealing) and the uploader (saving the URL) may both save.
    tmp = f"{path}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Segment:
    """One object's spooled bytes and upload state."""

    def __init__(self, directory: str, segment_id: int, state: dict[str, Any]) -> None:
        self.directory = directory
        self.id = segment_id
        self.state = state
        self.data_path = os.path.join(directory, f"{segment_id:010d}.seg")
        self.state_path = os.path.join(directory, f"{segment_id:010d}.json")
        self._fd: int | None = None
        self._save_lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return str(self.state["bucket"])

    @property
    def name(self) -> str:
        return str(self.state["name"])

    @property
    def session_url(self) -> str | None:
        url = self.state.get("session_url")
        return str(url) if url else None

    @property
    def sealed(self) -> bool:
        return bool(self.state.get("sealed"))

    def save(self) -> None:
        with self._save_lock:
            _write_private(self.state_path, json.dumps(self.state).encode())

    def write(self, payload: bytes, records: int) -> None:
        """Append one frame (page cache; :meth:`sync` makes it durable)."""
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        header = _HEADER.pack(MAGIC, len(payload), google_crc32c.value(payload), records)
        os.write(self._fd, header + payload)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def seal(self) -> None:
        """No more frames: the uploader may finalize once it has sent them all."""
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.state["sealed"] = True
        self.save()

    def size(self) -> int:
        try:
            return os.path.getsize(self.data_path)
        except FileNotFoundError:
            return 0

    def frames(self, position: int = 0) -> Iterator[Frame]:
        """Complete frames from ``position``; stops at a torn tail, raises on damage."""
        try:
            handle = open(self.data_path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with handle:
            handle.seek(position)
            while True:
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                magic, length, crc, records = _HEADER.unpack(header)
                if magic != MAGIC or length > _MAX_FRAME:
                    raise SpoolCorruptError(self.data_path, position, "bad frame header")
                payload = handle.read(length)
                if len(payload) < length:
                    return
                if google_crc32c.value(payload) != crc:
                    raise SpoolCorruptError(self.data_path, position, "checksum mismatch")
                position += _HEADER.size + length
                yield Frame(payload, records, position)

    def prefix_crc(self, size: int) -> int:
        """CRC32C of the first ``size`` object bytes (for resuming a session at ``size``)."""
        crc, left = 0, size
        for frame in self.frames():
            if left <= 0:
                break
            piece = frame.payload[:left]
            crc = google_crc32c.extend(crc, piece)
            left -= len(piece)
        if left > 0:
            raise SpoolCorruptError(self.data_path, 0, f"GCS holds {size} bytes, the spool less")
        return crc

    def remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # The state goes first: a crash between the two leaves an orphan data file, which
        # _segments() deletes, never a state without its data (a finished object's ghost).
        for path in (self.state_path, self.data_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


class Spool:
    """One stream's spool directory, locked for this process while open."""

    def __init__(self, root: str, stream: str) -> None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ConfigurationError("spool_dir must be a directory path")
        self.directory = os.path.join(os.fspath(root), safe_field(stream))
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(os.fspath(root), 0o700)
        os.chmod(self.directory, 0o700)
        self._lock_fd: int | None = _lock(self.directory)
        if self._lock_fd is None:
            raise SpoolLockedError(
                f"spool directory {self.directory} is in use by another live process; give "
                "each process its own spool_dir or stream name"
            )
        self._next_id = max((segment.id for segment in self.segments()), default=0) + 1

    def segments(self) -> list[Segment]:
        """The segments on disk, oldest first."""
        return _segments(self.directory)

    def create(self, bucket: str, name: str) -> Segment:
        segment = Segment(
            self.directory, self._next_id, {"bucket": bucket, "name": name, "sealed": False}
        )
        self._next_id += 1
        segment.save()
        return segment

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(directory: str) -> int | None:
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _segments(directory: str) -> list[Segment]:
    """The segments in a directory this process has locked (stale temp files removed)."""
    found = []
    entries = sorted(os.listdir(directory))
    for entry in entries:
        if entry.endswith(".seg") and f"{entry[:-4]}.json" not in entries:
            # Data whose state was removed: its object was finalized and verified.
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))
            continue
        if entry.endswith(".tmp"):  # a state write cut short by a crash; the old one stands
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))
            continue
        if not entry.endswith(".json") or not entry[:-5].isdigit():
            continue
        path = os.path.join(directory, entry)
        try:
            with open(path, "rb") as handle:
                state = json.loads(handle.read())
        except (OSError, ValueError):
            continue  # a torn state file: its session was never used (written before data)
        found.append(Segment(directory, int(entry[:-5]), state))
    return found


@contextlib.contextmanager
def dead_spools(root: str) -> Iterator[list[tuple[str, list[Segment]]]]:
    """Every spool directory under ``root`` that no live process holds, locked for the caller.

    Yields (directory, segments) pairs; the locks are released on exit.
    """
    held: list[int] = []
    found: list[tuple[str, list[Segment]]] = []
    try:
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                directory = os.path.join(root, entry)
                if not os.path.isdir(directory):
                    continue
                fd = _lock(directory)
                if fd is None:
                    continue
                held.append(fd)
                found.append((directory, _segments(directory)))
        yield found
    finally:
        for fd in held:
            os.close(fd)
