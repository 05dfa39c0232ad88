"""The on-disk format of a ReFresh store (versions 1 and 2).

A store is one Zarr v3 group. Every array is uncompressed and written as a
single shard whose inner chunks lie in row order, so the shard file's data
region is the plain C-order array at byte offset 0 (the last inner chunk is
zero-padded), followed by the shard index (``(offset u64, nbytes u64)`` per
inner chunk and a crc32c). zarr-python and tensorstore read the arrays through
the standard sharding codec; this project reads rows directly at byte offsets
computed from the index, which is read at open because a zarr rewrite of the
shard may move chunks.

Version 2 is version 1 plus one optional array, ``edge_type`` (int8 ``[E]``,
aligned with ``indices``: the relation of each CSC edge), and the manifest key
``relations`` (the relation names, indexed by type id). Within each node's
in-edges a typed store sorts edges by (type, source), so the edges of one
relation are a contiguous run that a binary search finds. A store carries the
lowest version that describes it: stores without edge types are still
written as version 1, byte for byte as before, and releases that read only
version 1 keep reading them; they refuse a typed store by its version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import numpy as np
from numpy.typing import NDArray

from .errors import StoreFormatError

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSION_EDGE_TYPES",
    "READ_FORMAT_VERSIONS",
    "MANIFEST_KEY",
    "ARRAY_NAMES",
    "OPTIONAL_ARRAY_NAMES",
    "MAX_RELATIONS",
    "RowRegion",
    "default_chunk_rows",
    "shard_path",
    "encode_shard_index",
    "read_shard_index",
]

#: Version of a store without edge types (the base format).
FORMAT_VERSION = 1
#: Version of a store with the optional ``edge_type`` array and ``relations``.
FORMAT_VERSION_EDGE_TYPES = 2
#: Versions this release opens.
READ_FORMAT_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_EDGE_TYPES)
#: Key of the manifest in the group's attributes.
MANIFEST_KEY = "refresh"
#: Arrays every complete store holds.
ARRAY_NAMES = (
    "features",
    "indptr",
    "indices",
    "labels",
    "train_idx",
    "valid_idx",
    "test_idx",
    "new_id",
    "old_id",
)
#: Arrays a store may hold (version 2): ``edge_type`` int8 [E], aligned with ``indices``.
OPTIONAL_ARRAY_NAMES = ("edge_type",)
#: Relations an ``edge_type`` array can name (int8 ids ``0 .. MAX_RELATIONS-1``).
MAX_RELATIONS = 127
# Offset/nbytes value zarr uses for an inner chunk that was never written.
_EMPTY = np.uint64(2**64 - 1)
# Target size of one inner chunk: big enough that the shard index stays small
# (about 16 bytes per MiB of data), small enough for zarr readers' reads.
_CHUNK_TARGET_BYTES = 1 << 20  # 1 MiB


def default_chunk_rows(row_bytes: int) -> int:
    """Rows per inner chunk for rows of ``row_bytes`` bytes (a power of two, >= 1)."""
    rows = max(1, _CHUNK_TARGET_BYTES // max(1, row_bytes))
    return 1 << (rows.bit_length() - 1)


def shard_path(array_dir: Path, ndim: int) -> Path:
    """Path of the single shard file of an array with ``ndim`` dimensions."""
    return array_dir.joinpath("c", *(["0"] * ndim))


def encode_shard_index(offsets: NDArray[np.uint64], nbytes: NDArray[np.uint64]) -> bytes:
    """Bytes of a shard index at the end of a shard (little-endian + crc32c)."""
    index = np.empty((len(offsets), 2), dtype="<u8")
    index[:, 0] = offsets
    index[:, 1] = nbytes
    raw = index.tobytes()
    return raw + np.array([crc32c.crc32c(raw)], dtype="<u4").tobytes()


def read_shard_index(path: Path, n_inner: int) -> NDArray[np.uint64]:
    """Read and check the index at the end of a shard file.

    Returns
    -------
    ndarray of shape (n_inner, 2), uint64: ``(offset, nbytes)`` per inner chunk.

    Raises
    ------
    StoreFormatError
        The file is shorter than its index, or the index checksum is wrong.
    """
    index_bytes = n_inner * 16
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < index_bytes + 4:
                raise StoreFormatError(
                    f"shard {str(path)!r} is {size} bytes, too short for its index of "
                    f"{n_inner} chunks; the store is damaged — reconvert it"
                )
            f.seek(size - index_bytes - 4)
            raw = f.read(index_bytes + 4)
    except FileNotFoundError:
        raise StoreFormatError(
            f"shard file {str(path)!r} is missing; the store is damaged — reconvert it"
        ) from None
    stored = int(np.frombuffer(raw[-4:], dtype="<u4")[0])
    if crc32c.crc32c(raw[:-4]) != stored:
        raise StoreFormatError(
            f"shard index of {str(path)!r} fails its crc32c check; the store is damaged"
        )
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(n_inner, 2).copy()


@dataclass(frozen=True)
class RowRegion:
    """Where the rows of one array lie in one file.

    Row ``r`` starts at byte ``chunk_offsets[r // chunk_rows] + (r % chunk_rows)
    * row_bytes`` of ``path``. For stores this project writes the chunks are
    back to back from offset 0 (``contiguous``), so row ``r`` is at
    ``r * row_bytes``.
    """

    path: str
    nrows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    chunk_offsets: NDArray[np.int64] = field(repr=False)  # [n_inner]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.row_shape, dtype=np.int64)))

    @property
    def contiguous(self) -> bool:
        """True when the data region is the plain C-order array at ``chunk_offsets[0]``."""
        step = self.chunk_rows * self.row_bytes
        expected = self.chunk_offsets[0] + step * np.arange(len(self.chunk_offsets))
        return bool(np.array_equal(self.chunk_offsets, expected))

    def row_offsets(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Byte offset in ``path`` of each row in ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        return self.chunk_offsets[ids // self.chunk_rows] + (ids % self.chunk_rows) * self.row_bytes
