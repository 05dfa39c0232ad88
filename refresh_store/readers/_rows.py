"""What every source reader hands to the converter.

A reader turns one dataset layout into a :class:`Source`: row sources for the
features and labels, an edge source, the splits and a little metadata. Nothing
is read in full at open time; the converter pulls blocks.

Row sources come in two kinds. A *mapped* one (``random_access``) is a plain
array at a byte offset of an uncompressed file, memory-mapped; it serves both
sequential blocks and gathers of sorted row ids. A *streamed* one (csv.gz, a
compressed npz member) can only be read front to back; the converter stages it
into a raw file first. Mapped pages are dropped from the process after every
block (``madvise(MADV_DONTNEED)``): file pages of a mapping count in the
resident set, and the converter promises a bounded one.
"""

from __future__ import annotations

import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import SourceFormatError
from ..kernels import WORD_TYPES as _WORDS
from ..kernels import as_words, copy_rows, exponent_mask

__all__ = ["RowSource", "MappedRows", "ConcatRows", "pread_into"]

# Span of a mapping touched before its pages are dropped again: bounds the
# file-backed part of the resident set while gathering rows.
_RELEASE_SPAN_BYTES = 64 << 20  # 64 MiB
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
_CAN_POPULATE = [True]
_GATHER_THREADS = min(2, os.cpu_count() or 1)
_PAGE = mmap.PAGESIZE


def pread_into(path: Path, buf: memoryview, offset: int, name: str) -> None:
    """Fill ``buf`` from ``path`` at ``offset``; a short file is a truncated source."""
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [buf[got:]], offset + got)
            if n <= 0:
                raise SourceFormatError(f"{name!r} is truncated at byte {offset + got}")
            got += n
    finally:
        os.close(fd)


class RowSource:
    """Rows of one array of a source (features ``[N, D]``, labels ``[N]``, edge_index ``[2, E]``).

    Attributes
    ----------
    name
        Where the rows come from, for messages (``'raw/data.npz:node_feat'``).
    shape, dtype
        Of the whole array.
    random_access
        True when :meth:`take` and out-of-order :meth:`read` work; False for a
        stream that must be read front to back.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    random_access: bool = False

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new in-memory array."""
        raise NotImplementedError

    def take(self, sorted_ids: NDArray[np.int64]) -> np.ndarray:
        """Rows ``sorted_ids`` (ascending) as a new in-memory array."""
        raise SourceFormatError(f"{self.name!r} can only be read front to back")

    def gather_into(
        self,
        sorted_ids: NDArray[np.int64],
        positions: NDArray[np.int64],
        out_words: np.ndarray,
        check: bool = False,
    ) -> int:
        """``out[positions[k]] = self[sorted_ids[k]]``, on the rows' words (see :func:`as_words`).

        With ``check``, stops at the first row holding a NaN or infinity and
        returns its ``k``; returns -1 when every row was copied.
        """
        rows = self.take(sorted_ids)
        mask = exponent_mask(self.dtype) if check else _WORDS[self.dtype.itemsize](0)
        src_rows = np.arange(len(rows), dtype=np.int64)
        return int(copy_rows(as_words(rows), src_rows, positions, out_words, mask))

    def close(self) -> None:
        """Release files and mappings."""


class MappedRows(RowSource):
    """An array at ``offset`` of an uncompressed file, read through a memory map.

    Parameters
    ----------
    path
        The file.
    offset
        Byte offset of element 0.
    shape, dtype
        Of the array.
    fortran_order
        The data is column-major (an ``.npy`` header may say so).
    name
        For messages.
    """

    random_access = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        *,
        fortran_order: bool = False,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name or str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.fortran_order = fortran_order
        # Python ints: a header's shape cannot overflow into a small size.
        nbytes = self.dtype.itemsize * math.prod(self.shape)
        size = os.path.getsize(self.path)
        if min(self.shape, default=0) < 0 or offset + nbytes > size:
            raise SourceFormatError(
                f"{self.name!r} is truncated: its header announces {nbytes} bytes of data "
                f"at offset {offset}, the file has {size - offset} — download it again"
            )
        self._mmap: mmap.mmap | None = None
        self._base = (offset // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
        if nbytes == 0:
            self.array: np.ndarray = np.empty(self.shape, self.dtype)
            return
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(
                f.fileno(), offset + nbytes - self._base, access=mmap.ACCESS_READ, offset=self._base
            )
        flat = np.frombuffer(
            self._mmap,
            dtype=self.dtype,
            count=nbytes // self.dtype.itemsize,
            offset=offset - self._base,
        )
        self.array = flat.reshape(self.shape, order="F" if fortran_order else "C")
        self._offset = offset

    def release(self, start_byte: int = 0, stop_byte: int | None = None) -> None:
        """Drop mapped pages of file bytes ``[start_byte, stop_byte)`` from the resident set."""
        if self._mmap is None:
            return
        lo = max(0, start_byte - self._base) // _PAGE * _PAGE
        hi = len(self._mmap) if stop_byte is None else min(len(self._mmap), stop_byte - self._base)
        if hi > lo:
            self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def byte_span(self, start: int, stop: int) -> tuple[int, int | None]:
        """File bytes ``[first, end)`` holding rows ``[start, stop)``.

        ``end`` is ``None`` for Fortran-ordered data, whose rows are not
        contiguous: the span then runs to the end of the file.
        """
        if self.fortran_order:
            return self._offset, None
        rb = self.row_bytes
        return self._offset + start * rb, self._offset + stop * rb

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)``, into ``out`` when given (a C-contiguous buffer to reuse).

        C-ordered data is read with ``pread``: no page of the file is mapped,
        and a reused buffer costs no fresh page faults.
        """
        shape = (stop - start, *self.shape[1:])
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        else:
            out = out.reshape(-1)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)
        if self.fortran_order or self._mmap is None:
            out[...] = self.array[start:stop]
            self.release()
            return out
        pread_into(
            self.path, memoryview(out).cast("B"), self._offset + start * self.row_bytes, self.name
        )
        return out

    def read_flat(self, first: int, count: int, out: np.ndarray) -> np.ndarray:
        """Elements ``[first, first + count)`` of the C-order data, into ``out[:count]``."""
        view = out[:count]
        if self.fortran_order or self._mmap is None:
            view[...] = self.array.reshape(-1, order="A")[first : first + count]
            return view
        pread_into(
            self.path,
            memoryview(view).cast("B"),
            self._offset + first * self.dtype.itemsize,
            self.name,
        )
        return view

    def _span_groups(self, sorted_ids: NDArray[np.int64]) -> list[tuple[int, int]]:
        """Cut sorted ids where they cross a span boundary: each group touches one span."""
        if len(sorted_ids) == 0:
            return []
        span_rows = max(1, _RELEASE_SPAN_BYTES // max(1, self.row_bytes))
        cuts = np.searchsorted(
            sorted_ids,
            np.arange(
                (int(sorted_ids[0]) // span_rows + 1) * span_rows,
                int(sorted_ids[-1]) + 1,
                span_rows,
            ),
        )
        bounds = np.concatenate([[0], cuts, [len(sorted_ids)]]).tolist()
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def take(self, sorted_ids: NDArray[np.int64]) -> np.ndarray:
        out = np.empty((len(sorted_ids), *self.shape[1:]), dtype=self.dtype)
        for a, b in self._span_groups(sorted_ids):
            ids = sorted_ids[a:b]
            out[a:b] = self.array[ids]
            self.release(*self.byte_span(int(ids[0]), int(ids[-1]) + 1))
        return out

    def gather_into(
        self,
        sorted_ids: NDArray[np.int64],
        positions: NDArray[np.int64],
        out_words: np.ndarray,
        check: bool = False,
    ) -> int:
        if self.fortran_order or len(self.shape) == 0:
            return super().gather_into(sorted_ids, positions, out_words, check)
        words = as_words(self.array)
        mask = exponent_mask(self.dtype) if check else _WORDS[self.dtype.itemsize](0)
        groups = self._span_groups(sorted_ids)

        def one(group: tuple[int, int]) -> int:
            a, b = group
            span = self.byte_span(int(sorted_ids[a]), int(sorted_ids[b - 1]) + 1)
            self._populate(*span)
            bad = copy_rows(words, sorted_ids[a:b], positions[a:b], out_words, mask)
            self.release(*span)
            return -1 if bad < 0 else a + int(bad)

        # Spans are independent (distinct output rows): two threads run the
        # nogil kernel side by side. At most two spans are mapped at a time.
        if len(groups) > 1 and _GATHER_THREADS > 1:
            with ThreadPoolExecutor(_GATHER_THREADS, thread_name_prefix="refresh-gather") as pool:
                found = [bad for bad in pool.map(one, groups) if bad >= 0]
            return min(found, default=-1)
        for group in groups:
            bad = one(group)
            if bad >= 0:
                return bad
        return -1

    def _populate(self, start_byte: int, stop_byte: int) -> None:
        """Map a span's pages in one call (MADV_POPULATE_READ) instead of a fault per 64 KiB."""
        if self._mmap is None or not _CAN_POPULATE[0]:
            return
        lo = max(0, start_byte - self._base) // _PAGE * _PAGE
        hi = min(len(self._mmap), stop_byte - self._base)
        try:
            self._mmap.madvise(_MADV_POPULATE_READ, lo, hi - lo)
        except OSError:  # kernels before 5.14
            _CAN_POPULATE[0] = False

    def close(self) -> None:
        self.array = np.empty(self.shape, self.dtype)
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # a view is still alive; the GC closes it later
                pass
            self._mmap = None


class ConcatRows(RowSource):
    """Several random-access row sources stacked along rows (MAG240M's node types)."""

    random_access = True

    def __init__(self, parts: list[RowSource], name: str) -> None:
        if not parts or any(not p.random_access for p in parts):
            raise ValueError("ConcatRows needs random-access parts")
        self.parts = parts
        self.name = name
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, stop, dtype=np.int64))

    def take(self, sorted_ids: NDArray[np.int64]) -> np.ndarray:
        out = np.empty((len(sorted_ids), *self.shape[1:]), dtype=self.dtype)
        cuts = np.searchsorted(sorted_ids, self.starts)
        for i, part in enumerate(self.parts):
            a, b = int(cuts[i]), int(cuts[i + 1])
            if b > a:
                out[a:b] = part.take(sorted_ids[a:b] - self.starts[i])
        return out

    def gather_into(
        self,
        sorted_ids: NDArray[np.int64],
        positions: NDArray[np.int64],
        out_words: np.ndarray,
        check: bool = False,
    ) -> int:
        cuts = np.searchsorted(sorted_ids, self.starts)
        mask = exponent_mask(self.dtype) if check else _WORDS[self.dtype.itemsize](0)
        for i, part in enumerate(self.parts):
            a, b = int(cuts[i]), int(cuts[i + 1])
            if b == a:
                continue
            ids = sorted_ids[a:b] - self.starts[i]
            if part.dtype == self.dtype:
                bad = part.gather_into(ids, positions[a:b], out_words, check)
            else:
                rows = np.ascontiguousarray(part.take(ids), dtype=self.dtype)
                src_rows = np.arange(b - a, dtype=np.int64)
                bad = copy_rows(as_words(rows), src_rows, positions[a:b], out_words, mask)
            if bad >= 0:
                return a + int(bad)
        return -1

    def close(self) -> None:
        for p in self.parts:
            p.close()
