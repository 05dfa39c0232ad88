"""Reading ReFresh stores (see :mod:`refresh_store.format`).

:func:`open_store` checks the manifest and the format version and maps every
array read-only; rows are addressed by byte offset through :class:`RowRegion`
(see :mod:`refresh_store.io` for random gathers). Writing is in
:mod:`refresh_store.writer`, checksums in :mod:`refresh_store.checksums`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import StoreFormatError, StoreIncompleteError
from .format import (
    ARRAY_NAMES,
    FORMAT_VERSION_EDGE_TYPES,
    MANIFEST_KEY,
    MAX_RELATIONS,
    OPTIONAL_ARRAY_NAMES,
    READ_FORMAT_VERSIONS,
    RowRegion,
    read_shard_index,
    shard_path,
)

__all__ = [
    "Store",
    "open_store",
    "open_region",
    "read_json",
    "drop_resident_pages",
    "is_complete_store",
]


# A zarr.json holds a few KiB (a manifest ~16 bytes per 64 MiB of data): a
# bigger one is not a store's, and is not read into memory.
_MAX_JSON_BYTES = 64 << 20  # 64 MiB


def read_json(path: Path) -> dict[str, Any]:
    """The JSON document at ``path`` (a ``zarr.json``); StoreFormatError when missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(_MAX_JSON_BYTES + 1)
        if len(text) > _MAX_JSON_BYTES:
            raise StoreFormatError(
                f"{str(path)!r} is larger than {_MAX_JSON_BYTES >> 20} MiB; not a ReFresh store"
            )
        doc = json.loads(text)
    except FileNotFoundError:
        raise StoreFormatError(f"{str(path)!r} is missing; this is not a ReFresh store") from None
    except IsADirectoryError:
        raise StoreFormatError(f"{str(path)!r} is a folder; this is not a ReFresh store") from None
    # ValueError: bad JSON, or an integer past Python's digit limit;
    # RecursionError: nesting deeper than the parser's stack.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreFormatError(
            f"{str(path)!r} is not valid JSON ({str(exc)[:200]}); the store is damaged"
        ) from None
    if not isinstance(doc, dict):
        raise StoreFormatError(f"{str(path)!r} is not a JSON object; the store is damaged")
    return doc


def is_complete_store(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a group whose manifest says the store is complete."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = read_json(meta).get("attributes", {})
    except StoreFormatError:
        return False
    return isinstance(attrs, dict) and isinstance(attrs.get(MANIFEST_KEY), dict)


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
        meta = read_json(group_meta)
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
            raise StoreFormatError(f"{str(self.path)!r} is not a Zarr v3 group")
        attrs = meta.get("attributes", {})
        manifest = attrs.get(MANIFEST_KEY) if isinstance(attrs, dict) else None
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
        self.num_nodes = self._count("num_nodes")
        self.num_edges = self._count("num_edges")
        self.feature_dim = self._count("feature_dim")
        self.num_classes = self._count("num_classes")
        self.dtype = _plain_dtype(manifest.get("dtype"), f"store {str(self.path)!r} manifest")
        self._regions: dict[str, RowRegion] = {}

    def _count(self, key: str) -> int:
        # A manifest is data from whoever wrote the store: a count is an int >= 0
        # (JSON true/false and floats are refused, not coerced).
        value = self.manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreFormatError(
                f"store {str(self.path)!r} has {key} = {value!r} in its manifest, not an "
                "integer >= 0; the store is damaged — reconvert it"
            )
        return value

    def __repr__(self) -> str:
        return (
            f"Store({str(self.path)!r}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"feature_dim={self.feature_dim}, dtype={self.dtype.name})"
        )

    def region(self, name: str = "features") -> RowRegion:
        """Where the rows of array ``name`` lie on disk (read from its shard index)."""
        if name not in self._regions:
            self._regions[name] = open_region(self.path, name)
        return self._regions[name]

    def array(self, name: str) -> np.ndarray:
        """Read-only memory map of array ``name``."""
        region = self.region(name)
        shape = (region.nrows, *region.row_shape)
        if region.nrows == 0 or region.row_bytes == 0:
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


#: Element types a store array may have: booleans, integers and floats. Anything
#: else (objects, strings, structured or zero-sized types) is refused at open.
_PLAIN_KINDS = "biuf"


def _plain_dtype(value: Any, where: str) -> np.dtype:
    """``value`` as a little-endian numeric dtype; StoreFormatError naming ``where`` otherwise."""
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in _PLAIN_KINDS or dtype.itemsize < 1:
        raise StoreFormatError(
            f"{where} has data type {value!r}; a store holds booleans, integers or floats "
            "only — the store is damaged, reconvert it"
        )
    return dtype.newbyteorder("<")


def _inside(root: Path, path: Path) -> None:
    # Paths in a store never escape it: a link (of the array folder, its
    # zarr.json or its shard) that resolves outside the store is refused.
    if not path.resolve().is_relative_to(root.resolve()):
        raise StoreFormatError(
            f"{str(path)!r} points outside the store {str(root)!r}; refusing to read it"
        )


def _int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(f"{value!r} is not a list of integers")
    return tuple(value)


def open_region(root: Path, name: str) -> RowRegion:
    """Where the rows of array ``name`` of the store (or partial store) at ``root`` lie on disk.

    Everything the array's ``zarr.json`` says is checked before anything is
    read or allocated: numeric data type, non-negative shape, one
    uncompressed shard of row chunks, a shard index whose size follows from
    the real file's size (so a header claiming 10^15 rows is refused), chunk
    offsets inside the file, and no path leaving the store.

    Raises
    ------
    StoreFormatError
        Any of the above does not hold.
    """
    if name not in ARRAY_NAMES and name not in OPTIONAL_ARRAY_NAMES:
        names = ", ".join(ARRAY_NAMES + OPTIONAL_ARRAY_NAMES)
        raise ValueError(f"unknown array {name!r}; a store holds {names}")
    _inside(root, root / name)
    _inside(root, root / name / "zarr.json")
    meta = read_json(root / name / "zarr.json")
    where = f"array {name!r} of {str(root)!r}"
    shape, dtype, chunk_rows, shard_rows = _row_chunked_layout(meta, where)
    n_inner = shard_rows // chunk_rows
    path = shard_path(root / name, len(shape))
    _inside(root, path)
    index = read_shard_index(path, n_inner)
    row_bytes = dtype.itemsize * math.prod(shape[1:])  # Python ints: no overflow
    used = -(-shape[0] // chunk_rows)  # inner chunks that hold rows
    _check_chunks(index, used, chunk_rows * row_bytes, path, where)
    return RowRegion(
        path=str(path),
        nrows=shape[0],
        row_shape=shape[1:],
        dtype=dtype,
        chunk_rows=chunk_rows,
        chunk_offsets=index[:, 0].astype(np.int64),
    )


def _row_chunked_layout(meta: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """``(shape, dtype, chunk_rows, shard_rows)`` of an array's ``zarr.json`` content ``meta``.

    Raises
    ------
    StoreFormatError
        ``meta`` does not describe one uncompressed shard of row chunks of a numeric type.
    """
    try:
        if not isinstance(meta, dict):
            raise TypeError("zarr.json is not an object")
        shape = _int_list(meta["shape"])
        dtype = _plain_dtype(meta["data_type"], where)
        (codec,) = meta["codecs"]
        if codec["name"] != "sharding_indexed":
            raise KeyError("sharding_indexed")
        cfg = codec["configuration"]
        inner = _int_list(cfg["chunk_shape"])
        inner_codecs = [c["name"] for c in cfg["codecs"]]
        shard_shape = _int_list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        index_at_end = cfg.get("index_location", "end") == "end"
        separator = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreFormatError(
            f"{where} is not laid out as one uncompressed shard "
            f"({exc!r}); reconvert the store with tools/convert.py"
        ) from None
    if (
        inner_codecs != ["bytes"]
        or not index_at_end
        or separator not in (None, "/")
        or not shape
        or len(inner) != len(shape)
        or len(shard_shape) != len(shape)
        or min(shape) < 0
        # numpy refuses arrays past 2^62 bytes even when a dimension is 0
        or math.prod(max(1, d) for d in shape) * dtype.itemsize >= 2**62
        or inner[0] < 1
        or shard_shape[0] < shape[0]
        or shard_shape[0] % inner[0]
        or inner[1:] != shape[1:]
        or shard_shape[1:] != shape[1:]
    ):
        raise StoreFormatError(
            f"{where} is compressed or not a single row-chunked shard "
            f"(shape {list(shape)}, shard {list(shard_shape)}, chunks {list(inner)}); "
            "reconvert the store with tools/convert.py"
        )
    return shape, dtype, inner[0], shard_shape[0]


def _check_chunks(
    index: NDArray[np.uint64], used: int, chunk_bytes: int, path: Path, where: str
) -> None:
    """Refuse a shard whose first ``used`` chunks of ``chunk_bytes`` are missing or outside it."""
    size = os.path.getsize(path)
    if used and chunk_bytes > size:
        raise StoreFormatError(
            f"{where} claims chunks of {chunk_bytes} bytes but its shard {str(path)!r} is "
            f"{size} bytes; the store is damaged — reconvert it"
        )
    if np.any(index[:used, 0] == np.uint64(2**64 - 1)) or np.any(
        index[:used, 1] != np.uint64(chunk_bytes)
    ):
        raise StoreFormatError(f"{where} has missing or odd-sized chunks; reconvert it")
    if used and int(index[:used, 0].max()) + chunk_bytes > size:
        raise StoreFormatError(f"shard {str(path)!r} is truncated; the store is damaged")
