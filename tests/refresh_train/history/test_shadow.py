"""ShadowBlock: a full block that keeps one effect of each would-be hit.

Checked against what each kind promises: ``values`` puts the served rows in
the forward pass and passes the gradient straight to the computed rows;
``gradients`` keeps the computed rows and stops their gradient.
"""

from __future__ import annotations

import pytest
import torch

from refresh_train.batch import Block
from refresh_train.history.shadow import SHADOW_KINDS, ShadowBlock


def _block(num_src: int = 6) -> Block:
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 1, 0]])
    return Block(num_src=num_src, num_dst=2, edge_index=edge_index)


def _run(kind: str):
    torch.manual_seed(0)
    h = torch.randn(6, 3, requires_grad=True)
    pos = torch.tensor([4, 1])
    emb = torch.randn(2, 3)
    block = ShadowBlock.of(_block(), kind, pos, emb)
    out = block.assemble(h)
    upstream = torch.randn(6, 3)
    (out * upstream).sum().backward()
    return h, pos, emb, out, upstream


def test_values_serve_the_cached_rows_and_pass_the_gradient_straight_through():
    h, pos, emb, out, upstream = _run("values")
    assert torch.equal(out[pos], emb)
    others = torch.tensor([0, 2, 3, 5])
    assert torch.equal(out[others], h.detach()[others])
    assert torch.equal(h.grad, upstream)  # every row, the served ones included


def test_gradients_keep_the_computed_rows_and_stop_their_gradient():
    h, pos, _, out, upstream = _run("gradients")
    assert torch.equal(out, h.detach())
    want = upstream.clone()
    want[pos] = 0
    assert torch.equal(h.grad, want)


def test_a_shadow_block_moves_its_rows_and_refuses_a_pruned_block():
    block = ShadowBlock.of(_block(), "values", torch.tensor([2]), torch.ones(1, 3))
    moved = block.to("cpu")
    assert isinstance(moved, ShadowBlock) and moved.shadow_kind == "values"
    assert torch.equal(moved.shadow_pos, block.shadow_pos)
    assert torch.equal(moved.shadow_emb, block.shadow_emb)
    pruned = _block()
    pruned.cached_pos = torch.tensor([5])
    pruned.computed_pos = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="without pruning"):
        ShadowBlock.of(pruned, "values", torch.tensor([2]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="shadow kind"):
        ShadowBlock.of(_block(), "both", torch.tensor([2]), torch.ones(1, 3))
    assert SHADOW_KINDS == ("values", "gradients")


def test_nothing_shadowed_is_the_plain_block():
    h = torch.randn(6, 3)
    for kind in SHADOW_KINDS:
        block = ShadowBlock.of(_block(), kind, torch.zeros(0, dtype=torch.int64), torch.ones(0, 3))
        assert block.assemble(h) is h
