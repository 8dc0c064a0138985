"""The bytes written but not yet confirmed by GCS: pure, no I/O.

Cost goals (as h11's ``_receivebuffer`` states its own):

- ``append`` is amortized O(len(data)): a ``bytearray`` grows in place, never ``buf += data``
  on ``bytes`` (which copies the whole buffer per write and makes a long stream quadratic).
- ``release_to`` is O(1) amortized: CPython deletes a bytearray's prefix by moving its start.
- one copy per chunk sent (``peek``), none per write.

So memory is about one chunk plus the largest single write, whatever the total size.

The buffer also keeps the running CRC32C of every byte ever appended, since it is the one
place that sees each byte exactly once, and it can rewind: whatever GCS has not confirmed
stays here until GCS says it has it, so after a partial persist or a lost answer the upload
resumes from exactly the server's offset.
"""

from __future__ import annotations

import base64

import google_crc32c

__all__ = ["UPLOAD_UNIT", "ChunkBuffer", "crc32c_base64", "next_chunk_length"]

# GCS accepts a non-final chunk only in multiples of 256 KiB.
UPLOAD_UNIT = 256 * 1024


def crc32c_base64(crc: int) -> str:
    """The CRC32C as GCS reports it: base64 of the big-endian 32-bit value."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class ChunkBuffer:
    """Unconfirmed bytes of one upload, addressed by absolute offset in the object."""

    __slots__ = ("_confirmed", "_crc", "_data")

    def __init__(self) -> None:
        self._data = bytearray()
        self._confirmed = 0  # absolute offset of self._data[0]
        self._crc = 0

    @property
    def confirmed(self) -> int:
        """How many bytes GCS has confirmed; the offset of the first byte held here."""
        return self._confirmed

    @property
    def end(self) -> int:
        """How many bytes were appended in all: the object's size if finalized now."""
        return self._confirmed + len(self._data)

    @property
    def pending(self) -> int:
        """How many bytes are held, waiting for GCS to confirm them."""
        return len(self._data)

    @property
    def crc32c(self) -> int:
        """CRC32C of every byte appended so far."""
        return self._crc

    def start_at(self, offset: int, crc32c: int) -> None:
        """Begin at ``offset`` of an object whose first bytes (CRC ``crc32c``) GCS holds.

        Resuming a session another process opened: those bytes are not here, and need not be.
        """
        if self._data or self._confirmed:
            raise ValueError("start_at() on a buffer already in use")
        self._confirmed = offset
        self._crc = crc32c

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes the caller wrote."""
        # google-crc32c's C extension takes only ``bytes``: other buffers cost one copy.
        block = data if type(data) is bytes else bytes(data)
        self._crc = google_crc32c.extend(self._crc, block)
        self._data += block

    def peek(self, length: int) -> bytes:
        """A copy of the first ``length`` unconfirmed bytes, to send as one request body."""
        if not 0 <= length <= len(self._data):
            raise ValueError(f"cannot peek {length} of {len(self._data)} bytes")
        with memoryview(self._data) as view:  # one copy, not a bytearray slice and then bytes
            return bytes(view[:length])

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
        del self._data[: offset - self._confirmed]
        self._confirmed = offset


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
