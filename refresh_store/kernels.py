"""Numba kernels and word views shared by the readers and the converter.

Both copy rows of any dtype as unsigned words (numba has no float16), checking
for NaN and infinity by their exponent bits on the way (:func:`copy_rows`,
:func:`as_words`, :func:`exponent_mask`), and both assign values to buckets
by binary search (:func:`find_buckets`). The MAG240M reader averages rows
with :func:`scatter_add_rows`. Plain kernels: contiguous arrays in,
caller-allocated arrays out, no checks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "WORD_TYPES",
    "as_words",
    "bucket_index",
    "copy_rows",
    "exponent_mask",
    "find_buckets",
    "scatter_add_rows",
]

#: Unsigned integer type of each item size: float rows are copied as these words.
WORD_TYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_EXPONENT = {
    2: np.uint16(0x7C00),
    4: np.uint32(0x7F800000),
    8: np.uint64(0x7FF0000000000000),
}


def as_words(arr: np.ndarray) -> np.ndarray:
    """View of a C-contiguous array as ``[rows, words]`` unsigned integers of its item size."""
    flat = arr.reshape(len(arr), -1)
    return flat.view(WORD_TYPES[arr.dtype.itemsize])


def exponent_mask(dtype: np.dtype) -> np.unsignedinteger:
    """Bits that are all set in a NaN or infinity of float ``dtype`` (0 for other dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return WORD_TYPES[dtype.itemsize](0)
    return _EXPONENT[dtype.itemsize]


@njit(cache=True, nogil=True)
def bucket_index(v, bounds):
    """k such that bounds[k] <= v < bounds[k + 1] (binary search)."""
    # bounds is increasing with bounds[0] <= v < bounds[-1]
    lo = 0
    hi = len(bounds) - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if bounds[mid] <= v:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def find_buckets(values, bounds, out):
    """out[i] = k such that bounds[k] <= values[i] < bounds[k + 1]."""
    for i in range(len(values)):
        out[i] = bucket_index(values[i], bounds)


@njit(cache=True, nogil=True)
def scatter_add_rows(acc, cnt, dst, rows):
    """acc[dst[i]] += rows[i] (in float32) and cnt[dst[i]] += 1."""
    d = acc.shape[1]
    for i in range(len(dst)):
        t = dst[i]
        cnt[t] += 1
        for j in range(d):
            acc[t, j] += np.float32(rows[i, j])


@njit(cache=True, nogil=True)
def copy_rows(src, src_rows, dst_rows, out, exp_mask):
    """out[dst_rows[k]] = src[src_rows[k]] for 2-D arrays of unsigned words.

    Float rows travel as their bit patterns (numba has no float16); when
    ``exp_mask`` (the exponent bits of the float type) is non-zero, a word with
    all exponent bits set is a NaN or an infinity: the copy stops after that
    row and returns its ``k``. Returns -1 when every row was copied.
    """
    w = src.shape[1]
    for k in range(len(src_rows)):
        r = src_rows[k]
        o = dst_rows[k]
        if exp_mask != 0:
            # Count hits over the whole row instead of branching per word: the
            # loop then vectorises and the check costs little over a plain copy.
            hits = 0
            for j in range(w):
                x = src[r, j]
                out[o, j] = x
                hits += (x & exp_mask) == exp_mask
            if hits:
                return k
        else:
            for j in range(w):
                out[o, j] = src[r, j]
    return -1
