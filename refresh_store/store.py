"""Reading and writing ReFresh stores (see :mod:`refresh_store.format`).

Writing goes through :class:`StoreWriter`, which works in ``DST.partial/`` and
turns it into ``DST`` by one atomic rename after the manifest is written, so a
store that is interrupted at any moment never opens as complete, neither here
nor in zarr-python (``DST`` simply does not exist yet).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr
from numpy.typing import NDArray

from .errors import ConvertError, StoreFormatError, StoreIncompleteError
from .format import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    FORMAT_VERSION_EDGE_TYPES,
    MANIFEST_KEY,
    MAX_RELATIONS,
    OPTIONAL_ARRAY_NAMES,
    READ_FORMAT_VERSIONS,
    RowRegion,
    default_chunk_rows,
    encode_shard_index,
    read_shard_index,
    shard_path,
)

__all__ = [
    "Store",
    "open_store",
    "drop_resident_pages",
    "is_complete_store",
    "StoreWriter",
    "ArrayWriter",
    "write_store",
    "array_checksums",
    "ChecksumLog",
    "crc32c_combine",
    "CHECKSUM_BLOCK_BYTES",
]

#: Checksums of the data are kept per block of this many bytes, so that
#: ``verify`` can say where a store is damaged.
CHECKSUM_BLOCK_BYTES = 64 << 20  # 64 MiB
_PROGRESS_FILE = ".refresh_progress.json"
_MTIME_SLACK_NS = 1_000_000_000  # see StoreWriter._fsync_modified
_READ_BYTES = 16 << 20  # 16 MiB per pread when checksumming, into one reused buffer
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, row) for row in mat]


def _zero_byte_operators() -> list[list[int]]:
    """``ops[k]`` advances a crc32c register over ``2**k`` zero bytes (a 32x32 GF(2) matrix)."""
    one_bit = [_CRC32C_POLY] + [1 << (n - 1) for n in range(1, 32)]
    op = _gf2_square(_gf2_square(_gf2_square(one_bit)))  # 8 zero bits
    ops = [op]
    for _ in range(63):
        op = _gf2_square(op)
        ops.append(op)
    return ops


_ZERO_OPS: list[list[int]] = []


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """crc32c of ``A + B`` from ``crc32c(A)``, ``crc32c(B)`` and ``len(B)`` (zlib's method).

    Examples
    --------
    >>> crc32c_combine(crc32c.crc32c(b"ab"), crc32c.crc32c(b"cd"), 2) == crc32c.crc32c(b"abcd")
    True
    """
    if not _ZERO_OPS:
        _ZERO_OPS.extend(_zero_byte_operators())
    k = 0
    while len_b:
        if len_b & 1:
            crc_a = _gf2_times(_ZERO_OPS[k], crc_a)
        len_b >>= 1
        k += 1
    return crc_a ^ crc_b


class ChecksumLog:
    """crc32c of the bytes written into an array, gathered while writing.

    Writers call :meth:`add` with every piece they write (from any thread, in
    any order); each piece is checksummed in parts cut at the checksum block
    boundaries. When the pieces cover ``[0, nbytes)`` exactly once,
    :meth:`block_sums` gives the per-block checksums that
    :func:`array_checksums` would compute by reading the array back, so the
    commit need not read the data again.
    """

    def __init__(self, nbytes: int, block_bytes: int | None = None) -> None:
        self.nbytes = int(nbytes)
        self.block_bytes = int(block_bytes or CHECKSUM_BLOCK_BYTES)
        self._parts: list[tuple[int, int, int]] = []  # (offset, length, crc32c)
        self._lock = threading.Lock()

    def add(self, offset: int, data: memoryview) -> None:
        """Record that ``data`` was written at byte ``offset`` of the array."""
        data = memoryview(data).cast("B")
        parts, pos, n = [], 0, len(data)
        while pos < n:
            end = min(n, pos + self.block_bytes - (offset + pos) % self.block_bytes)
            parts.append((offset + pos, end - pos, crc32c.crc32c(data[pos:end])))
            pos = end
        with self._lock:
            self._parts.extend(parts)

    def block_sums(self) -> list[int] | None:
        """Per-block crc32c of ``[0, nbytes)``, or None unless every byte was written exactly once."""
        with self._lock:
            parts = sorted(self._parts)
        sums: list[int] = []
        pos, crc = 0, 0
        for offset, length, part_crc in parts:
            if offset != pos:
                return None  # a gap or an overlap: read the array back instead
            crc = (
                part_crc
                if offset % self.block_bytes == 0
                else crc32c_combine(crc, part_crc, length)
            )
            pos += length
            if pos % self.block_bytes == 0 or pos == self.nbytes:
                sums.append(crc)
        return sums if pos == self.nbytes else None

    def as_checksums(self) -> dict[str, Any] | None:
        """The entry :func:`array_checksums` would return, or None (see :meth:`block_sums`)."""
        sums = self.block_sums()
        if sums is None:
            return None
        return {"block_bytes": self.block_bytes, "nbytes": self.nbytes, "crc32c": sums}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via ``path.partial``, fsync and rename."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreFormatError(f"{str(path)!r} is missing; this is not a ReFresh store") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreFormatError(
            f"{str(path)!r} is not valid JSON ({exc}); the store is damaged"
        ) from None


def is_complete_store(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a group whose manifest says the store is complete."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = _read_json(meta).get("attributes", {})
    except StoreFormatError:
        return False
    return isinstance(attrs.get(MANIFEST_KEY), dict)


# ----------------------------------------------------------------------------- reading


class Store:
    """A complete ReFresh store opened for reading.

    Arrays are read-only ``numpy.memmap`` views, opened on first use, so that
    a topology or feature matrix larger than RAM can be used directly.
    Node ids are the store's (reordered) ids; ``old_id[v]`` is the source id of
    node ``v`` and ``new_id[u]`` the store id of source node ``u``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        group_meta = self.path / "zarr.json"
        partial = self.path.with_name(self.path.name + ".partial")
        hint = (
            f"; an unfinished conversion is at {str(partial)!r}: rerun tools/convert.py with --resume"
            if partial.exists()
            else ""
        )
        if not self.path.is_dir():
            raise StoreFormatError(
                f"store {str(self.path)!r} does not exist{hint or '; convert a dataset with tools/convert.py'}"
            )
        if not group_meta.is_file():
            raise StoreFormatError(f"{str(self.path)!r} is not a ReFresh store: no zarr.json{hint}")
        meta = _read_json(group_meta)
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
            raise StoreFormatError(f"{str(self.path)!r} is not a Zarr v3 group")
        manifest = meta.get("attributes", {}).get(MANIFEST_KEY)
        if not isinstance(manifest, dict):
            raise StoreIncompleteError(
                f"store {str(self.path)!r} has no manifest: its conversion did not finish; "
                "rerun tools/convert.py with --resume or --overwrite"
            )
        version = manifest.get("format_version")
        if version not in READ_FORMAT_VERSIONS:
            raise StoreFormatError(
                f"store {str(self.path)!r} has format_version {version!r}; this release reads "
                f"{', '.join(map(str, READ_FORMAT_VERSIONS))} — reconvert with tools/convert.py"
            )
        relations = manifest.get("relations")
        typed = version == FORMAT_VERSION_EDGE_TYPES
        if typed and not (
            isinstance(relations, list)
            and 1 <= len(relations) <= MAX_RELATIONS
            and all(isinstance(r, str) for r in relations)
        ):
            raise StoreFormatError(
                f"store {str(self.path)!r} has format_version {version} but its manifest's "
                f"'relations' is {relations!r}, not a list of 1 to {MAX_RELATIONS} names; "
                "the store is damaged — reconvert it"
            )
        self.manifest: dict[str, Any] = manifest
        #: Relation names indexed by edge type id, or None for a store without edge types.
        self.relations: list[str] | None = list(relations) if typed else None
        self.num_nodes = int(manifest["num_nodes"])
        self.num_edges = int(manifest["num_edges"])
        self.feature_dim = int(manifest["feature_dim"])
        self.dtype = np.dtype(manifest["dtype"])
        self.num_classes = int(manifest["num_classes"])
        self._regions: dict[str, RowRegion] = {}

    def __repr__(self) -> str:
        return (
            f"Store({str(self.path)!r}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"feature_dim={self.feature_dim}, dtype={self.dtype.name})"
        )

    def region(self, name: str = "features") -> RowRegion:
        """Where the rows of array ``name`` lie on disk (read from its shard index)."""
        if name not in self._regions:
            self._regions[name] = _open_region(self.path, name)
        return self._regions[name]

    def array(self, name: str) -> np.ndarray:
        """Read-only memory map of array ``name``."""
        region = self.region(name)
        shape = (region.nrows, *region.row_shape)
        if region.nrows == 0:
            return np.empty(shape, dtype=region.dtype)
        if not region.contiguous:
            raise StoreFormatError(
                f"array {name!r} of {str(self.path)!r} was rewritten with its chunks out of "
                "order and cannot be memory-mapped; reconvert the store with tools/convert.py"
            )
        return np.memmap(
            region.path,
            dtype=region.dtype,
            mode="r",
            offset=int(region.chunk_offsets[0]),
            shape=shape,
        )

    features = cached_property(lambda self: self.array("features"))
    indptr = cached_property(lambda self: self.array("indptr"))
    indices = cached_property(lambda self: self.array("indices"))
    labels = cached_property(lambda self: self.array("labels"))
    train_idx = cached_property(lambda self: self.array("train_idx"))
    valid_idx = cached_property(lambda self: self.array("valid_idx"))
    test_idx = cached_property(lambda self: self.array("test_idx"))
    new_id = cached_property(lambda self: self.array("new_id"))
    old_id = cached_property(lambda self: self.array("old_id"))

    @property
    def has_edge_types(self) -> bool:
        """Whether the store holds ``edge_type`` (format version 2)."""
        return self.relations is not None

    @property
    def num_relations(self) -> int:
        """Number of relations (0 for a store without edge types)."""
        return 0 if self.relations is None else len(self.relations)

    @cached_property
    def edge_type(self) -> np.ndarray | None:
        """int8 ``[E]`` relation of each CSC edge (aligned with ``indices``), or None."""
        return self.array("edge_type") if self.has_edge_types else None


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a complete store for reading.

    Raises
    ------
    StoreFormatError
        ``path`` is not a store, is damaged, or has another format version.
    StoreIncompleteError
        The store's conversion did not finish (no manifest).
    """
    return Store(path)


def drop_resident_pages(array: Any) -> bool:
    """Unmap the pages a read-only memory-mapped array has read from this process.

    A memory map's pages count in the process's resident set (``RssFile``)
    for as long as they stay cached, even after their contents were copied
    elsewhere; ``madvise(MADV_DONTNEED)`` drops them from this process's
    page tables. The page cache keeps them and a later access reads them
    back, so this never changes what the array reads. Used after a store
    array was copied into RAM, so that it is not counted twice.

    Parameters
    ----------
    array
        A :class:`numpy.memmap` (as :class:`Store` arrays are) or a view of
        one; anything else is left alone.

    Returns
    -------
    bool
        Whether ``array`` was memory-mapped.
    """
    a = array
    while a is not None:
        mm = getattr(a, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mm.madvise(mmap.MADV_DONTNEED)
            return True
        a = getattr(a, "base", None)
    return False


def _open_region(root: Path, name: str) -> RowRegion:
    if name not in ARRAY_NAMES and name not in OPTIONAL_ARRAY_NAMES:
        names = ", ".join(ARRAY_NAMES + OPTIONAL_ARRAY_NAMES)
        raise ValueError(f"unknown array {name!r}; a store holds {names}")
    meta = _read_json(root / name / "zarr.json")
    try:
        shape = tuple(int(s) for s in meta["shape"])
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            raise KeyError("sharding_indexed")
        cfg = codec["configuration"]
        inner = tuple(int(s) for s in cfg["chunk_shape"])
        inner_codecs = [c["name"] for c in cfg["codecs"]]
        shard_shape = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
        index_at_end = cfg.get("index_location", "end") == "end"
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(
            f"array {name!r} of {str(root)!r} is not laid out as one uncompressed shard "
            f"({exc!r}); reconvert the store with tools/convert.py"
        ) from None
    if (
        inner_codecs != ["bytes"]
        or not index_at_end
        or shard_shape[0] < shape[0]
        or inner[1:] != shape[1:]
        or shard_shape[1:] != shape[1:]
    ):
        raise StoreFormatError(
            f"array {name!r} of {str(root)!r} is compressed or not a single row-chunked shard; "
            "reconvert the store with tools/convert.py"
        )
    chunk_rows = inner[0]
    n_inner = shard_shape[0] // chunk_rows
    path = shard_path(root / name, len(shape))
    # A shard reached through a link that leaves the store is refused: paths in
    # a store never escape it.
    if not path.resolve().is_relative_to(root.resolve()):
        raise StoreFormatError(f"{str(path)!r} points outside the store {str(root)!r}")
    index = read_shard_index(path, n_inner)
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    used = -(-shape[0] // chunk_rows)  # inner chunks that hold rows
    if np.any(index[:used, 0] == np.uint64(2**64 - 1)) or np.any(
        index[:used, 1] != np.uint64(chunk_rows * row_bytes)
    ):
        raise StoreFormatError(
            f"array {name!r} of {str(root)!r} has missing or odd-sized chunks; reconvert it"
        )
    size = os.path.getsize(path)
    if used and int(index[:used, 0].max()) + chunk_rows * row_bytes > size:
        raise StoreFormatError(f"shard {str(path)!r} is truncated; the store is damaged")
    return RowRegion(
        path=str(path),
        nrows=shape[0],
        row_shape=shape[1:],
        dtype=dtype,
        chunk_rows=chunk_rows,
        chunk_offsets=index[:, 0].astype(np.int64),
    )


def array_checksums(
    path: str | os.PathLike[str],
    name: str,
    block_bytes: int = CHECKSUM_BLOCK_BYTES,
    visit: Callable[[int, memoryview], None] | None = None,
) -> dict[str, Any]:
    """Per-block crc32c of the data of array ``name`` of the store (or partial store) at ``path``.

    Only the rows of the array are covered, not the padding of its last chunk.
    ``visit(byte_offset, data)``, when given, sees every piece of the data as it
    is read, in order (pieces are whole elements), so that other checks of the
    data need not read it again; ``data`` is only valid during the call.
    """
    region = _open_region(Path(path), name)
    total = region.nrows * region.row_bytes
    sums: list[int] = []
    # One reused buffer: a fresh 64 MiB bytes object per block cost more in
    # page faults than the checksum itself.
    buf = memoryview(bytearray(min(max(total, 1), _READ_BYTES, block_bytes)))
    with open(region.path, "rb", buffering=0) as f:

        def read(n: int, offset: int) -> memoryview:
            got = 0
            while got < n:
                k = os.preadv(f.fileno(), [buf[got:n]], offset + got)
                if k <= 0:
                    raise StoreFormatError(f"{region.path!r} is truncated at byte {offset + got}")
                got += k
            return buf[:n]

        if region.contiguous:
            base = int(region.chunk_offsets[0]) if len(region.chunk_offsets) else 0
            done = 0
            while done < total:
                n = min(block_bytes, total - done)
                crc, pos = 0, 0
                while pos < n:
                    take = min(len(buf), n - pos)
                    data = read(take, base + done + pos)
                    crc = crc32c.crc32c(data, crc)
                    if visit is not None:
                        visit(done + pos, data)
                    pos += take
                sums.append(crc)
                done += n
        else:  # follow the chunk table, in row order
            chunk_bytes = region.chunk_rows * region.row_bytes
            crc, filled, done = 0, 0, 0
            for off in region.chunk_offsets:
                n = min(chunk_bytes, total - done)
                if n <= 0:
                    break
                pos = 0
                while pos < n:
                    data = read(min(len(buf), n - pos), int(off) + pos)
                    if visit is not None:
                        visit(done + pos, data)
                    pos += len(data)
                    while len(data):
                        take = min(len(data), block_bytes - filled)
                        crc = crc32c.crc32c(data[:take], crc)
                        filled += take
                        data = data[take:]
                        if filled == block_bytes:
                            sums.append(crc)
                            crc, filled = 0, 0
                done += n
            if filled:
                sums.append(crc)
    return {"block_bytes": block_bytes, "nbytes": total, "crc32c": sums}


# ----------------------------------------------------------------------------- writing


class ArrayWriter:
    """One array of a store being written: a preallocated shard file.

    The shard index is written at creation, so the file is a valid shard from
    the start; rows are then written in place with :meth:`write` or through
    :meth:`memmap`.
    """

    def __init__(
        self,
        array_dir: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunk_rows: int,
        crc_log: ChecksumLog | None = None,
    ):
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.path = shard_path(array_dir, len(shape))
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        #: Checksums of what is written through this writer (None: not tracked,
        #: e.g. an array reopened on resume). Other writers of the file's rows
        #: (such as ``_rowio.DirectWriter``) add their pieces to it too.
        self.crc_log = crc_log

    @property
    def nbytes(self) -> int:
        """Bytes of the rows of the array (without the padding of the last chunk)."""
        return self.shape[0] * self.row_bytes

    def write(self, start_row: int, block: np.ndarray) -> None:
        """Write ``block`` as rows ``[start_row, start_row + len(block))``."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if (
            block.shape[1:] != self.shape[1:]
            or start_row < 0
            or start_row + len(block) > self.shape[0]
        ):
            raise ValueError(
                f"block of shape {block.shape} at row {start_row} does not fit array of shape {self.shape}"
            )
        data = memoryview(block).cast("B")
        offset = start_row * self.row_bytes
        if self.crc_log is not None:
            self.crc_log.add(offset, data)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while len(data):
                n = os.pwrite(fd, data, offset)
                data = data[n:]
                offset += n
        finally:
            os.close(fd)

    def memmap(self) -> np.memmap:
        """Writable memory map of the array's rows (writes through it are not checksummed here)."""
        self.crc_log = None
        if self.shape[0] == 0:
            return np.empty(self.shape, self.dtype)  # type: ignore[return-value]
        return np.memmap(self.path, dtype=self.dtype, mode="r+", shape=self.shape)

    def flush(self) -> None:
        """fsync the shard file."""
        _fsync_path(self.path)


class StoreWriter:
    """Streaming writer of a store; all work happens in ``DST.partial/``.

    Parameters
    ----------
    dst
        Final path of the store.
    overwrite
        Replace a complete store at ``dst`` when committing. Without it an
        existing store is never touched.
    resume
        Keep an existing ``DST.partial/`` and its finished steps.

    Raises
    ------
    ConvertError
        ``dst`` holds a complete store and ``overwrite`` is false, or ``dst``
        is a non-empty folder that is not a store, or a file.
    """

    def __init__(
        self, dst: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False
    ) -> None:
        self.dst = Path(dst)
        self.partial_path = self.dst.with_name(self.dst.name + ".partial")
        self.overwrite = overwrite
        # Checksums gathered while writing arrays created by this run, until
        # mark_step records them in the progress file (for --resume) or commit uses them.
        self._logs: dict[str, ChecksumLog] = {}
        check_destination(self.dst, overwrite=overwrite)
        if self.partial_path.exists() and not (resume and self._progress_file.is_file()):
            shutil.rmtree(self.partial_path)
        if not self.partial_path.exists():
            self.partial_path.mkdir(parents=True)
            # The group exists from the start but carries no manifest until commit.
            zarr.open_group(str(self.partial_path), mode="w", zarr_format=3)
            _atomic_write_text(self._progress_file, json.dumps({"steps": {}}))

    @property
    def _progress_file(self) -> Path:
        return self.partial_path / _PROGRESS_FILE

    # -- resume bookkeeping
    def _progress(self) -> dict[str, Any]:
        return _read_json(self._progress_file)

    def step_done(self, step: str) -> bool:
        """True when ``step`` was finished (and marked) by an earlier run."""
        return step in self._progress()["steps"]

    def step_info(self, step: str) -> dict[str, Any]:
        """What :meth:`mark_step` recorded for ``step``."""
        return self._progress()["steps"][step]

    def mark_step(self, step: str, info: Mapping[str, Any] | None = None) -> None:
        """Record ``step`` as finished, after fsyncing what it wrote.

        Only files modified since the previous mark are fsynced: earlier
        steps' files are durable already, and a step's scratch files that are
        gone cost nothing. Checksums gathered while writing arrays that are
        now complete are recorded with the step (for ``--resume``).
        """
        progress = self._progress()
        progress["synced_ns"] = self._fsync_modified(progress.get("synced_ns", 0))
        progress["steps"][step] = dict(info or {})
        sums = progress.setdefault("checksums", {})
        for name, log in list(self._logs.items()):
            entry = log.as_checksums()
            if entry is not None:
                sums[name] = entry
                del self._logs[name]
        _atomic_write_text(self._progress_file, json.dumps(progress))

    def _fsync_modified(self, since_ns: int) -> int:
        """fsync files modified at or after ``since_ns``; return the mark for the next call.

        File times come from the kernel's coarse clock, a few ms behind
        ``time.time_ns()``; the mark is taken a second early to stay on the safe
        side (a file modified just before it is fsynced twice, which is cheap).
        """
        mark = time.time_ns() - _MTIME_SLACK_NS
        for entry in self.partial_path.rglob("*"):
            if entry.is_file() and entry.stat().st_mtime_ns >= since_ns:
                _fsync_path(entry)
        return mark

    # -- arrays
    def create_array(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype | str | type,
        chunk_rows: int | None = None,
    ) -> ArrayWriter:
        """Create array ``name`` as one preallocated, zero-filled, uncompressed shard."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        chunk_rows = int(chunk_rows or default_chunk_rows(row_bytes))
        n_inner = max(1, -(-shape[0] // chunk_rows))
        group = zarr.open_group(str(self.partial_path), mode="r+")
        if name in group:
            del group[name]
        progress = self._progress()
        if name in progress.get("checksums", {}):  # recorded for an earlier copy of the array
            del progress["checksums"][name]
            _atomic_write_text(self._progress_file, json.dumps(progress))
        group.create_array(
            name,
            shape=shape,
            chunks=(chunk_rows, *shape[1:]),
            shards=(n_inner * chunk_rows, *shape[1:]),
            dtype=dtype,
            compressors=None,
            filters=None,
            fill_value=0,
        )
        log = ChecksumLog(shape[0] * row_bytes)
        self._logs[name] = log
        writer = ArrayWriter(self.partial_path / name, shape, dtype, chunk_rows, log)
        writer.path.parent.mkdir(parents=True, exist_ok=True)
        chunk_bytes = chunk_rows * row_bytes
        data_bytes = n_inner * chunk_bytes
        offsets = np.arange(n_inner, dtype=np.uint64) * np.uint64(chunk_bytes)
        nbytes = np.full(n_inner, chunk_bytes, dtype=np.uint64)
        with open(writer.path, "wb") as f:
            f.truncate(data_bytes)  # sparse: zero rows cost no disk until written
            f.seek(data_bytes)
            f.write(encode_shard_index(offsets, nbytes))
        return writer

    def open_array(self, name: str) -> ArrayWriter:
        """Reopen an array created by an earlier run (for ``--resume``)."""
        region = _open_region(self.partial_path, name)
        return ArrayWriter(
            self.partial_path / name,
            (region.nrows, *region.row_shape),
            region.dtype,
            region.chunk_rows,
        )

    def has_array(self, name: str) -> bool:
        """True when array ``name`` exists in the partial store."""
        return (self.partial_path / name / "zarr.json").is_file()

    # -- finishing
    def commit(self, manifest: Mapping[str, Any]) -> Store:
        """Write checksums and the manifest (last), then rename ``DST.partial`` to ``DST``.

        ``manifest`` needs at least ``num_nodes``, ``num_edges``, ``feature_dim``,
        ``dtype`` and ``num_classes``, and ``relations`` (names by type id) when
        an ``edge_type`` array was written; ``format_version``, ``checksums`` and
        ``created`` are added here. The version is the lowest that describes
        the store: 2 with ``edge_type``, else 1.
        """
        missing = [n for n in ARRAY_NAMES if not self.has_array(n)]
        if missing:
            raise ConvertError(
                f"cannot commit {str(self.dst)!r}: arrays {missing} were not written"
            )
        names = self._array_names()
        full = dict(manifest)
        typed = "edge_type" in names
        relations = full.get("relations")
        if typed and not (isinstance(relations, list) and 1 <= len(relations) <= MAX_RELATIONS):
            raise ConvertError(
                f"cannot commit {str(self.dst)!r}: an edge_type array needs the manifest's "
                f"'relations' (1 to {MAX_RELATIONS} names), got {relations!r}"
            )
        if not typed:
            full.pop("relations", None)
        full["format_version"] = FORMAT_VERSION_EDGE_TYPES if typed else FORMAT_VERSION
        full["chunk_rows"] = {n: _open_region(self.partial_path, n).chunk_rows for n in names}
        full["checksums"] = self._checksums()
        full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._fsync_modified(self._progress().get("synced_ns", 0))
        # The manifest is written last: a group without it is never complete.
        meta_path = self.partial_path / "zarr.json"
        meta = _read_json(meta_path)
        meta.setdefault("attributes", {})[MANIFEST_KEY] = full
        _atomic_write_text(meta_path, json.dumps(meta, indent=2))
        self._progress_file.unlink(missing_ok=True)
        _fsync_path(self.partial_path)
        if self.dst.exists():
            if self.dst.is_dir() and not any(self.dst.iterdir()):
                self.dst.rmdir()
            else:  # overwrite was checked at construction
                trash = self.dst.with_name(self.dst.name + ".old")
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(self.dst, trash)
                os.replace(self.partial_path, self.dst)
                _fsync_path(self.dst.parent)
                shutil.rmtree(trash, ignore_errors=True)
                return open_store(self.dst)
        os.replace(self.partial_path, self.dst)
        _fsync_path(self.dst.parent)
        return open_store(self.dst)

    def _checksums(self) -> dict[str, Any]:
        """Per-block checksums of every array: gathered while writing where possible, else read."""
        recorded = self._progress().get("checksums", {})
        out: dict[str, Any] = {}
        for name in self._array_names():
            log = self._logs.get(name)
            entry = log.as_checksums() if log is not None else recorded.get(name)
            region = _open_region(self.partial_path, name)
            if (
                entry is None
                or entry.get("nbytes") != region.nrows * region.row_bytes
                or entry.get("block_bytes") != CHECKSUM_BLOCK_BYTES
            ):
                entry = array_checksums(self.partial_path, name, CHECKSUM_BLOCK_BYTES)
            out[name] = entry
        return out

    def _array_names(self) -> tuple[str, ...]:
        """The arrays the store holds: every required one and the optional ones written."""
        return ARRAY_NAMES + tuple(n for n in OPTIONAL_ARRAY_NAMES if self.has_array(n))

    def abort(self) -> None:
        """Remove ``DST.partial`` and everything written so far."""
        shutil.rmtree(self.partial_path, ignore_errors=True)


def check_destination(dst: Path, *, overwrite: bool) -> None:
    """Refuse a destination that would lose data (see :class:`StoreWriter`)."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise ConvertError(
            f"destination {str(dst)!r} is a file; choose a folder path for the store"
        )
    if is_complete_store(dst):
        if not overwrite:
            raise ConvertError(
                f"destination {str(dst)!r} already holds a store; pass --overwrite to replace it"
            )
        return
    if any(dst.iterdir()):
        raise ConvertError(
            f"destination {str(dst)!r} is a non-empty folder that is not a ReFresh store; "
            "refusing to write into it — choose an empty or new folder"
        )


def write_store(
    dst: str | os.PathLike[str],
    *,
    features: NDArray[Any],
    indptr: NDArray[np.int64],
    indices: NDArray[np.integer],
    labels: NDArray[np.int64],
    train_idx: NDArray[np.int64],
    valid_idx: NDArray[np.int64],
    test_idx: NDArray[np.int64],
    new_id: NDArray[np.int64] | None = None,
    old_id: NDArray[np.int64] | None = None,
    num_classes: int | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    edge_type: NDArray[np.integer] | None = None,
    relations: list[str] | None = None,
) -> Store:
    """Write a store from in-memory arrays, as given (no reordering).

    Meant for small data (tests, examples); large datasets go through
    :func:`refresh_store.convert.convert`. ``new_id``/``old_id`` default to the
    identity permutation; ``num_classes`` defaults to ``labels.max() + 1``.
    ``edge_type`` (``[E]``, aligned with ``indices``, values in
    ``[0, len(relations))``) and ``relations`` make a typed store (format
    version 2).
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {features.shape}")
    n = features.shape[0]
    indptr = np.asarray(indptr, dtype=np.int64)
    if indptr.shape != (n + 1,):
        raise ValueError(f"indptr must have shape ({n + 1},), got {indptr.shape}")
    indices = np.asarray(indices)
    if indices.dtype not in (np.int32, np.int64):
        indices = indices.astype(np.int64)
    identity = np.arange(n, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "features": features,
        "indptr": indptr,
        "indices": indices,
        "labels": labels,
        "train_idx": np.asarray(train_idx, dtype=np.int64),
        "valid_idx": np.asarray(valid_idx, dtype=np.int64),
        "test_idx": np.asarray(test_idx, dtype=np.int64),
        "new_id": identity if new_id is None else np.asarray(new_id, dtype=np.int64),
        "old_id": identity if old_id is None else np.asarray(old_id, dtype=np.int64),
    }
    if (edge_type is None) != (relations is None):
        raise ValueError("edge_type and relations go together: pass both or neither")
    if edge_type is not None:
        et = np.asarray(edge_type)
        if et.shape != indices.shape:
            raise ValueError(f"edge_type must have shape {indices.shape}, got {et.shape}")
        if et.size and (et.min() < 0 or et.max() >= len(relations)):  # type: ignore[arg-type]
            raise ValueError(f"edge_type values must lie in [0, {len(relations)})")  # type: ignore[arg-type]
        arrays["edge_type"] = et.astype(np.int8)
    writer = StoreWriter(dst, overwrite=overwrite)
    try:
        for name, arr in arrays.items():
            aw = writer.create_array(
                name, arr.shape, arr.dtype, chunk_rows if name == "features" else None
            )
            if len(arr):
                aw.write(0, arr)
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
        manifest: dict[str, Any] = {
            "num_nodes": n,
            "num_edges": int(indices.shape[0]),
            "feature_dim": int(features.shape[1]),
            "dtype": features.dtype.name,
            "num_classes": int(num_classes),
            "reorder": "none",
            "source": {"format": "memory"},
        }
        if relations is not None:
            manifest["relations"] = list(relations)
        manifest.update(manifest_extra or {})
        return writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
