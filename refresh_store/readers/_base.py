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

import mmap
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._convert_kernels import copy_rows
from ..errors import SourceFormatError

__all__ = [
    "as_words",
    "exponent_mask",
    "RowSource",
    "MappedRows",
    "ConcatRows",
    "EdgeSource",
    "ArrayEdges",
    "CscEdges",
    "ChainEdges",
    "Source",
]

# Span of a mapping touched before its pages are dropped again: bounds the
# file-backed part of the resident set while gathering rows.
_RELEASE_SPAN_BYTES = 64 << 20  # 64 MiB
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14
_CAN_POPULATE = [True]
_GATHER_THREADS = min(2, os.cpu_count() or 1)
_PAGE = mmap.PAGESIZE


_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_EXPONENT = {
    2: np.uint16(0x7C00),
    4: np.uint32(0x7F800000),
    8: np.uint64(0x7FF0000000000000),
}


def as_words(arr: np.ndarray) -> np.ndarray:
    """View of a C-contiguous array as ``[rows, words]`` unsigned integers of its item size."""
    flat = arr.reshape(len(arr), -1)
    return flat.view(_WORDS[arr.dtype.itemsize])


def exponent_mask(dtype: np.dtype) -> np.unsignedinteger:
    """Bits that are all set in a NaN or infinity of float ``dtype`` (0 for other dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return _WORDS[dtype.itemsize](0)
    return _EXPONENT[dtype.itemsize]


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
        nbytes = self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))
        size = os.path.getsize(self.path)
        if offset + nbytes > size:
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


class EdgeSource:
    """Directed edges ``src -> dst`` of a source, in blocks.

    Attributes
    ----------
    name
        For messages.
    num_edges
        Number of edges.
    relations
        Typed sources only: the relation names, indexed by type id (reverse
        relations included); ``None`` for an untyped source.
    reverse
        Typed sources only: ``reverse[t]`` is the type a symmetrised graph
        gives the reverse of an edge of type ``t``.
    """

    name: str
    num_edges: int
    relations: list[str] | None = None
    reverse: list[int] | None = None

    def blocks(self, max_edges: int) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        """Yield ``(first_edge_index, src, dst)`` blocks of at most about ``max_edges`` edges."""
        raise NotImplementedError

    def typed_blocks(
        self, max_edges: int
    ) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64], NDArray[np.int8]]]:
        """Yield ``(first_edge_index, src, dst, edge_type)`` blocks (typed sources only)."""
        raise NotImplementedError(f"{self.name!r} has no edge types")

    def close(self) -> None:
        """Release files and mappings."""


class ArrayEdges(EdgeSource):
    """Edges held as an ``edge_index`` array of shape ``[2, E]`` (row 0 = source)."""

    def __init__(self, edge_index: RowSource) -> None:
        if len(edge_index.shape) != 2 or edge_index.shape[0] != 2:
            raise SourceFormatError(
                f"{edge_index.name!r} has shape {edge_index.shape}; an edge_index must be [2, E]"
            )
        if edge_index.dtype.kind not in "iu":
            raise SourceFormatError(
                f"{edge_index.name!r} has dtype {edge_index.dtype}; edge ids must be integers"
            )
        self.edge_index = edge_index
        self.name = edge_index.name
        self.num_edges = int(edge_index.shape[1])

    @property
    def random_access(self) -> bool:
        return self.edge_index.random_access

    def blocks(self, max_edges: int) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        """Blocks in two buffers reused from block to block (valid until the next one)."""
        ei = self.edge_index
        if not isinstance(ei, MappedRows):
            raise SourceFormatError(f"{self.name!r} must be staged before its edges are read")
        e = self.num_edges
        step = max(1, min(int(max_edges), e))
        src = np.empty(step, dtype=np.int64)
        dst = np.empty(step, dtype=np.int64)
        raw = None if ei.dtype == np.int64 else np.empty(step, dtype=ei.dtype)
        for a in range(0, e, step):
            k = min(e, a + step) - a
            for row, buf in ((0, src), (1, dst)):
                if ei.fortran_order:  # column-major [2, E]: pairs side by side
                    buf[:k] = ei.array[row, a : a + k]
                    ei.release()
                elif raw is None:
                    ei.read_flat(row * e + a, k, buf)
                else:
                    buf[:k] = ei.read_flat(row * e + a, k, raw)
            yield a, src[:k], dst[:k]

    def close(self) -> None:
        self.edge_index.close()


class CscEdges(EdgeSource):
    """Edges held as CSC ``indptr``/``indices``: ``indices[indptr[v]:indptr[v+1]]`` point to ``v``."""

    def __init__(self, indptr: MappedRows, indices: MappedRows, num_nodes: int) -> None:
        for arr in (indptr, indices):
            if len(arr.shape) != 1 or arr.dtype.kind not in "iu":
                raise SourceFormatError(
                    f"{arr.name!r} has shape {arr.shape} and dtype {arr.dtype}; "
                    "expected a 1-D integer array"
                )
        if indptr.shape[0] != num_nodes + 1:
            raise SourceFormatError(
                f"{indptr.name!r} has {indptr.shape[0]} entries; expected num_nodes + 1 = "
                f"{num_nodes + 1}"
            )
        first, last = int(indptr.array[0]), int(indptr.array[-1])
        if first != 0 or last != indices.shape[0]:
            raise SourceFormatError(
                f"{indptr.name!r} runs from {first} to {last}; it must run from 0 to "
                f"len(indices) = {indices.shape[0]}"
            )
        self.indptr, self.indices = indptr, indices
        self.num_nodes = num_nodes
        self.name = f"{indptr.name} + {indices.name}"
        self.num_edges = indices.shape[0]

    def blocks(self, max_edges: int) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        ptr = self.indptr.array
        step = max(1, int(max_edges))
        v = 0
        while v < self.num_nodes:
            e0 = int(ptr[v])
            # Last node whose list still starts within this block (at least one node).
            w = int(np.searchsorted(ptr, e0 + step, side="right")) - 1
            w = min(self.num_nodes, max(w, v + 1))
            seg = np.asarray(ptr[v : w + 1], dtype=np.int64)
            counts = np.diff(seg)
            if np.any(counts < 0):
                bad = v + int(np.argmax(counts < 0))
                raise SourceFormatError(
                    f"{self.indptr.name!r} decreases at node {bad}; indptr must be non-decreasing"
                )
            dst = np.repeat(np.arange(v, w, dtype=np.int64), counts)
            src = self.indices.read(e0, int(seg[-1])).astype(np.int64)
            self.indptr.release()
            yield e0, src, dst
            v = w

    def close(self) -> None:
        self.indptr.close()
        self.indices.close()


class ChainEdges(EdgeSource):
    """Several edge sources whose node ids are shifted into one id space (MAG240M full graph).

    With ``types`` (one type id per part), ``relations`` and ``reverse`` the
    chain is typed: every edge of part ``i`` has type ``types[i]``.
    """

    def __init__(
        self,
        parts: list[tuple[EdgeSource, int, int]],
        name: str,
        *,
        types: list[int] | None = None,
        relations: list[str] | None = None,
        reverse: list[int] | None = None,
    ) -> None:
        self.parts = parts  # (edges, src_offset, dst_offset)
        self.name = name
        self.num_edges = sum(p.num_edges for p, _, _ in parts)
        if types is not None and (relations is None or reverse is None or len(types) != len(parts)):
            raise ValueError("a typed chain needs one type per part, relations and reverse")
        self.types, self.relations, self.reverse = types, relations, reverse

    def typed_blocks(
        self, max_edges: int
    ) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64], NDArray[np.int8]]]:
        if self.types is None:
            raise NotImplementedError(f"{self.name!r} has no edge types")
        buf = np.empty(0, dtype=np.int8)
        base = 0
        for (edges, src_off, dst_off), t in zip(self.parts, self.types):
            for first, src, dst in edges.blocks(max_edges):
                src += src_off
                dst += dst_off
                if len(buf) < len(src):
                    buf = np.empty(len(src), dtype=np.int8)
                et = buf[: len(src)]
                et.fill(t)
                yield base + first, src, dst, et
            base += edges.num_edges

    def blocks(self, max_edges: int) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        base = 0
        for edges, src_off, dst_off in self.parts:
            for first, src, dst in edges.blocks(max_edges):
                src += src_off
                dst += dst_off
                yield base + first, src, dst
            base += edges.num_edges

    def close(self) -> None:
        for p, _, _ in self.parts:
            p.close()


@dataclass
class Source:
    """A dataset opened for conversion.

    Attributes
    ----------
    format
        ``'ogbn'``, ``'papers100m'``, ``'mag240m'`` or ``'npy'``.
    path
        The dataset folder.
    num_nodes
        Nodes of the (homogeneous) graph.
    features
        Rows ``[num_nodes, D]`` (for MAG240M's full graph, the paper rows only
        until :attr:`prepare` has derived the others).
    labels
        Rows ``[num_nodes]`` (or ``[num_nodes, 1]``), integers or floats with NaN
        for unlabelled; ``None`` when the dataset has no labels.
    edges
        The directed edges as given by the dataset.
    splits
        ``'train'``, ``'valid'``, ``'test'`` -> source node ids.
    num_classes
        Known from metadata, else ``None`` (then ``max(label) + 1``).
    default_undirected
        Whether the sampling graph is symmetrised unless told otherwise.
    files
        Every file the reader opens (fingerprinted so ``--resume`` can tell
        that the source did not change).
    info
        Extra facts recorded in the manifest (split folder, node types, ...).
    prepare
        For sources whose features are partly derived (MAG240M full graph):
        ``prepare(tmp_dir, work_bytes, out_dtype, resume, progress)`` computes the
        derived rows into ``tmp_dir`` and returns the complete feature source.
    """

    format: str
    path: Path
    num_nodes: int
    features: RowSource
    labels: RowSource | None
    edges: EdgeSource
    splits: dict[str, NDArray[np.int64]]
    num_classes: int | None
    default_undirected: bool
    files: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[..., RowSource] | None = None

    @property
    def feature_dim(self) -> int:
        """Columns of the features."""
        return int(self.features.shape[1])

    def close(self) -> None:
        """Release every file and mapping."""
        self.features.close()
        if self.labels is not None:
            self.labels.close()
        self.edges.close()
