"""Numba kernels of the lookahead windows (see :mod:`._lookahead`)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["locate_sorted", "mark_taken", "merge_unique"]


@njit(cache=True, nogil=True)
def merge_unique(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> int:
    """Sorted union of sorted distinct ``a`` and ``b`` into ``out``; its length."""
    i = j = n = 0
    while i < a.shape[0] and j < b.shape[0]:
        if a[i] < b[j]:
            out[n] = a[i]
            i += 1
        elif b[j] < a[i]:
            out[n] = b[j]
            j += 1
        else:
            out[n] = a[i]
            i += 1
            j += 1
        n += 1
    while i < a.shape[0]:
        out[n] = a[i]
        i += 1
        n += 1
    while j < b.shape[0]:
        out[n] = b[j]
        j += 1
        n += 1
    return n


@njit(cache=True, nogil=True)
def locate_sorted(keys: np.ndarray, ids: np.ndarray, pos: np.ndarray, at: np.ndarray) -> int:
    """Request positions ``pos`` of ``ids`` found in sorted distinct ``keys``, at ``at``.

    Sorts the requests and walks both arrays once: a binary search per id
    into a window of millions of keys misses the CPU caches at every step.
    Returns how many were found (``pos`` ascending).
    """
    order = np.argsort(ids)
    at[:] = -1
    k = 0
    for r in range(order.shape[0]):
        i = order[r]
        v = ids[i]
        while k < keys.shape[0] and keys[k] < v:
            k += 1
        if k == keys.shape[0]:
            break
        if keys[k] == v:
            at[i] = k
    # Compact in request order (in place: the write index never passes the read one).
    n = 0
    for i in range(ids.shape[0]):
        if at[i] >= 0:
            pos[n] = i
            at[n] = at[i]
            n += 1
    return n


@njit(cache=True, nogil=True)
def mark_taken(taken: np.ndarray, at: np.ndarray) -> int:
    """Mark window rows ``at`` taken; how many were taken before (duplicates in ``at`` included)."""
    again = 0
    for i in range(at.shape[0]):
        a = at[i]
        if taken[a]:
            again += 1
        else:
            taken[a] = True
    return again
