"""The bytes written but not yet confirmed by GCS: pure, no I/O.

Cost goals (issue 13: CPU per byte is what a service pays to ship its logs):

- one copy per byte written (into a preallocated ``bytearray``), none to send it: a chunk
  goes out as a read-only ``memoryview`` of the buffer (:meth:`ChunkBuffer.view`), not as a
  ``bytes`` copy. ``peek`` still returns a copy, for callers that keep the bytes. A write of
  a whole chunk or more, arriving while nothing is held, is not copied at all: its ``bytes``
  are kept by reference and sent from there (see :meth:`ChunkBuffer.append`).
- little Python work per small write (4 KiB writes are ~260,000 calls per GiB): the copy
  goes through one ``memoryview`` of the buffer kept for its lifetime (slice assignment to a
  memoryview measured ~0.5 us cheaper per 4 KiB write than to the ``bytearray``), and the
  CRC32C function is bound once at import.
- the CRC32C is computed once per byte, as it is appended. google-crc32c's C extension takes
  only objects without a buffer-release hook (``bytes``, not ``memoryview``, not even a
  read-only one), so it reads the caller's ``bytes`` directly; other buffers cost a copy.
- the buffer is never resized in place, only filled by equal-length slice assignment: a
  ``memoryview`` handed to the HTTP stack may outlive its request (the response keeps the
  prepared request), and a ``bytearray`` with live views cannot be resized. When a write does
  not fit, a new buffer replaces the old one.

So memory is one chunk plus the largest single write, whatever the total size: the buffer is
made with room for one chunk and only grows to hold a write that does not fit.

Chunk memory is reused across streams (a writer that rolls to a new object per part, like
``tee``, makes one stream per part): a fresh ``bytearray`` of chunk size may be a fresh
mmap, and copying into pages touched for the first time measured 0.16 s/GiB against 0.10
into warm ones (8 MiB buffers; glibc often reuses freed heap memory by itself after the
first few, so this is a floor that does not depend on the allocator's mood).
:meth:`ChunkBuffer.recycle` hands a finished buffer's memory to a small free list (one per
capacity, a few capacities at most, so idle memory stays at one chunk per chunk size in use;
memory grown past its chunk by a write that did not fit is not kept, so a buffer made from
the list holds one chunk, like a new one), and the next buffer of that capacity takes it. It
is safe although views of the memory may outlive their requests: a view is read only by the
HTTP stack while it sends that request, on the thread that owns the buffer (``requests``
sends synchronously, retries nothing itself, and nothing reads a request body after the call
returns), and the owner recycles only after its last request returned. A stale view that
lingers (in a traceback, say) is never read; nor could it resize the memory, which is never
resized.

The buffer keeps the running CRC32C of every byte ever appended, since it is the one place
that sees each byte exactly once, and it can rewind: whatever GCS has not confirmed stays
here until GCS says it has it, so after a partial persist or a lost answer the upload
resumes from exactly the server's offset.
"""

from __future__ import annotations

import base64
import os
import threading

from google_crc32c import extend as _crc32c_extend

__all__ = ["UPLOAD_UNIT", "ChunkBuffer", "crc32c_base64", "next_chunk_length"]

# GCS accepts a non-final chunk only in multiples of 256 KiB.
UPLOAD_UNIT = 256 * 1024


# Recycled chunk memory by capacity (see the module docstring), at most _FREE_CAPACITIES,
# oldest first: sizes no longer in use make room for the ones in use.
_FREE: dict[int, bytearray] = {}
_FREE_CAPACITIES = 4
_FREE_LOCK = threading.Lock()


def _reset_free_lock() -> None:
    """In a forked child: another thread may have held the lock at the fork."""
    global _FREE_LOCK
    _FREE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_free_lock)


def _memory(capacity: int) -> bytearray:
    """A bytearray of ``capacity`` bytes: recycled if one is free, else a new one."""
    if capacity:
        with _FREE_LOCK:
            memory = _FREE.pop(capacity, None)
        if memory is not None:
            return memory
    return bytearray(capacity)


def crc32c_base64(crc: int) -> str:
    """The CRC32C as GCS reports it: base64 of the big-endian 32-bit value."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class ChunkBuffer:
    """Unconfirmed bytes of one upload, addressed by absolute offset in the object.

    ``capacity`` is the room made at once (a writer's chunk size); without it the buffer
    doubles as it fills, like a list.
    """

    __slots__ = ("_capacity", "_confirmed", "_crc", "_own", "_size", "_start", "_whole")

    def __init__(self, capacity: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self._capacity = capacity
        # A writable view of the whole buffer (a bytearray never resized, see above); the
        # held bytes are self._whole[_start:_start + _size].
        self._whole = memoryview(_memory(capacity))
        # While a large write is held by reference (see append()), _whole shows it and
        # this keeps the buffer's own memory; otherwise None.
        self._own: memoryview | None = None
        self._start = 0
        self._size = 0
        self._confirmed = 0  # absolute offset of self._whole[self._start]
        self._crc = 0

    @property
    def confirmed(self) -> int:
        """How many bytes GCS has confirmed; the offset of the first byte held here."""
        return self._confirmed

    @property
    def end(self) -> int:
        """How many bytes were appended in all: the object's size if finalized now."""
        return self._confirmed + self._size

    @property
    def pending(self) -> int:
        """How many bytes are held, waiting for GCS to confirm them."""
        return self._size

    @property
    def capacity(self) -> int:
        """How many bytes the buffer holds without growing."""
        return len(self._whole)

    @property
    def crc32c(self) -> int:
        """CRC32C of every byte appended so far."""
        return self._crc

    def start_at(self, offset: int, crc32c: int) -> None:
        """Begin at ``offset`` of an object whose first bytes (CRC ``crc32c``) GCS holds.

        Resuming a session another process opened: those bytes are not here, and need not be.
        """
        if self._size or self._confirmed:
            raise ValueError("start_at() on a buffer already in use")
        self._confirmed = offset
        self._crc = crc32c

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Take bytes the caller wrote; returns :attr:`pending` after it.

        Copied in, except a write of at least a whole capacity (a chunk) while nothing is
        held: its ``bytes`` are immutable, so they are kept by reference and chunks are sent
        straight from them; whatever of it is still held when the next append comes is then
        copied into the buffer's own memory (one tail, less than a chunk when the writer
        sends as it goes).
        """
        if type(data) is not bytes:
            data = bytes(data)  # google-crc32c takes bytes only
        self._crc = _crc32c_extend(self._crc, data)
        if not self._size and len(data) >= self._capacity > 0:
            if self._own is None:
                self._own = self._whole
            self._whole = memoryview(data)
            self._start = 0
            self._size = size = len(data)
            return size
        at = self._start + self._size
        end = at + len(data)
        if end > len(self._whole) or self._own is not None:
            self._make_room(self._size + len(data))
            at = self._size
            end = at + len(data)
        # Equal lengths: a copy into place, never a resize (views may be alive).
        self._whole[at:end] = data
        self._size = size = end - self._start
        return size

    def view(self, length: int) -> memoryview:
        """The first ``length`` unconfirmed bytes, read-only and without a copy.

        For one request body: valid until the next :meth:`append` or :meth:`release_to`,
        which may overwrite what it shows.
        """
        if not 0 <= length <= self._size:
            raise ValueError(f"cannot view {length} of {self._size} bytes")
        return self._whole[self._start : self._start + length].toreadonly()

    def peek(self, length: int) -> bytes:
        """A copy of the first ``length`` unconfirmed bytes."""
        with self.view(length) as view:
            return bytes(view)

    def release_to(self, offset: int) -> None:
        """Forget bytes before ``offset``: GCS says it holds them.

        Raises ``ValueError`` when ``offset`` goes backwards past what was already released
        (GCS lost confirmed data) or beyond what was written (GCS claims bytes never sent):
        both mean the upload cannot be trusted.
        """
        if offset < self._confirmed:
            raise ValueError(
                f"server offset {offset} is behind the {self._confirmed} bytes it confirmed"
            )
        if offset > self.end:
            raise ValueError(f"server offset {offset} is beyond the {self.end} bytes written")
        done = offset - self._confirmed
        if not done:
            return
        # No move here: the rest is moved to the front once, when an append needs the room
        # (moving it at every release makes one write of N chunks cost N^2/2 chunk copies).
        if done < self._size:
            self._start += done
        else:
            self._start = 0
            if self._own is not None:  # all of a borrowed write is confirmed: let it go
                self._whole, self._own = self._own, None
        self._size -= done
        self._confirmed = offset

    def recycle(self) -> None:
        """Done with the bytes: hand the memory to the next buffer of this capacity.

        Only for the buffer's owner, once its last request has returned (see the module
        docstring). Afterwards the buffer holds nothing (:attr:`pending` is 0) and can
        take no more; :attr:`end` and :attr:`crc32c` stay as they were.
        """
        whole = self._own if self._own is not None else self._whole
        self._whole = memoryview(bytearray())
        self._own = None
        self._confirmed += self._size
        self._start = self._size = 0
        memory = whole.obj
        capacity = self._capacity
        self._capacity = -1  # appends fail from here (_make_room): the memory is not ours
        if capacity <= 0 or not isinstance(memory, bytearray) or len(memory) != capacity:
            # No capacity (or recycled already), or grown by a write that did not fit: a
            # buffer made from it would hold more than one chunk, idle or not.
            return
        with _FREE_LOCK:
            _FREE.pop(capacity, None)  # re-inserted last: the most recently used size
            if len(_FREE) >= _FREE_CAPACITIES:
                del _FREE[next(iter(_FREE))]  # the least recently recycled size goes
            _FREE[capacity] = memory

    def _make_room(self, needed: int) -> None:
        """Room for ``needed`` held bytes from the front: the rest moved to the front, or a
        new, larger buffer (the old one may have live views: never resize it)."""
        if self._capacity < 0:
            raise ValueError("append() after recycle()")
        start, size = self._start, self._size
        whole = self._whole
        own = self._own
        if own is not None:
            # The held bytes are a borrowed write: copy what is left of it into our own
            # memory (never overlapping), or into new memory if it does not fit.
            self._own = None
            if needed > len(own):
                own = memoryview(bytearray(max(needed, self._capacity)))
            own[:size] = whole[start : start + size]
            self._whole = own
            self._start = 0
            return
        if needed <= len(whole):
            if size:
                source = whole[start : start + size]
                # Overlapping ranges go through a copy.
                whole[:size] = source if size <= start else bytes(source)
                source.release()
        else:
            grown_size = (
                max(needed, self._capacity) if self._capacity else max(needed, 2 * len(whole))
            )
            grown = bytearray(grown_size)
            grown[:size] = whole[start : start + size]
            self._whole = memoryview(grown)
        self._start = 0


def next_chunk_length(
    confirmed: int, pending: int, chunk_size: int, *, final: bool, drain: bool
) -> int | None:
    """How many pending bytes the next request should carry, or ``None`` for no request.

    - ``final``: everything (possibly 0 bytes: the request that only finalizes).
    - otherwise at most ``chunk_size``, ending on a 256 KiB boundary of the object, as GCS
      requires of a non-final chunk. With ``drain`` (``flush()``), any whole unit is worth a
      request; without it (``write()``), only a full chunk is, to keep requests few.
    """
    if final:
        return pending
    if not drain and pending < chunk_size:
        return None
    end = confirmed + min(pending, chunk_size)
    length = end - end % UPLOAD_UNIT - confirmed
    return length if length > 0 else None
