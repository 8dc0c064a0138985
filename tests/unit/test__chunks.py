"""The chunk buffer and chunk-size policy, without a server."""

from __future__ import annotations

import google_crc32c
import pytest

from gcs_log_sink._chunks import UPLOAD_UNIT, ChunkBuffer, crc32c_base64, next_chunk_length


def test_append_peek_release_track_offsets() -> None:
    """Offsets are absolute; release forgets the confirmed prefix."""
    buffer = ChunkBuffer()
    buffer.append(b"hello ")
    buffer.append(bytearray(b"world"))
    assert (0, 11, 11) == (buffer.confirmed, buffer.end, buffer.pending)
    assert b"hello" == buffer.peek(5)
    buffer.release_to(6)
    assert (6, 11, 5) == (buffer.confirmed, buffer.end, buffer.pending)
    assert b"world" == buffer.peek(5)


def test_rewind_is_keeping_what_was_not_confirmed() -> None:
    """A partial persist confirms less than was sent: the rest is still there to resend."""
    buffer = ChunkBuffer()
    buffer.append(bytes(range(256)) * 8)
    sent = buffer.peek(1024)
    buffer.release_to(512)  # the server kept half
    assert sent[512:] == buffer.peek(512)


def test_crc32c_covers_every_byte_once() -> None:
    """The running CRC32C equals that of the concatenated writes, whatever is released."""
    buffer = ChunkBuffer()
    parts = [b"a" * 10, memoryview(b"b" * 20), bytearray(b"c" * 30)]
    for part in parts:
        buffer.append(part)
        buffer.release_to(buffer.end)
    assert google_crc32c.value(b"a" * 10 + b"b" * 20 + b"c" * 30) == buffer.crc32c


def test_crc32c_base64_matches_gcs_format() -> None:
    """GCS reports CRC32C as base64 of the big-endian value."""
    assert "AAAAAA==" == crc32c_base64(0)
    assert "4waSgw==" == crc32c_base64(google_crc32c.value(b"123456789"))


def test_release_past_the_end_is_refused() -> None:
    """A server that claims bytes never sent cannot be trusted."""
    buffer = ChunkBuffer()
    buffer.append(b"x" * 10)
    with pytest.raises(ValueError, match="beyond the 10 bytes written"):
        buffer.release_to(11)


def test_release_backwards_is_refused() -> None:
    """A server that lost bytes it confirmed cannot be trusted either."""
    buffer = ChunkBuffer()
    buffer.append(b"x" * 10)
    buffer.release_to(5)
    with pytest.raises(ValueError, match="behind the 5 bytes it confirmed"):
        buffer.release_to(4)


def test_write_sends_only_full_chunks() -> None:
    """Without drain, nothing is sent until a whole chunk is buffered."""
    chunk = 4 * UPLOAD_UNIT
    assert None is next_chunk_length(0, chunk - 1, chunk, final=False, drain=False)
    assert chunk == next_chunk_length(0, chunk, chunk, final=False, drain=False)
    assert chunk == next_chunk_length(0, 3 * chunk, chunk, final=False, drain=False)


def test_flush_sends_whole_units() -> None:
    """With drain, any whole 256 KiB unit is sent, never the unaligned tail."""
    chunk = 4 * UPLOAD_UNIT
    assert None is next_chunk_length(0, UPLOAD_UNIT - 1, chunk, final=False, drain=True)
    assert 2 * UPLOAD_UNIT == next_chunk_length(
        0, 2 * UPLOAD_UNIT + 9, chunk, final=False, drain=True
    )
    assert chunk == next_chunk_length(0, 9 * UPLOAD_UNIT, chunk, final=False, drain=True)


def test_chunks_end_on_unit_boundaries_after_odd_offsets() -> None:
    """If the server ever confirms an unaligned offset, the next chunk realigns the end."""
    chunk = 4 * UPLOAD_UNIT
    length = next_chunk_length(100, chunk, chunk, final=False, drain=False)
    assert length is not None
    assert 0 == (100 + length) % UPLOAD_UNIT


def test_final_sends_everything_even_nothing() -> None:
    """The final request carries all pending bytes, possibly none (finalize only)."""
    assert 0 == next_chunk_length(0, 0, UPLOAD_UNIT, final=True, drain=True)
    assert 7 == next_chunk_length(UPLOAD_UNIT, 7, UPLOAD_UNIT, final=True, drain=True)
