"""Per-relation sampling of refresh_train/sampler.py (typed stores, relational models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refresh_train.sampler import NeighborSampler

R = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def typed_graph(n: int = 300, seed: int = 0):
    """CSC in source order with aligned types: a hub (node 0, 200 in-edges of
    every relation), a pair present under two relations, isolated nodes."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n - 10, 4000)
    dst = rng.integers(1, n - 10, 4000)
    typ = rng.integers(0, R, 4000)
    hub = np.tile(np.arange(1, 201), R)
    src = np.concatenate([src, hub, [5, 5]])
    dst = np.concatenate([dst, np.zeros(len(hub), np.int64), [9, 9]])
    typ = np.concatenate([typ, np.repeat(np.arange(R), 200), [0, 2]])
    trip = np.unique(np.stack([dst, src, typ], 1), axis=0)  # sorted by dst, src, type
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(trip[:, 0], minlength=n), out=indptr[1:])
    return indptr, trip[:, 1].astype(np.int32), trip[:, 2].astype(np.int8)


def _edges(block, src_ids, dst_ids):
    ei = block.edge_index.numpy()
    return src_ids[ei[0]], dst_ids[ei[1]], block.edge_type.numpy().astype(np.int64)


@pytest.mark.parametrize("threads", [1, 2], ids=["serial", "two-threads"])
def test_each_relation_is_sampled_with_its_own_fanout_and_only_its_edges(threads):
    indptr, indices, etype = typed_graph()
    rel_fanouts = [[4, 0, 2], [1, 3, -1]]  # from the seeds outward
    s = NeighborSampler(
        indptr,
        indices,
        [5, 5],
        seed=3,
        edge_type=etype,
        num_relations=R,
        relation_fanouts=rel_fanouts,
        num_threads=threads,
    )
    seeds = np.concatenate([[0, 9], np.arange(100, 400 - 100)])
    mb = s.sample(seeds, 11)
    s.close()
    edge_set = {(int(a), int(b), int(t)) for a, b, t in zip(
        indices, np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)), etype
    )}  # fmt: skip
    for layer, block in enumerate(mb.blocks):
        hop = len(mb.blocks) - 1 - layer
        src_ids = mb.layer_nodes[layer].numpy()
        dst_ids = src_ids[: block.num_dst]
        assert np.array_equal(dst_ids, (mb.seeds if layer == 1 else mb.layer_nodes[1]).numpy())
        s_g, d_g, t_g = _edges(block, src_ids, dst_ids)
        # Every sampled edge exists in the graph with that relation.
        assert all((a, b, t) in edge_set for a, b, t in zip(s_g, d_g, t_g))
        for v in dst_ids:
            lo, hi = indptr[v], indptr[v + 1]
            for r in range(R):
                avail = indices[lo:hi][etype[lo:hi] == r]
                got = s_g[(d_g == v) & (t_g == r)]
                f = rel_fanouts[hop][r]
                want = len(avail) if f < 0 else min(f, len(avail))
                assert len(got) == want, (layer, v, r)
                assert len(set(got.tolist())) == len(got)  # without replacement
                assert set(got.tolist()) <= set(avail.tolist())


def test_typed_sampling_is_deterministic_uniform_and_thread_independent():
    indptr, indices, etype = typed_graph()
    kw = dict(edge_type=etype, num_relations=R)
    a = NeighborSampler(indptr, indices, [3], seed=1, **kw).sample(np.array([0]), 5)
    b = NeighborSampler(indptr, indices, [3], seed=1, num_threads=2, **kw).sample(np.array([0]), 5)
    assert torch.equal(a.blocks[0].edge_index, b.blocks[0].edge_index)
    assert torch.equal(a.blocks[0].edge_type, b.blocks[0].edge_type)
    assert torch.equal(a.layer_nodes[0], b.layer_nodes[0])
    # Over many batch seeds, each of the hub's 200 relation-1 neighbours is drawn
    # about equally often (3 of 200 per draw).
    s = NeighborSampler(indptr, indices, [3], seed=1, **kw)
    hits = np.zeros(201)
    for k in range(2000):
        mb = s.sample(np.array([0]), k)
        src = mb.layer_nodes[0].numpy()[mb.blocks[0].edge_index[0].numpy()]
        np.add.at(hits, src[mb.blocks[0].edge_type.numpy() == 1], 1)
    assert hits[0] == 0 and hits[1:].sum() == 6000
    assert 10 < hits[1:].min() and hits[1:].max() < 55  # expected 30 each


def test_homogeneous_sampling_of_a_typed_topology_is_unchanged():
    indptr, indices, etype = typed_graph()
    seeds = np.arange(20, 60)
    plain = NeighborSampler(indptr, indices, [4, 3], seed=2).sample(seeds, 7)
    assert all(b.edge_type is None for b in plain.blocks)
    typed = NeighborSampler(indptr, indices, [4, 3], seed=2, edge_type=etype, num_relations=R)
    mb = typed.sample(seeds, 7)
    assert all(b.edge_type is not None and b.edge_type.dtype == torch.int8 for b in mb.blocks)
    # A node takes up to fanout per relation: at most R * fanout in-edges.
    counts = np.bincount(mb.blocks[1].edge_index[1].numpy(), minlength=len(seeds))
    assert counts.max() <= R * 4 and counts.max() > 4


def test_typed_sampling_with_pruning_and_bad_arguments():
    indptr, indices, etype = typed_graph()
    s = NeighborSampler(indptr, indices, [4, 3], seed=2, edge_type=etype, num_relations=R)
    mb = s.sample(np.arange(20, 40), 1, prune=lambda layer, ids: ids % 2 == 0)
    b0, b1 = mb.blocks
    assert b1.has_cached and b0.num_dst == b1.num_computed
    assert b0.edge_type.shape[0] == b0.num_edges
    with pytest.raises(ValueError, match="num_relations"):
        NeighborSampler(indptr, indices, [4], edge_type=etype)
    with pytest.raises(ValueError, match="int8"):
        NeighborSampler(indptr, indices, [4], edge_type=etype.astype(np.int64), num_relations=R)
    with pytest.raises(ValueError, match="relation_fanouts"):
        NeighborSampler(
            indptr, indices, [4], edge_type=etype, num_relations=R, relation_fanouts=[[1, 2]]
        )
    with pytest.raises(ValueError, match="need edge_type"):
        NeighborSampler(indptr, indices, [4], num_relations=R)
