"""Export a store back to plain ``.npy`` files (``refresh-convert export STORE OUT``).

The output is the converter's npy layout (see :mod:`refresh_store.readers.npy`),
so ``refresh-convert OUT STORE2`` reads it again:

=================  ==========================  ===========================================
file               ``ids="original"``          ``ids="store"``
=================  ==========================  ===========================================
``features.npy``   ``[N, D]``, row ``u`` =     rows in the store's (degree) order
                   source node ``u``
``labels.npy``     ``[N]`` int64, -1 =         store order
                   unlabelled, source order
``edge_index.npy`` ``[2, E]`` int64, row 0 =   store ids
                   source, row 1 = target, in
                   source ids
``*_idx.npy``      source ids, in the order    store ids
                   the source listed them
``indptr.npy``,    refused (the CSC is in      the store's CSC
``indices.npy``    store order)
``new_id.npy``,    as stored: ``new_id[u]`` is the store id of source node ``u``,
``old_id.npy``     ``old_id[v]`` the source id of store node ``v``
=================  ==========================  ===========================================

The edges are the store's sampling graph: after the conversion's
symmetrisation, deduplication and self-loop policy, grouped by target.
Source ids come from the store's permutation (``old_id``/``new_id``).

Everything streams in blocks of rows (``memory_budget_bytes``), so a store
larger than RAM exports with bounded memory: feature rows are gathered by the
I/O scheduler in source order and written sequentially. Files are written in
``OUT.partial/`` (with an ``export.json`` describing them), fsynced, and the
folder is renamed to ``OUT`` last, so an interrupted export never looks
complete; ``OUT`` must not exist.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npformat
from numpy.typing import NDArray

from .errors import RefreshError, StoreFormatError
from .format import ARRAY_NAMES
from .store import Store, open_store

__all__ = ["ExportError", "ExportSummary", "EXPORT_ARRAYS", "DEFAULT_ARRAYS", "export_store"]

#: Arrays an export can write (``edge_index`` is built from the CSC).
EXPORT_ARRAYS = (*ARRAY_NAMES, "edge_index")
#: What ``refresh-convert export`` writes without ``--arrays``.
DEFAULT_ARRAYS = ("features", "labels", "edge_index", "train_idx", "valid_idx", "test_idx")
_ID_SPACES = ("original", "store")
_SPLITS = ("train_idx", "valid_idx", "test_idx")
_MARKER = "export.json"
_MIN_BLOCK_ROWS = 1024


class ExportError(RefreshError, ValueError):
    """An export cannot be made: unknown or missing arrays, ids that do not match, OUT exists."""


@dataclass
class ExportSummary:
    """What an export wrote: ``arrays`` maps file name to (shape, dtype)."""

    out: Path
    ids: str
    arrays: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    bytes_written: int = 0

    def table(self) -> str:
        lines = [f"exported to {str(self.out)!r} in {self.ids} ids:"]
        for name, (shape, dtype) in self.arrays.items():
            lines.append(f"  {name + '.npy':<16} {dtype:<8} {list(shape)}")
        lines.append(f"  {self.bytes_written / 2**20:.1f} MiB written")
        return "\n".join(lines)


class _NpyWriter:
    """Writes one ``.npy`` file front to back: header first, then blocks in order."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.expected = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.written = 0
        self._f: BinaryIO = open(path, "wb")  # closed in close() or abort()
        header = {
            "descr": npformat.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": tuple(int(s) for s in shape),
        }
        npformat.write_array_header_2_0(self._f, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self._f.write(memoryview(block).cast("B"))
        self.written += block.nbytes

    def close(self) -> int:
        if self.written != self.expected:  # a bug of this module, not of the input
            raise RuntimeError(
                f"{self.path.name}: wrote {self.written} bytes, expected {self.expected}"
            )
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.written

    def abort(self) -> None:
        self._f.close()


def _spans(n: int, block: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, block):
        yield a, min(n, a + block)


class _Exporter:
    """One export; trusts arguments checked by :func:`export_store`."""

    def __init__(self, store: Store, out: Path, ids: str, budget: int, progress: bool) -> None:
        self.store, self.out, self.ids, self.progress = store, out, ids, progress
        self.n = store.num_nodes
        # Rows per block: each block holds the gathered rows plus the ids that
        # address them (and the scheduler's own buffers, bounded separately).
        row_bytes = store.region("features").row_bytes + 3 * 8
        self.block = max(_MIN_BLOCK_ROWS, budget // (2 * row_bytes))
        self.block_edges = max(_MIN_BLOCK_ROWS, budget // (4 * 8))
        self.summary = ExportSummary(out=out, ids=ids)
        self._checked_new_id = False

    # ---------------------------------------------------------------- ids

    def _to_original(self, v: NDArray[np.integer], what: str) -> NDArray[np.int64]:
        """Source ids of store ids ``v`` (through the memory-mapped ``old_id``)."""
        if self.ids == "store":
            return np.asarray(v, dtype=np.int64)
        u = np.asarray(self.store.old_id[np.asarray(v, dtype=np.int64)], dtype=np.int64)
        if u.size and (int(u.min()) < 0 or int(u.max()) >= self.n):
            raise ExportError(
                f"store {str(self.store.path)!r}: old_id maps a node of {what} to "
                f"{int(u.min()) if int(u.min()) < 0 else int(u.max())}, outside [0, {self.n}); "
                "its id space does not match its nodes — export with --ids store"
            )
        return u

    def _store_rows(self, a: int, b: int) -> NDArray[np.int64]:
        """Store ids of source nodes ``a .. b-1``, checked against ``old_id`` once."""
        v = np.asarray(self.store.new_id[a:b], dtype=np.int64)
        if v.size and (int(v.min()) < 0 or int(v.max()) >= self.n):
            raise ExportError(
                f"store {str(self.store.path)!r}: new_id holds {int(v.max())} or "
                f"{int(v.min())}, outside [0, {self.n}); export with --ids store"
            )
        if not self._checked_new_id:
            back = np.asarray(self.store.old_id[v], dtype=np.int64)
            if not np.array_equal(back, np.arange(a, b)):
                raise ExportError(
                    f"store {str(self.store.path)!r}: new_id and old_id are not inverse "
                    "permutations; its original ids cannot be recovered — export with --ids store"
                )
        return v

    # ---------------------------------------------------------------- arrays

    def _file(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> _NpyWriter:
        return _NpyWriter(self.out / f"{name}.npy", shape, dtype)

    def _finish(self, w: _NpyWriter, name: str) -> None:
        self.summary.bytes_written += w.close()
        self.summary.arrays[name] = (w.shape, w.dtype.name)

    def _bar(self, name: str, total: int) -> Callable[[int], None]:
        if not self.progress:
            return lambda k: None
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"export {name}", unit="row", disable=None, leave=False)
        self._bars.append(bar)
        return bar.update

    def _write(self, name: str, shape, dtype, blocks: Iterator[np.ndarray], total: int) -> None:
        w = self._file(name, shape, dtype)
        tick = self._bar(name, total)
        try:
            for block in blocks:
                w.write(block)
                tick(len(block) if block.ndim else 1)
        except BaseException:
            w.abort()
            raise
        self._finish(w, name)

    def _rows_blocks(self, name: str) -> Iterator[np.ndarray]:
        """Node-indexed array ``name`` (features or labels) in the export's order."""
        src = self.store.array(name)
        if self.ids == "store":
            for a, b in _spans(self.n, self.block):
                yield np.asarray(src[a:b])
            return
        if name == "features":
            from .io import IOConfig, IOScheduler

            with IOScheduler(self.store.region("features"), IOConfig(mode="buffered")) as io:
                for a, b in _spans(self.n, self.block):
                    yield io.gather(self._store_rows(a, b))
        else:
            for a, b in _spans(self.n, self.block):
                yield np.asarray(src[self._store_rows(a, b)])
        self._checked_new_id = True

    def export_rows(self, name: str) -> None:
        region = self.store.region(name)
        shape = (region.nrows, *region.row_shape)
        self._write(name, shape, region.dtype, self._rows_blocks(name), region.nrows)

    def export_plain(self, name: str) -> None:
        """An array written as stored (ids of the CSC, permutations), or a split mapped."""
        region = self.store.region(name)
        src = self.store.array(name)
        n = region.nrows
        if name in _SPLITS:
            blocks = (self._to_original(src[a:b], name) for a, b in _spans(n, self.block_edges))
        else:
            blocks = (np.asarray(src[a:b]) for a, b in _spans(n, self.block_edges))
        self._write(name, (n, *region.row_shape), region.dtype, blocks, n)

    def _edge_spans(self) -> Iterator[tuple[int, int, int, int]]:
        """``(v0, v1, e0, e1)``: target nodes ``v0 .. v1-1`` own CSC positions ``e0 .. e1-1``,
        about ``block_edges`` positions per span (a node of huge degree gets one span)."""
        indptr = self.store.indptr
        v0 = 0
        while v0 < self.n:
            e0 = int(indptr[v0])
            v1 = int(np.searchsorted(indptr, e0 + self.block_edges, side="right")) - 1
            v1 = min(self.n, max(v1, v0 + 1))
            yield v0, v1, e0, int(indptr[v1])
            v0 = v1

    def export_edge_index(self) -> None:
        e = self.store.num_edges
        indptr, indices = self.store.indptr, self.store.indices
        if int(indptr[-1]) != e or indices.shape[0] != e:
            raise StoreFormatError(
                f"store {str(self.store.path)!r}: indptr ends at {int(indptr[-1])} and indices "
                f"holds {indices.shape[0]} ids, the manifest says {e} edges; the store is damaged"
            )

        def sources() -> Iterator[np.ndarray]:
            for _, _, e0, e1 in self._edge_spans():
                yield self._to_original(indices[e0:e1], "edge_index")

        def targets() -> Iterator[np.ndarray]:
            for v0, v1, _, _ in self._edge_spans():
                deg = np.diff(np.asarray(indptr[v0 : v1 + 1], dtype=np.int64))
                yield np.repeat(self._to_original(np.arange(v0, v1), "edge_index"), deg)

        def both() -> Iterator[np.ndarray]:
            yield from sources()  # row 0 of a C-order [2, E] array, then row 1
            yield from targets()

        self._write("edge_index", (2, e), np.dtype(np.int64), both(), 2 * e)

    def run(self, arrays: Sequence[str]) -> ExportSummary:
        self._bars: list[Any] = []
        try:
            for name in arrays:
                if name in ("features", "labels"):
                    self.export_rows(name)
                elif name == "edge_index":
                    self.export_edge_index()
                else:
                    self.export_plain(name)
        finally:
            for bar in self._bars:
                bar.close()
        return self.summary


def _check_arrays(store: Store, arrays: Sequence[str] | None, ids: str) -> list[str]:
    names = list(DEFAULT_ARRAYS if arrays is None else arrays)
    if not names:
        raise ExportError(f"no arrays asked for; choose from {', '.join(EXPORT_ARRAYS)}")
    unknown = [a for a in names if a not in EXPORT_ARRAYS]
    if unknown:
        raise ExportError(
            f"unknown array {unknown[0]!r}; a store export holds {', '.join(EXPORT_ARRAYS)}"
        )
    if ids == "original":
        csc = [a for a in names if a in ("indptr", "indices")]
        if csc:
            raise ExportError(
                f"array {csc[0]!r} is the CSC in the store's order and has no form in original "
                "ids; export edge_index instead, or pass --ids store"
            )
    needed = {a for a in names if a != "edge_index"}
    if "edge_index" in names:
        needed |= {"indptr", "indices"}
    if ids == "original":
        needed |= {"new_id", "old_id"}
    for name in sorted(needed):
        try:
            store.region(name)
        except StoreFormatError:
            raise ExportError(
                f"store {str(store.path)!r} has no readable array {name!r}"
                + (" (needed to map ids to the original numbering)" if name.endswith("_id") else "")
                + "; it is damaged or not a ReFresh store — reconvert it"
            ) from None
    if ids == "original":
        for name in ("new_id", "old_id"):
            region = store.region(name)
            if (region.nrows, *region.row_shape) != (store.num_nodes,):
                raise ExportError(
                    f"store {str(store.path)!r}: {name} has shape "
                    f"{[region.nrows, *region.row_shape]} but the store has {store.num_nodes} "
                    "nodes; its id space does not match — export with --ids store"
                )
    return list(dict.fromkeys(names))


def export_store(
    store: str | os.PathLike[str] | Store,
    out: str | os.PathLike[str],
    *,
    arrays: Sequence[str] | None = None,
    ids: str = "original",
    memory_budget_bytes: int = 256 << 20,  # 256 MiB
    progress: bool = False,
) -> ExportSummary:
    """Write arrays of a store as ``.npy`` files into the new folder ``out``.

    Parameters
    ----------
    store
        A store folder or an open :class:`Store`.
    out
        Folder to create; it must not exist (work happens in ``out.partial/``).
    arrays
        Names from :data:`EXPORT_ARRAYS`; default :data:`DEFAULT_ARRAYS`.
    ids
        ``"original"``: node order and ids of the converted source (through the
        store's ``old_id``/``new_id``); ``"store"``: the store's own.
    memory_budget_bytes
        Bound on the blocks held in memory at once (the I/O scheduler's
        buffers, at most 64 MiB by default, come on top).
    progress
        Show a tqdm bar per array.

    Returns
    -------
    ExportSummary

    Raises
    ------
    ExportError
        Unknown or missing arrays, an id space that does not match, or ``out``
        exists. Nothing is written then.
    StoreFormatError
        ``store`` is not a complete store.

    Examples
    --------
    >>> export_store("stores/products", "exported/", arrays=["features", "edge_index"])
    """
    if ids not in _ID_SPACES:
        raise ExportError(f"ids must be one of {', '.join(_ID_SPACES)}; got {ids!r}")
    if int(memory_budget_bytes) < 1 << 20:
        raise ExportError(
            f"memory_budget_bytes must be at least 1 MiB; got {memory_budget_bytes!r}"
        )
    st = store if isinstance(store, Store) else open_store(store)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ExportError(
            f"output folder {str(out)!r} exists; give a new folder (nothing was overwritten)"
        )
    names = _check_arrays(st, arrays, ids)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        if not (partial / _MARKER).is_file():
            raise ExportError(
                f"{str(partial)!r} exists and is not an unfinished export; remove it or "
                "choose another output folder"
            )
        shutil.rmtree(partial)  # an earlier export that did not finish
    partial.mkdir(parents=True)
    try:
        info = {
            "format": "refresh-export",
            "version": 1,
            "ids": ids,
            "store": st.path.name,
            "num_nodes": st.num_nodes,
            "num_edges": st.num_edges,
            "num_classes": st.num_classes,
            "complete": False,
        }
        (partial / _MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        summary = _Exporter(st, partial, ids, int(memory_budget_bytes), progress).run(names)
        info.update(
            complete=True,
            arrays={k: {"shape": list(s), "dtype": d} for k, (s, d) in summary.arrays.items()},
        )
        (partial / _MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, out)
        fd = os.open(out.parent if str(out.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary.out = out
    return summary
