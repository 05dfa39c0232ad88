"""The generator's graph model: dataset specs, node domains and the relations between them.

A domain is a node set with a pseudo-random permutation (Feistel rounds) of
popularity ranks and planted communities; a relation draws out-degrees and
edge destinations between two domains with power-law weights (Chung-Lu).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _kernels as _k

_ISOLATED_FRACTION = 0.01
_SOURCE_ONLY_FRACTION = 0.05  # nodes with out-edges only (uncited papers)
_OUT_SKEW_RATIO = 0.5  # out-degree skew relative to in-degree skew
_RANK_OFFSET = 10.0  # x0 of the (s + x0) ** -skew weights: caps the top hub
_P_SELF_LOOP = 0.001
_P_REPEAT = 0.002
_TAG_PERM, _TAG_DEG, _TAG_EDGE, _TAG_ATTR, _TAG_FEAT, _TAG_CENTROID = range(6)
_DOM_PAPER, _DOM_AUTHOR, _DOM_INSTITUTION = range(3)
_REL_CITES, _REL_WRITES, _REL_AFFILIATED = range(3)


@dataclass(frozen=True)
class _Spec:
    """What one real dataset looks like on disk and in numbers."""

    layout: str
    name: str
    dir_name: str
    feature_dim: int
    dtype: np.dtype
    num_classes: int
    labelled_fraction: float  # of the real dataset
    split_mode: int
    split_fractions: tuple[float, float, float]
    split_dir: str
    years: tuple[tuple[int, int], ...]  # train, valid, test, unlabelled; inclusive
    year_file: bool


_SPECS = {
    "ogbn-products": _Spec(
        "ogbn", "ogbn-products", "ogbn_products", 100, np.dtype(np.float32), 47, 1.0,
        _k.SPLIT_BY_RANK, (0.0803, 0.0161, 0.9036), "sales_ranking",
        ((2000, 2019),) * 4, False,
    ),
    "ogbn-arxiv": _Spec(
        "ogbn", "ogbn-arxiv", "ogbn_arxiv", 128, np.dtype(np.float32), 40, 1.0,
        _k.SPLIT_BY_TIME, (0.537, 0.176, 0.287), "time",
        ((1971, 2017), (2018, 2018), (2019, 2020), (1971, 2020)), True,
    ),
    "ogbn-papers100M": _Spec(
        "papers100m", "ogbn-papers100M", "ogbn_papers100M", 128, np.dtype(np.float32), 172,
        0.0139, _k.SPLIT_BY_TIME, (0.780, 0.081, 0.139), "time",
        ((1950, 2017), (2018, 2018), (2019, 2020), (1900, 2020)), True,
    ),
    "mag240m_kddcup2021": _Spec(
        "mag240m", "mag240m_kddcup2021", "mag240m_kddcup2021", 768, np.dtype(np.float16), 153,
        0.0115, _k.SPLIT_BY_TIME, (0.796, 0.099, 0.105), "",
        ((1950, 2018), (2019, 2020), (2019, 2020), (1900, 2020)), True,
    ),
}  # fmt: skip
_DEFAULT_NAME = {
    "ogbn": "ogbn-products",
    "papers100m": "ogbn-papers100M",
    "mag240m": "mag240m_kddcup2021",
}


# ---------------------------------------------------------------------------
# Graph model: domains (node sets with a permutation and communities) and
# relations between them.


@dataclass(frozen=True)
class _Domain:
    n: int
    keys: NDArray[np.uint64]  # [6] Feistel round keys
    bits_right: int
    mask_left: np.uint64
    mask_right: np.uint64
    res_class: NDArray[np.int64]  # [M] community of slot s is res_class[s % M]


def _seed_words(seed: int, *tags: int, count: int = 1) -> NDArray[np.uint64]:
    return np.random.SeedSequence([seed, *tags]).generate_state(count, np.uint64)


def _residue_classes(num_classes: int) -> NDArray[np.int64]:
    # Community sizes range 4:1 (class c gets 1..4 residues) so labels are
    # imbalanced as in the real datasets; residues are dealt round-robin so
    # the top hubs (slots 0..M-1) cover every community.
    counts = np.ceil(4.0 * ((num_classes - np.arange(num_classes)) / num_classes) ** 2)
    counts = counts.astype(np.int64)
    order = [c for rep in range(4) for c in range(num_classes) if counts[c] > rep]
    return np.asarray(order, dtype=np.int64)


def _make_domain(seed: int, tag: int, n: int, res_class: NDArray[np.int64]) -> _Domain:
    bits = max(2, math.ceil(math.log2(max(n, 2))))
    bits_right = bits // 2
    bits_left = bits - bits_right
    return _Domain(
        n=n,
        keys=_seed_words(seed, _TAG_PERM, tag, count=6),
        bits_right=bits_right,
        mask_left=np.uint64((1 << bits_left) - 1),
        mask_right=np.uint64((1 << bits_right) - 1),
        res_class=res_class,
    )


def _perm_args(d: _Domain) -> tuple[Any, ...]:
    return (d.n, d.keys, d.bits_right, d.mask_left, d.mask_right)


def _powerlaw_consts(x0: float, a: float, m: float) -> tuple[float, float]:
    if abs(1.0 - a) < 1e-9:
        return math.log(x0), math.log(m + x0) - math.log(x0)
    c1 = x0 ** (1.0 - a)
    return c1, (m + x0) ** (1.0 - a) - c1


@dataclass(frozen=True)
class _Relation:
    src: _Domain
    dst: _Domain
    src_active: int  # slots [0, src_active) have out-edges
    dst_active: int  # slots [0, dst_active) receive edges
    out_skew: float
    in_skew: float
    num_edges: float  # expected
    homophily: float
    p_self: float
    p_dup: float
    seed: int
    tag: int

    def degrees(self, lo: int, hi: int) -> NDArray[np.int64]:
        out = np.empty(hi - lo, dtype=np.int64)
        c1, c2 = _powerlaw_consts(_RANK_OFFSET, self.out_skew, self.src_active)
        key = _seed_words(self.seed, _TAG_DEG, self.tag)[0]
        _k.out_degrees(
            lo, hi, *_perm_args(self.src), self.src_active, _RANK_OFFSET, self.out_skew,
            c1, c2, self.num_edges, key, out,
        )  # fmt: skip
        return out

    def destinations(self, lo: int, hi: int, deg: NDArray[np.int64]) -> NDArray[np.int64]:
        offsets = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(deg, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.int64)
        a, m = self.in_skew, self.dst_active
        res = self.dst.res_class
        nres = res.shape[0]
        # Residue r owns slots r, r + M, r + 2M, ... below dst_active; its k-th
        # slot has weight (r + k M + x0) ** -a = M ** -a (k + (r + x0) / M) ** -a.
        r = np.arange(nres, dtype=np.float64)
        count = np.maximum(0, -(-(m - np.arange(nres)) // nres)).astype(np.int64)
        rx0 = (r + _RANK_OFFSET) / nres
        consts = [_powerlaw_consts(float(x), a, float(c)) for x, c in zip(rx0, count)]
        rc1 = np.array([c[0] for c in consts])
        rc2 = np.array([c[1] for c in consts])
        order = np.argsort(res, kind="stable")
        ptr = np.searchsorted(res[order], np.arange(int(res.max()) + 2)).astype(np.int64)
        # Residues of a community are picked in proportion to their weight.
        # A residue's total weight is |c2| / |1 - a| (c2 itself when a = 1).
        mass = np.abs(rc2) * (count > 0)
        cumw = np.empty(nres, dtype=np.float64)
        for c in range(ptr.shape[0] - 1):
            w = mass[order[ptr[c] : ptr[c + 1]]]
            cumw[ptr[c] : ptr[c + 1]] = np.cumsum(w) / max(w.sum(), 1e-300)
        c1, c2 = _powerlaw_consts(_RANK_OFFSET, a, m)
        key = _seed_words(self.seed, _TAG_EDGE, self.tag)[0]
        _k.destinations(
            lo, hi, offsets, *_perm_args(self.src), self.src.res_class.shape[0],
            self.src.res_class, *_perm_args(self.dst), m, _RANK_OFFSET, a, c1, c2, nres,
            ptr, order.astype(np.int64), cumw, rx0, rc1, rc2, count, self.homophily,
            self.p_self, self.p_dup, key, out,
        )  # fmt: skip
        return out


@dataclass(frozen=True)
class _Plan:
    spec: _Spec
    n: int
    feature_dim: int
    num_classes: int
    labelled_fraction: float
    seed: int
    avg_degree: float
    skew: float
    homophily: float
    feature_signal: float
    block_rows: int
    progress: bool
    papers: _Domain
    cites: _Relation


def _active_slots(n: int) -> tuple[int, int]:
    """(slots with out-edges, slots receiving edges) of a domain of n nodes."""
    isolated = int(n * _ISOLATED_FRACTION)
    source_only = int(n * _SOURCE_ONLY_FRACTION)
    return n - isolated, n - isolated - source_only


def _min_nodes(num_residues: int) -> int:
    n = max(2, int(num_residues / (1.0 - _ISOLATED_FRACTION - _SOURCE_ONLY_FRACTION)) - 2)
    while _active_slots(n)[1] < num_residues:
        n += 1
    return n
