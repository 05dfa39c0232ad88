"""The PyG-style baseline of the benchmarks (``benchmarks/_pyg_baseline.py``).

Its sample must be what ``NeighborLoader`` emits, and PyG's ``trim_to_layer``
must not change what the model computes for the seeds; otherwise the
benchmarks would compare against a baseline that does less (or other) work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _pyg_baseline as pb  # noqa: E402

from refresh_store.writer import write_store  # noqa: E402


def tiny_graph(num_nodes: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CSC with the corner cases: isolated nodes, a self-loop, a node of huge in-degree."""
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, 12, num_nodes)
    deg[5:15] = 0  # isolated (no in-neighbours)
    deg[0] = num_nodes - 1  # a hub: far more in-neighbours than any fanout
    lists = [np.sort(rng.choice(num_nodes, d, replace=False)) for d in deg]
    lists[0] = np.setdiff1d(np.arange(num_nodes), [0])
    lists[1] = np.union1d(lists[1], [1])  # a self-loop
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=indptr[1:])
    return indptr, np.concatenate(lists).astype(np.int32)


def hop_of(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("fanouts", [[4, 3, 2], [2, -1], [25, 5]], ids=["4-3-2", "2-all", "25-5"])
def test_sample_is_a_neighborloader_subgraph(fanouts):
    indptr, indices = tiny_graph()
    sampler = pb.HierarchicalSampler(indptr, indices, fanouts, seed=3)
    seeds = np.array([0, 1, 7, 42, 99, 250, 6])  # hub, self-loop, isolated
    for bseed in range(3):  # repeated calls: the id map must come back clean
        data = sampler.sample(seeds, bseed)
        n_id = data.n_id.numpy()
        src, dst = data.edge_index.numpy()
        nodes, edges = data.num_sampled_nodes, data.num_sampled_edges
        L = len(fanouts)
        assert data.batch_size == len(seeds)
        assert len(nodes) == L + 1 and len(edges) == L
        assert sum(nodes) == len(n_id) == data.num_nodes
        assert sum(edges) == len(src)
        assert nodes[0] == len(seeds) and np.array_equal(n_id[: len(seeds)], seeds)
        assert len(np.unique(n_id)) == len(n_id)  # each node once
        node_hop = hop_of(nodes)
        edge_hop = hop_of(edges) + 1  # edges of hop k are listed after those of hop k-1
        # Edges of hop k point into hop k-1's nodes, from nodes of hops <= k.
        assert np.array_equal(node_hop[dst], edge_hop - 1)
        assert np.all(node_hop[src] <= edge_hop)
        # A node of hop k is first reached at hop k: an edge of hop k brings it.
        for v in range(nodes[0], len(n_id)):
            assert edge_hop[src == v].min() == node_hop[v]
        # Every edge is real, and each node is expanded once with its fanout.
        for v in range(len(n_id)):
            g = n_id[v]
            nbrs = indices[indptr[g] : indptr[g + 1]]
            mine = n_id[src[dst == v]]
            assert np.isin(mine, nbrs).all()
            assert len(np.unique(mine)) == len(mine)  # without replacement
            if node_hop[v] == L:
                assert len(mine) == 0  # the last hop is not expanded
            else:
                f = fanouts[node_hop[v]]
                assert len(mine) == (len(nbrs) if f < 0 else min(f, len(nbrs)))
        # Edges are grouped by the node they were sampled for.
        assert np.all(np.diff(dst) >= 0)
    again = sampler.sample(seeds, 2)
    assert torch.equal(again.n_id, data.n_id)
    assert torch.equal(again.edge_index, data.edge_index)


def test_sampling_is_uniform():
    # 400 seeds sharing the same 20 in-neighbours, fanout 5: 2000 draws.
    n, k = 420, 20
    indptr = np.concatenate([np.arange(0, 400 * k + 1, k), np.full(n - 400, 400 * k)])
    indices = np.tile(np.arange(400, 420), 400)
    sampler = pb.HierarchicalSampler(indptr, indices, [5], seed=0)
    data = sampler.sample(np.arange(400), 1)
    counts = np.bincount(data.n_id[data.edge_index[0]].numpy() - 400, minlength=k)
    expected = 400 * 5 / k
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50  # 19 degrees of freedom: p < 1e-4 above ~45


def test_sampler_rejects_bad_seeds():
    indptr, indices = tiny_graph(50)
    sampler = pb.HierarchicalSampler(indptr, indices, [2])
    with pytest.raises(ValueError, match="distinct"):
        sampler.sample([1, 1])
    with pytest.raises(ValueError, match="lie in"):
        sampler.sample([50])


@pytest.mark.parametrize("model", ["sage", "gat"])
def test_trimming_keeps_the_seeds_logits(model, one_torch_thread):
    indptr, indices = tiny_graph()
    data = pb.HierarchicalSampler(indptr, indices, [4, 3, 2], seed=1).sample(np.arange(0, 60, 3), 0)
    x = torch.randn(data.num_nodes, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = pb.pyg_model(model, 12, 16, 5, 3).eval()
    full = pb._forward(net, data, x, trim="none")
    assert full.shape == (data.batch_size, 5)
    for trim in ("layer", "dst"):  # PyG's trim_to_layer, and outputs cut to what is read
        torch.testing.assert_close(pb._forward(net, data, x, trim=trim), full, rtol=1e-5, atol=1e-5)


def test_edge_rank_numbers_each_nodes_in_edges_0_to_count():
    dst = torch.tensor([3, 3, 0, 3, 7, 0, 3, 7, 7, 7, 7, 1])
    torch.manual_seed(0)
    ranks = pb._edge_rank(dst)
    for v in dst.unique().tolist():
        assert sorted(ranks[dst == v].tolist()) == list(range(int((dst == v).sum())))
    # A random order: another draw numbers node 7's edges differently.
    orders = {tuple(pb._edge_rank(dst)[dst == 7].tolist()) for _ in range(20)}
    assert len(orders) > 1


def test_capped_forward_gives_each_layer_its_block_fanout(one_torch_thread):
    indptr, indices = tiny_graph()
    data = pb.HierarchicalSampler(indptr, indices, [4, 3, 2], seed=1).sample(np.arange(0, 60, 3), 0)
    x = torch.randn(data.num_nodes, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = pb.pyg_model("sage", 12, 16, 5, 3).eval()
    plain = pb._forward(net, data, x, trim="dst")
    # Caps no lower than any hop's fanout change nothing.
    wide = pb._forward_dst(net, data, x, caps=[4, 4, 4])
    torch.testing.assert_close(wide, plain, rtol=1e-5, atol=1e-5)
    # Block counts (2, 3, 4 from the input layer up): each layer's edges per destination
    # are capped, so the seeds' logits change.
    seen = []
    conv0 = net.convs[0]
    hook = conv0.register_forward_pre_hook(lambda m, a: seen.append(a[1].clone()))
    capped = pb._forward(net, data, x, trim="dst-capped", fanouts=[4, 3, 2])
    hook.remove()
    assert not torch.allclose(capped, plain)
    per_dst = torch.bincount(seen[0][1])
    assert per_dst.max() <= 2 and per_dst.max() == 2
    with pytest.raises(ValueError, match="fanouts"):
        pb._forward(net, data, x, trim="dst-capped")


def test_dst_trimming_trains_like_the_full_forward(one_torch_thread):
    # Same gradients, so dropout aside the two train the same model.
    indptr, indices = tiny_graph()
    data = pb.HierarchicalSampler(indptr, indices, [4, 3, 2], seed=1).sample(np.arange(0, 60, 3), 0)
    x = torch.randn(data.num_nodes, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = pb.pyg_model("sage", 12, 16, 5, 3, dropout=0.0)
    grads = []
    for trim in ("dst", "none"):
        net.zero_grad()
        pb._forward(net, data, x, trim=trim).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_trim_to_layer_changes_only_gcn_normalisation(one_torch_thread):
    # GCNConv's symmetric normalisation reads the source nodes' degrees in the
    # (trimmed) subgraph; without normalisation trimming is exact again.
    from torch_geometric.nn.models import GCN

    indptr, indices = tiny_graph()
    data = pb.HierarchicalSampler(indptr, indices, [4, 3, 2], seed=1).sample(np.arange(0, 60, 3), 0)
    x = torch.randn(data.num_nodes, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = GCN(12, 16, 3, 5, normalize=False).eval()
    torch.testing.assert_close(
        pb._forward(net, data, x, trim="layer"), pb._forward(net, data, x, trim="none")
    )


def test_overlap_of_interval_sets():
    assert pb._overlap_s([(0, 2), (1, 3), (5, 6)], [(2.5, 5.5)]) == pytest.approx(1.0)
    assert pb._overlap_s([(0, 1)], [(1, 2)]) == 0.0


@pytest.fixture
def tiny_store(tmp_path):
    indptr, indices = tiny_graph(400)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    features = (rng.normal(size=(400, 8)) + labels[:, None]).astype(np.float32)
    perm = rng.permutation(400)
    return write_store(
        tmp_path / "store",
        features=features,
        indptr=indptr,
        indices=indices,
        labels=labels,
        train_idx=np.sort(perm[:200]),
        valid_idx=np.sort(perm[200:300]),
        test_idx=np.sort(perm[300:]),
        num_classes=3,
    )


@pytest.mark.parametrize(
    "features,workers", [("cold", 0), ("warm", 1)], ids=["cold-serial", "warm-1-worker"]
)
def test_train_and_loader_records(tiny_store, features, workers, one_torch_thread):
    recs = pb.train_pyg_baseline(
        tiny_store,
        fanouts=(3, 2),
        batch_size=64,
        hidden=8,
        epochs=2,
        lr=0.01,
        seed=0,
        num_workers=workers,
        features=features,
        max_batches=2,
    )
    assert [r["epoch"] for r in recs] == [1, 2]
    last = recs[-1]
    assert last["batches"] == 2 and last["rows_gathered"] > 128
    assert last["bytes_gathered"] == last["rows_gathered"] * 8 * 4
    assert (last["bytes_disk"] > 0) == (features == "cold")
    assert (last["evict_s"] > 0) == (features == "cold")
    assert 0 <= last["evict_excluded_s"] <= last["evict_s"] + 1e-9
    assert last["epoch_time_s"] > 0 and last["peak_rss_bytes"] > 0
    assert recs[0]["test_acc"] is None and 0 <= last["test_acc"] <= 1
    assert last["num_workers"] == workers and last["trim"] == "dst"
    lo = pb.loader_only_pyg_baseline(
        tiny_store,
        fanouts=(3, 2),
        batch_size=64,
        num_workers=workers,
        features=features,
        batches=2,
        passes=2,
    )
    assert lo["batches"] == 2 and len(lo["runs"]) == 2 and lo["batches_per_s"] > 0


def test_gcn_defaults_to_trim_to_layer(tiny_store, one_torch_thread):
    common = dict(fanouts=(3, 2), batch_size=64, hidden=8, epochs=1, max_batches=1)
    common.update(model="gcn", num_workers=0, evaluate=False)
    (rec,) = pb.train_pyg_baseline(tiny_store, **common)
    assert rec["trim"] == "layer"
    with pytest.raises(ValueError, match="GCNConv"):
        pb.train_pyg_baseline(tiny_store, trim="dst", **common)
