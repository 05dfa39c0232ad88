"""GCN over sampled blocks.

PyG's ``GCNConv`` normalises with the degrees of one homogeneous graph and
rejects bipartite input, so this module implements the GCN layer on a block
directly: the destination's own row is the self-loop (it is source row ``i``
thanks to the destination prefix), and the block's edges carry the weights.

``aggr_norm="mean"`` (default) is the row-normalised GCN
``h_v' = W (h_v + sum_{u in N_s(v)} h_u) / (|N_s(v)| + 1) + b`` over the sampled
neighbours ``N_s(v)`` — the "GCN aggregator" of GraphSAGE. It depends only on
each destination's own sampled neighbourhood, so exact layer-wise inference
with full neighbourhoods equals ``D~^-1 A~`` propagation on the whole graph.

``aggr_norm="sym"`` is Kipf & Welling's ``D~^-1/2 A~ D~^-1/2`` with degrees
counted inside the block (self-loop included): in-degree for destinations,
out-degree for sources, as DGL's ``GraphConv(norm="both")`` does on blocks.
On a block that holds the whole graph (every node a destination, fanout -1,
symmetric edges) it equals ``GCNConv``; on sampled blocks source degrees are
block-local, so layer-wise inference in chunks differs from a full-graph pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN

__all__ = ["GCN", "BlockGCNConv", "AGGR_NORMS"]

AGGR_NORMS = ("mean", "sym")


class BlockGCNConv(MessagePassing):
    """GCN layer on a bipartite block whose destinations prefix its sources.

    Call as ``conv((x_src, x_dst), edge_index)`` with ``x_dst = x_src[:num_dst]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, aggr_norm: str = "mean", bias: bool = True
    ) -> None:
        super().__init__(aggr="sum")
        if aggr_norm not in AGGR_NORMS:
            raise ValueError(f"aggr_norm must be one of {AGGR_NORMS!r}; got {aggr_norm!r}")
        self.aggr_norm = aggr_norm
        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: tuple[Tensor, Tensor], edge_index: Tensor) -> Tensor:
        x_src, x_dst = x
        n_src, n_dst = x_src.shape[0], x_dst.shape[0]
        src, dst = edge_index[0], edge_index[1]
        # Degrees include the self-loop; float so rsqrt/reciprocal stay exact enough.
        deg_dst = torch.bincount(dst, minlength=n_dst).to(x_src.dtype) + 1.0
        if self.aggr_norm == "mean":
            w_edge = deg_dst.reciprocal()[dst]
            w_self = deg_dst.reciprocal()
        else:
            deg_src = torch.bincount(src, minlength=n_src).to(x_src.dtype)
            deg_src[:n_dst] += 1.0
            w_edge = (deg_src[src] * deg_dst[dst]).rsqrt()
            w_self = (deg_src[:n_dst] * deg_dst).rsqrt()
        hs = self.lin(x_src)
        hd = self.lin(x_dst)
        out = self.propagate(edge_index, x=(hs, hd), edge_weight=w_edge, size=(n_src, n_dst))
        out = out + w_self.unsqueeze(1) * hd
        if self.bias is not None:
            out = out + self.bias
        return out

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(1) * x_j


class GCN(BlockGNN):
    """GCN on blocks (see the module docstring for the normalisation).

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    aggr_norm : {"mean", "sym"}
        Row (default) or symmetric normalisation.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        aggr_norm: str = "mean",
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        self.convs = nn.ModuleList(
            BlockGCNConv(self.dims[i], self.dims[i + 1], aggr_norm=aggr_norm)
            for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        return self.convs[layer]((h, h[: block.num_dst]), block.edge_index)
