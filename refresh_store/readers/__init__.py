"""Readers of downloaded dataset layouts; each returns a :class:`Source`.

Nothing a reader opens is executed: ``.npy``/``.npz`` arrays are opened from
their headers (never unpickled), csv.gz files are parsed as numbers, and
MAG240M's two torch pickles are loaded with ``weights_only=True`` and a numpy
allowlist.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SourceFormatError
from ._edges import ArrayEdges, ChainEdges, CscEdges, EdgeSource
from ._rows import ConcatRows, MappedRows, RowSource
from ._source import Source
from .mag240m import find_mag240m_dir, load_torch_pickle, read_mag240m
from .npy import npz_member, open_npy, read_npy_layout
from .ogbn import read_ogbn
from .papers100m import read_papers100m

__all__ = [
    "FORMATS",
    "detect_format",
    "open_source",
    "Source",
    "RowSource",
    "MappedRows",
    "ConcatRows",
    "EdgeSource",
    "ArrayEdges",
    "CscEdges",
    "ChainEdges",
    "open_npy",
    "npz_member",
    "load_torch_pickle",
    "read_ogbn",
    "read_papers100m",
    "read_mag240m",
    "read_npy_layout",
]

#: Source formats ``open_source`` reads (plus ``"auto"``).
FORMATS = ("ogbn", "papers100m", "mag240m", "npy")


def _detect_here(path: Path) -> str | None:
    if find_mag240m_dir(path) is not None:
        return "mag240m"
    if (path / "raw" / "data.npz").is_file():
        return "papers100m"
    if (path / "raw" / "edge.csv.gz").is_file():
        return "ogbn"
    if any((path / f).is_file() for f in ("features.npy", "edge_index.npy", "indptr.npy")):
        return "npy"
    return None


def detect_format(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """Which layout ``path`` holds, and the dataset folder itself.

    ``path`` may be the dataset folder or a root holding exactly one dataset
    folder (ogb's ``root`` convention).

    Raises
    ------
    SourceFormatError
        ``path`` is missing or holds no (or several) recognisable datasets.
    """
    path = Path(path)
    if not path.is_dir():
        raise SourceFormatError(f"source {str(path)!r} is not a folder")
    found = _detect_here(path)
    if found == "mag240m":
        return found, find_mag240m_dir(path)  # type: ignore[return-value]
    if found:
        return found, path
    children = [(c, _detect_here(c)) for c in sorted(path.iterdir()) if c.is_dir()]
    children = [(c, f) for c, f in children if f]
    if len(children) == 1:
        return children[0][1], children[0][0]  # type: ignore[return-value]
    if children:
        raise SourceFormatError(
            f"{str(path)!r} holds several datasets ({', '.join(c.name for c, _ in children)}); "
            "pass one of them"
        )
    raise SourceFormatError(
        f"{str(path)!r} holds no dataset this tool knows: expected raw/edge.csv.gz (ogbn), "
        "raw/data.npz (ogbn-papers100M), meta.pt + processed/ (MAG240M) or features.npy (npy)"
    )


def open_source(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    split: str | None = None,
    mag240m_graph: str = "papers",
) -> Source:
    """Open a dataset for conversion.

    Parameters
    ----------
    path
        Dataset folder (or a root holding one).
    format
        ``'auto'`` or one of :data:`FORMATS`.
    split
        Split folder name (ogbn, papers100m) or ``split_dict.pt`` key used as the
        test split (mag240m).
    mag240m_graph
        ``'papers'`` or ``'full'`` (see :mod:`refresh_store.readers.mag240m`).

    Raises
    ------
    SourceFormatError
        Unknown format, missing files, wrong shapes or dtypes.
    """
    if format != "auto" and format not in FORMATS:
        raise SourceFormatError(
            f"format {format!r} is unknown; use auto or one of {', '.join(FORMATS)}"
        )
    detected, root = detect_format(path)
    if format != "auto" and format != detected:
        if format == "mag240m" and find_mag240m_dir(Path(path)) is None:
            raise SourceFormatError(
                f"{str(path)!r} is not a MAG240M folder (it looks like {detected})"
            )
        if format != "mag240m":
            raise SourceFormatError(f"{str(path)!r} looks like the {detected} layout, not {format}")
    fmt = detected if format == "auto" else format
    if fmt == "ogbn":
        return read_ogbn(root, split)
    if fmt == "papers100m":
        return read_papers100m(root, split)
    if fmt == "mag240m":
        return read_mag240m(root, mag240m_graph, split)
    return read_npy_layout(root)
