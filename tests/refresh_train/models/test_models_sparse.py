"""Tests of refresh_train/models/_sparse.py: the sparse layers equal edge-wise message passing."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _params import DEVICES

from refresh_train.batch import Block
from refresh_train.models import GCN, _sparse, build_model
from refresh_train.sampler import NeighborSampler

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
MODELS = [
    pytest.param("sage", {}, id="sage"),
    pytest.param("gcn", {"aggr_norm": "mean"}, id="gcn-mean"),
    pytest.param("gcn", {"aggr_norm": "sym"}, id="gcn-sym"),
    pytest.param("gat", {"heads": 2}, id="gat"),
]
D_IN = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(autouse=True)
def small_cast_chunks(monkeypatch):
    # A few rows or columns per cast chunk, so the chunk loops run many times.
    monkeypatch.setattr(_sparse, "CAST_CHUNK_BYTES", 7 * 4 * 16)


def corner_graph(n=60, seed=0):
    """CSC with isolated nodes, self-loops, parallel edges and one high-degree node."""
    rng = np.random.default_rng(seed)
    dst = rng.integers(0, n, 4 * n)
    src = rng.integers(0, n, 4 * n)
    extra_dst = [1, 1, 1, 2, 2, 3] + [4] * 30
    extra_src = [1, 5, 5, 2, 7, 7] + list(rng.integers(0, n, 30))
    dst = np.concatenate([dst, extra_dst])
    src = np.concatenate([src, extra_src])
    keep = ~np.isin(dst, [0, 9, 17])  # no in-edges: isolated destinations
    dst, src = dst[keep], src[keep]
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src[order].astype(np.int64)


def corner_batch(fanouts=(-1, 3)):
    indptr, indices = corner_graph()
    seeds = np.array([0, 1, 2, 3, 4, 9, 30])
    mb = NeighborSampler(indptr, indices, list(fanouts), seed=5).sample(seeds, 1)
    # The corner cases reach the blocks the layers run on.
    for b in mb.blocks:
        src, dst = b.edge_index
        assert (torch.bincount(dst, minlength=b.num_dst) == 0).any()
    src, dst = mb.blocks[-1].edge_index
    assert (src == dst).any()
    pairs = dst * mb.blocks[-1].num_src + src
    assert pairs.unique().numel() < pairs.numel()
    return mb


def _gcn_edgewise(conv, block, h):
    """The GCN layer as edge-wise gather/scatter (the pre-sparse formulation)."""
    src, dst = block.edge_index
    nd = block.num_dst
    deg_dst = torch.bincount(dst, minlength=nd).float() + 1.0
    if conv.aggr_norm == "mean":
        w, w_self = deg_dst.reciprocal()[dst], deg_dst.reciprocal()
    else:
        deg_src = torch.bincount(src, minlength=block.num_src).float()
        deg_src[:nd] += 1.0
        w = (deg_src[src] * deg_dst[dst]).rsqrt()
        w_self = (deg_src[:nd] * deg_dst).rsqrt()
    hw = F.linear(h, conv.lin.weight)
    out = hw.new_zeros((nd, hw.shape[1])).index_add(0, dst, w.unsqueeze(1) * hw[src])
    return out + w_self.unsqueeze(1) * hw[:nd] + conv.bias


def edgewise(model):
    """A copy of ``model`` whose layers run PyG's edge-wise message passing."""

    def conv(self, layer, block, h):
        h = h.float()
        c = self.convs[layer]
        if isinstance(self, GCN):
            return _gcn_edgewise(c, block, h)
        return c((h, h[: block.num_dst]), block.edge_index)  # SAGEConv / GATConv

    ref = copy.deepcopy(model)
    ref.conv = types.MethodType(conv, ref)
    return ref


def run(model, mb, x, y):
    out, hidden = model(mb, x, return_hidden=True)
    for h in hidden:
        h.retain_grad()
    F.cross_entropy(out, y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return out, grads, [h.grad for h in hidden]


def assert_same_run(got, want, dtype):
    tol = {"rtol": 1e-4, "atol": 1e-5}
    out, grads, hgrads = got
    out_r, grads_r, hgrads_r = want
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, out_r, **tol)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_r[name], **tol, msg=name)
    for g, g_r in zip(hgrads, hgrads_r, strict=True):
        torch.testing.assert_close(g, g_r, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "opts"), MODELS)
def test_sparse_layers_equal_edgewise_message_passing(name, opts, dtype, device):
    torch.manual_seed(0)
    mb = corner_batch().to(device)
    x = torch.randn(mb.blocks[0].num_src, D_IN, device=device).to(dtype)
    y = torch.randint(0, 5, (mb.num_seeds,), device=device)
    model = build_model(name, D_IN, 16, 5, 2, dropout=0.0, norm="batch", **opts).to(device)
    for p in model.parameters():  # non-zero biases and attention everywhere
        torch.nn.init.normal_(p, std=0.3)
    ref = edgewise(model)
    assert_same_run(run(model, mb, x, y), run(ref, mb, x.float(), y), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "opts"), [p for p in MODELS if p.values[0] != "gat"]
)  # GAT always projects first
def test_project_first_equals_aggregate_first(name, opts, dtype, device):
    torch.manual_seed(1)
    mb = corner_batch().to(device)
    x = torch.randn(mb.blocks[0].num_src, D_IN, device=device).to(dtype)
    y = torch.randint(0, 5, (mb.num_seeds,), device=device)
    first = build_model(name, D_IN, 8, 5, 2, dropout=0.0, project_first=True, **opts)
    then = build_model(name, D_IN, 8, 5, 2, dropout=0.0, project_first=False, **opts)
    then.load_state_dict(first.state_dict())
    got = run(first.to(device), mb, x, y)
    want = run(then.to(device), mb, x, y)
    assert_same_run(got, want, dtype)


@pytest.mark.parametrize(
    ("name", "opts"), [p for p in MODELS if p.id != "gcn-sym"]
)  # sym's source degrees are block-local: layer-wise differs by design
def test_float16_features_layerwise_and_pruned(name, opts):
    """forward_layer on one-hop blocks (evaluate.py's layer-wise inference) and
    pruned blocks fed exact h^(1) both take float16 features as they are."""
    torch.manual_seed(3)
    indptr, indices = corner_graph()
    n = indptr.shape[0] - 1
    x = torch.randn(n, D_IN).half()
    model = build_model(name, D_IN, 16, 5, 2, **opts).eval()
    one_hop = NeighborSampler(indptr, indices, [-1])
    hs = [x]
    with torch.no_grad():
        for layer in range(2):
            out = torch.empty(n, model.dims[layer + 1])
            for lo in range(0, n, 16):
                mb = one_hop.sample(np.arange(lo, min(n, lo + 16)), 0)
                out[lo : lo + 16] = model.forward_layer(layer, mb.blocks[0], hs[-1][mb.input_nodes])
            hs.append(out)
    seeds = np.array([0, 1, 4, 9, 33])
    full = NeighborSampler(indptr, indices, [-1, -1]).sample(seeds, 0)
    pruned = NeighborSampler(indptr, indices, [-1, -1]).sample(
        seeds, 0, prune=lambda layer, ids: ids % 3 == 0
    )
    assert pruned.blocks[1].has_cached
    pruned.blocks[1].cached_emb = hs[1][pruned.blocks[1].cached_ids]
    with torch.no_grad():
        want = model(full, x[full.input_nodes].float())
        got_pruned = model(pruned, x[pruned.input_nodes])
    torch.testing.assert_close(hs[-1][torch.from_numpy(seeds)], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_pruned, want, rtol=1e-4, atol=1e-5)


def test_cost_model_picks_projection_on_narrowing_dense_blocks():
    # Whole-graph block: every source is a destination; 768 -> 256 narrows.
    assert _sparse.project_first(1000, 1000, 20_000, 768, 256)
    # Same block widening: aggregate first.
    assert not _sparse.project_first(1000, 1000, 20_000, 128, 256)
    # A sampled block (fanout 5): five sources per destination outweigh 768/256.
    assert not _sparse.project_first(5000, 1000, 5000, 768, 256)


def test_adjacency_is_built_once_per_block():
    mb = corner_batch()
    block = mb.blocks[1]
    adj = _sparse.block_adjacency(block, "mean")
    assert _sparse.block_adjacency(block, "mean") is adj
    model = build_model("sage", D_IN, 8, 5, 2)
    model(mb, torch.randn(mb.blocks[0].num_src, D_IN))
    assert _sparse.block_adjacency(block, "mean") is adj
    # Rows sum to 1 except for destinations without in-edges; parallel edges merged.
    dense = adj.to_dense()
    deg = torch.bincount(block.edge_index[1], minlength=block.num_dst)
    torch.testing.assert_close(dense.sum(1), (deg > 0).float())
    assert adj.values().numel() < block.num_edges
    block.edge_index = block.edge_index[:, :3].clone()
    assert _sparse.block_adjacency(block, "mean") is not adj
    moved = block.to("cpu")
    assert _sparse._CACHE_ATTR not in moved.__dict__


@pytest.mark.parametrize("kind", _sparse.ADJACENCY_KINDS)
def test_adjacency_on_empty_blocks(kind):
    e = torch.empty((2, 0), dtype=torch.int64)
    for ns, nd in ((0, 0), (4, 2)):
        block = Block(num_src=ns, num_dst=nd, edge_index=e)
        assert _sparse.block_adjacency(block, kind).shape == (nd, ns)
        assert _sparse.block_adjacency(block, kind, transpose=True).shape == (ns, nd)
        x = torch.randn(ns, 3, requires_grad=True)
        w = torch.randn(2, 3, requires_grad=True)
        for op in (_sparse.aggregate_linear, _sparse.project_linear):
            out = op(block, kind, x, w)
            out.sum().backward()
            assert out.shape == (nd, 2) and x.grad.shape == (ns, 3) and w.grad.shape == (2, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_float16_linear_matches_float32(device):
    torch.manual_seed(2)
    x = torch.randn(50, D_IN, device=device).half()
    w = torch.randn(7, D_IN, device=device, requires_grad=True)
    b = torch.randn(7, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = _sparse.linear(x, w, b)
    # The float16 input itself is what the backward pass keeps, not a float32 copy.
    assert any(t is x for t in saved) and not any(
        t.shape == x.shape and t.dtype == torch.float32 for t in saved
    )
    g = torch.randn_like(out)
    gw, gb = torch.autograd.grad(out, (w, b), g)
    ref = F.linear(x.float(), w, b)
    gw_r, gb_r = torch.autograd.grad(ref, (w, b), g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gw, gw_r)
    torch.testing.assert_close(gb, gb_r)
