"""Applying a permutation to row arrays out of core (the converter's feature pass).

:func:`permute_rows` writes ``out[j] = transform(src[old_id[j]])`` block by
block with one of two plans:

``gather``
    for each block of new ids, read the old rows in ascending order (a
    forward sweep over the source) and scatter them into the block. Cheap when
    the source fits in the page cache; otherwise each block sweeps the whole
    source file.
``shuffle``
    read the source once front to back and append each row to the bucket
    file of its new-id block; then load each bucket (its rows arrive in old-id
    order, which fixes their new positions) and write the block. Four
    sequential streams of the data, whatever the size: the plan for sources
    larger than RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from numpy.typing import NDArray

from ..kernels import as_words, copy_rows, exponent_mask
from ..readers import MappedRows, RowSource
from ._kernels import select_window, stable_bucket_order
from ._row_writers import (
    _ALIGN,
    _STAGING_BYTES,
    _WRITE_THREADS,
    _round_rows,
    _SegmentFile,
    _Writer,
    aligned_empty,
)
from .reorder import _check_table

__all__ = ["STRATEGIES", "choose_strategy", "permute_rows"]

STRATEGIES = ("auto", "gather", "shuffle")
Tick = Callable[[int, int], None]  # (rows, bytes) done


def choose_strategy(src_bytes: int, work_bytes: int, requested: str = "auto") -> str:
    """``gather`` when the source fits the budget or comfortably in the page cache, else ``shuffle``."""
    if requested not in STRATEGIES:
        raise ValueError(f"strategy={requested!r}; use one of {', '.join(STRATEGIES)}")
    if requested != "auto":
        return requested
    if src_bytes <= work_bytes // 2:
        return "gather"
    if src_bytes <= psutil.virtual_memory().available // 2:
        return "gather"
    return "shuffle"


def permute_rows(
    src: RowSource,
    write: Callable[[int, np.ndarray], None],
    out_dtype: np.dtype,
    new_id: NDArray[np.integer],
    read_old_id: Callable[[int, int], NDArray[np.int64]],
    work_bytes: int,
    tmp_dir: Path,
    strategy: str,
    tick: Callable[[str, int], Tick] | None = None,
    *,
    check_finite: bool = False,
    on_nonfinite: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``src[old_id[j]]`` (cast to ``out_dtype``) as row ``j`` for every new id ``j``.

    Parameters
    ----------
    src
        Source rows (random access for ``gather``; any for ``shuffle``).
    write
        ``write(first_new_id, block)`` stores a block of output rows.
    out_dtype
        dtype of the output rows; they keep the source's row shape.
    new_id, read_old_id
        The permutation: an in-memory table ``new_id[old]`` (``shuffle``
        needs it; ``gather`` uses it when it holds all ``len(src)`` ids, and
        otherwise reads each block's ``old_id[a:b]`` with the reader and
        sorts it).
    work_bytes
        Memory the blocks may use; buffers are allocated once and reused
        (first touches of fresh pages are a large part of a copy's cost).
    tmp_dir
        Where the ``shuffle`` plan keeps its bucket files.
    strategy
        ``'gather'`` or ``'shuffle'`` (see the module docstring).
    tick
        ``tick(phase, total_rows)`` returns a progress callback.
    check_finite, on_nonfinite
        Look for NaN/inf (also values that overflow ``out_dtype``) and call
        ``on_nonfinite(old_id)`` for the first one found (it should raise).

    Returns
    -------
    dict
        ``{"strategy": ..., "blocks": ...}``.
    """
    job = _Job(src, write, np.dtype(out_dtype), new_id, read_old_id, work_bytes, tick,
               check_finite, on_nonfinite)  # fmt: skip
    if strategy == "gather":
        return _gather(job)
    if strategy != "shuffle":
        raise ValueError(f"strategy={strategy!r}; use 'gather' or 'shuffle'")
    return _Shuffle(job, tmp_dir).run()


def _noop(rows: int, nbytes: int) -> None:
    pass


class _Job:
    """The arguments of one :func:`permute_rows` call, and the row sizes both plans use."""

    def __init__(
        self,
        src: RowSource,
        write: Callable[[int, np.ndarray], None],
        out_dtype: np.dtype,
        new_id: NDArray[np.integer],
        read_old_id: Callable[[int, int], NDArray[np.int64]],
        work_bytes: int,
        tick: Callable[[str, int], Tick] | None,
        check_finite: bool,
        on_nonfinite: Callable[[int], None] | None,
    ) -> None:
        self.src, self.write, self.out_dtype = src, write, out_dtype
        self.new_id, self.read_old_id, self.work_bytes = new_id, read_old_id, work_bytes
        self.tick, self.check_finite, self.on_nonfinite = tick, check_finite, on_nonfinite
        self.n = len(src)
        self.row_shape = tuple(src.shape[1:])
        width = int(np.prod(self.row_shape, dtype=np.int64))
        self.in_rb = max(1, src.dtype.itemsize * width)  # bytes per source row
        self.out_rb = max(1, out_dtype.itemsize * width)  # bytes per output row
        self.cast = src.dtype != out_dtype
        self.tmp_rb = self.in_rb if self.cast else 0  # a source-dtype buffer before the cast

    def progress(self, phase: str) -> Tick:
        """The progress callback of ``phase`` (a no-op without ``tick``)."""
        return self.tick(phase, self.n) if self.tick else _noop

    def report(self, old: int) -> None:
        """Old row ``old`` holds NaN or inf: tell ``on_nonfinite``, and raise if it did not."""
        if self.on_nonfinite is not None:
            self.on_nonfinite(old)
        raise ValueError(f"row {old} holds NaN or inf")

    def finish(self, buf: np.ndarray, raw: np.ndarray | None, k: int) -> np.ndarray:
        """``buf[:k]``, holding the gathered rows ``raw[:k]`` cast (``raw`` is None: no cast)."""
        if raw is None:
            return buf[:k]
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(buf[:k], raw[:k], casting="unsafe")
        return buf[:k]

    def first_overflow(self, rows: np.ndarray) -> int:
        """Index of the first row of ``rows`` that overflowed the cast (when checking), else -1."""
        if self.cast and self.check_finite:
            return _first_nonfinite(rows)
        return -1


def _gather(job: _Job) -> dict[str, Any]:
    """The ``gather`` plan: per block of new ids, read its old rows in ascending order."""
    src, n, row_shape = job.src, job.n, job.row_shape
    if not src.random_access:
        raise ValueError("the gather plan needs a random-access source")
    # Two output buffers: block i is written by a helper thread (pwrite
    # releases the GIL) while block i + 1 is gathered (a nogil kernel).
    block = _round_rows(max(1, min(n, job.work_bytes // (job.tmp_rb + 2 * job.out_rb + 48))))
    ranges = [(a, min(n, a + block)) for a in range(0, n, block)]
    outs = [aligned_empty((block, *row_shape), job.out_dtype) for _ in range(min(2, len(ranges)))]
    raw = aligned_empty((block, *row_shape), src.dtype) if job.cast else None
    progress = job.progress("gather")
    old_ids = _BlockOldIds(job, block)
    with _Writer(job.write, _WRITE_THREADS) as writer:
        for i, (a, b) in enumerate(ranges):
            k = b - a
            out = outs[i % len(outs)]
            ids, order = old_ids(a, b)
            writer.wait_for_buffer(i % len(outs))
            target = as_words(raw[:k] if raw is not None else out[:k])
            bad = src.gather_into(ids, order, target, job.check_finite)
            if bad >= 0:
                job.report(int(ids[bad]))
            rows = job.finish(out, raw, k)
            bad = job.first_overflow(rows)
            if bad >= 0:
                job.report(int(ids[np.flatnonzero(order == bad)[0]]))
            writer.submit(i % len(outs), a, rows)
            progress(k, k * job.out_rb)
            del ids, order  # without the table they are fresh arrays: free them before the next
    return {"strategy": "gather", "blocks": len(ranges)}


class _BlockOldIds:
    """``(ids, order)`` of new ids ``[a, b)``: their old ids ascending, and places in the block."""

    def __init__(self, job: _Job, block: int) -> None:
        self.job = job
        # With the table in memory, a block's old ids come out of one scan of
        # it already in ascending order, into buffers reused for every block.
        # Reading old_id back and argsorting it (0.1-0.35 s per 2M-row block,
        # on the main thread, while the gather threads wait) cost the 10M-row
        # benchmark's feature pass 2.5 % (5.09 s -> 4.97 s, 4 paired runs).
        self.scan = len(job.new_id) == job.n
        if self.scan:
            _check_table(job.new_id, "new_id")
            self.ids_buf = np.empty(block, dtype=np.int64)
            self.pos_buf = np.empty(block, dtype=np.int64)
            self.seen = np.empty(block, dtype=np.uint8)

    def __call__(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        k = b - a
        if not self.scan:
            old = self.job.read_old_id(a, b)
            order = np.argsort(old)
            return np.ascontiguousarray(old[order]), order
        ids, order = self.ids_buf[:k], self.pos_buf[:k]
        self.seen[:k] = 0
        if select_window(self.job.new_id, a, b, ids, order, self.seen[:k]) != k:
            raise ValueError(
                f"new_id is not a permutation: new ids [{a}, {b}) are not "
                "each held by exactly one node"
            )
        return ids, order


class _Shuffle:
    """The ``shuffle`` plan: :meth:`split` the source into bucket files, then :meth:`place` each."""

    def __init__(self, job: _Job, tmp_dir: Path) -> None:
        self.job = job
        n, work_bytes = job.n, job.work_bytes
        # Four row buffers in place() (two read, two written), plus ids, orders and counts.
        self.bucket_rows = _round_rows(max(1, work_bytes // (4 * job.out_rb + 48)))
        self.n_buckets = max(1, -(-n // self.bucket_rows))
        cast_rb = job.out_rb if job.cast else 0
        self.chunk = max(1, min(n, work_bytes // (2 * job.in_rb + cast_rb + 48)))
        self.paths = [tmp_dir / f"shuffle_{k}.raw" for k in range(self.n_buckets)]
        self.files = [_SegmentFile(p) for p in self.paths]

    def run(self) -> dict[str, Any]:
        try:
            self.split()  # its buffers are freed before place() allocates its own
            self.place()
        finally:
            for f in self.files:
                f.close()
                f.path.unlink(missing_ok=True)
        return {"strategy": "shuffle", "blocks": self.n_buckets}

    def split(self) -> None:
        """Phase 1: source rows, front to back, appended to the bucket of their new id."""
        job, chunk, n = self.job, self.chunk, self.job.n
        grouped = aligned_empty((chunk, *job.row_shape), job.src.dtype)
        mapped = isinstance(job.src, MappedRows)
        rowbuf = aligned_empty((chunk, *job.row_shape), job.src.dtype) if mapped else None
        out = aligned_empty((chunk, *job.row_shape), job.out_dtype) if job.cast else grouped
        staging = aligned_empty((_STAGING_BYTES,), np.dtype(np.uint8))
        try:
            progress = job.progress("shuffle: split")
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                block, counts = self._group_chunk(s, e, rowbuf, grouped, out)
                ends = np.cumsum(counts)
                for b in np.flatnonzero(counts):
                    part = memoryview(block[ends[b] - counts[b] : ends[b]]).cast("B")
                    self.files[b].append(part, staging)
                progress(e - s, (e - s) * job.in_rb)
        finally:
            del staging

    def _group_chunk(
        self, s: int, e: int, rowbuf: np.ndarray | None, grouped: np.ndarray, out: np.ndarray
    ) -> tuple[np.ndarray, NDArray[np.int64]]:
        """Source rows ``[s, e)`` by bucket, in old-id order within each, and rows per bucket.

        The rows are checked for NaN/inf and cast to the output dtype on the way.
        """
        job, k = self.job, e - s
        if rowbuf is not None:  # a MappedRows source reads into a buffer
            rows = job.src.read(s, e, rowbuf)  # type: ignore[call-arg]
        else:
            rows = np.ascontiguousarray(job.src.read(s, e))
        bucket = np.asarray(job.new_id[s:e], dtype=np.int64) // self.bucket_rows
        counts = np.zeros(self.n_buckets, dtype=np.int64)
        order = np.empty(k, dtype=np.int64)
        stable_bucket_order(bucket, counts, order)
        del bucket
        # grouped[i] = rows[order[i]]: rows by bucket, old-id order within each
        mask = exponent_mask(job.src.dtype) if job.check_finite else as_words(rows).dtype.type(0)
        bad = copy_rows(as_words(rows), order, np.arange(k), as_words(grouped[:k]), mask)
        if bad >= 0:
            job.report(s + int(order[bad]))
        del rows
        block = job.finish(out, grouped if job.cast else None, k)
        bad = job.first_overflow(block)
        if bad >= 0:
            job.report(s + int(order[bad]))
        return block, counts

    def _span(self, b: int) -> tuple[int, int]:
        """New ids ``[lo, hi)`` of bucket ``b``."""
        return b * self.bucket_rows, min(self.job.n, (b + 1) * self.bucket_rows)

    def _load(self, b: int, raw: np.ndarray) -> None:
        """Read bucket file ``b`` into ``raw``, without its padding."""
        lo, hi = self._span(b)
        want = (hi - lo) * self.job.out_rb
        got = self.files[b].read_compact(raw)
        if got != want:
            raise OSError(f"bucket file {str(self.files[b].path)!r} holds {got} bytes, not {want}")

    def place(self) -> None:
        """Phase 2: each bucket, whose rows arrive in old-id order, written in new-id order.

        The next bucket is read on a helper thread while this one is placed
        and the previous one written: the three overlap.
        """
        job, n_buckets, out_rb, row_shape = (
            self.job,
            self.n_buckets,
            self.job.out_rb,
            self.job.row_shape,
        )
        progress = job.progress("shuffle: place")
        two = 2 if n_buckets > 1 else 1
        rows = min(job.n, self.bucket_rows)
        # Room for the bucket file's padding: at most 4 KiB per appended segment.
        room = rows * out_rb + max((len(f.segments) for f in self.files), default=0) * _ALIGN
        raws = [aligned_empty((room,), np.dtype(np.uint8)) for _ in range(two)]
        placed = [aligned_empty((rows, *row_shape), job.out_dtype) for _ in range(two)]
        zero = as_words(placed[0]).dtype.type(0)
        with (
            _Writer(job.write, _WRITE_THREADS) as writer,
            ThreadPoolExecutor(1, thread_name_prefix="refresh-read") as reader,
        ):
            pending = reader.submit(self._load, 0, raws[0])
            for b, path in enumerate(self.paths):
                lo, hi = self._span(b)
                k = hi - lo
                order = np.argsort(job.read_old_id(lo, hi))
                pending.result()
                if b + 1 < n_buckets:  # its buffer held bucket b - 1, placed already
                    pending = reader.submit(self._load, b + 1, raws[(b + 1) % two])
                slot = b % two
                writer.wait_for_buffer(slot)
                # The i-th row of the bucket belongs at new position order[i].
                data = raws[slot][: k * out_rb].view(job.out_dtype).reshape(k, *row_shape)
                copy_rows(as_words(data[:k]), np.arange(k), order, as_words(placed[slot][:k]), zero)
                writer.submit(slot, lo, placed[slot][:k])
                self.files[b].close()
                path.unlink()
                progress(k, k * out_rb)


def _first_nonfinite(block: np.ndarray) -> int:
    """Index of the first row of a float ``block`` with NaN or inf, else -1."""
    if block.dtype.kind != "f" or len(block) == 0:
        return -1
    step = max(1, (1 << 22) // max(1, int(np.prod(block.shape[1:], dtype=np.int64))))
    for a in range(0, len(block), step):
        part = block[a : a + step]
        ok = np.isfinite(part).reshape(len(part), -1).all(axis=1)
        if not ok.all():
            return a + int(np.argmin(ok))
    return -1
