"""Building the CSC topology of the sampling graph out of core.

Edges never sit in memory all at once. They travel as int64 keys (see
:mod:`refresh_store.convert._kernels`) through bucket files, each bucket a
range of destination nodes small enough to sort in the memory budget:

1. :func:`bucket_edges` reads the source's edges in blocks, symmetrises and
   drops self-loops as asked, and appends each key to the bucket of its
   destination; buckets that came out too large are split.
2. :func:`dedupe_buckets` sorts each bucket, removes duplicate edges, adds
   self-loops if asked, and records every node's in-degree.
3. :func:`relabel_buckets` (degree reordering only) maps both ends to new ids
   and re-buckets by new destination, with bucket bounds cut from the known
   degrees so each holds about the same number of edges.
4. :func:`write_csc` writes ``indptr`` and ``indices`` front to back.

Typed edges (a source with relations, ``num_types > 1``) carry their type in
the key (see :mod:`refresh_store.convert._kernels`), so every pass moves the
type with its edge: deduplication keeps one edge per (destination, type,
source), and :func:`write_csc` writes ``edge_type`` aligned with ``indices``;
each node's in-edges are sorted by source as without types (then by type).

Step 2 is restartable bucket by bucket: a bucket's deduplicated file appears
by an atomic rename and only then is its input removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConvertError, InputDataError
from ..kernels import find_buckets
from ..readers import EdgeSource
from ._kernels import (
    dedupe_sorted,
    edge_keys_by_bucket,
    keys_to_sources,
    keys_to_sources_types,
    local_degrees,
    relabel_keys,
)

__all__ = [
    "Bucket",
    "bucket_edges",
    "dedupe_buckets",
    "new_id_bounds",
    "relabel_buckets",
    "write_csc",
    "KEY_BYTES",
]

KEY_BYTES = 8
Tick = Callable[[int, int], None]
_MAX_OPEN_BUCKETS = 512
_UNTYPED = np.zeros(1, dtype=np.int8)  # rev_type of an untyped conversion (one type, 0)
_NO_TYPES = np.zeros(0, dtype=np.int8)


def _rev_table(rev_type: Any, num_types: int) -> np.ndarray:
    if num_types <= 1:
        return _UNTYPED
    rev = np.asarray(rev_type if rev_type is not None else np.arange(num_types), dtype=np.int8)
    if rev.shape != (num_types,):
        raise ValueError(f"rev_type must have {num_types} entries; got {rev.shape}")
    return np.ascontiguousarray(rev)


@dataclass
class Bucket:
    """Keys of the edges into nodes ``[lo, hi)``, in file ``name`` of the temp folder."""

    lo: int
    hi: int
    name: str
    count: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the resume log)."""
        return asdict(self)


def _append(f: Any, arr: np.ndarray) -> None:
    f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))


def _read_keys(f: Any, out: np.ndarray, path: Path) -> np.ndarray:
    """Fill ``out`` from an open bucket file (a reused buffer: no fresh page faults)."""
    want = out.nbytes
    got = f.readinto(memoryview(out).cast("B")) if want else 0
    if got != want:
        raise ConvertError(f"temporary file {str(path)!r} is damaged; rerun with --overwrite")
    return out


def _key_blocks(path: Path, count: int, block: int) -> Any:
    """Blocks of keys of a bucket file in one reused buffer (valid until the next block)."""
    buf = np.empty(max(1, min(block, count)), dtype=np.int64)
    with open(path, "rb") as f:
        for a in range(0, count, block):
            yield a, _read_keys(f, buf[: min(block, count - a)], path)


def _uniform_bounds(lo: int, hi: int, parts: int) -> NDArray[np.int64]:
    parts = max(1, min(parts, hi - lo))
    return np.unique(np.linspace(lo, hi, parts + 1).round().astype(np.int64))


def _partition_to_files(
    blocks: Any,
    bounds: NDArray[np.int64],
    num_nodes: int,
    tmp_dir: Path,
    prefix: str,
    undirected: bool,
    drop_self_loops: bool,
    edges_name: str,
    tick: Tick,
    rev_type: np.ndarray = _UNTYPED,
) -> list[Bucket]:
    """``blocks`` yields ``(first, src, dst, etype)`` (``etype`` None when untyped)."""
    k = len(bounds) - 1
    names = [f"{prefix}_{i}.keys" for i in range(k)]
    counts = np.zeros(k, dtype=np.int64)
    files = [open(tmp_dir / nm, "wb") for nm in names]
    buf = np.empty(0, dtype=np.int64)
    try:
        for first, src, dst, etype in blocks:
            src = np.ascontiguousarray(src, dtype=np.int64)
            dst = np.ascontiguousarray(dst, dtype=np.int64)
            et = _NO_TYPES if etype is None else np.ascontiguousarray(etype, dtype=np.int8)
            need = len(src) * (2 if undirected else 1)
            if len(buf) < need:  # grows once, then is reused block after block
                buf = np.empty(need, dtype=np.int64)
            keys = buf[:need]
            c = np.zeros(k, dtype=np.int64)
            bad = edge_keys_by_bucket(
                src, dst, num_nodes, bounds, undirected, drop_self_loops, c, keys, et, rev_type
            )
            if bad >= 0:
                raise InputDataError(
                    f"edge {first + bad} of {edges_name!r} is {int(src[bad])} -> {int(dst[bad])}; "
                    f"node ids must lie in [0, {num_nodes})"
                )
            ends = np.cumsum(c)
            for i in np.flatnonzero(c):
                _append(files[i], keys[ends[i] - c[i] : ends[i]])
            counts += c
            tick(len(src), len(src) * 16)
    finally:
        for f in files:
            f.close()
    return [Bucket(int(bounds[i]), int(bounds[i + 1]), names[i], int(counts[i])) for i in range(k)]


def _split_oversized(
    buckets: list[Bucket],
    num_nodes: int,
    tmp_dir: Path,
    capacity: int,
    block: int,
    rev_type: np.ndarray = _UNTYPED,
) -> list[Bucket]:
    """Split every bucket of more than ``capacity`` keys by destination range (skewed degrees)."""
    out: list[Bucket] = []
    todo = list(buckets)
    num_types = len(rev_type)
    m_key = num_nodes * num_types
    while todo:
        b = todo.pop(0)
        if b.count <= capacity:
            out.append(b)
            continue
        if b.hi - b.lo == 1:
            raise ConvertError(
                f"node {b.lo} has {b.count} in-edges before deduplication; sorting them needs "
                f"{b.count * 2 * KEY_BYTES / 2**30:.2f} GiB — raise --memory-budget"
            )
        parts = max(2, -(-b.count * 2 // capacity))
        bounds = _uniform_bounds(b.lo, b.hi, parts)
        path = tmp_dir / b.name
        stem = b.name.removesuffix(".keys")

        def blocks(path: Path = path, b: Bucket = b) -> Any:
            for a, keys in _key_blocks(path, b.count, block):
                if num_types > 1:
                    k = keys % m_key
                    yield a, k // num_types, b.lo + keys // m_key, k % num_types
                else:
                    yield a, keys % num_nodes, b.lo + keys // num_nodes, None

        subs = _partition_to_files(
            blocks(),
            bounds,
            num_nodes,
            tmp_dir,
            stem,
            False,
            False,
            b.name,
            lambda r, n: None,
            rev_type,
        )
        path.unlink()
        todo = subs + todo
    return out


def bucket_edges(
    edges: EdgeSource,
    num_nodes: int,
    *,
    undirected: bool,
    drop_self_loops: bool,
    tmp_dir: Path,
    capacity: int,
    block_edges: int,
    tick: Tick,
    num_types: int = 1,
    rev_type: Any = None,
) -> list[Bucket]:
    """Pass 1: edge keys into destination buckets of at most ``capacity`` keys each.

    With ``num_types > 1`` the edges are typed: ``edges.typed_blocks`` gives
    each edge's type and ``rev_type[t]`` is the type of the reverse edge a
    symmetrised graph adds (default: the same type).

    Raises
    ------
    InputDataError
        An edge names a node outside ``[0, num_nodes)``.
    """
    total = edges.num_edges * (2 if undirected else 1)
    parts = min(_MAX_OPEN_BUCKETS, max(1, -(-total * 5 // (capacity * 4))))
    bounds = _uniform_bounds(0, num_nodes, parts) if num_nodes else np.array([0, 0])
    if num_nodes == 0:
        return []
    rev = _rev_table(rev_type, num_types)
    if num_types > 1:
        blocks = edges.typed_blocks(block_edges)
    else:
        blocks = ((first, src, dst, None) for first, src, dst in edges.blocks(block_edges))
    buckets = _partition_to_files(
        blocks,
        bounds,
        num_nodes,
        tmp_dir,
        "edges",
        undirected,
        drop_self_loops,
        edges.name,
        tick,
        rev,
    )
    return _split_oversized(buckets, num_nodes, tmp_dir, capacity, block_edges, rev)


def _dedupe_one(
    b: Bucket,
    num_nodes: int,
    add_self_loops: bool,
    degrees: np.ndarray,
    tmp_dir: Path,
    buf: np.ndarray,
    num_types: int = 1,
    self_type: int = 0,
) -> Bucket:
    src_path = tmp_dir / b.name
    name = b.name.removesuffix(".keys") + ".dedup"
    done_path = tmp_dir / name
    if done_path.exists():  # finished by an interrupted earlier run
        keys = np.fromfile(done_path, dtype=np.int64)
        m = len(keys)
    else:
        loops = b.hi - b.lo if add_self_loops else 0
        keys = buf[: b.count + loops]
        if b.count:
            with open(src_path, "rb") as f:
                _read_keys(f, keys[: b.count], src_path)
        if loops:
            local = np.arange(loops, dtype=np.int64)
            keys[b.count :] = local * (num_nodes * num_types) + (
                (local + b.lo) * num_types + self_type
            )
        keys.sort()
        m = dedupe_sorted(keys, len(keys))
        tmp = done_path.with_suffix(".partial")
        with open(tmp, "wb") as f:
            _append(f, keys[:m])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, done_path)
    src_path.unlink(missing_ok=True)
    deg = np.zeros(b.hi - b.lo, dtype=np.int64)
    local_degrees(keys, m, num_nodes * num_types, deg)
    degrees[b.lo : b.hi] = deg
    return Bucket(b.lo, b.hi, name, int(m))


def dedupe_buckets(
    buckets: list[Bucket],
    num_nodes: int,
    *,
    add_self_loops: bool,
    degrees: np.ndarray,
    tmp_dir: Path,
    tick: Tick,
    num_types: int = 1,
    self_type: int = 0,
) -> tuple[list[Bucket], int]:
    """Pass 2: sort and deduplicate each bucket; fill ``degrees`` (in-degree per node).

    Typed keys (``num_types > 1``) are deduplicated per (destination, type,
    source); added self-loops get type ``self_type``.

    Returns
    -------
    buckets, num_edges
        The deduplicated buckets (sorted keys) and the edge count of the sampling graph.
    """
    out = []
    size = max((b.count + (b.hi - b.lo if add_self_loops else 0) for b in buckets), default=0)
    buf = np.empty(size, dtype=np.int64)
    for b in buckets:
        out.append(
            _dedupe_one(b, num_nodes, add_self_loops, degrees, tmp_dir, buf, num_types, self_type)
        )
        tick(b.hi - b.lo, b.count * KEY_BYTES)
    return out, sum(b.count for b in out)


def new_id_bounds(
    run_degrees: NDArray[np.int64], run_counts: NDArray[np.int64], capacity: int
) -> NDArray[np.int64]:
    """Bounds of new-id buckets holding at most ``capacity`` edges each (one node at least).

    ``run_degrees``/``run_counts`` give the degree of new ids 0, 1, ... as runs.
    """
    cuts = [0]
    pos = 0
    fill = 0
    for d, c in zip(run_degrees.tolist(), run_counts.tolist()):
        while c:
            room = (capacity - fill) // d if d else c
            if room <= 0:
                if fill == 0:  # a single node above capacity gets a bucket of its own
                    room = 1
                else:
                    cuts.append(pos)
                    fill = 0
                    continue
            take = min(c, room)
            pos += take
            fill += take * d
            c -= take
    if cuts[-1] != pos:
        cuts.append(pos)
    return np.asarray(cuts, dtype=np.int64)


def relabel_buckets(
    buckets: list[Bucket],
    num_nodes: int,
    new_id: np.ndarray,
    bounds: NDArray[np.int64],
    *,
    tmp_dir: Path,
    block_edges: int,
    tick: Tick,
    num_types: int = 1,
) -> list[Bucket]:
    """Pass 3: map deduplicated keys to new ids, bucketed by new destination (types kept)."""
    k = len(bounds) - 1
    if k > _MAX_OPEN_BUCKETS * 8:
        raise ConvertError(f"{k} buckets of new ids; raise --memory-budget")
    names = [f"relabel_{i}.keys" for i in range(k)]
    counts = np.zeros(k, dtype=np.int64)
    files = [open(tmp_dir / nm, "wb") for nm in names]
    out_buf = np.empty(max(1, block_edges), dtype=np.int64)
    try:
        for b in buckets:
            if not b.count:
                tick(b.hi - b.lo, 0)
                continue
            for _, keys in _key_blocks(tmp_dir / b.name, b.count, block_edges):
                out = out_buf[: len(keys)]
                c = np.zeros(k, dtype=np.int64)
                relabel_keys(keys, len(keys), num_nodes, b.lo, new_id, bounds, c, out, num_types)
                ends = np.cumsum(c)
                for i in np.flatnonzero(c):
                    _append(files[i], out[ends[i] - c[i] : ends[i]])
                counts += c
            tick(b.hi - b.lo, b.count * KEY_BYTES)
    finally:
        for f in files:
            f.close()
    return [Bucket(int(bounds[i]), int(bounds[i + 1]), names[i], int(counts[i])) for i in range(k)]


def write_csc(
    buckets: list[Bucket],
    num_nodes: int,
    *,
    write_indptr: Callable[[int, np.ndarray], None],
    write_indices: Callable[[int, np.ndarray], None],
    indices_dtype: np.dtype,
    sort: bool,
    tmp_dir: Path,
    tick: Tick,
    num_types: int = 1,
    write_types: Callable[[int, np.ndarray], None] | None = None,
) -> int:
    """Pass 4: ``indptr``/``indices`` from buckets covering ``[0, num_nodes)`` in order.

    Typed keys (``num_types > 1``) also give ``edge_type`` (int8, through
    ``write_types``), aligned with ``indices``.

    Returns
    -------
    int
        Number of edges written.
    """
    write_indptr(0, np.zeros(1, dtype=np.int64))
    offset = 0
    expect = 0
    size = max((b.count for b in buckets), default=0)
    key_buf = np.empty(size, dtype=np.int64)
    # Two source buffers: the indices of one bucket are written on a helper
    # thread (pwrite releases the GIL) while the next bucket is read and sorted.
    src_bufs = [np.empty(size, dtype=indices_dtype) for _ in range(2)]
    typed = write_types is not None
    type_bufs = [np.empty(size if typed else 0, dtype=np.int8) for _ in range(2)]
    pending: list[Future[None] | None] = [None, None]
    m_key = num_nodes * num_types
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh-csc") as pool:
        for i, b in enumerate(buckets):
            if b.lo != expect:
                raise ConvertError(f"internal error: buckets leave nodes [{expect}, {b.lo}) out")
            expect = b.hi
            keys = key_buf[: b.count]
            if b.count:
                with open(tmp_dir / b.name, "rb") as f:
                    _read_keys(f, keys, tmp_dir / b.name)
            if sort:
                keys.sort()
            deg = np.zeros(b.hi - b.lo, dtype=np.int64)
            local_degrees(keys, len(keys), m_key, deg)
            slot = pending[i % 2]
            if slot is not None:
                slot.result()
            src = src_bufs[i % 2][: len(keys)]
            if typed:
                et = type_bufs[i % 2][: len(keys)]
                keys_to_sources_types(keys, len(keys), num_nodes, num_types, src, et)
                pending[i % 2] = (
                    pool.submit(_write_both, write_indices, write_types, offset, src, et)
                    if len(src)
                    else None
                )
            else:
                keys_to_sources(keys, len(keys), num_nodes, src)
                pending[i % 2] = pool.submit(write_indices, offset, src) if len(src) else None
            write_indptr(b.lo + 1, offset + np.cumsum(deg))
            offset += len(src)
            tick(b.hi - b.lo, len(src) * src.itemsize + (b.hi - b.lo) * 8)
        for fut in pending:
            if fut is not None:
                fut.result()
    if expect != num_nodes:
        raise ConvertError(f"internal error: buckets end at node {expect}, not {num_nodes}")
    return offset


def _write_both(write_indices: Any, write_types: Any, offset: int, src: Any, et: Any) -> None:
    write_indices(offset, src)
    write_types(offset, et)


def bucket_sizes(buckets: list[Bucket]) -> NDArray[np.int64]:
    """Keys per bucket (for messages and tests)."""
    return np.array([b.count for b in buckets], dtype=np.int64)


def assign_buckets(values: NDArray[np.int64], bounds: NDArray[np.int64]) -> NDArray[np.int64]:
    """Bucket of each value for increasing ``bounds`` (values in ``[bounds[0], bounds[-1])``)."""
    out = np.empty(len(values), dtype=np.int64)
    find_buckets(np.ascontiguousarray(values, dtype=np.int64), bounds, out)
    return out
