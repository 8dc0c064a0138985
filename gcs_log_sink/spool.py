"""The on-disk spool: what a handler wrote, kept until GCS has finalized it.

Layout: ``SPOOL_DIR/<stream>/`` holds a ``lock`` file (``flock``: one live process per
directory) and, per object, a segment: ``<id>.seg``, the object's bytes in checksummed
frames, appended in order, and ``<id>.json``, its upload state (bucket, name, the resumable
session URL once opened, whether it is sealed). Files are 0600, directories 0700: the
session URL is a bearer capability.

Frames (``MAGIC``, payload length, CRC32C of the payload, record count, payload) let a
reader tell a torn tail (a crash mid-append: the frame is incomplete) from corruption (a bad
magic or checksum): recovery ships every intact frame before the damage and reports the rest.
A write that fails (disk full, file-size limit) is cut back to the last whole frame, so the
frames after it stay readable.

Who deletes what: a segment's files are deleted only by :meth:`Segment.remove` (its
shipper, once GCS holds it). Crash debris (temp files, data whose state is gone) is
deleted only when a process takes a directory's lock, that is, only files of dead writers.
Listing segments never deletes anything: another thread may be halfway through a save.

Nothing here talks to GCS; :mod:`.recovery` ships segments.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import google_crc32c

from .errors import ConfigurationError, GCSLogSinkError
from .naming import safe_field, validate_bucket_name, validate_object_name

__all__ = [
    "Frame",
    "Segment",
    "Spool",
    "SpoolCorruptError",
    "SpoolLockedError",
    "SpoolStateError",
    "dead_spools",
]

MAGIC = b"GL"
_HEADER = struct.Struct(">2sIII")  # magic, payload length, payload CRC32C, records
_MAX_FRAME = 1 << 30
_READ_AHEAD = 1 << 20  # bytes copied at once when a deleted data file is recreated


class SpoolLockedError(ConfigurationError):
    """Another live process writes to this spool directory."""


class SpoolCorruptError(GCSLogSinkError):
    """A segment holds a damaged frame (bad magic or checksum) at ``position``."""

    def __init__(self, path: str, position: int, why: str) -> None:
        self.path = path
        self.position = position
        super().__init__(f"spool segment {path} is damaged at byte {position}: {why}")


class SpoolStateError(GCSLogSinkError):
    """A segment's state file is not what this library writes: it is not used."""


@dataclass(frozen=True)
class Frame:
    payload: bytes
    records: int
    end: int  # file position after this frame


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be short near a limit)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - POSIX raises instead
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only."""
    # Unique per process and thread: the writer (sealing) and the uploader (saving the
    # session URL) may both save; a crash leaves at most this one temp file behind.
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_directory(os.path.dirname(path))  # the rename itself survives a power loss
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # our own temp file: no one else's debris
        raise


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validate_state(state: Any) -> str | None:
    """Why ``state`` (a parsed state file) cannot be used, or None if it can.

    A state file is input from disk: anyone who could write the directory could have put
    anything there. Its object name is held to the rules a new stream is held to.
    """
    if not isinstance(state, dict):
        return f"the state is a JSON {type(state).__name__}, not an object"
    for key, kind in (("bucket", str), ("name", str)):
        if not isinstance(state.get(key), kind):
            return f"'{key}' is missing or not a string"
    try:
        validate_bucket_name(state["bucket"])
        validate_object_name(state["name"])
    except ConfigurationError as exc:
        return str(exc)
    url = state.get("session_url")
    if url is not None and (not isinstance(url, str) or not url):
        return "'session_url' is not a string"
    if not isinstance(state.get("sealed", False), bool):
        return "'sealed' is not true or false"
    records = state.get("records", 0)
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        return "'records' is not a count"
    failed_at = state.get("failed_at", 0)
    if isinstance(failed_at, bool) or not isinstance(failed_at, int) or failed_at < 0:
        return "'failed_at' is not a position"
    if state.get("compression") not in (None, "gzip"):
        return "'compression' is neither null nor 'gzip'"
    target = state.get("compose_into")
    if target is not None:
        if not isinstance(target, str):
            return "'compose_into' is not a string"
        try:
            validate_object_name(target)
        except ConfigurationError as exc:
            return f"'compose_into': {exc}"
    return None


class _Guard:
    """One lock per segment file in this process: two shippers never ship it at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


_guards: weakref.WeakValueDictionary[str, _Guard] = weakref.WeakValueDictionary()
_guards_lock = threading.Lock()


class Segment:
    """One object's spooled bytes and upload state."""

    def __init__(
        self,
        directory: str,
        segment_id: int,
        state: dict[str, Any],
        *,
        spool: Spool | None = None,
        problem: str | None = None,
        claim: _Claim | None = None,
    ) -> None:
        self.directory = directory
        self.id = segment_id
        self.state = state
        # Why the state file cannot be used (then ``state`` is a harmless placeholder).
        self.problem = problem
        self.data_path = os.path.join(directory, f"{segment_id:010d}.seg")
        self.state_path = os.path.join(directory, f"{segment_id:010d}.json")
        self._spool = spool
        self._claim = claim
        self._fd: int | None = None
        # End of the last whole frame this process wrote; readers stop there, so they
        # never see a frame being written or one being cut back after a failed write.
        self._end: int | None = None
        self._torn = False  # a failed write could not be cut back: no more appends
        self._removed = False  # remove() ran: nothing may bring the files back
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

    @property
    def handed_over(self) -> bool:
        """Found as a dead process's leftover, but a live stream of ours now owns it."""
        return self._claim is not None and self._claim.handed_over

    def guard(self) -> _Guard:
        """The in-process lock of this segment's files (keep the returned object while held)."""
        key = os.path.realpath(self.data_path)
        with _guards_lock:
            guard = _guards.get(key)
            if guard is None:
                guard = _guards[key] = _Guard()
            return guard

    def reload(self) -> bool:
        """Read the state again from disk (another shipper may have moved it on).

        False when the segment is gone (shipped and removed meanwhile).
        """
        try:
            with open(self.state_path, "rb") as handle:
                state = json.loads(handle.read())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            self.problem = f"its state file cannot be read: {exc}"
            return True
        self.problem = validate_state(state)
        if self.problem is None:
            self.state = state
        return True

    def save(self) -> None:
        with self._save_lock:
            if self._removed:
                return  # shipped and removed (the seal raced the uploader): nothing to keep
            # A snapshot: the writer (sealing) and the uploader (naming the session) both
            # change the state; the copy is taken at once, under the GIL.
            data = json.dumps(dict(self.state)).encode()
            try:
                _write_private(self.state_path, data)
            except FileNotFoundError:
                # The directory was removed under us (a temp cleaner): make it again (another
                # thread may have just done so) and try once more.
                if self._spool is None:
                    raise
                self._spool.recreate()
                _write_private(self.state_path, data)

    def write(self, payload: bytes, records: int) -> None:
        """Append one frame (page cache; :meth:`sync` makes it durable).

        On failure (disk full, file-size limit, I/O error) the file is cut back to the last
        whole frame and the error raised: the frame is not in the segment, later ones are.
        """
        if self._torn:
            raise OSError(errno.EIO, f"spool segment {self.data_path} could not be repaired")
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            self._end = os.fstat(self._fd).st_size
            if not self._end:
                _fsync_directory(self.directory)  # the new file's name survives a power loss
        elif os.fstat(self._fd).st_nlink == 0 and not self._removed:
            self._relink()  # our data file was deleted under us: put it back
        assert self._end is not None
        header = _HEADER.pack(MAGIC, len(payload), google_crc32c.value(payload), records)
        try:
            _write_all(self._fd, header + payload)
        except OSError:
            # Remembered (saved with the next state write): a compressed stream is not
            # decodable past a frame its compressor produced but the disk refused.
            self.state.setdefault("failed_at", self._end)
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                self._torn = True
            raise
        self._end += _HEADER.size + len(payload)

    def _relink(self) -> None:
        """Recreate the data file (and the directory) from our open descriptor's bytes."""
        assert self._fd is not None
        assert self._end is not None
        if self._spool is not None:
            self._spool.recreate()
        else:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.data_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            position = 0
            while position < self._end:
                block = os.pread(self._fd, min(_READ_AHEAD, self._end - position), position)
                if not block:
                    raise OSError(errno.EIO, "the deleted data file ended early")
                _write_all(fd, block)
                position += len(block)
            os.fsync(fd)
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        if not os.path.exists(self.state_path):
            self.save()

    def sync(self) -> None:
        if self._fd is not None:
            if os.fstat(self._fd).st_nlink == 0 and not self._removed:
                self._relink()
            os.fsync(self._fd)

    def seal(self) -> None:
        """No more frames: the uploader may finalize once it has sent them all.

        Sealed in memory first: even if the disk refuses the state file, this process's
        uploader finishes the object instead of waiting for frames that never come.
        """
        self.state["sealed"] = True
        try:
            self.sync()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self.save()

    def size(self) -> int:
        try:
            return os.path.getsize(self.data_path)
        except FileNotFoundError:
            return 0

    def has_data(self) -> bool:
        return os.path.exists(self.data_path)

    def frames(self, position: int = 0) -> Iterator[Frame]:
        """Complete frames from ``position``; stops at a torn tail, raises on damage."""
        try:
            handle = open(self.data_path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        limit = self._end  # this process's writer: read only the whole frames it wrote
        with handle:
            handle.seek(position)
            while True:
                if limit is not None and position + _HEADER.size > limit:
                    return
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                magic, length, crc, records = _HEADER.unpack(header)
                if magic != MAGIC or length > _MAX_FRAME:
                    raise SpoolCorruptError(self.data_path, position, "bad frame header")
                if limit is not None and position + _HEADER.size + length > limit:
                    return
                payload = handle.read(length)
                if len(payload) < length:
                    return  # a torn tail: a crash mid-append; the frames before it are whole
                if google_crc32c.value(payload) != crc:
                    raise SpoolCorruptError(self.data_path, position, "checksum mismatch")
                position += _HEADER.size + length
                yield Frame(payload, records, position)

    def prefix_crc(self, size: int) -> int:
        """CRC32C of the first ``size`` object bytes (for resuming a session at ``size``)."""
        crc, left = 0, size
        if left > 0:
            for frame in self.frames():
                piece = frame.payload[:left]
                crc = google_crc32c.extend(crc, piece)
                left -= len(piece)
                if left <= 0:
                    break  # never read on: what follows may be damaged
        if left > 0:
            raise SpoolCorruptError(self.data_path, 0, f"GCS holds {size} bytes, the spool less")
        return crc

    def remove(self) -> None:
        """Delete the segment (its shipper, once GCS holds it verified)."""
        with self._save_lock:
            self._removed = True
            if self._fd is not None and not self.sealed:
                # The writer itself gives up (a GCSObjectStream closing or aborting). A
                # sealed segment's descriptor is the sealing writer's to close: it may be
                # in its last fsync while the uploader removes the shipped segment.
                os.close(self._fd)
                self._fd = None
            # The state goes first: a crash between the two leaves an orphan data file, which
            # the next start deletes, never a state without its data (a finished object's
            # ghost).
            for path in (self.state_path, self.data_path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


class _Claim:
    """A directory this process locked to ship a dead process's leftovers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.handed_over = False  # a live Spool of this process took the lock over


_claims: dict[str, _Claim] = {}
_claims_lock = threading.Lock()


class Spool:
    """One stream's spool directory, locked for this process while open."""

    def __init__(self, root: str, stream: str) -> None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ConfigurationError("spool_dir must be a directory path")
        self.root = os.fspath(root)
        self.directory = os.path.join(self.root, safe_field(stream))
        self._make_directory()
        self._relock_lock = threading.Lock()
        fd = _lock(self.directory)
        adopted = False
        if fd is None:
            # Held by this very process, shipping a dead one's leftovers? Then take it over:
            # the shipper finishes the segment it is on, and leaves the rest to us.
            fd = _take_over(self.directory)
            adopted = fd is not None
        if fd is None:
            raise SpoolLockedError(
                f"spool directory {self.directory} is in use by another live process; give "
                "each process its own spool_dir or stream name"
            )
        self._lock_fd: int | None = fd
        if not adopted:
            _clean_debris(self.directory)  # under our lock: every file here is a dead writer's
        self._next_id = max((segment.id for segment in self.segments()), default=0) + 1
        self._create_lock = threading.Lock()

    def _make_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chmod(self.directory, 0o700)

    def segments(self) -> list[Segment]:
        """The segments on disk, oldest first. Deletes nothing (see the module doc)."""
        return _segments(self.directory, spool=self)

    def create(
        self,
        bucket: str,
        name: str,
        *,
        compression: str | None = None,
        compose_into: str | None = None,
    ) -> Segment:
        """A new segment for ``gs://bucket/name``, its state on disk before any data.

        ``compression='gzip'`` says the data is one gzip stream written with sync flushes:
        recovery then ends an unfinished one so that it decompresses completely.
        ``compose_into``: the object is a part of a build whose parts ``recover`` composes
        into this object once every part is shipped (``gcs-log-sink run --spool-dir``).
        """
        with self._create_lock:
            while True:  # never over a file already there, whoever put it
                segment_id = self._next_id
                self._next_id += 1
                base = os.path.join(self.directory, f"{segment_id:010d}")
                if not (os.path.lexists(f"{base}.json") or os.path.lexists(f"{base}.seg")):
                    break
        state: dict[str, Any] = {"bucket": bucket, "name": name, "sealed": False}
        if compression is not None:
            state["compression"] = compression
        if compose_into is not None:
            state["compose_into"] = compose_into
        segment = Segment(self.directory, segment_id, state, spool=self)
        segment._end = 0  # written by this process: readers wait for whole frames from here
        segment.save()
        return segment

    def recreate(self) -> bool:
        """Make the directory and its lock again after someone removed them; True if done.

        False when nothing was missing. Raises OSError when another process took the new
        directory first.
        """
        with self._relock_lock:
            lock_path = os.path.join(self.directory, "lock")
            try:
                same = self._lock_fd is not None and os.path.samestat(
                    os.stat(lock_path), os.fstat(self._lock_fd)
                )
            except FileNotFoundError:
                same = False
            if same:
                return False
            self._make_directory()
            fd = _lock(self.directory)
            if fd is None:
                raise OSError(errno.EBUSY, f"spool directory {self.directory} was taken over")
            old, self._lock_fd = self._lock_fd, fd
            if old is not None:
                os.close(old)
            return True

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


def _take_over(directory: str) -> int | None:
    """The lock fd of ``directory`` if this process holds it for shipping leftovers."""
    with _claims_lock:
        claim = _claims.get(os.path.realpath(directory))
        if claim is None or claim.handed_over:
            return None
        claim.handed_over = True
        return claim.fd


def _clean_debris(directory: str) -> None:
    """Delete what dead writers left half done. Only under the directory's lock."""
    entries = set(os.listdir(directory))
    for entry in entries:
        debris = entry.endswith(".tmp") or (
            # Data whose state was removed: its object was finalized and verified.
            entry.endswith(".seg") and f"{entry[:-4]}.json" not in entries
        )
        if debris:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))


def _segments(
    directory: str, *, spool: Spool | None = None, claim: _Claim | None = None
) -> list[Segment]:
    """The segments in ``directory``, oldest first; unusable state files come back with a
    ``problem`` and a placeholder state, so that they are reported, never silently skipped."""
    found = []
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.endswith(".json") or not entry[:-5].isdigit():
            continue
        path = os.path.join(directory, entry)
        problem: str | None
        try:
            with open(path, "rb") as handle:
                state = json.loads(handle.read())
            problem = validate_state(state)
        except FileNotFoundError:
            continue  # removed by its shipper while we listed
        except (OSError, ValueError) as exc:
            problem = f"its state file cannot be read: {exc}"
        if problem is not None:
            state = {"bucket": "", "name": "", "sealed": False}
        found.append(
            Segment(directory, int(entry[:-5]), state, spool=spool, problem=problem, claim=claim)
        )
    return found


@contextlib.contextmanager
def dead_spools(root: str) -> Iterator[list[tuple[str, list[Segment]]]]:
    """Every spool directory under ``root`` that no live process holds, locked for the caller.

    Yields (directory, segments) pairs; the locks are released on exit. A live stream of
    this process that opens one of these directories meanwhile takes its lock over (see
    :class:`Spool`): the segments then report ``handed_over`` and are left to it.
    """
    held: list[tuple[str, _Claim]] = []
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
                claim = _Claim(fd)
                key = os.path.realpath(directory)
                with _claims_lock:
                    _claims[key] = claim
                held.append((key, claim))
                _clean_debris(directory)
                found.append((directory, _segments(directory, claim=claim)))
        yield found
    finally:
        for key, claim in held:
            with _claims_lock:
                if _claims.get(key) is claim:
                    del _claims[key]
                if not claim.handed_over:
                    os.close(claim.fd)
