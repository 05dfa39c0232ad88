"""Edge types through the converter (format version 2): exact against a brute-force reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from refresh_store.convert import _topology as _csc
from refresh_store.convert import convert
from refresh_store.convert.reorder import degree_order
from refresh_store.errors import StoreFormatError
from refresh_store.format import FORMAT_VERSION, FORMAT_VERSION_EDGE_TYPES
from refresh_store.readers.mag240m import FULL_RELATIONS
from refresh_store.store import open_store
from refresh_store.synthetic import make_dataset
from refresh_store.verify import verify_store
from refresh_store.writer import write_store

QUIET = {"progress": False}
REVERSE = np.array([0, 2, 1, 4, 3])  # cites <-> cites, writes <-> written_by, ...


@pytest.fixture(scope="module")
def mag(tmp_path_factory):
    base = tmp_path_factory.mktemp("mag")
    return make_dataset("mag240m", 500, base, seed=5, feature_dim=4, num_classes=3, progress=False)


def typed_reference(root, store, self_loops: str = "drop") -> tuple[np.ndarray, np.ndarray]:
    """(indices, edge_type) the store must hold, from the raw files and the store's new ids."""
    proc = root / "processed"
    meta = torch.load(root / "meta.pt", weights_only=True)
    p, a, i = meta["paper"], meta["author"], meta["institution"]
    parts = [
        ("paper___cites___paper", 0, 0, 0),
        ("author___writes___paper", p, 0, 1),
        ("author___affiliated_with___institution", p, p + a, 3),
    ]
    s, d, t = [], [], []
    for folder, so, do, typ in parts:
        ei = np.load(proc / folder / "edge_index.npy")
        s.append(ei[0] + so)
        d.append(ei[1] + do)
        t.append(np.full(ei.shape[1], typ))
    s, d, t = np.concatenate(s), np.concatenate(d), np.concatenate(t)
    if self_loops != "keep":
        keep = s != d
        s, d, t = s[keep], d[keep], t[keep]
    s, d, t = np.concatenate([s, d]), np.concatenate([d, s]), np.concatenate([t, REVERSE[t]])
    n = p + a + i
    if self_loops == "add":
        s, d = np.concatenate([s, np.arange(n)]), np.concatenate([d, np.arange(n)])
        t = np.concatenate([t, np.full(n, len(FULL_RELATIONS))])
    trip = np.unique(np.stack([d, s, t], 1), axis=0)  # dedup per (dst, src, type)
    new = np.asarray(store.new_id)
    nd, ns, nt = new[trip[:, 0]], new[trip[:, 1]], trip[:, 2]
    order = np.lexsort((nt, ns, nd))  # CSC: destination, then source, then type
    return ns[order], nt[order]


@pytest.mark.parametrize("reorder", ["degree", "none"])
def test_types_survive_conversion_exactly(mag, tmp_path, reorder):
    dst = tmp_path / "s"
    convert(mag, dst, mag240m_graph="full", reorder=reorder, **QUIET)
    store = open_store(dst)
    assert store.manifest["format_version"] == FORMAT_VERSION_EDGE_TYPES
    assert store.relations == FULL_RELATIONS and store.has_edge_types
    indices, types = typed_reference(mag, store)
    np.testing.assert_array_equal(store.indices, indices)
    np.testing.assert_array_equal(store.edge_type, types)
    assert store.edge_type.dtype == np.int8
    # Every relation occurs, and node types decide it (no pair under two relations).
    assert set(np.unique(types)) == set(range(len(FULL_RELATIONS)))
    # zarr-python reads the new array like every other.
    group = zarr.open_group(str(dst), mode="r")
    np.testing.assert_array_equal(group["edge_type"][:], types)
    report = verify_store(dst)
    assert report.ok and "edge types" in report.checked


def test_added_self_loops_get_their_own_relation(mag, tmp_path):
    convert(mag, tmp_path / "s", mag240m_graph="full", self_loops="add", **QUIET)
    store = open_store(tmp_path / "s")
    assert store.relations == [*FULL_RELATIONS, "self"]
    indices, types = typed_reference(mag, store, self_loops="add")
    np.testing.assert_array_equal(store.indices, indices)
    np.testing.assert_array_equal(store.edge_type, types)


def test_untyped_stores_stay_version_1_and_verify_catches_bad_types(mag, tmp_path):
    convert(mag, tmp_path / "papers", **QUIET)  # the citation graph: no edge types
    papers = open_store(tmp_path / "papers")
    assert papers.manifest["format_version"] == FORMAT_VERSION == 1
    assert papers.edge_type is None and papers.relations is None and papers.num_relations == 0
    assert not (tmp_path / "papers" / "edge_type").exists()
    convert(mag, tmp_path / "full", mag240m_graph="full", **QUIET)
    shard = tmp_path / "full" / "edge_type" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[3] = 100  # a relation the manifest does not name
    shard.write_bytes(bytes(data))
    report = verify_store(tmp_path / "full")
    assert any(f.startswith("edge_type: bytes") for f in report.failures)
    assert any("edge_type[3] = 100" in f for f in report.failures)
    # A version-2 manifest without relations is refused at open.
    meta_path = tmp_path / "full" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["refresh"]["relations"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="relations"):
        open_store(tmp_path / "full")


def test_write_store_with_types(tmp_path):
    kw = dict(
        features=np.zeros((3, 2), np.float32),
        indptr=np.array([0, 2, 3, 3]),
        indices=np.array([1, 2, 0]),
        labels=np.zeros(3),
        train_idx=[0],
        valid_idx=[1],
        test_idx=[2],
    )
    store = write_store(tmp_path / "s", edge_type=[1, 0, 1], relations=["a", "b"], **kw)
    assert store.manifest["format_version"] == 2 and store.relations == ["a", "b"]
    np.testing.assert_array_equal(store.edge_type, [1, 0, 1])
    assert verify_store(tmp_path / "s").ok
    with pytest.raises(ValueError, match="both or neither"):
        write_store(tmp_path / "t", edge_type=[1, 0, 1], **kw)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        write_store(tmp_path / "t", edge_type=[2, 0, 1], relations=["a", "b"], **kw)


def test_typed_passes_split_relabel_and_keep_types(tmp_path):
    """The bucket passes with a tiny capacity (oversized buckets split, relabelling
    re-buckets), typed edges with duplicates under two types, against numpy."""
    rng = np.random.default_rng(0)
    n, e, num_types = 900, 6000, 3
    src = rng.integers(0, n, e)
    dst = np.concatenate([np.zeros(300, np.int64), rng.integers(0, n, e - 300)])  # a hub
    typ = rng.integers(0, 2, e).astype(np.int8)  # types 0 and 1; 1 <-> 2 reversed
    src, dst, typ = np.r_[src, src[:100]], np.r_[dst, dst[:100]], np.r_[typ, 1 - typ[:100]]
    rev = np.array([0, 2, 1], dtype=np.int8)

    class Edges:
        name, num_edges = "test", len(src)

        def typed_blocks(self, max_edges):
            for a in range(0, len(src), max_edges):
                b = a + max_edges
                yield a, src[a:b].copy(), dst[a:b].copy(), typ[a:b]

    tick = lambda r, b: None  # noqa: E731
    buckets = _csc.bucket_edges(
        Edges(), n, undirected=True, drop_self_loops=True, tmp_dir=tmp_path, capacity=500,
        block_edges=777, tick=tick, num_types=num_types, rev_type=rev,
    )  # fmt: skip
    assert len(buckets) > 10 and max(b.count for b in buckets) <= 500
    deg = np.zeros(n, dtype=np.int32)
    buckets, m = _csc.dedupe_buckets(
        buckets, n, add_self_loops=False, degrees=deg, tmp_dir=tmp_path, tick=tick,
        num_types=num_types,
    )  # fmt: skip
    new_id, _ = degree_order(deg)
    bounds = _csc.new_id_bounds(np.sort(deg)[::-1].astype(np.int64), np.ones(n, np.int64), 500)
    relabelled = _csc.relabel_buckets(
        buckets, n, new_id.astype(np.int32), bounds, tmp_dir=tmp_path, block_edges=100,
        tick=tick, num_types=num_types,
    )  # fmt: skip
    indptr, indices = np.zeros(n + 1, np.int64), np.zeros(m, np.int32)
    types = np.full(m, -1, np.int8)

    def put(arr):
        return lambda start, block: arr.__setitem__(slice(start, start + len(block)), block)

    assert m == _csc.write_csc(
        relabelled, n, write_indptr=put(indptr), write_indices=put(indices),
        indices_dtype=np.dtype(np.int32), sort=True, tmp_dir=tmp_path, tick=tick,
        num_types=num_types, write_types=put(types),
    )  # fmt: skip
    keep = src != dst
    s, d, t = src[keep], dst[keep], typ[keep].astype(np.int64)
    s, d, t = np.r_[s, d], np.r_[d, s], np.r_[t, rev[t]]
    trip = np.unique(np.stack([d, s, t], 1), axis=0)
    assert len(trip) == m > len(np.unique(trip[:, :2], axis=0))  # pairs under two types
    assert np.array_equal(deg, np.bincount(trip[:, 0], minlength=n))  # typed in-degree
    nd, ns, nt = new_id[trip[:, 0]], new_id[trip[:, 1]], trip[:, 2]
    order = np.lexsort((nt, ns, nd))
    np.testing.assert_array_equal(indptr[1:], np.cumsum(np.bincount(nd, minlength=n)))
    np.testing.assert_array_equal(indices, ns[order])
    np.testing.assert_array_equal(types, nt[order])
