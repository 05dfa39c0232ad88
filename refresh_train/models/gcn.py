"""GCN over sampled blocks.

PyG's ``GCNConv`` normalises with the degrees of one homogeneous graph and
rejects bipartite input, so this module implements the GCN layer on a block
directly: the destination's own row is the self-loop (it is source row ``i``
thanks to the destination prefix), and the block's edges carry the weights.
The propagation is one sparse product with the block's normalised adjacency,
self-loops included, cached on the block
(:func:`~refresh_train.models._sparse.block_adjacency`).

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
from torch_geometric.nn.dense.linear import Linear

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._sparse import aggregate_linear, project_first, project_linear

__all__ = ["GCN", "BlockGCNConv", "AGGR_NORMS"]

AGGR_NORMS = ("mean", "sym")


class BlockGCNConv(nn.Module):
    """GCN layer on a bipartite block whose destinations prefix its sources.

    Call as ``conv(x_src, block)``, or as ``conv((x_src, x_dst), edge_index)``
    with ``x_dst = x_src[:num_dst]`` (only its length is read). ``x_src`` may be
    float16; the output is float32 (the weight's dtype). Passing the
    :class:`~refresh_train.batch.Block` lets the normalised adjacency be
    built once per block.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths.
    aggr_norm : {"mean", "sym"}
        Row or symmetric normalisation (module docstring).
    bias : bool
        Learn an additive bias.
    project_first : bool or None
        Apply ``W`` before (``True``) or after (``False``) propagating;
        ``None`` (default) picks the cheaper order per block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        aggr_norm: str = "mean",
        bias: bool = True,
        project_first: bool | None = None,
    ) -> None:
        super().__init__()
        if aggr_norm not in AGGR_NORMS:
            raise ValueError(f"aggr_norm must be one of {AGGR_NORMS!r}; got {aggr_norm!r}")
        if project_first not in (None, True, False):
            raise ValueError(f"project_first must be None, True or False; got {project_first!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.aggr_norm = aggr_norm
        self.project_first = project_first
        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor | tuple[Tensor, Tensor], graph: Block | Tensor) -> Tensor:
        if isinstance(x, tuple):
            x, x_dst = x
            num_dst = x_dst.shape[0]
        elif isinstance(graph, Block):
            num_dst = graph.num_dst
        else:
            raise TypeError("pass (x_src, x_dst) with an edge_index, or x_src with a Block")
        if not isinstance(graph, Block):
            graph = Block(num_src=x.shape[0], num_dst=num_dst, edge_index=graph)
        first = self.project_first
        if first is None:
            # The self-loops add num_dst entries to the product.
            first = project_first(
                graph.num_src,
                graph.num_dst,
                graph.num_edges + graph.num_dst,
                self.in_channels,
                self.out_channels,
            )
        propagate = project_linear if first else aggregate_linear
        return propagate(graph, f"gcn-{self.aggr_norm}", x, self.lin.weight, self.bias)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"aggr_norm={self.aggr_norm!r})"
        )


class GCN(BlockGNN):
    """GCN on blocks (see the module docstring for the normalisation).

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    aggr_norm : {"mean", "sym"}
        Row (default) or symmetric normalisation.
    project_first : bool or None
        Order of projection and propagation (see :class:`BlockGCNConv`).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        aggr_norm: str = "mean",
        project_first: bool | None = None,
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        self.convs = nn.ModuleList(
            BlockGCNConv(
                self.dims[i], self.dims[i + 1], aggr_norm=aggr_norm, project_first=project_first
            )
            for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        return self.convs[layer](h, block)
