"""Reading and writing ReFresh stores (see :mod:`refresh_store.format`).

Writing goes through :class:`StoreWriter`, which works in ``DST.partial/`` and
turns it into ``DST`` by one atomic rename after the manifest is written, so a
store that is interrupted at any moment never opens as complete, neither here
nor in zarr-python (``DST`` simply does not exist yet).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from .checksums import CHECKSUM_BLOCK_BYTES, ChecksumLog, array_checksums
from .errors import ConvertError
from .format import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    FORMAT_VERSION_EDGE_TYPES,
    MANIFEST_KEY,
    MAX_RELATIONS,
    OPTIONAL_ARRAY_NAMES,
    default_chunk_rows,
    encode_shard_index,
    shard_path,
)
from .store import Store, is_complete_store, open_region, open_store, read_json

__all__ = ["StoreWriter", "ArrayWriter", "write_store", "check_destination"]

_PROGRESS_FILE = ".refresh_progress.json"
_MTIME_SLACK_NS = 1_000_000_000  # see StoreWriter._fsync_modified


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
        #: (such as ``convert._row_writers.DirectWriter``) add their pieces to it too.
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
        return read_json(self._progress_file)

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
        log = ChecksumLog(shape[0] * row_bytes, CHECKSUM_BLOCK_BYTES)
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
        region = open_region(self.partial_path, name)
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
        full["chunk_rows"] = {n: open_region(self.partial_path, n).chunk_rows for n in names}
        full["checksums"] = self._checksums()
        full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._fsync_modified(self._progress().get("synced_ns", 0))
        # The manifest is written last: a group without it is never complete.
        meta_path = self.partial_path / "zarr.json"
        meta = read_json(meta_path)
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
            region = open_region(self.partial_path, name)
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
