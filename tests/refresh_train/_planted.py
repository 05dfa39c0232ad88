"""Tiny stores with a planted node-classification task, for the trainer's tests.

Nodes belong to ``num_classes`` communities; most in-edges come from the
same community, so a node's class shows in its neighbourhood's features
much more clearly than in its own (features = weak class signal + noise).
Ids are degree-reordered like a converted store (node 0 has most edges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from refresh_store.store import Store
from refresh_store.writer import write_store
from refresh_train.config import (
    EvalConfig,
    HistoryConfig,
    LoaderConfig,
    TierConfig,
    TrainConfig,
)


def planted_arrays(
    num_nodes: int = 2000,
    feature_dim: int = 16,
    num_classes: int = 4,
    avg_degree: int = 8,
    signal: float = 0.35,
    dtype: type = np.float32,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_nodes)
    # Heavy-tailed source popularity, so degrees are skewed as in real graphs.
    weight = rng.pareto(1.5, num_nodes) + 1.0
    num_edges = num_nodes * avg_degree
    dst = rng.integers(0, num_nodes, num_edges)
    src = np.empty(num_edges, dtype=np.int64)
    same = rng.random(num_edges) < 0.85
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    probs = [weight[m] / weight[m].sum() for m in by_class]
    for c in range(num_classes):
        pick = np.flatnonzero(same & (labels[dst] == c))
        src[pick] = rng.choice(by_class[c], size=len(pick), p=probs[c])
    other = np.flatnonzero(~same)
    src[other] = rng.choice(num_nodes, size=len(other), p=weight / weight.sum())
    # Degree reordering: new id 0 = most edges (in + out).
    deg = np.bincount(src, minlength=num_nodes) + np.bincount(dst, minlength=num_nodes)
    old_id = np.argsort(-deg, kind="stable")
    new_id = np.empty(num_nodes, dtype=np.int64)
    new_id[old_id] = np.arange(num_nodes)
    src, dst, labels = new_id[src], new_id[dst], labels[old_id]
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    centers = rng.normal(size=(num_classes, feature_dim))
    features = (signal * centers[labels] + rng.normal(size=(num_nodes, feature_dim))).astype(dtype)
    perm = rng.permutation(num_nodes)
    n_train, n_valid = int(0.5 * num_nodes), int(0.2 * num_nodes)
    return {
        "features": features,
        "indptr": indptr,
        "indices": src.astype(np.int32),
        "labels": labels.astype(np.int64),
        "train_idx": np.sort(perm[:n_train]),
        "valid_idx": np.sort(perm[n_train : n_train + n_valid]),
        "test_idx": np.sort(perm[n_train + n_valid :]),
        "new_id": new_id,
        "old_id": old_id,
    }


def planted_store(path: Path, **kwargs) -> Store:
    """Write :func:`planted_arrays` as a store at ``path`` and open it."""
    num_classes = kwargs.get("num_classes", 4)
    return write_store(path, num_classes=num_classes, **planted_arrays(**kwargs))


def small_run_config(store: Store, cache: str = "raw", **kw: Any) -> TrainConfig:
    """A 2-layer SAGE run on a planted store, every tier and the history in play
    (device 300 rows, host 600, lookahead 4 in windows of 1,500 rows), no memory check."""
    row = store.region("features").row_bytes
    base = dict(
        store=str(store.path),
        model="sage",
        layers=2,
        hidden=32,
        fanouts=(8, 4),
        batch_size=128,
        epochs=1,
        lr=0.01,
        seed=3,
        tiers=TierConfig(
            cache=cache,
            cache_budget_bytes=300 * row,
            host_budget_bytes=600 * row,
            lookahead_batches=4,
            lookahead_budget_bytes=1500 * row,
        ),
        history=HistoryConfig(staleness_iters=50),
        eval=EvalConfig(batch_size=512),
        loader=LoaderConfig(prefetch_batches=2),
        progress=False,
        max_rss_bytes=0,
    )
    base.update(kw)
    return TrainConfig(**base)
