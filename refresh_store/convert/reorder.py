"""Degree reordering and applying a permutation to row arrays out of core.

New id 0 is the node of highest degree in the sampling graph, ties broken by
old id, so that "the hottest K rows" of a store is the prefix ``[0, K)``.
The order is a stable counting sort by degree: one pass for a histogram, one
to assign ids, both over a node table that is turned into the new ids in
place, so the converter holds one integer per node and no more.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from ._kernels import (
    assign_degree_ids,
    collect_at_least,
    degree_histogram,
    invert_window,
)

__all__ = ["degree_order", "degrees_to_new_ids", "degree_runs", "write_inverse"]

# Degrees below this are counted in a dense histogram; the few nodes above it
# are sorted explicitly (at most E / cap of them).
_DENSE_DEGREE_CAP = 1 << 20

Tick = Callable[[int, int], None]  # (rows, bytes) done


def _check_table(table: np.ndarray, name: str) -> None:
    if table.ndim != 1 or table.dtype not in (np.int32, np.int64) or not table.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a contiguous 1-D int32 or int64 array, got "
            f"{table.dtype} of shape {table.shape}"
        )


def degrees_to_new_ids(table: NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Turn a table of degrees into new ids, in place.

    Parameters
    ----------
    table
        ``table[v]`` = degree of node ``v`` (int32 or int64, contiguous, >= 0).
        On return ``table[v]`` = new id of ``v``.

    Returns
    -------
    hist, big_degrees
        The degree histogram (``hist[d]`` nodes of degree ``d`` for ``d <
        len(hist)``) and the degrees above it in descending order: together
        the degree of every new id (see :func:`degree_runs`).
    """
    _check_table(table, "table")
    n = len(table)
    if n and int(table.min()) < 0:
        raise ValueError("table holds a negative degree")
    cap = min(_DENSE_DEGREE_CAP, n + 1)
    hist = np.zeros(cap + 1, dtype=np.int64)
    degree_histogram(table, cap, hist)
    n_big = int(hist[cap])
    big_ids = np.empty(n_big, dtype=np.int64)
    big_deg = np.empty(n_big, dtype=np.int64)
    collect_at_least(table, cap, big_ids, big_deg)
    # Big nodes first, by degree descending then old id; then each degree
    # below cap from high to low, where nodes keep their old-id order.
    rank = np.lexsort((big_ids, -big_deg))
    big_new = np.empty(n_big, dtype=np.int64)
    big_new[rank] = np.arange(n_big)
    dense = hist[:cap]
    start = np.empty(cap, dtype=np.int64)
    # start[d] = n_big + nodes of degree in (d, cap)
    after = np.cumsum(dense[::-1])[::-1]
    start[:-1] = after[1:]
    start[-1] = 0
    start += n_big
    assign_degree_ids(table, cap, start, big_new)
    return dense, big_deg[rank]


def degree_runs(
    hist: NDArray[np.int64], big_degrees: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Degrees of new ids ``0, 1, ...`` as runs ``(degree, count)``, in id order."""
    nz = np.flatnonzero(hist)[::-1]
    degs = np.concatenate([big_degrees, nz]).astype(np.int64)
    counts = np.concatenate([np.ones(len(big_degrees), dtype=np.int64), hist[nz]])
    return degs, counts


def degree_order(degrees: NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Degree ordering of nodes held in memory.

    Parameters
    ----------
    degrees
        ``[N]`` non-negative degrees.

    Returns
    -------
    new_id, old_id
        ``new_id[v]`` is the new id of old node ``v`` (0 = highest degree, ties
        by old id); ``old_id`` is its inverse.

    Examples
    --------
    >>> degree_order(np.array([1, 3, 1, 0]))[1]
    array([1, 0, 2, 3])
    """
    table = np.array(degrees, dtype=np.int64)
    if table.ndim != 1:
        raise ValueError(f"degrees must be 1-D, got shape {table.shape}")
    degrees_to_new_ids(table)
    old = np.empty_like(table)
    old[table] = np.arange(len(table))
    return table, old


def write_inverse(
    new_id: NDArray[np.integer], write: Callable[[int, np.ndarray], None], window_rows: int
) -> None:
    """Write ``old_id`` (the inverse of ``new_id``) in windows of ``window_rows`` new ids.

    Each window scans the whole table once and keeps only a window-sized
    buffer, so memory stays bounded whatever N is.
    """
    _check_table(new_id, "new_id")
    n = len(new_id)
    step = max(1, int(window_rows))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        out = np.full(hi - lo, -1, dtype=np.int64)
        invert_window(new_id, lo, hi, out)
        if np.any(out < 0):
            raise ValueError("new_id is not a permutation")
        write(lo, out)
