"""Degree reordering and applying a permutation to row arrays out of core.

New id 0 is the node of highest degree in the sampling graph, ties broken by
old id, so that "the hottest K rows" of a store is the prefix ``[0, K)``.
The order is a stable counting sort by degree: one pass for a histogram, one
to assign ids, both over a node table that is turned into the new ids in
place, so the converter holds one integer per node and no more.

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

import ctypes
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from numpy.typing import NDArray

from ._convert_kernels import (
    assign_degree_ids,
    collect_at_least,
    copy_rows,
    degree_histogram,
    invert_window,
    select_window,
    stable_bucket_order,
)
from .io.config import aligned_empty as aligned_bytes
from .readers import MappedRows, RowSource
from .readers._base import as_words, exponent_mask

__all__ = [
    "degree_order",
    "degrees_to_new_ids",
    "degree_runs",
    "write_inverse",
    "choose_strategy",
    "permute_rows",
    "STRATEGIES",
    "aligned_empty",
]

STRATEGIES = ("auto", "gather", "shuffle")
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
    n = len(src)
    row_shape = tuple(src.shape[1:])
    out_dtype = np.dtype(out_dtype)
    width = int(np.prod(row_shape, dtype=np.int64))
    in_rb = max(1, src.dtype.itemsize * width)
    out_rb = max(1, out_dtype.itemsize * width)
    cast = src.dtype != out_dtype
    tmp_rb = in_rb if cast else 0  # a source-dtype buffer before the cast

    def noop(rows: int, nbytes: int) -> None:
        pass

    def report(old: int) -> None:
        if on_nonfinite is not None:
            on_nonfinite(old)
        raise ValueError(f"row {old} holds NaN or inf")

    def finish(buf: np.ndarray, raw: np.ndarray | None, k: int) -> np.ndarray:
        """Cast the gathered source-dtype rows into the output buffer; check overflow."""
        if raw is None:
            return buf[:k]
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(buf[:k], raw[:k], casting="unsafe")
        return buf[:k]

    if strategy == "gather":
        if not src.random_access:
            raise ValueError("the gather plan needs a random-access source")
        # Two output buffers: block i is written by a helper thread (pwrite
        # releases the GIL) while block i + 1 is gathered (a nogil kernel).
        block = _round_rows(max(1, min(n, work_bytes // (tmp_rb + 2 * out_rb + 48))))
        ranges = [(a, min(n, a + block)) for a in range(0, n, block)]
        outs = [aligned_empty((block, *row_shape), out_dtype) for _ in range(min(2, len(ranges)))]
        raw = aligned_empty((block, *row_shape), src.dtype) if cast else None
        progress = tick("gather", n) if tick else noop
        # With the table in memory, a block's old ids come out of one scan of
        # it already in ascending order, into buffers reused for every block.
        # Reading old_id back and argsorting it (0.1-0.35 s per 2M-row block,
        # on the main thread, while the gather threads wait) cost the 10M-row
        # benchmark's feature pass 2.5 % (5.09 s -> 4.97 s, 4 paired runs).
        scan = len(new_id) == n
        if scan:
            _check_table(new_id, "new_id")
            ids_buf = np.empty(block, dtype=np.int64)
            pos_buf = np.empty(block, dtype=np.int64)
            seen = np.empty(block, dtype=np.uint8)
        with _Writer(write, _WRITE_THREADS) as writer:
            for i, (a, b) in enumerate(ranges):
                k = b - a
                out = outs[i % len(outs)]
                if scan:
                    ids, order = ids_buf[:k], pos_buf[:k]
                    seen[:k] = 0
                    if select_window(new_id, a, b, ids, order, seen[:k]) != k:
                        raise ValueError(
                            f"new_id is not a permutation: new ids [{a}, {b}) are not "
                            "each held by exactly one node"
                        )
                else:
                    old = read_old_id(a, b)
                    order = np.argsort(old)
                    ids = np.ascontiguousarray(old[order])
                writer.wait_for_buffer(i % len(outs))
                target = as_words(raw[:k] if raw is not None else out[:k])
                bad = src.gather_into(ids, order, target, check_finite)
                if bad >= 0:
                    report(int(ids[bad]))
                rows = finish(out, raw, k)
                if cast and check_finite:
                    bad = _first_nonfinite(rows)
                    if bad >= 0:
                        report(int(ids[np.flatnonzero(order == bad)[0]]))
                writer.submit(i % len(outs), a, rows)
                progress(k, k * out_rb)
        return {"strategy": "gather", "blocks": len(ranges)}
    if strategy != "shuffle":
        raise ValueError(f"strategy={strategy!r}; use 'gather' or 'shuffle'")

    # Four row buffers in place() (two read, two written), plus ids, orders and counts.
    bucket_rows = _round_rows(max(1, work_bytes // (4 * out_rb + 48)))
    n_buckets = max(1, -(-n // bucket_rows))
    chunk = max(1, min(n, work_bytes // (2 * in_rb + (out_rb if cast else 0) + 48)))
    paths = [tmp_dir / f"shuffle_{k}.raw" for k in range(n_buckets)]

    files = [_SegmentFile(p) for p in paths]

    def split() -> None:
        """Phase 1: source rows, front to back, appended to the bucket of their new id."""
        grouped = aligned_empty((chunk, *row_shape), src.dtype)
        mapped = isinstance(src, MappedRows)
        rowbuf = aligned_empty((chunk, *row_shape), src.dtype) if mapped else None
        out = aligned_empty((chunk, *row_shape), out_dtype) if cast else grouped
        staging = aligned_empty((_STAGING_BYTES,), np.dtype(np.uint8))
        try:
            progress = tick("shuffle: split", n) if tick else noop
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                k = e - s
                if mapped:
                    rows = src.read(s, e, rowbuf)  # type: ignore[call-arg]
                else:
                    rows = np.ascontiguousarray(src.read(s, e))
                bucket = np.asarray(new_id[s:e], dtype=np.int64) // bucket_rows
                counts = np.zeros(n_buckets, dtype=np.int64)
                order = np.empty(k, dtype=np.int64)
                stable_bucket_order(bucket, counts, order)
                del bucket
                # grouped[i] = rows[order[i]]: rows by bucket, old-id order within each
                mask = exponent_mask(src.dtype) if check_finite else as_words(rows).dtype.type(0)
                bad = copy_rows(as_words(rows), order, np.arange(k), as_words(grouped[:k]), mask)
                if bad >= 0:
                    report(s + int(order[bad]))
                del rows
                block = finish(out, grouped if cast else None, k)
                if cast and check_finite:
                    bad = _first_nonfinite(block)
                    if bad >= 0:
                        report(s + int(order[bad]))
                ends = np.cumsum(counts)
                for b in np.flatnonzero(counts):
                    part = memoryview(block[ends[b] - counts[b] : ends[b]]).cast("B")
                    files[b].append(part, staging)
                progress(k, k * in_rb)
        finally:
            del staging

    def place() -> None:
        """Phase 2: each bucket, whose rows arrive in old-id order, written in new-id order.

        The next bucket is read on a helper thread while this one is placed
        and the previous one written: the three overlap.
        """
        progress = tick("shuffle: place", n) if tick else noop
        two = 2 if n_buckets > 1 else 1
        rows = min(n, bucket_rows)
        # Room for the bucket file's padding: at most 4 KiB per appended segment.
        room = rows * out_rb + max((len(f.segments) for f in files), default=0) * _ALIGN
        raws = [aligned_empty((room,), np.dtype(np.uint8)) for _ in range(two)]
        placed = [aligned_empty((rows, *row_shape), out_dtype) for _ in range(two)]
        zero = as_words(placed[0]).dtype.type(0)

        def span(b: int) -> tuple[int, int]:
            return b * bucket_rows, min(n, (b + 1) * bucket_rows)

        def load(b: int) -> None:
            lo, hi = span(b)
            got = files[b].read_compact(raws[b % two])
            if got != (hi - lo) * out_rb:
                raise OSError(
                    f"bucket file {str(files[b].path)!r} holds {got} bytes, not {(hi - lo) * out_rb}"
                )

        with (
            _Writer(write, _WRITE_THREADS) as writer,
            ThreadPoolExecutor(1, thread_name_prefix="refresh-read") as reader,
        ):
            pending = reader.submit(load, 0)
            for b, path in enumerate(paths):
                lo, hi = span(b)
                k = hi - lo
                order = np.argsort(read_old_id(lo, hi))
                pending.result()
                if b + 1 < n_buckets:  # its buffer held bucket b - 1, placed already
                    pending = reader.submit(load, b + 1)
                slot = b % two
                writer.wait_for_buffer(slot)
                # The i-th row of the bucket belongs at new position order[i].
                data = raws[slot][: k * out_rb].view(out_dtype).reshape(k, *row_shape)
                copy_rows(as_words(data[:k]), np.arange(k), order, as_words(placed[slot][:k]), zero)
                writer.submit(slot, lo, placed[slot][:k])
                files[b].close()
                path.unlink()
                progress(k, k * out_rb)

    try:
        split()  # its buffers are freed before place() allocates its own
        place()
    finally:
        for f in files:
            f.close()
            f.path.unlink(missing_ok=True)
    return {"strategy": "shuffle", "blocks": n_buckets}


_ALIGN = 4096  # O_DIRECT needs buffer address, file offset and length aligned to this
_MAPPED_BUFFER_BYTES = 1 << 20  # 1 MiB: buffers from here up are their own mappings
# Each block is written as this many pieces on as many threads: one O_DIRECT
# pwrite of ~1 GB spends most of its time pinning pages on one core.
_WRITE_THREADS = 2


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a 4 KiB boundary (for O_DIRECT).

    Large buffers are anonymous mappings (page-aligned by construction) with
    transparent huge pages turned off: on the VMs this project is measured on,
    the first touch of a fresh 925 MB buffer cost 1.5 s with huge pages and
    0.4 s without (the feature pass touches two such buffers), and the gather
    scatters rows over the buffer once, so huge pages buy little afterwards.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes >= _MAPPED_BUFFER_BYTES:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        # The array keeps the mapping alive; it is unmapped when the array goes.
        return np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
    return aligned_bytes(nbytes, _ALIGN).view(dtype).reshape(shape)


def _round_rows(rows: int) -> int:
    """Blocks of a multiple of 4096 rows start at 4 KiB-aligned offsets whatever the row size."""
    return rows // _ALIGN * _ALIGN if rows > _ALIGN else rows


_STAGING_BYTES = 16 << 20  # 16 MiB


class _SegmentFile:
    """An append-only bucket file written with O_DIRECT in segments padded to 4 KiB.

    Buffered appends of many GB are throttled by dirty-page writeback to a
    fraction of the disk's rate; direct writes are not. Each append is copied
    through an aligned staging buffer and padded, and its (offset, length) is
    remembered so that :meth:`read_into` skips the padding. Without O_DIRECT
    (some file systems) appends are plain buffered writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.fd_direct: int | None = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            self.fd_direct = None
        self.end = 0
        self.segments: list[tuple[int, int]] = []

    def append(self, data: memoryview, staging: np.ndarray) -> None:
        n, offset = len(data), self.end
        if self.fd_direct is None:
            _pwrite_all(self.fd, data, offset)
            self.end += n
        else:
            pos = 0
            while pos < n:  # every piece but the last fills the (aligned) staging buffer
                take = min(len(staging), n - pos)
                staging[:take] = np.frombuffer(data[pos : pos + take], dtype=np.uint8)
                padded = -(-take // _ALIGN) * _ALIGN
                _pwrite_all(self.fd_direct, memoryview(staging[:padded]), offset + pos)
                pos += take
            self.end += -(-n // _ALIGN) * _ALIGN
        self.segments.append((offset, n))

    def read_compact(self, buf: np.ndarray) -> int:
        """Read the whole file with O_DIRECT into aligned ``buf``; squeeze out the padding.

        ``buf`` (uint8, 4 KiB-aligned) must hold the padded file (:attr:`end`
        bytes). Returns the number of bytes of data, now at the front of
        ``buf``. A buffered read of a file written with O_DIRECT goes through
        readahead in small pieces; one direct read runs at the disk's rate.
        Falls back to :meth:`read_into` without O_DIRECT.
        """
        total = sum(n for _, n in self.segments)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            fd = -1
        if fd < 0 or self.fd_direct is None or buf.ctypes.data % _ALIGN:
            if fd >= 0:
                os.close(fd)
            self.read_into(memoryview(buf[:total]))
            return total
        try:
            view, got = memoryview(buf[: self.end]), 0
            while got < self.end:
                k = os.preadv(fd, [view[got:]], got)
                if k <= 0:
                    raise OSError(f"bucket file {str(self.path)!r} is short at byte {got}")
                got += k
        finally:
            os.close(fd)
        filled = 0
        base = buf.ctypes.data
        for offset, n in self.segments:  # segments ascend, so data only moves left
            if offset != filled:
                ctypes.memmove(base + filled, base + offset, n)
            filled += n
        return filled

    def read_into(self, out: memoryview) -> None:
        """Read every appended segment, in order, into ``out`` (exactly their total length)."""
        filled = 0
        for offset, n in self.segments:
            got = 0
            while got < n:
                k = os.preadv(self.fd, [out[filled + got : filled + n]], offset + got)
                if k <= 0:
                    raise OSError(f"bucket file {str(self.path)!r} is short at byte {offset + got}")
                got += k
            filled += n
        if filled != len(out):
            raise OSError(f"bucket file {str(self.path)!r} holds {filled} bytes, not {len(out)}")

    def close(self) -> None:
        for fd in (self.fd, self.fd_direct):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.fd_direct = -1, None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        k = os.pwrite(fd, data, offset)
        data, offset = data[k:], offset + k


class _Writer:
    """Writes blocks on helper threads so that the next block can be built meanwhile.

    Each block lives in a numbered buffer; :meth:`wait_for_buffer` blocks until
    the buffer's previous write has finished. Errors of a write surface at the
    next call or at exit.
    """

    def __init__(self, write: Callable[[int, np.ndarray], None], threads: int = 1) -> None:
        self._write = write
        self._threads = max(1, threads)
        # Twice the pieces of a block: the next block's pieces can start while
        # the last ones finish their post-write work (checksums).
        self._pool = ThreadPoolExecutor(
            max_workers=2 * self._threads, thread_name_prefix="refresh-write"
        )
        self._pending: dict[int, list[Future[None]]] = {}

    def wait_for_buffer(self, slot: int) -> None:
        futs = self._pending.pop(slot, [])
        errors = [exc for exc in (fut.exception() for fut in futs) if exc is not None]
        if errors:
            raise errors[0]

    def submit(self, slot: int, start: int, block: np.ndarray) -> None:
        self.wait_for_buffer(slot)
        # Pieces of a multiple of 4096 rows keep O_DIRECT's alignment.
        step = -(-len(block) // self._threads)
        step = -(-step // _ALIGN) * _ALIGN
        self._pending[slot] = [
            self._pool.submit(self._write, start + a, block[a : a + step])
            for a in range(0, len(block), max(1, step))
        ]

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for slot in list(self._pending):
                self.wait_for_buffer(slot)
        finally:
            self._pool.shutdown(wait=True)


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
