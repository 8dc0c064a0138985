"""Line stamping for --timestamps: pure."""

from __future__ import annotations

from gcs_log_sink.capture import stamp_lines

T = b"[t] "


def test_each_line_gets_one_stamp_across_chunks() -> None:
    """A line split over chunks is stamped once, where it starts."""
    out1, start = stamp_lines(b"one\ntw", True, T)
    out2, start = stamp_lines(b"o\nthree\n", start, T)
    assert b"[t] one\n[t] two\n[t] three\n" == out1 + out2
    assert start


def test_a_trailing_newline_defers_the_next_stamp() -> None:
    """The next line's stamp comes with its first byte (its own arrival time)."""
    out, start = stamp_lines(b"a\n", True, T)
    assert (b"[t] a\n", True) == (out, start)
    out, start = stamp_lines(b"b", start, b"[u] ")
    assert (b"[u] b", False) == (out, start)


def test_empty_lines_and_binary_bytes_are_kept() -> None:
    """Empty lines get a stamp; bytes that are not UTF-8 pass unchanged."""
    out, _ = stamp_lines(b"\n\xff\xfe\n", True, T)
    assert b"[t] \n[t] \xff\xfe\n" == out


def test_empty_chunk_changes_nothing() -> None:
    """No bytes, no stamp."""
    assert (b"", False) == stamp_lines(b"", False, T)
    assert (b"", True) == stamp_lines(b"", True, T)
