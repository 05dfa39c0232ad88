"""One layer of sampling: draw each destination's neighbours, then relabel them.

:func:`sample_layer` draws a fanout over each destination's CSC positions;
:func:`sample_layer_typed` draws one per (destination, relation). Both
return ``(src, edge_index[, edge_type])`` with the block's source ids
(destinations first) and its local ``edge_index``, or ``src`` None and the
first destination that appears twice. With several threads the draws run in
chunks of about equal edge counts, and the homogeneous path relabels each
chunk as soon as it is drawn (:func:`_parallel_sample_relabel`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from refresh_train import sampler_kernels as K
from refresh_train._sampler_relabel import (
    Scratch,
    checked,
    map_destinations,
    relabel,
    relabel_hashed,
)

if TYPE_CHECKING:
    from refresh_train.sampler import NeighborSampler

# Fewer destinations than this are drawn on the calling thread alone.
_PARALLEL_MIN_DST = 256


def sample_layer(
    s: NeighborSampler,
    sc: Scratch,
    dst: np.ndarray,
    fanout: int,
    lkey: np.uint64,
    mapped: bool,
    expand: bool,
):
    """Up to ``fanout`` in-neighbours of each of ``dst``: ``(src, edge_index)``.

    ``mapped``: the thread's id map already gives ``dst[i]`` the local id
    ``i``. ``expand``: also look up the new sources' CSC starts and degrees
    (the next block's destinations).
    """
    n = dst.shape[0]
    offsets = sc.get("offsets", n + 1, np.int64)
    if not s._dense_map:
        starts = sc.get("starts", n, np.int64)
        degs = sc.get("degs", n, np.int64)
        total = checked(K.count_kernel(s.indptr, dst, fanout, offsets, starts, degs))
        edge_index = np.empty((2, total), dtype=np.int64)
        head = (s.indices, dst, starts, degs, offsets, lkey)
        _draw(s, K.sample_kernel, head, (edge_index[0],), offsets, n, total)
        return relabel_hashed(sc, dst, offsets, total, edge_index, s.num_nodes)
    if mapped:
        # The previous block's relabelling left dst's CSC starts and
        # degrees in slots 0..n-1 (and the id map giving dst[i] id i).
        total = int(K.offsets_kernel(sc.get("degs", n, np.int64, keep=n), n, fanout, offsets))
    else:
        starts = sc.get("starts", n, np.int64)
        degs = sc.get("degs", n, np.int64)
        total = checked(K.count_kernel(s.indptr, dst, fanout, offsets, starts, degs))
    # Slots n .. n+total-1 receive the new sources (and their CSC lookups).
    starts = sc.get("starts", n + total, np.int64, keep=n)
    degs = sc.get("degs", n + total, np.int64, keep=n)
    src_ids, num = map_destinations(sc, dst, n, total, mapped, s.num_nodes)
    if num < 0:
        return None, dst[-1 - num]
    # Row 0 receives the neighbours' global ids, relabelled in place below.
    edge_index = np.empty((2, total), dtype=np.int64)
    if s._pool is None or n < _PARALLEL_MIN_DST:
        K.sample_kernel(s.indices, dst, starts, degs, offsets, lkey, 0, n, edge_index[0])
        num = relabel(sc, s.indptr, 0, n, offsets, src_ids, edge_index, num, starts, degs, expand)
    else:
        num = _parallel_sample_relabel(
            s, sc, dst, starts, degs, offsets, lkey, total, src_ids, edge_index, num, expand
        )
    return src_ids[:num].astype(np.int64), edge_index


def sample_layer_typed(
    s: NeighborSampler,
    sc: Scratch,
    dst: np.ndarray,
    rel_fanouts: np.ndarray,
    lkey: np.uint64,
    mapped: bool,
):
    """One layer of per-relation sampling: ``(src, edge_index, edge_type)``.

    Draws per (destination, relation) unit (``typed_sample_kernel``),
    then relabels exactly as the homogeneous path does, with the units'
    edges grouped per destination.
    """
    n = dst.shape[0]
    R = s.num_relations
    uoff = sc.get("t_offsets", n * R + 1, np.int64)
    starts = sc.get("t_starts", n, np.int64)
    degs = sc.get("t_degs", n, np.int64)
    counts = sc.get("t_counts", n * R, np.int64)
    total = checked(
        K.typed_count_kernel(s.indptr, s.edge_type, dst, rel_fanouts, uoff, starts, degs, counts)
    )
    edge_index = np.empty((2, total), dtype=np.int64)
    etype = np.empty(total, dtype=np.int8)
    head = (s.indices, s.edge_type, dst, starts, degs, counts, uoff, R, lkey)
    _draw(s, K.typed_sample_kernel, head, (edge_index[0], etype), uoff[: n * R + 1 : R], n, total)
    # Edges per destination: the units of dst[i] are i*R .. i*R+R-1.
    offsets = np.ascontiguousarray(uoff[: n * R + 1 : R])
    if not s._dense_map:
        src, edge_index = relabel_hashed(sc, dst, offsets, total, edge_index, s.num_nodes)
        return src, edge_index, None if src is None else etype
    src_ids, num = map_destinations(sc, dst, n, total, mapped, s.num_nodes)
    if num < 0:
        return None, dst[-1 - num], None
    unused = sc.get("t_unused", 1, np.int64)
    num = relabel(sc, s.indptr, 0, n, offsets, src_ids, edge_index, num, unused, unused, False)
    return src_ids[:num].astype(np.int64), edge_index, etype


def _chunk_bounds(offsets: np.ndarray, n: int, total: int, parts: int) -> list[int]:
    # Chunk bounds of about equal edge counts, so one hub-heavy chunk does
    # not hold the others up.
    cuts = np.searchsorted(offsets[: n + 1], np.linspace(0, total, parts + 1)[1:-1])
    return [0, *np.unique(cuts).tolist(), n]


def _draw(
    s: NeighborSampler, kernel: Callable, head: tuple, tail: tuple, offsets, n: int, total: int
) -> None:
    """``kernel(*head, lo, hi, *tail)`` over destinations ``[0, n)``, in chunks on the pool."""
    pool: ThreadPoolExecutor | None = s._pool
    if pool is None or n < _PARALLEL_MIN_DST:
        kernel(*head, 0, n, *tail)
        return
    bounds = _chunk_bounds(offsets, n, total, s.num_threads * 8)
    futs = [
        pool.submit(kernel, *head, lo, hi, *tail)
        for lo, hi in zip(bounds[:-1], bounds[1:])
        if hi > lo
    ]
    for f in futs:
        f.result()


class _DrawQueue:
    """Chunks handed out in order to whichever thread asks; a failed draw stops the handing out."""

    def __init__(self, draw: Callable[[int, int], None], bounds: list[int]) -> None:
        self._draw = draw
        self.bounds = bounds
        self.count = len(bounds) - 1
        self._lock = threading.Lock()
        self._next = 0
        self._done = [threading.Event() for _ in range(self.count)]
        self.failed: list[BaseException] = []

    def take(self) -> int:
        """The next chunk to draw, or -1 when none is left (or a draw failed)."""
        with self._lock:
            c = self._next
            if c >= self.count or self.failed:
                return -1
            self._next = c + 1
            return c

    def draw(self, c: int) -> None:
        try:
            self._draw(self.bounds[c], self.bounds[c + 1])
        except BaseException as exc:  # re-raised by the caller, after every chunk settled
            self.failed.append(exc)
            raise
        finally:
            self._done[c].set()

    def work(self) -> None:
        """A worker thread's loop: draw chunks until none is left."""
        while (c := self.take()) >= 0:
            self.draw(c)

    def wait_or_draw(self, c: int) -> None:
        """Return once chunk ``c`` is drawn, drawing the next chunks meanwhile."""
        while not self._done[c].is_set():
            d = self.take()
            if d < 0:
                self._done[c].wait()
                break
            self.draw(d)

    def stop(self) -> None:
        with self._lock:
            self._next = self.count


def _parallel_sample_relabel(
    s: NeighborSampler,
    sc,
    dst,
    starts,
    degs,
    offsets,
    lkey,
    total,
    src_ids,
    edge_index,
    num,
    expand,
) -> int:
    # Workers draw chunks in order; this thread relabels chunk c as soon
    # as it is drawn (relabelling is sequential: ids follow first
    # appearance) and draws a chunk itself whenever the next one is not
    # ready, so the relabelling overlaps the other chunks' draws.
    n = dst.shape[0]
    out = edge_index[0]

    def draw(lo: int, hi: int) -> None:
        K.sample_kernel(s.indices, dst, starts, degs, offsets, lkey, lo, hi, out)

    queue = _DrawQueue(draw, _chunk_bounds(offsets, n, total, s.num_threads * 16))
    bounds = queue.bounds
    futs = [s._pool.submit(queue.work) for _ in range(s.num_threads - 1)]
    try:
        for c in range(queue.count):
            queue.wait_or_draw(c)
            if queue.failed:
                break
            num = relabel(
                sc, s.indptr, bounds[c], bounds[c + 1], offsets, src_ids, edge_index, num,
                starts, degs, expand,
            )  # fmt: skip
    finally:
        queue.stop()  # stop the workers
        for f in futs:
            f.result()
    return num
