"""GraphSAGE with mean aggregation over sampled blocks (PyG ``SAGEConv``)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN

__all__ = ["GraphSAGE"]


class GraphSAGE(BlockGNN):
    """GraphSAGE: ``h_v' = W_root h_v + W_neigh mean_{u in N(v)} h_u`` per layer.

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    aggr : str
        PyG aggregation of the neighbours (default ``"mean"``).
    """

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, num_layers: int, *, aggr: str = "mean", **opts
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        self.convs = nn.ModuleList(
            SAGEConv((self.dims[i], self.dims[i]), self.dims[i + 1], aggr=aggr)
            for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        return self.convs[layer]((h, h[: block.num_dst]), block.edge_index)
