"""The OGB binary layout of ogbn-papers100M.

``<root>/raw/data.npz`` holds ``edge_index`` ``[2, E]``, ``node_feat``
``[N, D]``, ``num_nodes_list`` and ``num_edges_list`` (one graph);
``<root>/raw/node-label.npz`` holds ``node_label`` ``[N, 1]`` floats with NaN
for unlabelled papers; ``<root>/split/time/`` holds the csv.gz splits. OGB
writes the npz files compressed; stored (uncompressed) members are
memory-mapped in place, compressed ones are streamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SourceFormatError
from ._edges import ArrayEdges
from ._source import Source
from .npy import npz_member
from .ogbn import find_split_dir, read_splits, single_count

__all__ = ["read_papers100m"]


def _count(root: Path, key: str, what: str) -> int:
    member = npz_member(root / "raw" / "data.npz", key, f"raw/data.npz:{key}")
    values = member.read(0, member.shape[0]) if member.shape else np.empty(0)
    member.close()
    return single_count(values, f"raw/data.npz:{key}", what)


def read_papers100m(root: str | Path, split: str | None = None) -> Source:
    """Open an ogbn-papers100M binary layout.

    Raises
    ------
    SourceFormatError
        A required file or member is missing, unreadable or of the wrong shape.
    """
    root = Path(root)
    data = root / "raw" / "data.npz"
    if not data.is_file():
        raise SourceFormatError(f"{str(data)!r} is missing; is {str(root)!r} ogbn-papers100M?")
    n = _count(root, "num_nodes_list", "node")
    e = _count(root, "num_edges_list", "edge")
    features = npz_member(data, "node_feat", "raw/data.npz:node_feat")
    if len(features.shape) != 2 or features.shape[0] != n or features.dtype.kind != "f":
        raise SourceFormatError(
            f"'raw/data.npz:node_feat' has shape {features.shape} and dtype {features.dtype}; "
            f"expected floats of shape [{n}, D]"
        )
    edge_index = npz_member(data, "edge_index", "raw/data.npz:edge_index")
    if edge_index.shape != (2, e):
        raise SourceFormatError(
            f"'raw/data.npz:edge_index' has shape {edge_index.shape}; expected (2, {e})"
        )
    files = [data]
    labels = None
    label_path = root / "raw" / "node-label.npz"
    if label_path.is_file():
        labels = npz_member(label_path, "node_label", "raw/node-label.npz:node_label")
        if labels.shape not in ((n,), (n, 1)):
            raise SourceFormatError(
                f"'raw/node-label.npz:node_label' has shape {labels.shape}; expected ({n}, 1)"
            )
        files.append(label_path)
    split_dir = find_split_dir(root, split)
    splits = read_splits(split_dir, files)
    return Source(
        format="papers100m",
        path=root,
        num_nodes=n,
        features=features,
        labels=labels,
        edges=ArrayEdges(edge_index),
        splits=splits,
        num_classes=None,
        default_undirected=True,
        files=files,
        info={"split": split_dir.name if split_dir else None},
    )
