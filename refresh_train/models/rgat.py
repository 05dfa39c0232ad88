"""Relational GAT over blocks sampled per relation (PyG ``GATConv`` per relation)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GATConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._relational import check_num_relations, compact_sources, relation_blocks
from refresh_train.models._sparse import attention_spmm, linear
from refresh_train.models.gat import _head_dot

__all__ = ["RGAT"]


class RGAT(BlockGNN):
    """R-GAT: ``h_v' = W_root h_v + b_root + sum_r GAT_r(h)_v``, one multi-head PyG
    ``GATConv`` per relation (the OGB-LSC MAG240M R-GAT baseline).

    Each relation's attention is a softmax over the destination's in-edges
    of that relation only. As in :class:`~refresh_train.models.gat.GAT`, the
    attention coefficients are ``[E, heads]`` scalars and the weighted sum is
    a sparse product per head; each relation projects only the distinct
    sources it reads (one gathered row per source and relation, not per
    edge). Hidden layers concatenate ``heads`` heads of ``hidden // heads``
    channels; the last averages ``heads`` heads of ``out_dim`` channels.
    A relation without sampled edges contributes its bias only.

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    num_relations : int
        Relations of the store (``len(store.relations)``).
    heads : int
        Attention heads; must divide ``hidden``.
    attn_dropout : float
        Dropout on the attention coefficients.
    """

    relational = True

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        num_relations: int,
        heads: int = 4,
        attn_dropout: float = 0.0,
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        check_num_relations(num_relations)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden % heads:
            raise ValueError(
                f"heads must be a positive integer dividing hidden={hidden!r}; got {heads!r}"
            )
        self.num_relations = num_relations
        self.heads = heads
        convs = []
        for i in range(num_layers):
            last = i == num_layers - 1
            convs.append(
                nn.ModuleList(
                    GATConv(
                        (self.dims[i], self.dims[i]),
                        self.dims[i + 1] if last else self.dims[i + 1] // heads,
                        heads=heads,
                        concat=not last,
                        dropout=attn_dropout,
                        add_self_loops=False,
                    )
                    for _ in range(num_relations)
                )
            )
        self.convs = nn.ModuleList(convs)
        self.roots = nn.ModuleList(
            nn.Linear(self.dims[i], self.dims[i + 1]) for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        nd = block.num_dst
        h_dst = h[:nd]
        root = self.roots[layer]
        out = linear(h_dst, root.weight, root.bias)
        for r, sub in enumerate(relation_blocks(block, self.num_relations)):
            conv = self.convs[layer][r]
            if sub.num_edges:
                heads, c = conv.heads, conv.out_channels
                src, compact = compact_sources(sub)
                x_src = linear(h.index_select(0, src), conv.lin_src.weight).view(-1, heads, c)
                x_dst = linear(h_dst, conv.lin_dst.weight).view(-1, heads, c)
                a_src = _head_dot(x_src, conv.att_src)
                a_dst = _head_dot(x_dst, conv.att_dst)
                alpha = conv.edge_updater(compact.edge_index, alpha=(a_src, a_dst), edge_attr=None)
                y = attention_spmm(compact, alpha, x_src)
                out = out + (y.reshape(nd, heads * c) if conv.concat else y.mean(dim=1))
            if conv.bias is not None:
                out = out + conv.bias
        return out
