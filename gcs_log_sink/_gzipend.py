"""Pure: where a spooled gzip stream can be ended so that it decompresses completely.

A handler with ``compression='gzip'`` writes one gzip member per object, with a sync flush
(``Z_SYNC_FLUSH``) at every ``flush()``. If the writer died before ``Z_FINISH`` (or a write
to the spool failed mid-stream), the data is a valid deflate stream only up to the last sync
flush. Ending it there takes two bytes, an empty final block (``03 00``), and the gzip
trailer (CRC-32 and length of the decompressed data). Every candidate end is checked by
actually finishing a copy of the decompressor: no guessing from byte patterns.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["GzipCut", "GzipEnd"]

_EMPTY_FINAL_BLOCK = b"\x03\x00"


@dataclass(frozen=True)
class GzipCut:
    """Keep the first ``size`` bytes (through file position ``position``), append ``tail``."""

    position: int
    size: int
    tail: bytes
    records: int
    lines: int


class GzipEnd:
    """Fed the frames of a gzip segment in order; knows the last place it can end."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(31)
        self._crc = 0
        self._isize = 0
        self._size = 0
        self._records = 0
        self._lines = 0
        self.complete = False  # the member ended (Z_FINISH was written)
        self.broken = False  # not gzip, or corrupt: nothing after ``cut`` is usable
        self.trailing = 0  # bytes after the member's end or after the corruption
        self.cut: GzipCut | None = None  # the best end so far

    def feed(self, data: bytes, records: int, position: int) -> None:
        """Take one frame (its payload, record count and file position after it)."""
        if self.complete or self.broken:
            self.trailing += len(data)
            return
        if not self._inflate(data):
            return
        self._records += records
        if self.complete:
            self.cut = GzipCut(position, self._size, b"", self._records, self._lines)
        elif records == 0:  # a flush frame: the handler's sync points
            self._try_end(position)

    def _inflate(self, data: bytes) -> bool:
        try:
            out = self._inflater.decompress(data)
        except zlib.error:
            self.broken = True
            self.trailing += len(data)
            return False
        self._size += len(data)
        self._crc = zlib.crc32(out, self._crc)
        self._isize += len(out)
        self._lines += out.count(b"\n")
        if self._inflater.eof:
            self.complete = True
            extra = len(self._inflater.unused_data)
            self._size -= extra
            self.trailing += extra
        return True

    def _try_end(self, position: int) -> None:
        tail = _EMPTY_FINAL_BLOCK + struct.pack("<II", self._crc, self._isize & 0xFFFFFFFF)
        trial = self._inflater.copy()
        try:
            out = trial.decompress(tail)
        except zlib.error:
            return
        if trial.eof and not out and not trial.unused_data:
            self.cut = GzipCut(position, self._size, tail, self._records, self._lines)
