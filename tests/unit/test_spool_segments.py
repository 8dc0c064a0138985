"""The spool's segments on disk: frames, torn tails, damage, leftovers. No server."""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import pytest

from gcs_log_sink.spool import Spool, SpoolCorruptError, SpoolLockedError


def test_frames_come_back_in_order_with_their_record_counts(tmp_path: Path) -> None:
    """What was written is read back, frame by frame."""
    spool = Spool(str(tmp_path), "s")
    segment = spool.create("bucket-a", "obj")
    segment.write(b"one\n", 1)
    segment.write(b"two\nthree\n", 2)
    assert [(b"one\n", 1), (b"two\nthree\n", 2)] == [
        (frame.payload, frame.records) for frame in segment.frames()
    ]
    assert google_crc32c.value(b"one\ntwo\n") == segment.prefix_crc(8)
    spool.release()


def test_a_torn_tail_is_where_reading_stops(tmp_path: Path) -> None:
    """A frame cut short by a crash is not an error: the frames before it are whole."""
    spool = Spool(str(tmp_path), "s")
    segment = spool.create("bucket-a", "obj")
    segment.write(b"whole\n", 1)
    segment.write(b"torn frame\n", 1)
    data = Path(segment.data_path).read_bytes()
    Path(segment.data_path).write_bytes(data[:-3])
    assert [b"whole\n"] == [frame.payload for frame in segment.frames()]
    spool.release()


def test_damage_is_an_error_naming_the_place(tmp_path: Path) -> None:
    """A flipped byte fails its checksum: reading says where, after the good frames."""
    spool = Spool(str(tmp_path), "s")
    segment = spool.create("bucket-a", "obj")
    segment.write(b"good\n", 1)
    segment.write(b"bad!\n", 1)
    data = bytearray(Path(segment.data_path).read_bytes())
    data[-2] ^= 0xFF
    Path(segment.data_path).write_bytes(bytes(data))
    frames = segment.frames()
    assert b"good\n" == next(frames).payload
    with pytest.raises(SpoolCorruptError, match="checksum mismatch"):
        next(frames)
    spool.release()


def test_leftovers_are_found_and_orphans_cleaned(tmp_path: Path) -> None:
    """A new process sees a dead one's segments; data without state and temp files go."""
    first = Spool(str(tmp_path), "s")
    kept = first.create("bucket-a", "kept")
    kept.write(b"x", 1)
    done = first.create("bucket-a", "done")
    done.write(b"y", 1)
    Path(done.state_path).unlink()  # a crash between removing the state and the data
    Path(kept.state_path + ".123.tmp").write_bytes(b"{")
    first.release()

    second = Spool(str(tmp_path), "s")
    assert ["kept"] == [segment.name for segment in second.segments()]
    assert ["0000000001.json", "0000000001.seg", "lock"] == sorted(
        path.name for path in (tmp_path / "s").iterdir()
    )
    assert 2 == second.create("bucket-a", "next").id  # after the live ones
    second.release()


def test_one_live_process_per_directory(tmp_path: Path) -> None:
    """The lock refuses a second opener until the first releases it."""
    first = Spool(str(tmp_path), "s")
    with pytest.raises(SpoolLockedError):
        Spool(str(tmp_path), "s")
    first.release()
    Spool(str(tmp_path), "s").release()
