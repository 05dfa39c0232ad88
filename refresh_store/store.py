"""Reading ReFresh stores (see :mod:`refresh_store.format`).

:func:`open_store` checks the manifest and the format version and maps every
array read-only; rows are addressed by byte offset through :class:`RowRegion`
(see :mod:`refresh_store.io` for random gathers). Writing is in
:mod:`refresh_store.writer`, checksums in :mod:`refresh_store.checksums`.
"""

from __future__ import annotations

import json
import mmap
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

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


def read_json(path: Path) -> dict[str, Any]:
    """The JSON document at ``path`` (a ``zarr.json``); StoreFormatError when missing or invalid."""
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
        attrs = read_json(meta).get("attributes", {})
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
        meta = read_json(group_meta)
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
            self._regions[name] = open_region(self.path, name)
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


def open_region(root: Path, name: str) -> RowRegion:
    """Where the rows of array ``name`` of the store (or partial store) at ``root`` lie on disk."""
    if name not in ARRAY_NAMES and name not in OPTIONAL_ARRAY_NAMES:
        names = ", ".join(ARRAY_NAMES + OPTIONAL_ARRAY_NAMES)
        raise ValueError(f"unknown array {name!r}; a store holds {names}")
    meta = read_json(root / name / "zarr.json")
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
