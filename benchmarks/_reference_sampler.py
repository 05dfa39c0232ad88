"""Plain-torch uniform neighbour sampler: the stand-in for PyG's ``NeighborLoader``.

``torch_geometric.loader.NeighborLoader`` samples through pyg-lib or
torch-sparse; neither installs here (pyg-lib is not on PyPI, torch-sparse's
sdist fails to build), so it fails on its first batch. This module re-does
what it does, in torch only — no Numba, no caches — so the benchmarks have the
baseline a PyG user would run:

* the topology lives in RAM as torch tensors, like the CSC that
  ``NeighborLoader`` builds from ``edge_index`` (the memmap is copied once);
* per hop, each frontier node takes all neighbours if it has at most
  ``fanout``, else draws ``fanout`` positions without replacement with Floyd's
  algorithm, the method torch-sparse's ``sample_adj`` uses — here vectorised
  over the frontier, one torch step per draw;
* sampled nodes are relabelled in order of first appearance with the frontier
  first (``torch.unique`` + first-occurrence ranks), as PyG's samplers do.

It returns the same :class:`~refresh_train.batch.MiniBatch` structure as
:class:`~refresh_train.sampler.NeighborSampler` (no pruning hook) and draws
from a ``torch.Generator`` seeded per batch; its samples are valid uniform
neighbourhoods but not the same draws as the Numba sampler's.

One deliberate difference from ``NeighborLoader``: PyG expands each node once,
at the hop where it is first reached, and runs every layer on that one
subgraph; here, as in the message-flow-graph blocks this project trains on,
every block re-samples all of its destinations (DGL's convention). Both
samplers compared in the benchmarks therefore do the same work, which is
somewhat more than ``NeighborLoader`` does for the same fanouts (on the
benchmark graphs the seeds and first-hop nodes are re-expanded with the
smaller fanouts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from refresh_train.batch import Block, MiniBatch
from refresh_train.sampler import check_fanouts, derive_seed

__all__ = ["ReferenceNeighborSampler"]


class ReferenceNeighborSampler:
    """Torch-only uniform neighbour sampler (see the module docstring).

    Parameters
    ----------
    indptr, indices : array-like of int
        CSC topology; copied into RAM as int64 torch tensors.
    fanouts : sequence of int
        From the seeds outward; ``-1`` = all neighbours.
    seed : int
        Base seed, combined with each call's ``batch_seed``.
    """

    def __init__(self, indptr, indices, fanouts: Sequence[int], seed: int = 0) -> None:
        self.indptr = torch.from_numpy(np.array(indptr, dtype=np.int64))
        self.indices = torch.from_numpy(np.array(indices, dtype=np.int64))
        self.fanouts = check_fanouts(fanouts)
        self.seed = int(seed)
        self.num_nodes = self.indptr.numel() - 1

    def sample(self, seeds, batch_seed: int = 0) -> MiniBatch:
        """Sample the multi-layer neighbourhood of distinct ``seeds``."""
        seeds = torch.as_tensor(np.asarray(seeds), dtype=torch.int64)
        if seeds.numel() and (int(seeds.min()) < 0 or int(seeds.max()) >= self.num_nodes):
            raise ValueError(f"seeds must lie in [0, {self.num_nodes})")
        if torch.unique(seeds).numel() != seeds.numel():
            raise ValueError("seeds must be distinct")
        gen = torch.Generator().manual_seed(derive_seed(self.seed, int(batch_seed)))
        L = len(self.fanouts)
        blocks: list[Block | None] = [None] * L
        layer_nodes: list[torch.Tensor | None] = [None] * L
        dst = seeds
        for layer in range(L - 1, -1, -1):
            src, edge_index = self._sample_layer(dst, self.fanouts[L - 1 - layer], gen)
            blocks[layer] = Block(num_src=src.numel(), num_dst=dst.numel(), edge_index=edge_index)
            layer_nodes[layer] = src
            dst = src
        return MiniBatch(
            seeds=seeds,
            blocks=blocks,
            input_nodes=layer_nodes[0],
            layer_nodes=layer_nodes,
            batch_seed=int(batch_seed),
        )

    def _sample_layer(self, dst: torch.Tensor, fanout: int, gen: torch.Generator):
        n = dst.numel()
        start = self.indptr[dst]
        deg = self.indptr[dst + 1] - start
        take_all = deg <= fanout if fanout >= 0 else torch.ones_like(deg, dtype=torch.bool)
        k = torch.where(take_all, deg, torch.full_like(deg, max(fanout, 0)))
        owner = torch.repeat_interleave(torch.arange(n), k)
        seg_start = torch.cumsum(k, 0) - k
        pos = torch.arange(owner.numel()) - seg_start[owner]
        picked = torch.nonzero(~take_all).flatten()
        if picked.numel() and fanout > 0:
            d = deg[picked]
            chosen = torch.empty((picked.numel(), fanout), dtype=torch.int64)
            for m in range(fanout):
                j = d - fanout + m
                t = (
                    torch.rand(picked.numel(), generator=gen, dtype=torch.float64) * (j + 1)
                ).long()
                t = torch.minimum(t, j)
                if m:
                    seen = (chosen[:, :m] == t.unsqueeze(1)).any(1)
                    t = torch.where(seen, j, t)
                chosen[:, m] = t
            pos[~take_all[owner]] = chosen.flatten()
        nbr = self.indices[start[owner] + pos]
        every = torch.cat([dst, nbr])
        uniq, inv = torch.unique(every, return_inverse=True)
        first = torch.full((uniq.numel(),), every.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inv, torch.arange(every.numel()), reduce="amin")
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        local = rank[inv]
        edge_index = torch.stack([local[n:], owner])
        return uniq[order], edge_index
