"""What every layout writes, block by block: node attributes, features, edge rows and splits."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from . import _kernels as _k
from ._graph import _TAG_ATTR, _TAG_CENTROID, _TAG_FEAT, _perm_args, _Plan, _Relation, _seed_words
from ._streams import _GzCsv, _NpyStream


def _progress(plan: _Plan, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="node",
        unit_scale=True,
        disable=None if plan.progress else True,  # None: only on a terminal
        leave=False,
    )


def _blocks(plan: _Plan, n: int, desc: str) -> Iterator[tuple[int, int]]:
    with _progress(plan, n, desc) as bar:
        for lo in range(0, n, plan.block_rows):
            hi = min(n, lo + plan.block_rows)
            yield lo, hi
            bar.update(hi - lo)


# ---------------------------------------------------------------------------
# Node data.


@dataclass
class _NodeBlock:
    classes: NDArray[np.int64]
    split: NDArray[np.int8]
    year: NDArray[np.int64]


def _node_block(plan: _Plan, lo: int, hi: int) -> _NodeBlock:
    spec = plan.spec
    n = hi - lo
    out = _NodeBlock(np.empty(n, np.int64), np.empty(n, np.int8), np.empty(n, np.int64))
    train, valid, _ = spec.split_fractions
    cum = np.array([train, train + valid], dtype=np.float64)
    cut_train = int(round(plan.n * train))
    cut_valid = int(round(plan.n * (train + valid)))
    years = np.asarray(spec.years, dtype=np.int64)
    key = _seed_words(plan.seed, _TAG_ATTR)[0]
    _k.node_attributes(
        lo, hi, *_perm_args(plan.papers), plan.papers.res_class.shape[0],
        plan.papers.res_class, plan.labelled_fraction, spec.split_mode, cum, cut_train,
        cut_valid, np.ascontiguousarray(years[:, 0]), np.ascontiguousarray(years[:, 1]), key,
        out.classes, out.split, out.year,
    )  # fmt: skip
    return out


def _centroids(plan: _Plan) -> NDArray[np.float32]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([plan.seed, _TAG_CENTROID])))
    # Centroids of norm ~feature_signal whatever the dimension, against noise
    # of unit variance per dimension: the class signal per node is weak, the
    # average over neighbours of the same community is strong.
    c = rng.standard_normal((plan.num_classes, plan.feature_dim))
    return (c * (plan.feature_signal / math.sqrt(plan.feature_dim))).astype(np.float32)


def _features(plan: _Plan, lo: int, classes: NDArray[np.int64], centroids: NDArray[np.float32]) -> NDArray[Any]:  # fmt: skip
    out = np.empty((classes.shape[0], plan.feature_dim), dtype=np.float32)
    _k.features(lo, classes, centroids, _seed_words(plan.seed, _TAG_FEAT)[0], out)
    return out.astype(plan.spec.dtype, copy=False)


# ---------------------------------------------------------------------------
# Edges.


def _count_edges(plan: _Plan, rel: _Relation, desc: str) -> int:
    return sum(int(rel.degrees(lo, hi).sum()) for lo, hi in _blocks(plan, rel.src.n, desc))


def _edge_rows(plan: _Plan, rel: _Relation, row: str, desc: str) -> Iterator[NDArray[np.int64]]:
    """Yield the source ("src") or destination ("dst") ids of all edges, block by block."""
    for lo, hi in _blocks(plan, rel.src.n, desc):
        deg = rel.degrees(lo, hi)
        if row == "src":
            yield np.repeat(np.arange(lo, hi, dtype=np.int64), deg)
        else:
            yield rel.destinations(lo, hi, deg)


def _write_edge_index(
    plan: _Plan, f: IO[bytes], rel: _Relation, rows: tuple[str, str], what: str
) -> int:
    num_edges = _count_edges(plan, rel, f"{what}: degrees")
    npy = _NpyStream(f, np.dtype(np.int64), (2, num_edges))
    for row in rows:
        for block in _edge_rows(plan, rel, row, f"{what}: {row}"):
            npy.write(block)
    npy.close()
    return num_edges


# ---------------------------------------------------------------------------
# Splits.


def _split_writers(directory: Path) -> list[_GzCsv]:
    directory.mkdir(parents=True)
    return [_GzCsv(directory / f"{s}.csv.gz") for s in ("train", "valid", "test")]


def _write_splits(writers: list[_GzCsv], lo: int, split: NDArray[np.int8]) -> None:
    for code, w in enumerate(writers):
        w.write_ints(np.flatnonzero(split == code).astype(np.int64) + lo)
