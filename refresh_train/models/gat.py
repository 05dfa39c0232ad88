"""Multi-head GAT over sampled blocks (PyG ``GATConv`` weights and attention).

PyG's ``GATConv.forward`` projects the sources first (``lin_src``: ``in_dim ->
heads * C``), then gathers the projected rows per edge (``x_j``: ``[E, heads,
C]``) and multiplies them by the attention (another ``[E, heads, C]``), both
kept for the backward pass: 2 x E x ``hidden`` floats per layer. Here the same
parameters and PyG's own attention code (``GATConv.edge_updater``: leaky ReLU,
softmax over each destination's edges, attention dropout) give the
coefficients, ``[E, heads]`` scalars, and the weighted sum runs as one sparse
product per head over the block's CSR pattern
(:func:`~refresh_train.models._sparse.attention_spmm`): what remains per edge
is a handful of ``[E, heads]`` float tensors and the block's index arrays.
What dominates a layer's memory now is the projection of every source,
``[num_src, hidden]`` float32, which attention needs, and its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._sparse import attention_spmm, linear

__all__ = ["GAT"]


def _head_dot(x: Tensor, att: Tensor) -> Tensor:
    """``(x * att).sum(-1)`` for ``x`` ``[N, H, C]`` and ``att`` ``[1, H, C]``, as one product.

    GATConv's elementwise form makes an ``[N, H, C]`` temporary (and another
    in the backward pass); a block-diagonal ``[H * C, H]`` matrix gives the
    same ``[N, H]`` logits without it.
    """
    n, heads, c = x.shape
    return x.reshape(n, heads * c) @ torch.block_diag(*att.reshape(heads, 1, c)).t()


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
        # GATConv.forward((h, h[:nd]), edge_index), with the aggregation sparse
        # and float16 inputs cast in chunks by the projections.
        conv = self.convs[layer]
        nd, heads, c = block.num_dst, conv.heads, conv.out_channels
        h_dst = h[:nd]
        x_src = linear(h, conv.lin_src.weight).view(-1, heads, c)
        x_dst = linear(h_dst, conv.lin_dst.weight).view(-1, heads, c)
        a_src = _head_dot(x_src, conv.att_src)
        a_dst = _head_dot(x_dst, conv.att_dst)
        alpha = conv.edge_updater(block.edge_index, alpha=(a_src, a_dst), edge_attr=None)
        out = attention_spmm(block, alpha, x_src)
        out = out.reshape(nd, heads * c) if conv.concat else out.mean(dim=1)
        if conv.res is not None:
            out = out + linear(h_dst, conv.res.weight)
        if conv.bias is not None:
            out = out + conv.bias
        return out
