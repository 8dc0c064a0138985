"""The chunk buffer and chunk-size policy, without a server."""

from __future__ import annotations

from collections.abc import Iterator

import google_crc32c
import pytest

from gcs_log_sink import _chunks
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


def test_append_copies_into_the_room_made_at_once() -> None:
    """A buffer made for a chunk holds a chunk without growing; append says what is pending."""
    buffer = ChunkBuffer(4 * UPLOAD_UNIT)
    for _ in range(4):
        assert buffer.pending + UPLOAD_UNIT == buffer.append(b"x" * UPLOAD_UNIT)
    assert (4 * UPLOAD_UNIT, 4 * UPLOAD_UNIT) == (buffer.capacity, buffer.pending)


def test_a_write_that_does_not_fit_grows_to_a_chunk_plus_that_write() -> None:
    """Memory is one chunk plus the largest write: never doubled past what is needed."""
    buffer = ChunkBuffer(UPLOAD_UNIT)
    buffer.append(b"a" * (UPLOAD_UNIT - 10))
    buffer.append(b"b" * 100)
    assert UPLOAD_UNIT + 90 == buffer.capacity
    assert b"a" * (UPLOAD_UNIT - 10) + b"b" * 100 == buffer.peek(buffer.pending)


def test_view_is_read_only_and_not_a_copy() -> None:
    """A chunk is sent as a view of the buffer; nobody can write through it."""
    buffer = ChunkBuffer(16)
    buffer.append(b"0123456789")
    view = buffer.view(4)
    assert b"0123" == bytes(view)
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 0  # type: ignore[index]
    with pytest.raises(ValueError, match="cannot view 11 of 10 bytes"):
        buffer.view(11)


def test_a_live_view_does_not_block_growth_or_release() -> None:
    """The HTTP stack may keep a body view past its request: appending and releasing still
    work (a bytearray with live views cannot be resized, so this one never is)."""
    buffer = ChunkBuffer(8)
    buffer.append(b"abcdefgh")
    sent = buffer.view(8)
    buffer.release_to(4)  # a partial persist, with the view alive
    buffer.append(b"ijkl")  # fills the room again
    buffer.append(b"mnopqrstuvwxyz")  # does not fit: a new buffer
    assert 8 == len(sent)
    assert b"efghijklmnopqrstuvwxyz" == buffer.peek(buffer.pending)
    assert google_crc32c.value(b"abcdefghijklmnopqrstuvwxyz") == buffer.crc32c


@pytest.mark.parametrize(("kept", "written"), [(1, 10), (5, 10), (9, 10), (3, 4), (1, 2)])
def test_release_moves_the_rest_to_the_front_even_when_it_overlaps(kept: int, written: int) -> None:
    """After a partial persist the unconfirmed rest is what is sent next, byte for byte,
    whether or not the rest is longer than what was released (overlapping move)."""
    data = bytes(range(written))
    buffer = ChunkBuffer(written)
    buffer.append(data)
    buffer.release_to(kept)
    assert data[kept:] == buffer.peek(buffer.pending)
    buffer.append(b"\xff")
    assert data[kept:] + b"\xff" == bytes(buffer.view(buffer.pending))
    assert (kept, written + 1) == (buffer.confirmed, buffer.end)


def test_append_takes_any_contiguous_buffer() -> None:
    """bytearray and memoryview writes are copied in (and hashed) like bytes."""
    buffer = ChunkBuffer()
    buffer.append(bytearray(b"ab"))
    buffer.append(memoryview(b"cd"))
    buffer.append(b"ef")
    assert b"abcdef" == buffer.peek(6)
    assert google_crc32c.value(b"abcdef") == buffer.crc32c


def test_negative_capacity_is_refused() -> None:
    """A capacity is a byte count."""
    with pytest.raises(ValueError, match="capacity"):
        ChunkBuffer(-1)


@pytest.fixture(autouse=True)
def free_list() -> Iterator[dict[int, bytearray]]:
    """The module's free list of chunk memory, empty for the test and restored after it."""
    saved = dict(_chunks._FREE)
    _chunks._FREE.clear()
    yield _chunks._FREE
    _chunks._FREE.clear()
    _chunks._FREE.update(saved)


def test_recycled_memory_serves_the_next_buffer_of_that_capacity(
    free_list: dict[int, bytearray],
) -> None:
    """A finished buffer's memory goes to the next buffer of its capacity (warm pages, no
    new mmap), which sees only its own bytes; one of another capacity gets new memory."""
    first = ChunkBuffer(UPLOAD_UNIT)
    memory = first._whole.obj
    first.append(b"a" * 1000)
    first.recycle()
    assert [UPLOAD_UNIT] == list(free_list)
    second = ChunkBuffer(UPLOAD_UNIT)
    assert memory is second._whole.obj
    assert {} == free_list
    second.append(b"bb")
    assert b"bb" == second.peek(second.pending)
    assert memory is not ChunkBuffer(2 * UPLOAD_UNIT)._whole.obj


def test_recycle_keeps_end_and_crc_and_refuses_later_appends(
    free_list: dict[int, bytearray],
) -> None:
    """After recycle() the counters still describe what was written; an append fails
    instead of writing into memory another buffer may now own."""
    buffer = ChunkBuffer(UPLOAD_UNIT)
    buffer.append(b"x" * 5000)
    buffer.release_to(1000)
    buffer.recycle()
    assert (5000, 5000, 0) == (buffer.confirmed, buffer.end, buffer.pending)
    assert google_crc32c.value(b"x" * 5000) == buffer.crc32c
    with pytest.raises(ValueError, match="recycle"):
        buffer.append(b"y")


def test_free_list_is_bounded(free_list: dict[int, bytearray]) -> None:
    """Idle memory stays bounded: one chunk per capacity, a few capacities (the most
    recently recycled), and memory grown past its capacity by a write is not kept (a
    buffer made from it would hold more than a chunk)."""
    for _ in range(3):
        ChunkBuffer(UPLOAD_UNIT).recycle()
    assert [UPLOAD_UNIT] == list(free_list)
    for units in range(2, 10):
        ChunkBuffer(units * UPLOAD_UNIT).recycle()
    assert _chunks._FREE_CAPACITIES == len(free_list)
    assert 9 * UPLOAD_UNIT in free_list  # the sizes in use push out the older ones
    grown = ChunkBuffer(2 * UPLOAD_UNIT)
    free_list.clear()
    grown.append(b"a")
    grown.append(b"z" * (2 * UPLOAD_UNIT))  # does not fit: grows past its capacity
    grown.recycle()
    assert {} == free_list


def test_a_write_of_a_chunk_or_more_is_held_by_reference_until_the_next_append() -> None:
    """A whole-chunk write while nothing is held is not copied: the chunk views show the
    caller's bytes. A partial confirm, then a small append: the unconfirmed tail is copied
    into the buffer's own memory, in front of the new bytes; offsets and CRC are exact."""
    buffer = ChunkBuffer(UPLOAD_UNIT)
    own = buffer._whole.obj
    data = bytes(range(256)) * (3 * UPLOAD_UNIT // 256) + b"tail"
    buffer.append(data)
    assert data is buffer._whole.obj  # no copy
    assert data[:UPLOAD_UNIT] == bytes(buffer.view(UPLOAD_UNIT))
    buffer.release_to(2 * UPLOAD_UNIT + 100)
    buffer.append(b"next")
    assert own is buffer._whole.obj  # the tail moved into the buffer's own memory
    assert data[2 * UPLOAD_UNIT + 100 :] + b"next" == buffer.peek(buffer.pending)
    assert (len(data) + 4, google_crc32c.value(data + b"next")) == (buffer.end, buffer.crc32c)


def test_a_borrowed_write_wholly_confirmed_gives_the_memory_back() -> None:
    """Once all of a borrowed write is confirmed the buffer lets go of it: the next
    appends (an empty one too) go into its own memory; a tail too large for it grows."""
    buffer = ChunkBuffer(UPLOAD_UNIT)
    own = buffer._whole.obj
    data = b"d" * (2 * UPLOAD_UNIT)
    buffer.append(data)
    buffer.release_to(len(data))
    assert own is buffer._whole.obj
    buffer.append(b"")
    buffer.append(b"e" * 10)
    assert own is buffer._whole.obj
    assert b"e" * 10 == buffer.peek(10)
    buffer.release_to(buffer.end)
    big = b"f" * (3 * UPLOAD_UNIT)
    buffer.append(big)
    buffer.append(b"g" * 10)  # the whole borrowed write is still held: it needs new room
    assert big + b"g" * 10 == buffer.peek(buffer.pending)
    assert 3 * UPLOAD_UNIT + 10 == buffer.capacity


def test_recycle_while_a_write_is_borrowed_hands_back_the_own_memory(
    free_list: dict[int, bytearray],
) -> None:
    """recycle() during a borrowed write recycles the buffer's own memory, never the
    caller's bytes."""
    buffer = ChunkBuffer(UPLOAD_UNIT)
    own = buffer._whole.obj
    buffer.append(b"h" * UPLOAD_UNIT)
    buffer.recycle()
    assert [UPLOAD_UNIT] == list(free_list)
    assert own is free_list[UPLOAD_UNIT]
