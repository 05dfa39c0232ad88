"""Multi-head GAT over sampled blocks (PyG ``GATConv``, bipartite)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GATConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN

__all__ = ["GAT"]


class GAT(BlockGNN):
    """Graph attention network with ``heads`` heads.

    Hidden layers concatenate ``heads`` heads of ``hidden // heads`` channels
    (so ``h^(l)`` is ``hidden`` wide); the last layer averages ``heads`` heads
    of ``out_dim`` channels.

    ``GATConv`` runs bipartite with ``add_self_loops=False``: a destination's
    own embedding enters through the ``residual`` linear term (default on)
    rather than through attention, like SAGE's root weight. Without it a node
    whose sampled neighbourhood is empty would see only the bias.

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    heads : int
        Attention heads; must divide ``hidden``.
    attn_dropout : float
        Dropout on the attention coefficients.
    residual : bool
        Add a linear transform of the destination's own embedding.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        heads: int = 4,
        attn_dropout: float = 0.0,
        residual: bool = True,
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden % heads:
            raise ValueError(
                f"heads must be a positive integer dividing hidden={hidden!r}; got {heads!r}"
            )
        self.heads = heads
        convs = []
        for i in range(num_layers):
            last = i == num_layers - 1
            convs.append(
                GATConv(
                    (self.dims[i], self.dims[i]),
                    self.dims[i + 1] if last else self.dims[i + 1] // heads,
                    heads=heads,
                    concat=not last,
                    dropout=attn_dropout,
                    add_self_loops=False,
                    residual=residual,
                )
            )
        self.convs = nn.ModuleList(convs)

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        return self.convs[layer]((h, h[: block.num_dst]), block.edge_index)
