"""MLP baseline: the same layer interface, ignoring the graph."""

from __future__ import annotations

from torch import Tensor, nn

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._sparse import linear

__all__ = ["MLP"]


class MLP(BlockGNN):
    """Per-node MLP with ``num_layers`` linear layers.

    Each layer keeps only a block's destination rows (``h[:num_dst]``), so it
    runs on the same batches as the GNNs and returns one row per seed. Sample it
    with fanouts of ``0`` to fetch only the seeds' features.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, **opts) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        self.lins = nn.ModuleList(
            nn.Linear(self.dims[i], self.dims[i + 1]) for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        lin = self.lins[layer]
        return linear(h[: block.num_dst], lin.weight, lin.bias)
