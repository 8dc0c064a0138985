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


# -- OutputBuffer: the pump's side never waits; drops are counted and marked ---------------

import re  # noqa: E402 - grouped with the tests that use it

from gcs_log_sink.capture import OutputBuffer, drop_marker  # noqa: E402

MARKER = re.compile(rb"\n?\[gcs-log-sink\] (\d+) bytes of output lost here, (\S+) to (\S+): ")


def drain(buffer: OutputBuffer) -> bytes:
    """Everything the feeder would take, after close."""
    buffer.close()
    out = b""
    while (piece := buffer.take()) is not None:
        out += piece
    return out


def test_what_fits_is_kept_in_order() -> None:
    """Below capacity every put is kept, in order, and nothing is counted as dropped."""
    buffer = OutputBuffer(100)
    for piece in (b"a\n", b"bc", b"d\n"):
        buffer.put(piece)
    assert 6 == buffer.held
    assert (b"a\nbcd\n", 0, 0) == (drain(buffer), buffer.dropped_bytes, buffer.markers)


def test_a_full_buffer_drops_whole_puts_and_marks_the_gap_when_room_returns() -> None:
    """Full: the put is dropped and counted; the next put that fits brings a marker first."""
    times = iter([1000.0, 1001.0])
    buffer = OutputBuffer(255, clock=lambda: next(times))
    buffer.put(b"x" * 250 + b"\n")
    buffer.put(b"lost one\n")  # 251 + 9 > 255: dropped
    buffer.put(b"lost two\n")
    assert 18 == buffer.dropped_bytes
    first = buffer.take()  # the feeder catches up: room again
    buffer.put(b"after\n")
    rest = drain(buffer)
    expected_marker = drop_marker(18, 1000.0, 1001.0, at_line_start=True)
    assert b"x" * 250 + b"\n" == first
    assert expected_marker + b"after\n" == rest
    assert (1, len(expected_marker)) == (buffer.markers, buffer.marker_bytes)
    match = MARKER.match(rest)
    assert match is not None
    assert (b"18", b"1970-01-01T00:16:40Z", b"1970-01-01T00:16:41Z") == match.groups()


def test_a_marker_after_a_partial_line_starts_on_a_line_of_its_own() -> None:
    """Output that stopped mid-line gets a newline before the marker, counted in its bytes."""
    buffer = OutputBuffer(10, clock=lambda: 0.0)
    buffer.put(b"partial")
    buffer.put(b"dropped!")
    buffer.take()
    buffer.put(b"z")
    marker = drop_marker(8, 0.0, 0.0, at_line_start=False)
    assert marker.startswith(b"\n[gcs-log-sink] 8 bytes")
    assert marker + b"z" == drain(buffer)
    assert len(marker) == buffer.marker_bytes


def test_drops_at_the_very_end_are_marked_at_close() -> None:
    """No later output brings the marker: close() puts it in, so the log still says it."""
    buffer = OutputBuffer(4, clock=lambda: 0.0)
    buffer.put(b"abc\n")
    buffer.put(b"gone\n")
    assert b"abc\n" + drop_marker(5, 0.0, 0.0, at_line_start=True) == drain(buffer)


def test_one_put_bigger_than_the_capacity_goes_into_an_empty_buffer() -> None:
    """An empty buffer takes any read whole: a small --buffer-size never drops everything."""
    buffer = OutputBuffer(2)
    buffer.put(b"longer than two")
    assert (b"longer than two", 0) == (drain(buffer), buffer.dropped_bytes)


def test_take_joins_up_to_max_bytes() -> None:
    """The feeder takes several puts at once, up to its limit, never splitting one."""
    buffer = OutputBuffer(100)
    for piece in (b"aaaa", b"bbbb", b"cccc"):
        buffer.put(piece)
    assert b"aaaabbbb" == buffer.take(9)
    assert b"cccc" == buffer.take(9)


def test_stop_waiting_turns_a_waiting_buffer_into_a_dropping_one() -> None:
    """--on-full wait, then a signal: the pump must not hang on a full buffer."""
    buffer = OutputBuffer(4, wait_when_full=True, clock=lambda: 0.0)
    buffer.put(b"full")
    buffer.stop_waiting()
    buffer.put(b"dropped")  # would wait for ever before stop_waiting()
    assert 7 == buffer.dropped_bytes


def test_the_running_crc32c_is_of_exactly_what_the_feeder_gets() -> None:
    """The end-to-end check of build.log is taken as puts are kept: it covers kept reads
    and markers, in the order the feeder takes them, and no dropped byte (drops in the
    middle and at the very end)."""
    import google_crc32c

    times = iter([5.0, 6.0, 7.0])
    buffer = OutputBuffer(8, clock=lambda: next(times))
    buffer.put(b"kept\n")
    buffer.put(b"dropped\n")  # 5 + 8 > 8
    taken = buffer.take()
    buffer.put(b"more")
    buffer.put(b"gone at the end")
    assert taken is not None
    taken += drain(buffer)
    assert 2 == buffer.markers
    assert google_crc32c.value(taken) == buffer.crc32c


# -- the pump's reads: grown pipes, bounded read size (OS pipes, no server) ----------------

import contextlib  # noqa: E402 - grouped with the tests that use it
import fcntl  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from gcs_log_sink import capture  # noqa: E402
from gcs_log_sink.capture import READ_SIZE, _Pump, grow_pipe  # noqa: E402

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", None)
linux_pipes = pytest.mark.skipif(F_GETPIPE_SZ is None, reason="F_GETPIPE_SZ is Linux only")


def pipe_max_size() -> int:
    with open("/proc/sys/fs/pipe-max-size", "rb") as limit:
        return int(limit.read())


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A fresh pipe (read end, write end), closed afterwards."""
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


@linux_pipes
def test_grow_pipe_grows_a_pipe_to_one_read_capped_by_pipe_max_size(
    pipe: tuple[int, int],
) -> None:
    """Either end of a default (64 KiB) pipe: it then holds one read, or as much as an
    unprivileged process may ask for."""
    read_end, write_end = pipe
    expected = min(READ_SIZE, pipe_max_size())
    assert expected == grow_pipe(read_end)
    assert expected == fcntl.fcntl(write_end, F_GETPIPE_SZ)


@linux_pipes
def test_grow_pipe_asks_no_more_than_pipe_max_size(pipe: tuple[int, int]) -> None:
    """Asking above the limit would fail with EPERM and leave the pipe small: it is capped."""
    read_end, _ = pipe
    assert pipe_max_size() == grow_pipe(read_end, 64 * pipe_max_size())


@linux_pipes
def test_grow_pipe_never_shrinks_a_pipe(pipe: tuple[int, int]) -> None:
    """A writer that made its pipe large keeps it large: smaller asks change nothing."""
    read_end, _ = pipe
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, pipe_max_size())
    assert pipe_max_size() == grow_pipe(read_end, 4096)
    assert pipe_max_size() == fcntl.fcntl(read_end, F_GETPIPE_SZ)


def test_grow_pipe_leaves_files_devices_sockets_and_closed_fds_alone() -> None:
    """stdin redirected from a file, /dev/null, a socket, or closed: 0, no error, and the
    fd is unchanged (tee reads them as before)."""
    import socket

    with tempfile.TemporaryFile() as file, open(os.devnull, "rb") as null:
        left, right = socket.socketpair()
        with left, right:
            found = [grow_pipe(fd) for fd in (file.fileno(), null.fileno(), left.fileno())]
    closed_fd, other = os.pipe()
    os.close(closed_fd)
    os.close(other)
    found.append(grow_pipe(closed_fd))
    assert [0, 0, 0, 0] == found


@linux_pipes
def test_a_pipe_over_the_users_pipe_quota_is_read_as_it_is(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over /proc/sys/fs/pipe-user-pages-soft the kernel refuses to grow a pipe (EPERM):
    grow_pipe says the size it kept instead of failing the build."""
    read_end, _ = pipe
    real_fcntl = fcntl.fcntl
    before = real_fcntl(read_end, F_GETPIPE_SZ)

    def refusing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETPIPE_SZ:
            raise PermissionError(1, "Operation not permitted")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(capture.fcntl, "fcntl", refusing)
    assert before == grow_pipe(read_end)


def test_the_pump_reads_at_most_read_size_and_copies_every_byte_to_both_sides() -> None:
    """3 MiB in writes of 1.5 MiB through a grown pipe, read 256 KiB at a time: each piece
    the sink keeps is at most that (so a small --buffer-size bounds what one read holds),
    and the sink and the terminal both get every byte, in order."""
    read_end, write_end = os.pipe()  # the writer thread closes write_end
    grow_pipe(read_end)
    data = bytes(range(256)) * (3 * 4096)
    terminal_read, terminal_write = os.pipe()
    shown = bytearray()

    def write() -> None:
        with os.fdopen(write_end, "wb", closefd=True) as writer:
            writer.write(data[: len(data) // 2])
            writer.write(data[len(data) // 2 :])

    def show() -> None:
        while piece := os.read(terminal_read, 1 << 20):
            shown.extend(piece)

    threads = [threading.Thread(target=write), threading.Thread(target=show)]
    for thread in threads:
        thread.start()
    kept: list[bytes] = []
    pump = _Pump({read_end: terminal_write}, kept.append, read_size=256 * 1024)
    while pump.sources:
        pump.step(5.0)
    os.close(terminal_write)
    for thread in threads:
        thread.join(10)
    os.close(terminal_read)
    os.close(read_end)
    assert [] == [len(piece) for piece in kept if len(piece) > 256 * 1024]
    assert data == b"".join(kept)
    assert data == bytes(shown)


@linux_pipes
def test_the_pump_grows_a_pipe_only_once_output_floods_it(pipe: tuple[int, int]) -> None:
    """Lines trickling in keep the default pipe (the user's pipe-pages quota is shared by all
    they run); a read that finds the pipe full grows it to one read, once."""
    read_end, write_end = pipe
    default = fcntl.fcntl(read_end, F_GETPIPE_SZ)
    kept: list[bytes] = []
    pump = _Pump({read_end: None}, kept.append, read_size=READ_SIZE)  # type: ignore[dict-item]
    for i in range(50):
        os.write(write_end, b"line %d\n" % i)
        pump.step(1.0)
    assert default == fcntl.fcntl(read_end, F_GETPIPE_SZ)
    os.write(write_end, b"x" * default)  # a full pipe: output arrives faster than it is read
    pump.step(1.0)
    assert min(READ_SIZE, pipe_max_size()) == fcntl.fcntl(read_end, F_GETPIPE_SZ)
    assert b"".join(b"line %d\n" % i for i in range(50)) + b"x" * default == b"".join(kept)


def test_a_read_that_finds_nothing_on_a_shared_non_blocking_fd_is_not_the_end(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdin shared with another reader and left O_NONBLOCK: select says readable, the other
    reader takes the bytes first, our read gets EAGAIN. That is no EOF: reading goes on and
    what comes later is kept."""
    read_end, write_end = pipe
    os.set_blocking(read_end, False)
    kept: list[bytes] = []
    pump = _Pump({read_end: None}, kept.append)  # type: ignore[dict-item]
    # The race, made certain: select reports the fd ready although nothing is there.
    monkeypatch.setattr(capture.select, "select", lambda r, w, x, t: (list(r), [], []))
    pump.step(0)
    assert [read_end] == list(pump.sources)
    monkeypatch.undo()
    os.write(write_end, b"later\n")
    os.close(write_end)
    while pump.sources:
        pump.step(1.0)
    assert [b"later\n"] == kept
