"""Tests of the relational models (refresh_train/models/rsage.py, rgat.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refresh_train.batch import Block, MiniBatch
from refresh_train.models import RELATIONAL_MODELS, build_model

R = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def tiny_block(seed: int = 0, num_src: int = 9, num_dst: int = 4, edges: int = 20) -> Block:
    """Random typed edges, relation 2 absent, a repeated edge, a destination without edges."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_src, (edges,), generator=g)
    dst = torch.randint(0, num_dst - 1, (edges,), generator=g)  # the last has no in-edges
    et = torch.randint(0, 2, (edges,), generator=g)
    src, dst, et = torch.cat([src, src[:1]]), torch.cat([dst, dst[:1]]), torch.cat([et, et[:1]])
    order = torch.argsort(dst, stable=True)
    return Block(
        num_src, num_dst, torch.stack([src[order], dst[order]]), edge_type=et[order].to(torch.int8)
    )


def ref_rsage_layer(model, layer, block, h):
    """Brute force: per destination, per relation, a Python mean over its edges."""
    nd = block.num_dst
    root = model.roots[layer]
    out = h[:nd] @ root.weight.T + root.bias
    src, dst = block.edge_index
    for r in range(model.num_relations):
        lin = model.convs[layer][r].lin_l
        agg = torch.zeros(nd, h.shape[1])
        for v in range(nd):
            m = (dst == v) & (block.edge_type.long() == r)
            if m.any():
                agg[v] = h[src[m]].mean(0)
        out = out + agg @ lin.weight.T + lin.bias
    return out


def ref_rgat_layer(model, layer, block, h):
    """Brute force: per destination, per relation, a softmax over its edges, per head."""
    nd = block.num_dst
    root = model.roots[layer]
    out = h[:nd] @ root.weight.T + root.bias
    src, dst = block.edge_index
    for r in range(model.num_relations):
        conv = model.convs[layer][r]
        heads, c = conv.heads, conv.out_channels
        xs = (h @ conv.lin_src.weight.T).view(-1, heads, c)
        xd = (h[:nd] @ conv.lin_dst.weight.T).view(-1, heads, c)
        y = torch.zeros(nd, heads, c)
        for v in range(nd):
            m = (dst == v) & (block.edge_type.long() == r)
            if not m.any():
                continue
            u = src[m]
            logit = (xs[u] * conv.att_src).sum(-1) + (xd[v] * conv.att_dst).sum(-1)
            alpha = torch.softmax(F.leaky_relu(logit, conv.negative_slope), dim=0)
            y[v] = (alpha.unsqueeze(-1) * xs[u]).sum(0)
        y = y.reshape(nd, heads * c) if conv.concat else y.mean(1)
        out = out + y + conv.bias
    return out


REFS = {"rsage": ref_rsage_layer, "rgat": ref_rgat_layer}


@pytest.mark.parametrize("name", sorted(RELATIONAL_MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_layer_matches_brute_force_per_relation(name, dtype):
    torch.manual_seed(0)
    opts = {"heads": 2} if name == "rgat" else {}
    model = build_model(name, 6, 8, 3, 2, num_relations=R, dropout=0.0, **opts).eval()
    block = tiny_block()
    h = torch.randn(block.num_src, 6).to(dtype)
    for layer, width in ((0, 6), (1, 8)):
        x = h if layer == 0 else torch.randn(block.num_src, width)
        with torch.no_grad():
            got = model.conv(layer, block, x)
            want = REFS[name](model, layer, block, x.float())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(RELATIONAL_MODELS))
def test_forward_with_cached_embeddings_and_backward(name):
    torch.manual_seed(1)
    opts = {"heads": 2} if name == "rgat" else {}
    model = build_model(name, 6, 8, 3, 2, num_relations=R, dropout=0.0, **opts)
    b0 = tiny_block(1, num_src=12, num_dst=9, edges=30)
    b1 = tiny_block(2, num_src=9, num_dst=4, edges=15)
    # Sources 5 and 7 of block 1 arrive as cached h^(1); block 0 computes the rest.
    b1.cached_pos = torch.tensor([5, 7])
    b1.computed_pos = torch.tensor([0, 1, 2, 3, 4, 6, 8])
    b1.cached_emb = torch.randn(2, 8)
    b0 = Block(
        12, 7, b0.edge_index[:, b0.edge_index[1] < 7], edge_type=b0.edge_type[b0.edge_index[1] < 7]
    )
    mb = MiniBatch(
        seeds=torch.arange(4),
        blocks=[b0, b1],
        input_nodes=torch.arange(12),
        layer_nodes=[torch.arange(12), torch.arange(9)],
    )
    x = torch.randn(12, 6)
    logits, hidden = model(mb, x, return_hidden=True)
    h1 = b1.assemble(hidden[0])
    want = model.forward_layer(1, b1, h1)
    torch.testing.assert_close(logits, want)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.roots.parameters())


def test_needs_edge_types_and_relations():
    model = build_model("rsage", 6, 8, 3, 1, num_relations=R)
    plain = Block(3, 2, torch.tensor([[1, 2], [0, 1]]))
    with pytest.raises(ValueError, match="edge_type"):
        model.conv(0, plain, torch.randn(3, 6))
    with pytest.raises(ValueError, match="num_relations"):
        build_model("rgat", 6, 8, 3, 1)
    # Per-relation weights: R SAGEConvs (6 -> 3, with bias) plus the root Linear.
    per_layer = (R + 1) * (6 * 3 + 3)
    assert sum(p.numel() for p in model.parameters()) == per_layer
