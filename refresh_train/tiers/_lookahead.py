"""Lookahead windows: the disk rows of several upcoming batches, read in one pass.

The loader samples batches ahead of their fetch. A :class:`StagedRows` holds
the union of the rows that a *window* of upcoming batches needs from below
the host tier, read with one scheduler call: sorted, deduplicated and over a
larger span of the file than one batch, so the I/O scheduler coalesces them
into far fewer, longer reads, and a row several batches of the window need
is read once. On the benchmark graph (10M nodes, batch 1024, 6 % of the rows
per batch) the loader made 7,462 disk reads per batch instead of 179,666
(``benchmarks/results/epoch_time.md``), near the disk's sequential rate.

Counting follows the tier contract (the ``rows_*`` of a chain add up to the
rows requested): the disk tier counts each row of the window once, when the
window is read; the first batch that takes a row from the window adds
nothing more, and every later one counts it as a host hit (a re-use from RAM).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from . import _lookahead_kernels as kernels

__all__ = ["StagedRows", "first_window", "merge_unique"]


def merge_unique(a: NDArray[np.int64], b: NDArray[np.int64]) -> NDArray[np.int64]:
    """The sorted union of two sorted arrays of distinct ids, in linear time."""
    out = np.empty(len(a) + len(b), np.int64)
    return out[: kernels.merge_unique(a, b, out)]


def first_window(
    needs: Sequence[NDArray[np.int64]], max_rows: int
) -> tuple[int, NDArray[np.int64]]:
    """The leading batches whose union of needs fits ``max_rows``.

    Parameters
    ----------
    needs
        Per batch, the sorted distinct ids it needs from below the host tier.
    max_rows
        Most rows one window may hold (its byte budget over the row size).

    Returns
    -------
    ``(n, ids)``
        Batches ``[0, n)`` form a window that reads the sorted distinct
        ``ids`` (``n >= 1`` when ``needs`` is not empty). When the first
        batch alone needs more than ``max_rows``, ``n`` is 1 and ``ids`` is
        empty: that batch reads its own rows when it is fetched.
    """
    union = np.empty(0, np.int64)
    for n, ids in enumerate(needs):
        merged = merge_unique(union, ids)
        if len(merged) > max_rows:
            return max(n, 1), union
        union = merged
    return len(needs), union


class StagedRows:
    """One window's rows in host RAM, until every batch of the window took its share.

    Parameters
    ----------
    ids
        Sorted distinct row ids of the window.
    rows
        Their rows (``rows[i]`` is row ``ids[i]``), CPU.
    batches
        How many batches will take rows from it; after the last one
        :meth:`release` drops the rows.
    """

    def __init__(self, ids: NDArray[np.int64], rows: torch.Tensor, batches: int) -> None:
        self.ids = ids
        self.rows: torch.Tensor | None = rows
        self.taken = np.zeros(len(ids), np.bool_)
        self.pending = int(batches)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """``(pos, at)``: request positions ``pos`` of ``ids`` that the window holds,
        at window rows ``at``."""
        if self.rows is None or len(self.ids) == 0 or len(ids) == 0:
            empty = np.empty(0, np.int64)
            return empty, empty
        pos = np.empty(len(ids), np.int64)
        at = np.empty(len(ids), np.int64)
        n = kernels.locate_sorted(self.ids, np.ascontiguousarray(ids, np.int64), pos, at)
        return pos[:n], at[:n]

    def take(self, at: NDArray[np.int64]) -> int:
        """Mark window rows ``at`` as taken; how many of them are re-uses.

        A row's first take counts nothing (the disk tier counted the row when
        the window was read); every later one, a duplicate within ``at``
        included, is a re-use.
        """
        with self._lock:
            return int(kernels.mark_taken(self.taken, at))

    def release(self) -> None:
        """One batch of the window is done; the last one drops the rows."""
        with self._lock:
            self.pending -= 1
            if self.pending <= 0:
                self.rows = None
