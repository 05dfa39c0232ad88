"""Tests of refresh_train/sampler.py."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

import refresh_train.sampler as sampler_mod
from refresh_train._sampler_relabel import STAMP_LIMIT
from refresh_train.sampler import (
    NeighborSampler,
    batch_seed,
    check_fanouts,
    derive_seed,
    epoch_batches,
    num_batches,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def csc(num_nodes: int, src, dst, indices_dtype=np.int64):
    """CSC (indptr, indices) of edges src -> dst, in-neighbours grouped by dst."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    order = np.lexsort((src, dst))
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return indptr, src[order].astype(indices_dtype)


def corner_graph(indices_dtype=np.int64):
    """200 nodes: random simple edges, isolated nodes 190..199, self-loops on 5
    and 7, node 0 with in-degree 150 (a hub), node 1 with degree 20."""
    rng = np.random.default_rng(7)
    n = 200
    src = rng.integers(0, 190, 1500)
    dst = rng.integers(2, 190, 1500)
    src = np.concatenate([src, np.arange(10, 160), np.arange(30, 50), [5, 7]])
    dst = np.concatenate([dst, np.zeros(150, np.int64), np.ones(20, np.int64), [5, 7]])
    pairs = np.unique(np.stack([src, dst], 1), axis=0)  # simple graph: no duplicate edges
    return csc(n, pairs[:, 0], pairs[:, 1], indices_dtype)


def neighbours(indptr, indices, v):
    return indices[indptr[v] : indptr[v + 1]].astype(np.int64)


def check_structure(mb, seeds, indptr, indices, fanouts):
    """Invariants every MiniBatch must satisfy; returns per-block edge lists."""
    L = len(fanouts)
    assert mb.num_layers == L
    assert torch.equal(mb.seeds, torch.as_tensor(np.asarray(seeds, dtype=np.int64)))
    assert mb.input_nodes is mb.layer_nodes[0]
    for layer, block in enumerate(mb.blocks):
        nodes = mb.layer_nodes[layer].numpy()
        assert nodes.dtype == np.int64 and block.edge_index.dtype == torch.int64
        assert block.num_src == nodes.shape[0]
        assert np.unique(nodes).shape[0] == nodes.shape[0], "source nodes must be distinct"
        # Destination prefix: block l's destinations are block l+1's computed sources.
        if layer == L - 1:
            assert np.array_equal(nodes[: block.num_dst], np.asarray(seeds))
        else:
            nxt = mb.blocks[layer + 1]
            above = mb.layer_nodes[layer + 1].numpy()
            if nxt.computed_pos is not None:
                above = above[nxt.computed_pos.numpy()]
            assert np.array_equal(nodes[: block.num_dst], above)
        ei = block.edge_index.numpy()
        assert ei.shape == (2, block.num_edges)
        if block.num_edges:
            assert ei[0].min() >= 0 and ei[0].max() < block.num_src
            assert ei[1].min() >= 0 and ei[1].max() < block.num_dst
            assert np.all(np.diff(ei[1]) >= 0), "edges grouped by destination"
        # Every non-destination source is someone's sampled neighbour.
        assert set(range(block.num_dst, block.num_src)) <= set(ei[0].tolist())
        fanout = fanouts[L - 1 - layer]
        for i in range(block.num_dst):
            v = nodes[i]
            got = nodes[ei[0][ei[1] == i]]
            true = neighbours(indptr, indices, v)
            want = true.shape[0] if fanout < 0 else min(fanout, true.shape[0])
            assert got.shape[0] == want
            if fanout < 0:
                assert Counter(got.tolist()) == Counter(true.tolist())
            else:
                assert np.unique(got).shape[0] == want, "no replacement"
                assert set(got.tolist()) <= set(true.tolist())


@pytest.mark.parametrize(
    "dtype", [pytest.param(np.int32, id="int32"), pytest.param(np.int64, id="int64")]
)
@pytest.mark.parametrize(
    "fanouts",
    [
        pytest.param([-1], id="all"),
        pytest.param([-1, -1], id="all2"),
        pytest.param([4, 3, 2], id="432"),
    ],
)
def test_neighbourhoods_exact(dtype, fanouts, relabel):
    indptr, indices = corner_graph(dtype)
    sampler = NeighborSampler(indptr, indices, fanouts, seed=3)
    assert sampler._dense_map is relabel
    seeds = np.array([0, 1, 5, 7, 195, 42, 100], dtype=np.int64)
    mb = sampler.sample(seeds, batch_seed=11)
    check_structure(mb, seeds, indptr, indices, fanouts)


def test_corner_nodes():
    indptr, indices = corner_graph()
    sampler = NeighborSampler(indptr, indices, [-1])
    mb = sampler.sample(np.array([195, 5, 0]), 0)
    b = mb.blocks[0]
    ei = b.edge_index.numpy()
    # Isolated destination: kept as a destination, no edges.
    assert (ei[1] == 0).sum() == 0
    # Self-loop: node 5 (local 1) receives an edge from its own local id.
    assert ((ei[0] == 1) & (ei[1] == 1)).sum() == 1
    # Hub: all 150 in-neighbours.
    assert (ei[1] == 2).sum() == 150
    # Fanout above and below the linear-scan limit of Floyd's algorithm on the hub.
    for k in (10, 64, 65, 149, 150, 1000):
        mb = NeighborSampler(indptr, indices, [k]).sample(np.array([0]), 5)
        got = mb.layer_nodes[0].numpy()[mb.blocks[0].edge_index[0].numpy()]
        assert got.shape[0] == min(k, 150)
        assert np.unique(got).shape[0] == got.shape[0]
        assert set(got.tolist()) <= set(range(10, 160))


def test_fanout_zero_and_empty_seeds():
    indptr, indices = corner_graph()
    mb = NeighborSampler(indptr, indices, [0, 0]).sample(np.array([3, 4]), 0)
    assert all(b.num_edges == 0 and b.num_src == 2 for b in mb.blocks)
    assert mb.input_nodes.tolist() == [3, 4]
    mb = NeighborSampler(indptr, indices, [5, 5]).sample(np.array([], dtype=np.int64), 0)
    assert mb.input_nodes.numel() == 0 and all(b.num_edges == 0 for b in mb.blocks)


def draws(indptr, indices, v, k, n, seed=0):
    sampler = NeighborSampler(indptr, indices, [k], seed=seed)
    out = []
    for b in range(n):
        mb = sampler.sample(np.array([v]), b)
        out.append(
            tuple(sorted(mb.layer_nodes[0].numpy()[mb.blocks[0].edge_index[0].numpy()].tolist()))
        )
    return out


def test_uniform_marginals_linear_scan_path():
    # Node 1 has 20 in-neighbours (30..49); fanout 5: each is drawn w.p. 1/4.
    indptr, indices = corner_graph()
    picks = Counter(itertools.chain.from_iterable(draws(indptr, indices, 1, 5, 4000)))
    assert sorted(picks) == list(range(30, 50))
    p = stats.chisquare([picks[u] for u in range(30, 50)]).pvalue
    assert p > 1e-3, p


def test_uniform_marginals_hash_path():
    # Hub with 150 neighbours, fanout 100 (> linear-scan limit): each w.p. 2/3.
    indptr, indices = corner_graph()
    picks = Counter(itertools.chain.from_iterable(draws(indptr, indices, 0, 100, 600)))
    assert sorted(picks) == list(range(10, 160))
    p = stats.chisquare([picks[u] for u in range(10, 160)]).pvalue
    assert p > 1e-3, p


def test_uniform_over_subsets():
    # Degree 6, fanout 3: all 20 subsets equally likely (Floyd's exactness, not just marginals).
    indptr, indices = csc(7, np.arange(1, 7), np.zeros(6))
    counts = Counter(draws(indptr, indices, 0, 3, 6000))
    assert len(counts) == 20
    p = stats.chisquare(list(counts.values())).pvalue
    assert p > 1e-3, p


def test_dense_and_hash_relabelling_agree(monkeypatch):
    indptr, indices = corner_graph()
    seeds = np.arange(3, 190, 2)
    dense = NeighborSampler(indptr, indices, [5, 4, 3], seed=4).sample(seeds, 9)
    monkeypatch.setattr(sampler_mod, "DENSE_MAP_MAX_NODES", 0)
    hashed = NeighborSampler(indptr, indices, [5, 4, 3], seed=4).sample(seeds, 9)
    for a, b in zip(dense.blocks, hashed.blocks):
        assert torch.equal(a.edge_index, b.edge_index)
    for x, y in zip(dense.layer_nodes, hashed.layer_nodes):
        assert torch.equal(x, y)


def test_determinism_and_seed_dependence():
    indptr, indices = corner_graph()
    seeds = np.arange(0, 60)
    s = NeighborSampler(indptr, indices, [5, 3], seed=1)
    a, b = s.sample(seeds, 4), s.sample(seeds, 4)
    for x, y in zip(
        a.layer_nodes + [bl.edge_index for bl in a.blocks],
        b.layer_nodes + [bl.edge_index for bl in b.blocks],
    ):
        assert torch.equal(x, y)
    c = s.sample(seeds, 5)
    d = NeighborSampler(indptr, indices, [5, 3], seed=2).sample(seeds, 4)
    assert not torch.equal(a.input_nodes, c.input_nodes)
    assert not torch.equal(a.input_nodes, d.input_nodes)
    # Threads and chunking do not change the draws.
    t = NeighborSampler(indptr, indices, [5, 3], seed=1, num_threads=2)
    e = t.sample(np.arange(0, 190), 4)
    f = s.sample(np.arange(0, 190), 4)
    t.close()
    for x, y in zip(e.layer_nodes, f.layer_nodes):
        assert torch.equal(x, y)


def test_node_sample_independent_of_batch_composition():
    indptr, indices = corner_graph()
    s = NeighborSampler(indptr, indices, [4], seed=9)

    def nbrs_of(mb, v):
        nodes = mb.layer_nodes[0].numpy()
        i = int(np.flatnonzero(nodes == v)[0])
        ei = mb.blocks[0].edge_index.numpy()
        return sorted(nodes[ei[0][ei[1] == i]].tolist())

    one = s.sample(np.array([0]), 3)
    many = s.sample(np.array([17, 0, 33]), 3)
    assert nbrs_of(one, 0) == nbrs_of(many, 0)


def test_int32_and_int64_indices_agree():
    a = corner_graph(np.int32)
    b = corner_graph(np.int64)
    seeds = np.arange(0, 100, 3)
    ma = NeighborSampler(*a, [6, 4], seed=5).sample(seeds, 1)
    mb = NeighborSampler(*b, [6, 4], seed=5).sample(seeds, 1)
    for x, y in zip(ma.layer_nodes, mb.layer_nodes):
        assert torch.equal(x, y)


def test_memmapped_topology_is_not_copied(tmp_path):
    indptr, indices = corner_graph(np.int32)
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    ip = np.load(tmp_path / "indptr.npy", mmap_mode="r", allow_pickle=False)
    ix = np.load(tmp_path / "indices.npy", mmap_mode="r", allow_pickle=False)
    s = NeighborSampler(ip, ix, [5, 5], seed=2)
    assert np.shares_memory(s.indices, ix) and np.shares_memory(s.indptr, ip)
    seeds = np.array([0, 1, 2, 150])
    got = s.sample(seeds, 8)
    want = NeighborSampler(indptr, indices, [5, 5], seed=2).sample(seeds, 8)
    for x, y in zip(got.layer_nodes, want.layer_nodes):
        assert torch.equal(x, y)
    check_structure(got, seeds, indptr, indices, [5, 5])
    # Seeds straight from a read-only memmap (a store's train_idx) are copied, not aliased.
    np.save(tmp_path / "train.npy", seeds)
    train = np.load(tmp_path / "train.npy", mmap_mode="r", allow_pickle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mb = s.sample(train, 8)
    assert torch.equal(mb.seeds, got.seeds) and not np.shares_memory(mb.seeds.numpy(), train)


class FakeHistory:
    """A history table holding h^(l) of a fixed id set per layer."""

    def __init__(self, cached: dict[int, set[int]], rows: bool):
        self.cached, self.rows, self.calls = cached, rows, []

    def __call__(self, layer, ids):
        self.calls.append(layer)
        hit = np.isin(ids, list(self.cached.get(layer, ())))
        if not self.rows:
            return hit
        return np.where(hit, ids * 10, -1)


@pytest.mark.parametrize("rows", [pytest.param(False, id="mask"), pytest.param(True, id="rows")])
def test_prune_hook(rows):
    indptr, indices = corner_graph()
    seeds = np.array([0, 1, 2, 3])
    full = NeighborSampler(indptr, indices, [-1, -1, -1]).sample(seeds, 0)
    # Cache a few nodes of block 2's and block 1's sources, including a seed.
    l2 = full.layer_nodes[2].numpy()
    cached = {
        2: {int(l2[1]), int(l2[10]), int(l2[20])},
        1: set(full.layer_nodes[1].numpy()[[5, 40, 41]].tolist()),
    }
    hook = FakeHistory(cached, rows)
    mb = NeighborSampler(indptr, indices, [-1, -1, -1], prune=hook).sample(seeds, 0)
    assert hook.calls == [2, 1], "asked for blocks L-1 .. 1 only"
    check_structure(mb, seeds, indptr, indices, [-1, -1, -1])
    for layer in (2, 1):
        b = mb.blocks[layer]
        nodes = mb.layer_nodes[layer].numpy()
        assert b.has_cached
        pos = np.sort(np.concatenate([b.cached_pos.numpy(), b.computed_pos.numpy()]))
        assert np.array_equal(pos, np.arange(b.num_src))
        assert set(nodes[b.cached_pos.numpy()].tolist()) == cached[layer] & set(nodes.tolist())
        assert np.array_equal(b.cached_ids.numpy(), nodes[b.cached_pos.numpy()])
        if rows:
            assert np.array_equal(b.cached_rows.numpy(), b.cached_ids.numpy() * 10)
        else:
            assert b.cached_rows is None
        # Cached nodes are not expanded: not destinations of the block below.
        below = mb.layer_nodes[layer - 1].numpy()[: mb.blocks[layer - 1].num_dst]
        assert not set(below.tolist()) & set(b.cached_ids.tolist())
    assert mb.blocks[0].cached_pos is None
    assert mb.blocks[1].num_dst < full.blocks[1].num_dst


def test_prune_everything_and_bad_hook():
    indptr, indices = corner_graph()
    s = NeighborSampler(indptr, indices, [3, 3])
    mb = s.sample(np.array([0, 1]), 0, prune=lambda layer, ids: np.ones(ids.shape, bool))
    assert mb.blocks[0].num_dst == 0 and mb.blocks[0].num_src == 0 and mb.input_nodes.numel() == 0
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.array([0, 1]), 0, prune=lambda layer, ids: np.ones(3, bool))
    with pytest.raises(ValueError, match="dtype"):
        s.sample(np.array([0, 1]), 0, prune=lambda layer, ids: np.ones(ids.shape, np.float32))


def test_input_validation(relabel):
    indptr, indices = corner_graph()
    s = NeighborSampler(indptr, indices, [3])
    before = s.sample(np.array([4, 5, 6]), 0)
    with pytest.raises(ValueError, match="distinct"):
        s.sample(np.array([4, 5, 4]), 0)
    # The failed call left no stale ids in the per-thread scratch state.
    after = s.sample(np.array([4, 5, 6]), 0)
    assert all(torch.equal(x, y) for x, y in zip(before.layer_nodes, after.layer_nodes))
    with pytest.raises(ValueError, match=r"\[0, 200\)"):
        s.sample(np.array([200]), 0)
    with pytest.raises(ValueError, match="batch_seed"):
        s.sample(np.array([1]), -1)
    with pytest.raises(ValueError, match="fanouts"):
        NeighborSampler(indptr, indices, [3, -2])
    with pytest.raises(ValueError, match="fanouts"):
        check_fanouts("15,10")
    with pytest.raises(ValueError, match="indices"):
        NeighborSampler(indptr, indices.astype(np.float32), [3])
    with pytest.raises(ValueError, match="contiguous"):
        NeighborSampler(indptr, np.repeat(indices, 2)[::2], [3])
    with pytest.raises(ValueError, match="indptr"):
        NeighborSampler(indptr + 1, indices, [3])


def test_epoch_batches():
    train = np.arange(100, 1100, 2)  # 500 ids
    got = list(epoch_batches(train, 64, seed=1, epoch=0))
    assert len(got) == num_batches(500, 64) == 8 and got[-1].shape[0] == 500 - 7 * 64
    assert np.array_equal(np.sort(np.concatenate(got)), train), "each id exactly once"
    assert all(b.dtype == np.int64 for b in got)
    dropped = list(epoch_batches(train, 64, seed=1, epoch=0, drop_last=True))
    assert len(dropped) == num_batches(500, 64, drop_last=True) == 7
    assert all(np.array_equal(a, b) for a, b in zip(got, dropped))
    again = list(epoch_batches(torch.from_numpy(train), 64, seed=1, epoch=0))
    assert all(np.array_equal(a, b) for a, b in zip(got, again))
    other = np.concatenate(list(epoch_batches(train, 64, seed=1, epoch=1)))
    assert not np.array_equal(np.concatenate(got), other)
    with pytest.raises(ValueError, match="batch_size"):
        next(epoch_batches(train, 0, 1, 0))


def test_seed_derivation():
    assert derive_seed(1, 2) == derive_seed(1, 2)
    assert (
        len({derive_seed(1, 2), derive_seed(2, 1), derive_seed(1, 2, 0), derive_seed(1 << 70)}) == 4
    )
    assert 0 <= batch_seed(3, 4) < 2**63


def skewed_graph(n: int = 3000, m: int = 30000, seed: int = 11):
    """A power-law-ish simple graph big enough that frontiers exceed the
    2-thread path's threshold (256 destinations), with isolated nodes."""
    rng = np.random.default_rng(seed)
    w = (np.arange(n - 50) + 5.0) ** -0.7
    w /= w.sum()
    pairs = np.unique(rng.choice(n - 50, (m, 2), p=w), axis=0)
    return csc(n, pairs[:, 0], pairs[:, 1], np.int32)


def assert_same_batches(a, b):
    for x, y in zip(a.layer_nodes, b.layer_nodes):
        assert torch.equal(x, y)
    for x, y in zip(a.blocks, b.blocks):
        assert torch.equal(x.edge_index, y.edge_index)
        for f in ("computed_pos", "cached_pos", "cached_ids"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None and v is None) or torch.equal(u, v)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_agree_on_large_frontiers(threads, relabel):
    # Frontiers of hundreds to thousands of nodes go through the chunked
    # draws, relabelled chunk by chunk while other chunks are drawn.
    indptr, indices = skewed_graph()
    seeds = np.random.default_rng(1).choice(2900, 400, replace=False)
    one = NeighborSampler(indptr, indices, [6, 4, 3], seed=5)
    many = NeighborSampler(indptr, indices, [6, 4, 3], seed=5, num_threads=threads)
    for b in range(3):
        want, got = one.sample(seeds, b), many.sample(seeds, b)
        assert got.blocks[0].num_dst >= 256
        assert_same_batches(want, got)
    check_structure(got, seeds, indptr, indices, [6, 4, 3])
    hook = FakeHistory({1: set(range(0, 3000, 3)), 2: set(range(1, 3000, 5))}, rows=True)
    assert_same_batches(one.sample(seeds, 7, prune=hook), many.sample(seeds, 7, prune=hook))
    many.close()


def test_in_memory_topology_is_a_copy_with_the_same_samples(tmp_path):
    indptr, indices = skewed_graph()
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    ip = np.load(tmp_path / "indptr.npy", mmap_mode="r", allow_pickle=False)
    ix = np.load(tmp_path / "indices.npy", mmap_mode="r", allow_pickle=False)
    s = NeighborSampler(ip, ix, [5, 5], seed=2, in_memory=True)
    assert not np.shares_memory(s.indices, ix) and not np.shares_memory(s.indptr, ip)
    assert s.indices.dtype == np.int32 and not isinstance(s.indices, np.memmap)
    seeds = np.arange(0, 2900, 7)
    assert_same_batches(
        s.sample(seeds, 3), NeighborSampler(ip, ix, [5, 5], seed=2).sample(seeds, 3)
    )


@pytest.mark.parametrize("wrap", [pytest.param(False, id="stamps"), pytest.param(True, id="wrap")])
def test_id_map_is_never_cleared_yet_exact(wrap):
    # The dense id map keeps every entry it ever wrote; a new stamp per
    # mapping must retire them all, across batches of growing size (scratch
    # buffers that grow mid-batch), after a failed call, and when the stamps
    # run out and the map is cleared.
    indptr, indices = skewed_graph()
    rng = np.random.default_rng(2)
    s = NeighborSampler(indptr, indices, [-1, 3], seed=4)
    s.sample(np.array([3, 9]), 0)  # scratch sized for a tiny batch
    sc = s._scratch()
    if wrap:
        sc.base = STAMP_LIMIT - 50
    for b, size in enumerate([300, 40, 300, 1200]):
        seeds = rng.choice(2900, size, replace=False)
        got = s.sample(seeds, b)
        want = NeighborSampler(indptr, indices, [-1, 3], seed=4).sample(seeds, b)
        assert_same_batches(got, want)
        if b == 0:
            check_structure(got, seeds, indptr, indices, [-1, 3])
            if wrap:
                assert sc.base < 1000, "stamps ran out: the map was cleared and restarted"
            with pytest.raises(ValueError, match="distinct"):
                s.sample(np.concatenate([seeds, seeds[5:6]]), 0)
    assert sc.local_map.max() < sc.base + sc.used


def test_in_memory_auto_copies_only_what_fits(tmp_path, monkeypatch):
    import refresh_train.topology as topology_mod

    indptr, indices = skewed_graph()
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    ip = np.load(tmp_path / "indptr.npy", mmap_mode="r", allow_pickle=False)
    ix = np.load(tmp_path / "indices.npy", mmap_mode="r", allow_pickle=False)
    fits = NeighborSampler(ip, ix, [5], seed=0, in_memory="auto")
    assert fits.in_memory and not np.shares_memory(fits.indices, ix)
    monkeypatch.setattr(topology_mod, "IN_MEMORY_AUTO_FRACTION", 1e-12)
    too_big = NeighborSampler(ip, ix, [5], seed=0, in_memory="auto")
    assert not too_big.in_memory and np.shares_memory(too_big.indices, ix)
    with pytest.raises(ValueError, match="in_memory"):
        NeighborSampler(ip, ix, [5], seed=0, in_memory="yes")
