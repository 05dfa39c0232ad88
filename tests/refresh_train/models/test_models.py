"""Tests of refresh_train/models/."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv

from refresh_train.batch import Block
from refresh_train.models import MODELS, BlockGCNConv, build_model
from refresh_train.sampler import NeighborSampler

GNNS = ["sage", "gcn", "gat"]
ALL = [*GNNS, "mlp"]


def planted(n=300, d=8, classes=3, deg=10, signal=0.5, seed=0):
    """Communities: 90% of in-edges from the same class; weak own-feature signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    dst = np.repeat(np.arange(n), deg)
    same = rng.random(n * deg) < 0.9
    members = [np.flatnonzero(y == c) for c in range(classes)]
    src = np.where(
        same,
        np.array([rng.choice(members[y[v]]) for v in dst]),
        rng.integers(0, n, n * deg),
    )
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    centers = rng.normal(size=(classes, d))
    x = (signal * centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return indptr, src[order].astype(np.int64), torch.from_numpy(x), torch.from_numpy(y)


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def graph():
    return planted()


def full_batch(indptr, indices, layers, seeds=None):
    n = indptr.shape[0] - 1
    seeds = np.arange(n) if seeds is None else seeds
    return NeighborSampler(indptr, indices, [-1] * layers).sample(seeds, 0)


def layerwise(model, indptr, indices, x, chunk=64):
    """Exact inference one layer at a time for all nodes, in chunks."""
    n = x.shape[0]
    one_hop = NeighborSampler(indptr, indices, [-1])
    hs = [x]
    with torch.no_grad():
        for layer in range(model.num_layers):
            out = torch.empty(n, model.dims[layer + 1])
            for lo in range(0, n, chunk):
                mb = one_hop.sample(np.arange(lo, min(n, lo + chunk)), 0)
                out[lo : lo + chunk] = model.forward_layer(
                    layer, mb.blocks[0], hs[-1][mb.input_nodes]
                )
            hs.append(out)
    return hs


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_shapes_and_gradients(graph, name, norm):
    indptr, indices, x, y = graph
    mb = NeighborSampler(indptr, indices, [4, 3, 2], seed=1).sample(np.arange(0, 300, 7), 2)
    model = build_model(name, 8, 16, 3, 3, norm=norm, dropout=0.2)
    out, hidden = model(mb, x[mb.input_nodes], return_hidden=True)
    assert out.shape == (mb.num_seeds, 3)
    assert [h.shape for h in hidden] == [(mb.blocks[i].num_dst, 16) for i in range(2)]
    for h in hidden:
        h.retain_grad()
    F.cross_entropy(out, y[mb.seeds]).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    if name != "mlp":
        assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hidden)


def train_eval(model, mb, x, y, train_mask, steps=80):
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xi = x[mb.input_nodes]
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        out = model(mb, xi)
        F.cross_entropy(out[train_mask], y[train_mask]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(mb, xi).argmax(1)
    return (pred[~train_mask] == y[~train_mask]).float().mean().item()


@pytest.mark.parametrize("name", GNNS)
def test_gnns_learn_planted_task(graph, name):
    torch.manual_seed(0)
    indptr, indices, x, y = graph
    mb = full_batch(indptr, indices, 2)
    train = torch.arange(300) % 2 == 0
    acc = train_eval(build_model(name, 8, 32, 3, 2, dropout=0.1), mb, x, y, train)
    torch.manual_seed(0)
    mlp_acc = train_eval(build_model("mlp", 8, 32, 3, 2, dropout=0.1), mb, x, y, train)
    # The class shows in the neighbourhood, barely in the node's own features.
    assert acc > 0.9, acc
    assert acc > mlp_acc + 0.15, (acc, mlp_acc)


def test_mlp_learns_from_own_features():
    torch.manual_seed(0)
    indptr, indices, x, y = planted(signal=2.0, seed=1)
    mb = NeighborSampler(indptr, indices, [0, 0]).sample(np.arange(300), 0)
    assert mb.input_nodes.numel() == 300
    acc = train_eval(build_model("mlp", 8, 32, 3, 2), mb, x, y, torch.arange(300) % 2 == 0)
    assert acc > 0.9, acc


@pytest.mark.parametrize("name", ALL)
def test_eval_is_deterministic_and_train_dropout_is_not(graph, name):
    indptr, indices, x, _ = graph
    mb = full_batch(indptr, indices, 2, np.arange(50))
    model = build_model(name, 8, 16, 3, 2, dropout=0.5, input_dropout=0.2)
    xi = x[mb.input_nodes]
    model.eval()
    assert torch.equal(model(mb, xi), model(mb, xi))
    model.train()
    assert not torch.equal(model(mb, xi), model(mb, xi))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_layerwise_equals_batch_forward(graph, name, norm):
    torch.manual_seed(1)
    indptr, indices, x, _ = graph
    model = build_model(name, 8, 16, 3, 3, norm=norm, dropout=0.5)
    warm = full_batch(indptr, indices, 3, np.arange(0, 300, 3))
    model(warm, x[warm.input_nodes])  # one train-mode pass: non-trivial BatchNorm running stats
    model.eval()
    seeds = np.array([5, 0, 77, 299, 150])
    mb = full_batch(indptr, indices, 3, seeds)
    with torch.no_grad():
        want = model(mb, x[mb.input_nodes])
    hs = layerwise(model, indptr, indices, x)
    torch.testing.assert_close(hs[-1][torch.from_numpy(seeds)], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", GNNS)
def test_cached_embeddings_injected(graph, name):
    """Pruned nodes fed their exact h^(l) give the same logits as no pruning."""
    torch.manual_seed(2)
    indptr, indices, x, _ = graph
    model = build_model(name, 8, 16, 3, 3).eval()
    hs = layerwise(model, indptr, indices, x)
    cached = {2: set(range(0, 300, 3)), 1: set(range(1, 300, 4))}
    seeds = np.array([3, 10, 11, 200])

    def prune(layer, ids):
        return np.isin(ids, list(cached[layer]))

    mb = NeighborSampler(indptr, indices, [-1, -1, -1], prune=prune).sample(seeds, 0)
    full = full_batch(indptr, indices, 3, seeds)
    assert mb.blocks[1].has_cached and mb.blocks[2].has_cached
    assert mb.input_nodes.numel() < full.input_nodes.numel()
    for layer in (1, 2):
        b = mb.blocks[layer]
        b.cached_emb = hs[layer][b.cached_ids]
    with torch.no_grad():
        got = model(mb, x[mb.input_nodes])
        want = model(full, x[full.input_nodes])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    _, hidden = model(mb, x[mb.input_nodes], return_hidden=True)
    for layer in (1, 2):
        ids = mb.layer_nodes[layer - 1][: mb.blocks[layer - 1].num_dst]
        torch.testing.assert_close(hidden[layer - 1], hs[layer][ids], rtol=1e-4, atol=1e-5)


def undirected_simple(n=40, m=120, seed=3):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = a != b
    pairs = np.unique(np.sort(np.stack([a[keep], b[keep]], 1), 1), axis=0)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((src, dst))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src[order], torch.from_numpy(np.stack([src, dst]))


def test_gcn_sym_matches_gcnconv_on_whole_graph():
    indptr, indices, edge_index = undirected_simple()
    x = torch.randn(40, 6)
    mb = full_batch(indptr, indices, 1)
    block = mb.blocks[0]
    assert block.num_src == block.num_dst == 40 and torch.equal(mb.input_nodes, torch.arange(40))
    ours = BlockGCNConv(6, 5, aggr_norm="sym")
    ref = GCNConv(6, 5)
    with torch.no_grad():
        ref.lin.weight.copy_(ours.lin.weight)
        ours.bias.copy_(torch.randn(5))
        ref.bias.copy_(ours.bias)
    torch.testing.assert_close(
        ours((x, x), block.edge_index), ref(x, edge_index), rtol=1e-5, atol=1e-6
    )


def test_gcn_mean_normalisation():
    # Destination 0 has sampled sources 1 and 2: mean over {0, 1, 2}.
    conv = BlockGCNConv(2, 2, aggr_norm="mean", bias=False)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(2))
    block = Block(num_src=3, num_dst=2, edge_index=torch.tensor([[1, 2], [0, 0]]))
    x = torch.tensor([[3.0, 0.0], [6.0, 3.0], [0.0, 6.0]])
    out = conv((x, x[:2]), block.edge_index)
    torch.testing.assert_close(out, torch.tensor([[3.0, 3.0], [6.0, 3.0]]))


def test_registry_and_validation():
    assert set(MODELS) == {"sage", "gcn", "gat", "mlp"}
    m = build_model("gat", 8, 16, 3, 2, heads=4)
    assert m.dims == [8, 16, 3] and m.num_layers == 2
    with pytest.raises(ValueError, match="'sage'"):
        build_model("gin", 8, 16, 3, 2)
    with pytest.raises(ValueError, match="heads"):
        build_model("gat", 8, 16, 3, 2, heads=3)
    with pytest.raises(ValueError, match="norm"):
        build_model("sage", 8, 16, 3, 2, norm="group")
    with pytest.raises(ValueError, match="invalid options"):
        build_model("sage", 8, 16, 3, 2, bogus=1)
    with pytest.raises(ValueError, match="num_layers"):
        build_model("mlp", 8, 16, 3, 0)
    with pytest.raises(ValueError, match="aggr_norm"):
        build_model("gcn", 8, 16, 3, 2, aggr_norm="left")
    mb = NeighborSampler(*planted()[:2], [3]).sample(np.arange(4), 0)
    with pytest.raises(ValueError, match="blocks"):
        m(mb, torch.randn(mb.input_nodes.numel(), 8))
    with pytest.raises(ValueError, match="x has shape"):
        build_model("sage", 8, 16, 3, 1)(mb, torch.randn(2, 8))


@pytest.mark.parametrize("name", GNNS)
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_everything_cached_below_the_top_layer(graph, name, norm):
    """All of the top block's sources cached: layer 0 runs on an empty block."""
    indptr, indices, x, y = graph
    model = build_model(name, 8, 16, 3, 2, norm=norm)
    mb = NeighborSampler(indptr, indices, [3, 3]).sample(
        np.array([4, 9]), 0, prune=lambda layer, ids: np.ones(ids.shape, bool)
    )
    assert mb.blocks[0].num_src == 0 and mb.blocks[1].cached_pos.numel() == mb.blocks[1].num_src
    mb.blocks[1].cached_emb = torch.randn(mb.blocks[1].num_src, 16, requires_grad=True)
    out = model(mb, x[mb.input_nodes])
    F.cross_entropy(out, y[mb.seeds]).backward()
    assert out.shape == (2, 3) and mb.blocks[1].cached_emb.grad.abs().sum() > 0
