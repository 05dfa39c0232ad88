"""Numba row-copy kernels for the CPU side of the tiers.

Rows are viewed as bytes (``uint8[n, row_bytes]``) so one compiled kernel
serves every feature dtype. Torch's CPU ``index_select``/``index_copy_`` on
rows of a few hundred bytes copy element by element; these copy whole rows
and release the GIL, so a fetch thread runs them beside the training thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refresh_train.cpu_prefetch import prefetch

__all__ = ["put_rows", "take_rows"]


# Rows requested this many iterations ahead of their copy: random rows of a
# large cache miss the CPU caches and TLB, and prefetching keeps many of those
# misses in flight instead of one at a time.
_AHEAD = 16
_LINE_BYTES = 64


@njit(cache=True, nogil=True)
def take_rows(src: np.ndarray, src_rows: np.ndarray, dst: np.ndarray, dst_rows: np.ndarray) -> None:
    """``dst[dst_rows[i]] = src[src_rows[i]]`` for every i (``src`` C-contiguous)."""
    width = src.shape[1]
    flat = src.reshape(src.size)
    step = max(1, _LINE_BYTES // src.itemsize)
    n = src_rows.shape[0]
    for i in range(n):
        if i + _AHEAD < n:
            base = src_rows[i + _AHEAD] * width
            for k in range(0, width, step):
                prefetch(flat, base + k)
        s = src_rows[i]
        d = dst_rows[i]
        for j in range(width):
            dst[d, j] = src[s, j]


@njit(cache=True, nogil=True)
def put_rows(src: np.ndarray, dst: np.ndarray, dst_rows: np.ndarray) -> None:
    """``dst[dst_rows[i]] = src[i]`` for every i."""
    width = src.shape[1]
    for i in range(dst_rows.shape[0]):
        d = dst_rows[i]
        for j in range(width):
            dst[d, j] = src[i, j]
