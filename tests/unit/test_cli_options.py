"""The command line's option parsing: sizes and seconds. Pure."""

from __future__ import annotations

import pytest

from gcs_log_sink.cli import parse_seconds, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("64K", 64 * 1024),
        ("64k", 64 * 1024),
        ("64M", 64 * 1024**2),
        ("64MiB", 64 * 1024**2),
        ("64MB", 64 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", 1536 * 1024**2),
        ("2T", 2 * 1024**4),
        ("100B", 100),
    ],
)
def test_sizes_take_binary_suffixes(text: str, size: int) -> None:
    """K, M, G and T are powers of 1024, with or without B/iB, any case."""
    assert size == parse_size(text)


@pytest.mark.parametrize("text", ["", "M", "12Q", "-1M", "0", "nan", "inf", "1e400", "one"])
def test_bad_sizes_are_refused_with_the_text(text: str) -> None:
    """Anything that is not a positive size is a ValueError naming what was given."""
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_seconds() -> None:
    """Positive finite seconds; zero only where allowed."""
    assert 2.5 == parse_seconds("2.5")
    assert 0.0 == parse_seconds("0", zero_ok=True)
    with pytest.raises(ValueError, match="at least 1 seconds"):
        parse_seconds("0.5", minimum=1.0)
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError, match="seconds"):
            parse_seconds(bad)
