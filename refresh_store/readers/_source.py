"""The dataset a reader opens for the converter: rows, edges, splits and metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._edges import EdgeSource
from ._rows import RowSource

__all__ = ["Source"]


@dataclass
class Source:
    """A dataset opened for conversion.

    Attributes
    ----------
    format
        ``'ogbn'``, ``'papers100m'``, ``'mag240m'`` or ``'npy'``.
    path
        The dataset folder.
    num_nodes
        Nodes of the (homogeneous) graph.
    features
        Rows ``[num_nodes, D]`` (for MAG240M's full graph, the paper rows only
        until :attr:`prepare` has derived the others).
    labels
        Rows ``[num_nodes]`` (or ``[num_nodes, 1]``), integers or floats with NaN
        for unlabelled; ``None`` when the dataset has no labels.
    edges
        The directed edges as given by the dataset.
    splits
        ``'train'``, ``'valid'``, ``'test'`` -> source node ids.
    num_classes
        Known from metadata, else ``None`` (then ``max(label) + 1``).
    default_undirected
        Whether the sampling graph is symmetrised unless told otherwise.
    files
        Every file the reader opens (fingerprinted so ``--resume`` can tell
        that the source did not change).
    info
        Extra facts recorded in the manifest (split folder, node types, ...).
    prepare
        For sources whose features are partly derived (MAG240M full graph):
        ``prepare(tmp_dir, work_bytes, out_dtype, resume, progress)`` computes the
        derived rows into ``tmp_dir`` and returns the complete feature source.
    """

    format: str
    path: Path
    num_nodes: int
    features: RowSource
    labels: RowSource | None
    edges: EdgeSource
    splits: dict[str, NDArray[np.int64]]
    num_classes: int | None
    default_undirected: bool
    files: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[..., RowSource] | None = None

    @property
    def feature_dim(self) -> int:
        """Columns of the features."""
        return int(self.features.shape[1])

    def close(self) -> None:
        """Release every file and mapping."""
        self.features.close()
        if self.labels is not None:
            self.labels.close()
        self.edges.close()
