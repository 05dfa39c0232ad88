"""Helpers the benchmark scripts share (they run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np


def drop_cache(path: str) -> None:
    """Evict ``path`` from the page cache (pages mapped right now stay; close maps first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages survive DONTNEED
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def preload(arrays: Iterable[np.ndarray]) -> None:
    """Read arrays once through their own memmaps (warm page cache, mapped pages)."""
    for arr in arrays:
        step = 1 << 24
        for lo in range(0, len(arr), step):
            np.asarray(arr[lo : lo + step]).sum()
