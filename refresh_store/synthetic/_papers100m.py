"""ogbn-papers100M's binary layout (``raw/data.npz``, ``raw/node-label.npz``, ``split/time/*.csv.gz``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ._blocks import (
    _blocks,
    _centroids,
    _features,
    _node_block,
    _split_writers,
    _write_edge_index,
    _write_splits,
)
from ._graph import _Plan
from ._streams import _NpyStream, _zip_member


def write_papers100m(plan: _Plan, root: Path) -> dict[str, int]:
    raw = root / "raw"
    raw.mkdir()
    n, d = plan.n, plan.feature_dim
    with zipfile.ZipFile(raw / "data.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as data:
        with _zip_member(data, "edge_index.npy") as f:
            num_edges = _write_edge_index(plan, f, plan.cites, ("src", "dst"), "edge_index")
        centroids = _centroids(plan)
        with _zip_member(data, "node_feat.npy") as f:
            npy = _NpyStream(f, plan.spec.dtype, (n, d))
            for lo, hi in _blocks(plan, n, "node_feat"):
                npy.write(_features(plan, lo, _node_block(plan, lo, hi).classes, centroids))
            npy.close()
        with (
            _zip_member(data, "node_year.npy") as fy,
            zipfile.ZipFile(raw / "node-label.npz", "w", zipfile.ZIP_STORED) as labels,
            _zip_member(labels, "node_label.npy") as fl,
        ):
            years = _NpyStream(fy, np.dtype(np.int64), (n, 1))
            label = _NpyStream(fl, np.dtype(np.float32), (n, 1))
            splits = _split_writers(root / "split" / plan.spec.split_dir)
            for lo, hi in _blocks(plan, n, "labels"):
                nb = _node_block(plan, lo, hi)
                years.write(nb.year)
                label.write(np.where(nb.split >= 0, nb.classes, np.nan))
                _write_splits(splits, lo, nb.split)
            years.close()
            label.close()
            for w in splits:
                w.close()
        for member, value in (("num_nodes_list.npy", n), ("num_edges_list.npy", num_edges)):
            with _zip_member(data, member) as f:
                npy = _NpyStream(f, np.dtype(np.int64), (1,))
                npy.write(np.array([value]))
                npy.close()
    return {"num_edges": num_edges}
