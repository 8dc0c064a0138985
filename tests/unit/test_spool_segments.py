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


def test_listing_segments_deletes_nothing(tmp_path: Path) -> None:
    """A live process's listing leaves every file alone: another thread may be mid-save.

    Breaks when segments() cleans "debris": it used to delete the upload thread's in-flight
    state file, so the session URL was never saved and the segment never shipped.
    """
    spool = Spool(str(tmp_path), "s")
    segment = spool.create("bucket-a", "obj")
    in_flight = Path(segment.state_path + ".999.1.tmp")
    in_flight.write_bytes(b"{")
    stray = tmp_path / "s" / "0000000007.seg"
    stray.write_bytes(b"")
    assert ["obj"] == [found.name for found in spool.segments()]
    assert in_flight.exists()
    assert stray.exists()
    spool.release()
    Spool(str(tmp_path), "s").release()  # the next start, under the lock: now it is debris
    assert not in_flight.exists()
    assert not stray.exists()


def test_a_failed_write_is_cut_back_and_later_frames_stay_readable(tmp_path: Path) -> None:
    """A write cut short (file-size limit, as on a full disk) leaves no torn frame behind."""
    import resource
    import signal

    spool = Spool(str(tmp_path), "s")
    segment = spool.create("bucket-a", "obj")
    segment.write(b"a" * 1000, 1)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            segment.write(b"b" * 1000, 1)  # 500 bytes fit: a short write, then EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    segment.write(b"c" * 1000, 1)  # space is back
    assert [b"a" * 1000, b"c" * 1000] == [frame.payload for frame in segment.frames()]
    assert 1014 == segment.state["failed_at"]
    spool.release()


def test_a_state_that_is_not_ours_is_listed_with_its_problem(tmp_path: Path) -> None:
    """A JSON list, a missing name: listed (so reported), not used, never a traceback."""
    spool = Spool(str(tmp_path), "s")
    spool.create("bucket-a", "fine")
    (tmp_path / "s" / "0000000002.json").write_text("[1, 2]")
    (tmp_path / "s" / "0000000003.json").write_text('{"bucket": "bucket-a"}')
    (tmp_path / "s" / "0000000004.json").write_text("{not json")
    problems = [(segment.id, segment.problem is not None) for segment in spool.segments()]
    assert [(1, False), (2, True), (3, True), (4, True)] == problems
    assert 5 == spool.create("bucket-a", "next").id
    spool.release()


def test_a_directory_held_for_shipping_leftovers_is_handed_to_a_live_stream(
    tmp_path: Path,
) -> None:
    """Shipping a dead process's spool never makes a live stream of ours fail to lock it."""
    from gcs_log_sink.spool import dead_spools

    dead = Spool(str(tmp_path), "b")
    dead.create("bucket-a", "left").write(b"x\n", 1)
    dead.release()
    with dead_spools(str(tmp_path)) as spools:
        ((_, (leftover,)),) = spools
        live = Spool(str(tmp_path), "b")  # no SpoolLockedError
        assert leftover.handed_over
        assert ["left"] == [segment.name for segment in live.segments()]
        with pytest.raises(SpoolLockedError):
            Spool(str(tmp_path), "b")  # still one owner
    with pytest.raises(SpoolLockedError):
        Spool(str(tmp_path), "b")  # the live stream keeps the lock after the shipper is done
    live.release()
