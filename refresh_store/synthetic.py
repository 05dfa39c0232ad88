"""Synthetic datasets written in the on-disk layouts of the real ones.

Real downloads (ogbn-papers100M is 57 GB of features, MAG240M 187 GB) are not
reachable from CI, yet every converter test and benchmark needs data that
looks like them. :func:`make_dataset` writes a graph of any size, streaming
block by block with bounded memory, in one of three layouts:

``"ogbn"``
    the ogbn-* CSV layout read by ``ogb.nodeproppred.NodePropPredDataset``
    (as ``ogbn-products`` by default, or ``ogbn-arxiv``);
``"papers100m"``
    ogbn-papers100M's binary layout (``raw/data.npz``, ``raw/node-label.npz``);
``"mag240m"``
    MAG240M's ``ogb.lsc`` layout (``processed/*/*.npy``, ``meta.pt``,
    ``split_dict.pt``).

The graph has what matters to the rest of the project: a power-law in-degree
with tunable skew (Chung-Lu: a node of popularity rank s receives edges with
probability proportional to ``(s + 10) ** -skew``, so the in-degree tail
exponent is about ``1 + 1 / skew``), a lighter-tailed Poisson out-degree,
isolated nodes (1 %), nodes that only cite (5 %), self-loops and repeated
edges, and planted communities: the label is the community, a fraction
``homophily`` of edges stays inside it, and features are the community's
centroid plus strong noise, so averaging over neighbours recovers the label
far better than a node's own features do. Node ids are a pseudo-random
permutation of the popularity rank, so degree reordering has work to do.

Every value is a function of the seed and the node id (counter-based random
streams), so the bytes written do not depend on ``block_rows`` or on the
number of threads.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from refresh_store import _synthetic_kernels as _k

__all__ = ["LAYOUTS", "make_dataset", "dataset_dir"]

LAYOUTS = ("ogbn", "papers100m", "mag240m")

INFO_FILE = "refresh_synthetic.json"  # parameters and counts of a generated dataset

_ISOLATED_FRACTION = 0.01
_SOURCE_ONLY_FRACTION = 0.05  # nodes with out-edges only (uncited papers)
_OUT_SKEW_RATIO = 0.5  # out-degree skew relative to in-degree skew
_RANK_OFFSET = 10.0  # x0 of the (s + x0) ** -skew weights: caps the top hub
_P_SELF_LOOP = 0.001
_P_REPEAT = 0.002
_AUTHORS_PER_PAPER = 2.0  # MAG240M: 244M authors / 122M papers
_WRITES_PER_PAPER = 3.17  # 386M author-writes-paper edges
_AFFILIATIONS_PER_AUTHOR = 0.18  # 44.6M author-affiliated_with-institution edges
_PAPERS_PER_INSTITUTION = 4733  # 122M papers / 25.7K institutions
_CSV_DECIMALS = 6
_GZIP_LEVEL = 1  # gzip level 6 is 3-4x slower for ~15 % smaller files
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed so archives are byte-identical per seed
_BLOCK_BYTES = 32 << 20  # 32 MiB of float32 features per block

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


# ---------------------------------------------------------------------------
# Streaming writers.


class _NpyStream:
    """Writes one .npy array to a binary stream, block by block, in C order."""

    def __init__(self, fileobj: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_1_0(fileobj, header)
        self._f = fileobj
        self._dtype = np.dtype(dtype)
        self._left = math.prod(shape)

    def write(self, block: NDArray[Any]) -> None:
        block = np.ascontiguousarray(block, dtype=self._dtype)
        if block.size > self._left:
            raise RuntimeError("internal error: more data than the .npy header announced")
        self._left -= block.size
        self._f.write(memoryview(block.reshape(-1)).cast("B"))

    def close(self) -> None:
        if self._left != 0:
            raise RuntimeError(f"internal error: {self._left} elements missing from a .npy stream")


def _zip_member(zf: zipfile.ZipFile, name: str) -> IO[bytes]:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # stored: readers can mmap the member
    info.external_attr = 0o644 << 16
    return zf.open(info, "w", force_zip64=True)


class _GzCsv:
    """A gzip-compressed CSV file written from numeric blocks (no header row)."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "wb")
        # mtime=0 and an empty file name keep the bytes identical per seed.
        self._gz = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=_GZIP_LEVEL, mtime=0
        )

    def write_ints(self, values: NDArray[np.int64]) -> None:
        values = np.ascontiguousarray(
            values[:, None] if values.ndim == 1 else values, dtype=np.int64
        )
        buf = np.empty(values.size * 21, dtype=np.uint8)
        self._gz.write(memoryview(buf[: _k.format_int_rows(values, buf)]))

    def write_floats(self, values: NDArray[np.floating]) -> None:
        values = np.ascontiguousarray(values[:, None] if values.ndim == 1 else values)
        buf = np.empty(values.size * (_CSV_DECIMALS + 16), dtype=np.uint8)
        n = _k.format_float_rows(values, _CSV_DECIMALS, buf)
        if n < 0:
            raise RuntimeError("internal error: a generated feature is not finite")
        self._gz.write(memoryview(buf[:n]))

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


def _progress(plan: _Plan, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="node", unit_scale=True, disable=not plan.progress, leave=False
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
# Layouts.


def _split_writers(directory: Path) -> list[_GzCsv]:
    directory.mkdir(parents=True)
    return [_GzCsv(directory / f"{s}.csv.gz") for s in ("train", "valid", "test")]


def _write_splits(writers: list[_GzCsv], lo: int, split: NDArray[np.int8]) -> None:
    for code, w in enumerate(writers):
        w.write_ints(np.flatnonzero(split == code).astype(np.int64) + lo)


def _write_ogbn(plan: _Plan, root: Path) -> dict[str, int]:
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


def _write_papers100m(plan: _Plan, root: Path) -> dict[str, int]:
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


def _write_mag240m(plan: _Plan, root: Path) -> dict[str, int]:
    import torch  # only here: refresh_store does not import torch at import time

    n, d = plan.n, plan.feature_dim
    proc = root / "processed"
    (proc / "paper").mkdir(parents=True)
    centroids = _centroids(plan)
    split_ids: list[list[NDArray[np.int64]]] = [[], [], []]
    with (
        open(proc / "paper" / "node_feat.npy", "wb") as ff,
        open(proc / "paper" / "node_label.npy", "wb") as fl,
        open(proc / "paper" / "node_year.npy", "wb") as fy,
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

    meta = {
        "paper": n,
        "author": num_authors,
        "institution": num_institutions,
        "num_classes": plan.num_classes,
    }
    torch.save(meta, root / "meta.pt")
    train, valid, test = (np.concatenate(ids).astype(np.int64) for ids in split_ids)
    # ogb.lsc splits the test papers into test-dev / test-challenge by i % 5 < 3.
    dev = np.arange(test.shape[0]) % 5 < 3
    split = {
        "train": train,
        "valid": valid,
        "test-whole": test,
        "test-dev": test[dev],
        "test-challenge": test[~dev],
    }
    torch.save(split, root / "split_dict.pt")
    return {
        "num_edges": counts["paper___cites___paper"],
        "num_authors": num_authors,
        "num_institutions": num_institutions,
        "num_writes_edges": counts["author___writes___paper"],
        "num_affiliated_edges": counts["author___affiliated_with___institution"],
    }


_WRITERS = {"ogbn": _write_ogbn, "papers100m": _write_papers100m, "mag240m": _write_mag240m}


# ---------------------------------------------------------------------------
# Public entry point.


def _spec_for(layout: str, name: str | None) -> _Spec:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {', '.join(LAYOUTS)}")
    if name is None:
        return _SPECS[_DEFAULT_NAME[layout]]
    allowed = [s.name for s in _SPECS.values() if s.layout == layout]
    if name not in allowed:
        raise ValueError(
            f"name={name!r} does not fit layout={layout!r}; use one of {', '.join(allowed)}"
        )
    return _SPECS[name]


def _check_int(arg: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg}={value!r} must be an integer")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{arg}={value!r} is out of range; it must be {allowed}")
    return int(value)


def _check_float(arg: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg}={value!r} must be a number")
    v = float(value)
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{arg}={value!r} is out of range; it must be in {bracket}{lo}, {hi}]")
    return v


def dataset_dir(layout: str, out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Folder that :func:`make_dataset` writes for ``layout`` under ``out``.

    This is ``out/<dataset folder>``: ``ogbn_products``, ``ogbn_arxiv``,
    ``ogbn_papers100M`` or ``mag240m_kddcup2021``; ogb's loaders take ``out``
    itself as their ``root``.
    """
    return Path(out) / _spec_for(layout, name).dir_name


def make_dataset(
    layout: str,
    num_nodes: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    feature_dim: int | None = None,
    num_classes: int | None = None,
    avg_degree: float = 15.0,
    skew: float = 0.7,
    labelled_fraction: float | None = None,
    name: str | None = None,
    homophily: float = 0.3,
    feature_signal: float = 2.5,
    block_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic graph dataset in the on-disk layout of a real one.

    Parameters
    ----------
    layout
        ``"ogbn"`` (ogbn-* CSV files), ``"papers100m"`` (ogbn-papers100M's
        ``data.npz`` layout) or ``"mag240m"`` (MAG240M's ``ogb.lsc`` layout).
    num_nodes
        Number of nodes (papers for ``"mag240m"``). At least a few times
        ``num_classes`` (the error says how many).
    out
        Parent folder; the dataset goes to ``out/<dataset folder>`` (see
        Returns). Created if missing.
    seed
        Non-negative seed; equal arguments give byte-identical files.
    feature_dim
        Feature width; default as the real dataset: 100 (ogbn-products),
        128 (ogbn-arxiv, ogbn-papers100M), 768 (MAG240M).
    num_classes
        Number of planted communities (= classes); default as the real
        dataset: 47, 40, 172, 153. ogb's ``num_classes`` attribute still
        reports the real value from its own tables.
    avg_degree
        Expected number of raw edges per node (directed; ogbn-products' loader
        adds the reverse of each edge).
    skew
        Exponent of the popularity weights ``(rank + 10) ** -skew`` of
        edge destinations, in [0, 2]: 0 is a uniform random graph; the
        in-degree tail exponent is about ``1 + 1 / skew``. Out-degrees use
        half of it.
    labelled_fraction
        Fraction of nodes placed in a train/valid/test split (and, for
        papers100m and mag240m, given a label; others get NaN). Default: all
        nodes for ogbn, else the real fraction (1.39 %, 1.15 %) raised so that
        about 2000 nodes are labelled on small graphs.
    name
        Dataset name: ``"ogbn-products"`` (default) or ``"ogbn-arxiv"`` for
        ``"ogbn"`` (arxiv adds ``raw/node_year.csv.gz`` and a time split);
        ``"ogbn-papers100M"`` and ``"mag240m_kddcup2021"`` are the only names
        of the other layouts.
    homophily
        Probability that an edge stays inside its source's community.
    feature_signal
        Norm of the community centroids added to unit-variance Gaussian noise.
    block_rows
        Nodes per streaming block (default: ~32 MiB of float32 features).
        Bounds memory; does not change the output.
    overwrite
        Replace an existing dataset folder previously written by this
        function (a folder without its ``refresh_synthetic.json`` is never
        removed).
    progress
        Show tqdm progress bars on stderr.

    Returns
    -------
    Path
        The dataset folder ``out/<dir>``, with ``<dir>`` one of
        ``ogbn_products``, ``ogbn_arxiv``, ``ogbn_papers100M``,
        ``mag240m_kddcup2021``. Open it with
        ``NodePropPredDataset(name, root=out)`` or ``MAG240MDataset(out)``.
        It also holds ``refresh_synthetic.json`` (parameters and counts).

    Raises
    ------
    ValueError, TypeError
        An argument is out of range or of the wrong type.
    FileExistsError
        The dataset folder exists and ``overwrite`` is false, or it was not
        written by this function.

    Examples
    --------
    >>> path = make_dataset("papers100m", 10_000, "data", progress=False)  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ogbn_papers100M'
    """
    spec = _spec_for(layout, name)
    n = _check_int("num_nodes", num_nodes, 1, 1 << 40)
    seed = _check_int("seed", seed, 0)
    dim = _check_int("feature_dim", spec.feature_dim if feature_dim is None else feature_dim, 1, 1 << 16)  # fmt: skip
    classes = _check_int("num_classes", spec.num_classes if num_classes is None else num_classes, 2, 1 << 16)  # fmt: skip
    avg_degree = _check_float("avg_degree", avg_degree, 0.0, 1e5)
    skew = _check_float("skew", skew, 0.0, 2.0)
    homophily = _check_float("homophily", homophily, 0.0, 1.0)
    feature_signal = _check_float("feature_signal", feature_signal, 0.0, 1e3)
    if labelled_fraction is None:
        labelled_fraction = max(spec.labelled_fraction, min(1.0, 2000.0 / n))
    labelled_fraction = _check_float("labelled_fraction", labelled_fraction, 0.0, 1.0, lo_open=True)
    default_rows = max(1024, _BLOCK_BYTES // (dim * 4))
    rows = _check_int("block_rows", default_rows if block_rows is None else block_rows, 1)
    res_class = _residue_classes(classes)
    if _active_slots(n)[1] < res_class.shape[0]:
        raise ValueError(
            f"num_nodes={num_nodes!r} is too small for num_classes={classes}: "
            f"use at least {_min_nodes(res_class.shape[0])} nodes or fewer classes"
        )

    papers = _make_domain(seed, _DOM_PAPER, n, res_class)
    out_active, in_active = _active_slots(n)
    cites = _Relation(
        papers, papers, out_active, in_active, skew * _OUT_SKEW_RATIO, skew, avg_degree * n,
        homophily, _P_SELF_LOOP, _P_REPEAT, seed, _REL_CITES,
    )  # fmt: skip
    plan = _Plan(
        spec, n, dim, classes, labelled_fraction, seed, avg_degree, skew, homophily,
        feature_signal, rows, progress, papers, cites,
    )  # fmt: skip

    out = Path(out)
    final = out / spec.dir_name
    if final.exists():
        if not overwrite:
            raise FileExistsError(
                f"dataset folder '{final}' exists; remove it or pass overwrite=True (--overwrite)"
            )
        if not (final / INFO_FILE).is_file():
            raise FileExistsError(
                f"'{final}' has no {INFO_FILE}, so it was not written by make_dataset; "
                "refusing to replace it: remove it yourself"
            )
    partial = out / (spec.dir_name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run of this function
    partial.mkdir(parents=True)
    try:
        # ogb opens a local dataset without asking to download only when the
        # release marker and processed/ exist.
        (partial / "RELEASE_v1.txt").write_text(
            f"Synthetic {spec.name} written by refresh_store.synthetic (not the real data).\n"
        )
        (partial / "processed").mkdir()
        counts = _WRITERS[spec.layout](plan, partial)
        info = {
            "generator": "refresh_store.synthetic",
            "layout": spec.layout,
            "name": spec.name,
            "num_nodes": n,
            **counts,
            "feature_dim": dim,
            "feature_dtype": spec.dtype.name,
            "num_classes": classes,
            "seed": seed,
            "avg_degree": avg_degree,
            "skew": skew,
            "homophily": homophily,
            "feature_signal": feature_signal,
            "labelled_fraction": labelled_fraction,
        }
        with open(partial / INFO_FILE, "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final
