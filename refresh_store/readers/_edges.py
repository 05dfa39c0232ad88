"""Edge sources: directed edges ``src -> dst`` of a dataset, in blocks (arrays, CSC, chains)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from ..errors import SourceFormatError
from ._rows import MappedRows, RowSource

__all__ = ["EdgeSource", "ArrayEdges", "CscEdges", "ChainEdges"]


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
