"""The ogbn-* CSV layout (``raw/*.csv.gz``, ``split/<kind>/*.csv.gz``) read by ogb's NodePropPredDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._blocks import _blocks, _centroids, _features, _node_block, _split_writers, _write_splits
from ._graph import _Plan
from ._streams import _GzCsv


def write_ogbn(plan: _Plan, root: Path) -> dict[str, int]:
    raw = root / "raw"
    raw.mkdir()
    edges = _GzCsv(raw / "edge.csv.gz")
    num_edges = 0
    for lo, hi in _blocks(plan, plan.n, "edges"):
        deg = plan.cites.degrees(lo, hi)
        pairs = np.empty((int(deg.sum()), 2), dtype=np.int64)
        pairs[:, 0] = np.repeat(np.arange(lo, hi, dtype=np.int64), deg)
        pairs[:, 1] = plan.cites.destinations(lo, hi, deg)
        edges.write_ints(pairs)
        num_edges += pairs.shape[0]
    edges.close()

    centroids = _centroids(plan)
    feat = _GzCsv(raw / "node-feat.csv.gz")
    label = _GzCsv(raw / "node-label.csv.gz")
    year = _GzCsv(raw / "node_year.csv.gz") if plan.spec.year_file else None
    splits = _split_writers(root / "split" / plan.spec.split_dir)
    for lo, hi in _blocks(plan, plan.n, "nodes"):
        nb = _node_block(plan, lo, hi)
        feat.write_floats(_features(plan, lo, nb.classes, centroids))
        label.write_ints(nb.classes)
        if year is not None:
            year.write_ints(nb.year)
        _write_splits(splits, lo, nb.split)
    for w in [feat, label, *splits] + ([year] if year is not None else []):
        w.close()
    for fname, value in (("num-node-list.csv.gz", plan.n), ("num-edge-list.csv.gz", num_edges)):
        w = _GzCsv(raw / fname)
        w.write_ints(np.array([[value]], dtype=np.int64))
        w.close()
    return {"num_edges": num_edges}
