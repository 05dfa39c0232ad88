"""Numba row-copy kernels for the CPU side of the tiers.

Rows are viewed as bytes (``uint8[n, row_bytes]``) so one compiled kernel
serves every feature dtype. Torch's CPU ``index_select``/``index_copy_`` on
rows of a few hundred bytes copy element by element; these copy whole rows
and release the GIL, so a fetch thread runs them beside the training thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["put_rows", "take_rows"]


@njit(cache=True, nogil=True)
def take_rows(src: np.ndarray, src_rows: np.ndarray, dst: np.ndarray, dst_rows: np.ndarray) -> None:
    """``dst[dst_rows[i]] = src[src_rows[i]]`` for every i."""
    width = src.shape[1]
    for i in range(src_rows.shape[0]):
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
