"""Tests of refresh_store.byte_sizes.parse_size, the one size parser of every command."""

from __future__ import annotations

import pytest

from refresh_store.byte_sizes import parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 << 30),
        ("2G", 2 << 30),
        ("2GB", 2 * 10**9),
        ("512 MiB", 512 << 20),
        ("7", 7),
        (7, 7),
        ("0.5k", 512),
    ],
)
def test_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "two", "-1G", "3X", "1e999G", True, None])
def test_rejects_non_sizes_naming_the_option(text):
    with pytest.raises(ValueError, match="--memory-budget"):
        parse_size(text, name="--memory-budget")


def test_minimum():
    assert parse_size("0") == 0
    with pytest.raises(ValueError, match="at least 1 bytes"):
        parse_size("0", minimum=1)
