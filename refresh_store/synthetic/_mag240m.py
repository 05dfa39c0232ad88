"""MAG240M's ``ogb.lsc`` layout (``processed/*/*.npy``, ``meta.pt``, ``split_dict.pt``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._blocks import _blocks, _centroids, _features, _node_block, _write_edge_index
from ._graph import (
    _DOM_AUTHOR,
    _DOM_INSTITUTION,
    _REL_AFFILIATED,
    _REL_WRITES,
    _make_domain,
    _Plan,
    _Relation,
)
from ._streams import _NpyStream

_AUTHORS_PER_PAPER = 1.005  # MAG240M: 122.4M authors / 121.8M papers (244M = all nodes)
_WRITES_PER_PAPER = 3.17  # 386M author-writes-paper edges
_AFFILIATIONS_PER_AUTHOR = 0.364  # 44.6M author-affiliated_with-institution edges / 122.4M
_PAPERS_PER_INSTITUTION = 4733  # 122M papers / 25.7K institutions


def write_mag240m(plan: _Plan, root: Path) -> dict[str, int]:
    import torch  # only here: refresh_store does not import torch at import time

    proc = root / "processed"
    (proc / "paper").mkdir(parents=True)
    split_ids = _write_papers(plan, proc / "paper")
    num_authors, num_institutions, counts = _write_edges(plan, proc)
    meta = {
        "paper": plan.n,
        "author": num_authors,
        "institution": num_institutions,
        "num_classes": plan.num_classes,
    }
    torch.save(meta, root / "meta.pt")
    torch.save(_split_dict(split_ids), root / "split_dict.pt")
    return {
        "num_edges": counts["paper___cites___paper"],
        "num_authors": num_authors,
        "num_institutions": num_institutions,
        "num_writes_edges": counts["author___writes___paper"],
        "num_affiliated_edges": counts["author___affiliated_with___institution"],
    }


def _write_papers(plan: _Plan, folder: Path) -> list[list[NDArray[np.int64]]]:
    """Stream paper features, labels and years into ``folder``; return split ids per block."""
    n, d = plan.n, plan.feature_dim
    centroids = _centroids(plan)
    split_ids: list[list[NDArray[np.int64]]] = [[], [], []]
    with (
        open(folder / "node_feat.npy", "wb") as ff,
        open(folder / "node_label.npy", "wb") as fl,
        open(folder / "node_year.npy", "wb") as fy,
    ):
        feat = _NpyStream(ff, plan.spec.dtype, (n, d))
        label = _NpyStream(fl, np.dtype(np.float32), (n,))
        year = _NpyStream(fy, np.dtype(np.int64), (n,))
        for lo, hi in _blocks(plan, n, "papers"):
            nb = _node_block(plan, lo, hi)
            feat.write(_features(plan, lo, nb.classes, centroids))
            label.write(np.where(nb.split >= 0, nb.classes, np.nan))
            year.write(nb.year)
            for code in range(3):
                split_ids[code].append(np.flatnonzero(nb.split == code) + lo)
        for s in (feat, label, year):
            s.close()
    return split_ids


def _write_edges(plan: _Plan, proc: Path) -> tuple[int, int, dict[str, int]]:
    """Write the three ``edge_index.npy``; return (authors, institutions, edges per relation)."""
    n = plan.n
    num_authors = max(plan.papers.res_class.shape[0], int(round(n * _AUTHORS_PER_PAPER)))
    num_institutions = max(1, int(round(n / _PAPERS_PER_INSTITUTION)))
    authors = _make_domain(plan.seed, _DOM_AUTHOR, num_authors, plan.papers.res_class)
    institutions = _make_domain(
        plan.seed, _DOM_INSTITUTION, num_institutions, np.zeros(1, dtype=np.int64)
    )
    writes = _Relation(
        plan.papers, authors, n, num_authors, 0.0, plan.skew, n * _WRITES_PER_PAPER,
        plan.homophily, 0.0, 0.0, plan.seed, _REL_WRITES,
    )  # fmt: skip
    affiliated = _Relation(
        authors, institutions, num_authors, num_institutions, 0.0, plan.skew,
        num_authors * _AFFILIATIONS_PER_AUTHOR, 0.0, 0.0, 0.0, plan.seed, _REL_AFFILIATED,
    )  # fmt: skip
    counts = {}
    for rel, name, rows in (
        (plan.cites, "paper___cites___paper", ("src", "dst")),
        # Generated per paper; stored author first as in the real file.
        (writes, "author___writes___paper", ("dst", "src")),
        (affiliated, "author___affiliated_with___institution", ("src", "dst")),
    ):
        (proc / name).mkdir()
        with open(proc / name / "edge_index.npy", "wb") as f:
            counts[name] = _write_edge_index(plan, f, rel, rows, name)
    return num_authors, num_institutions, counts


def _split_dict(split_ids: list[list[NDArray[np.int64]]]) -> dict[str, NDArray[np.int64]]:
    """``split_dict.pt``: train, valid and the test papers, whole and split as ogb.lsc does."""
    train, valid, test = (np.concatenate(ids).astype(np.int64) for ids in split_ids)
    # ogb.lsc splits the test papers into test-dev / test-challenge by i % 5 < 3.
    dev = np.arange(test.shape[0]) % 5 < 3
    return {
        "train": train,
        "valid": valid,
        "test-whole": test,
        "test-dev": test[dev],
        "test-challenge": test[~dev],
    }
