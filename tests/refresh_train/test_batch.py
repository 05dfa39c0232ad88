"""Tests of refresh_train/batch.py."""

from __future__ import annotations

import pytest
import torch

from refresh_train.batch import Block, MiniBatch


def pruned_block() -> Block:
    # 5 sources: positions 1 and 3 cached, 0, 2, 4 computed.
    return Block(
        num_src=5,
        num_dst=2,
        edge_index=torch.tensor([[2, 3, 4, 1], [0, 0, 1, 1]]),
        computed_pos=torch.tensor([0, 2, 4]),
        cached_pos=torch.tensor([1, 3]),
        cached_ids=torch.tensor([70, 90]),
        cached_rows=torch.tensor([7, 9]),
    )


def test_assemble_scatters_rows_and_passes_gradients():
    b = pruned_block()
    hc = torch.tensor([[0.0, 0.5], [2.0, 2.5], [4.0, 4.5]], requires_grad=True)
    hk = torch.tensor([[1.0, 1.5], [3.0, 3.5]], requires_grad=True)
    h = b.assemble(hc, hk)
    assert torch.equal(h[:, 0], torch.arange(5.0))
    (h * torch.arange(5.0).unsqueeze(1)).sum().backward()
    assert torch.equal(hc.grad[:, 0], torch.tensor([0.0, 2.0, 4.0]))
    assert torch.equal(hk.grad[:, 1], torch.tensor([1.0, 3.0]))
    b.cached_emb = hk.detach()
    assert torch.equal(b.assemble(hc), h)


def test_assemble_without_pruning_is_identity_and_checks_shapes():
    b = Block(num_src=3, num_dst=1, edge_index=torch.tensor([[1, 2], [0, 0]]))
    h = torch.randn(3, 4)
    assert b.assemble(h) is h and b.num_computed == 3 and not b.has_cached
    with pytest.raises(ValueError, match="num_computed=3"):
        b.assemble(torch.randn(2, 4))
    p = pruned_block()
    with pytest.raises(ValueError, match="cached embeddings"):
        p.assemble(torch.randn(3, 4))
    with pytest.raises(ValueError, match="h_cached has shape"):
        p.assemble(torch.randn(3, 4), torch.randn(2, 5))


def make_batch() -> MiniBatch:
    top = Block(num_src=4, num_dst=2, edge_index=torch.tensor([[2, 3], [0, 1]]))
    ln = [torch.tensor([10, 11, 12, 13, 14, 90, 70]), torch.tensor([10, 11, 12, 13])]
    bottom = Block(num_src=7, num_dst=4, edge_index=torch.tensor([[4, 5, 6], [0, 1, 3]]))
    return MiniBatch(
        seeds=torch.tensor([10, 11]),
        blocks=[bottom, top],
        input_nodes=ln[0],
        layer_nodes=ln,
        features=torch.randn(7, 3),
        labels=torch.tensor([1, 0]),
    )


def test_to_moves_model_tensors_and_keeps_ids_on_host():
    mb = make_batch()
    mb.blocks[1] = pruned_block()
    moved = mb.to("meta")
    assert moved.features.device.type == "meta" and moved.labels.device.type == "meta"
    assert all(b.edge_index.device.type == "meta" for b in moved.blocks)
    assert moved.blocks[1].cached_pos.device.type == "meta"
    assert moved.seeds.device.type == "cpu" and moved.input_nodes.device.type == "cpu"
    assert moved.blocks[1].cached_ids.device.type == "cpu"
    assert mb.features.device.type == "cpu", "the original is unchanged"
    with_ids = mb.to("meta", ids=True)
    assert with_ids.seeds.device.type == "meta"
    assert all(t.device.type == "meta" for t in with_ids.layer_nodes)
    assert with_ids.input_nodes is with_ids.layer_nodes[0]
    assert with_ids.blocks[1].cached_rows.device.type == "meta"
    assert mb.num_layers == 2 and mb.num_seeds == 2 and mb.blocks[0].num_edges == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory():
    mb = make_batch().pin_memory()
    assert mb.features.is_pinned() and all(b.edge_index.is_pinned() for b in mb.blocks)
    dev = mb.to("cuda", non_blocking=True)
    assert dev.features.is_cuda
