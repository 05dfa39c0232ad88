"""The OGB node-property raw layout (csv.gz), as downloaded for ogbn-products or ogbn-arxiv.

``<root>/raw/`` holds ``edge.csv.gz`` (one ``src,dst`` line per edge),
``node-feat.csv.gz`` (N lines of D floats), ``node-label.csv.gz`` (N lines),
``num-node-list.csv.gz`` and ``num-edge-list.csv.gz`` (one line each: a single
graph); ``<root>/split/<name>/`` holds ``train``/``valid``/``test.csv.gz`` (one
node id per line). csv files are parsed in blocks with pandas, so none is held
in memory whole.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ..errors import SourceFormatError
from ._edges import EdgeSource
from ._rows import RowSource
from ._source import Source

__all__ = ["CsvRows", "CsvEdges", "read_csv_ids", "find_split_dir", "read_ogbn"]

# OverflowError: an integer past int64 (pandas raises it for "99999999999999999999").
_CSV_ERRORS = (ValueError, OverflowError, OSError, EOFError, zlib.error, pd.errors.ParserError)


def _csv_chunks(path: Path, rows: int, dtype: type, name: str) -> Iterator[np.ndarray]:
    try:
        reader = pd.read_csv(
            path, compression="gzip", header=None, dtype=dtype, chunksize=max(1, rows)
        )
        for chunk in reader:
            yield chunk.to_numpy()
    except FileNotFoundError:
        raise SourceFormatError(f"{str(path)!r} is missing") from None
    except pd.errors.EmptyDataError:
        return
    except _CSV_ERRORS as exc:
        raise SourceFormatError(f"{name!r} cannot be parsed ({exc})") from None


def _first_line_columns(path: Path) -> int:
    try:
        with gzip.open(path, "rt") as f:
            line = f.readline()
    except FileNotFoundError:
        raise SourceFormatError(f"{str(path)!r} is missing") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceFormatError(f"{str(path)!r} is not a readable csv.gz file ({exc})") from None
    return line.count(",") + 1 if line.strip() else 0


class CsvRows(RowSource):
    """A numeric csv.gz table read front to back in row blocks."""

    random_access = False

    def __init__(self, path: Path, shape: tuple[int, ...], ncols: int, dtype: type, name: str):
        self.path, self.name = path, name
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self._ncols = ncols
        self._chunks: Iterator[np.ndarray] | None = None
        self._pending: np.ndarray | None = None
        self._next = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if start != self._next or self._chunks is None:
            if start != 0:
                raise SourceFormatError(f"{self.name!r} is csv and is read front to back")
            self._chunks = _csv_chunks(self.path, 1 << 16, self.dtype.type, self.name)
            self._pending, self._next = None, 0
        want = stop - start
        parts: list[np.ndarray] = []
        got = 0
        while got < want:
            if self._pending is None or len(self._pending) == 0:
                self._pending = next(self._chunks, None)
                if self._pending is None:
                    raise SourceFormatError(
                        f"{self.name!r} has {start + got} rows; expected {self.shape[0]} "
                        "(the file is truncated or the node count is wrong)"
                    )
                if self._pending.ndim != 2 or self._pending.shape[1] != self._ncols:
                    raise SourceFormatError(
                        f"{self.name!r} has a line with {self._pending.shape[-1]} columns "
                        f"near row {start + got}; expected {self._ncols}"
                    )
            take = min(want - got, len(self._pending))
            parts.append(self._pending[:take])
            self._pending = self._pending[take:]
            got += take
        self._next = stop
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        if stop == self.shape[0] and (
            (self._pending is not None and len(self._pending))
            or next(self._chunks, None) is not None
        ):
            raise SourceFormatError(f"{self.name!r} has more than the expected {stop} rows")
        return out.reshape((want, *self.shape[1:]))

    def close(self) -> None:
        self._chunks = None
        self._pending = None
        self._next = 0


class CsvEdges(EdgeSource):
    """Edges of a two-column ``src,dst`` csv.gz file."""

    def __init__(self, path: Path, num_edges: int, name: str) -> None:
        self.path, self.name, self.num_edges = path, name, num_edges

    def blocks(self, max_edges: int) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        first = 0
        for chunk in _csv_chunks(self.path, max_edges, np.int64, self.name):
            if chunk.ndim != 2 or chunk.shape[1] != 2:
                raise SourceFormatError(
                    f"{self.name!r} has {chunk.shape[-1]} columns near edge {first}; expected 2"
                )
            yield first, np.ascontiguousarray(chunk[:, 0]), np.ascontiguousarray(chunk[:, 1])
            first += len(chunk)
        if first != self.num_edges:
            raise SourceFormatError(
                f"{self.name!r} has {first} edges; num-edge-list.csv.gz says {self.num_edges}"
            )


def read_csv_ids(path: Path, name: str) -> NDArray[np.int64]:
    """A one-column csv.gz of integer ids (a split) as an array."""
    parts = [c.reshape(-1) for c in _csv_chunks(path, 1 << 20, np.int64, name)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def find_split_dir(root: Path, split: str | None) -> Path | None:
    """The split folder under ``root/split/``: ``split`` if given, else the only one there."""
    base = root / "split"
    if split is not None:
        if not (base / split).is_dir():
            raise SourceFormatError(f"split folder {str(base / split)!r} does not exist")
        return base / split
    if not base.is_dir():
        return None
    dirs = sorted(p for p in base.iterdir() if p.is_dir())
    if len(dirs) > 1:
        raise SourceFormatError(
            f"{str(base)!r} has several split folders {[d.name for d in dirs]}; choose one with --split"
        )
    return dirs[0] if dirs else None


def read_splits(split_dir: Path | None, files: list[Path]) -> dict[str, NDArray[np.int64]]:
    """``train``/``valid``/``test`` ids from ``split_dir`` (empty where absent)."""
    splits: dict[str, NDArray[np.int64]] = {}
    for name in ("train", "valid", "test"):
        p = None if split_dir is None else split_dir / f"{name}.csv.gz"
        if p is not None and p.exists():
            splits[name] = read_csv_ids(p, f"split/{split_dir.name}/{p.name}")  # type: ignore[union-attr]
            files.append(p)
        else:
            splits[name] = np.empty(0, dtype=np.int64)
    return splits


def read_single_count(path: Path, what: str) -> int:
    """The single count of ``num-node-list.csv.gz``/``num-edge-list.csv.gz`` (one graph)."""
    return single_count(read_csv_ids(path, path.name), path.name, what)


def single_count(values: np.ndarray, label: str, what: str) -> int:
    """The one non-negative integer in ``values`` (a node or edge count of one graph)."""
    values = np.asarray(values).reshape(-1)
    if values.size != 1 or values.dtype.kind not in "iu" or values[0] < 0:
        raise SourceFormatError(
            f"{label!r} lists {values.tolist()[:5]}; expected one {what} count (a single graph)"
        )
    return int(values[0])


def read_ogbn(root: str | Path, split: str | None = None) -> Source:
    """Open an ogbn raw csv layout (ogbn-products, ogbn-arxiv).

    Raises
    ------
    SourceFormatError
        A required file is missing, unreadable or of the wrong shape.
    """
    root = Path(root)
    raw = root / "raw"
    files = [raw / "num-node-list.csv.gz", raw / "num-edge-list.csv.gz", raw / "edge.csv.gz"]
    for f in files:
        if not f.is_file():
            raise SourceFormatError(f"{str(f)!r} is missing; is {str(root)!r} an ogbn dataset?")
    n = read_single_count(raw / "num-node-list.csv.gz", "node")
    e = read_single_count(raw / "num-edge-list.csv.gz", "edge")
    feat_path = raw / "node-feat.csv.gz"
    if not feat_path.is_file():
        raise SourceFormatError(
            f"{str(feat_path)!r} is missing; ReFresh needs node features to train"
        )
    d = _first_line_columns(feat_path)
    if d == 0:
        raise SourceFormatError(f"{str(feat_path)!r} is empty")
    features = CsvRows(feat_path, (n, d), d, np.float32, "raw/node-feat.csv.gz")
    files.append(feat_path)
    labels = None
    label_path = raw / "node-label.csv.gz"
    if label_path.is_file():
        cols = _first_line_columns(label_path)
        if cols != 1:
            raise SourceFormatError(
                f"'raw/node-label.csv.gz' has {cols} columns; expected 1 (multi-task labels "
                "are not supported)"
            )
        labels = CsvRows(label_path, (n,), 1, np.float64, "raw/node-label.csv.gz")
        files.append(label_path)
    split_dir = find_split_dir(root, split)
    splits = read_splits(split_dir, files)
    return Source(
        format="ogbn",
        path=root,
        num_nodes=n,
        features=features,
        labels=labels,
        edges=CsvEdges(raw / "edge.csv.gz", e, "raw/edge.csv.gz"),
        splits=splits,
        num_classes=None,
        default_undirected=True,
        files=files,
        info={"split": split_dir.name if split_dir else None},
    )
