"""Shared skeleton of the block-wise GNNs: layer loop, norms, dropout, injection.

Every model maps a :class:`~refresh_train.batch.MiniBatch` and the raw features
of its ``input_nodes`` to logits for its seeds, one block per layer:

``h^(0) = x``; for block ``l``: ``h^(l+1) = forward_layer(l, blocks[l], h^(l))``.

``forward_layer`` is the public per-layer entry point. It takes the source
embeddings of one block (``[num_src, dims[l]]``) and returns the destination
embeddings (``[num_dst, dims[l+1]]``). A caller that drives the layers itself
can therefore

* inject finished embeddings for cached nodes between layers
  (:meth:`Block.assemble` does this in :meth:`BlockGNN.forward`),
* capture intermediate embeddings for admission into a history table
  (``forward(..., return_hidden=True)``), and
* run exact layer-wise inference: one layer for all nodes, in chunks, with
  full-neighbourhood one-layer blocks (fanout ``-1``), writing ``h^(l+1)`` for
  every node before moving to layer ``l+1``. In ``eval()`` mode this equals the
  batch forward on full neighbourhoods.

Raw features may be float16 (as a MAG240M store holds them) or float32; the
models compute in float32 either way and never copy a float16 input whole:
the first projection casts it in row chunks
(:func:`~refresh_train.models._sparse.linear`). Callers need not cast
``batch.features`` (a ``x.float()`` before the call only costs a float32 copy
of every input row). Aggregation is a sparse product over the block's CSR
adjacency (:mod:`refresh_train.models._sparse`), so no layer materialises a
feature row per edge.

Dropout is applied at the *input* of each layer ``l >= 1`` (and optionally of
layer 0), after the previous layer's norm and activation. The same
computation as the usual "dropout after the activation", but the embeddings
``h^(l)`` that ``forward_layer`` returns and a history table stores are
dropout-free, so cached and computed rows are treated alike.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from refresh_train.batch import Block, MiniBatch

__all__ = ["BlockGNN", "NORMS"]

NORMS = ("none", "batch", "layer")


def _make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


class BlockGNN(nn.Module):
    """Base class: ``num_layers`` layers of widths ``in_dim -> hidden ... -> out_dim``.

    Parameters
    ----------
    in_dim, hidden, out_dim : int
        Raw feature width, hidden width, number of classes.
    num_layers : int
        Number of layers; a batch must have as many blocks.
    dropout : float
        Dropout probability at the input of layers ``1 .. L-1``.
    input_dropout : float
        Dropout probability on the raw features (input of layer 0).
    norm : {"none", "batch", "layer"}
        Normalisation after every layer but the last, before the ReLU.

    Attributes
    ----------
    dims : list of int
        ``dims[l]`` is the width of ``h^(l)``: ``[in_dim, hidden, ..., out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_dim", in_dim),
            ("hidden", hidden),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1); got {p!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS!r}; got {norm!r}")
        self.num_layers = num_layers
        self.dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.dropout = float(dropout)
        self.input_dropout = float(input_dropout)
        self.norm_kind = norm
        self.norms = nn.ModuleList(
            _make_norm(norm, self.dims[i + 1]) for i in range(num_layers - 1)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        """Message passing of one layer (no norm/activation); models override it."""
        raise NotImplementedError

    def forward_layer(self, layer: int, block: Block, h: Tensor) -> Tensor:
        """Apply layer ``layer`` to one block.

        Parameters
        ----------
        layer : int
            ``0 .. num_layers-1``.
        block : Block
            Its destination nodes are the first ``block.num_dst`` source nodes.
        h : torch.Tensor
            ``[block.num_src, dims[layer]]`` embeddings ``h^(layer)`` of the
            source nodes (raw features for layer 0, float16 or float32),
            dropout-free.

        Returns
        -------
        torch.Tensor
            ``[block.num_dst, dims[layer+1]]`` float32: ``h^(layer+1)`` after
            norm and ReLU, or the logits for the last layer.
        """
        p = self.dropout if layer > 0 else self.input_dropout
        if p > 0.0:
            h = F.dropout(h, p=p, training=self.training)
        out = self.conv(layer, block, h)
        if layer < self.num_layers - 1:
            out = F.relu(self.norms[layer](out))
        return out

    def forward(
        self, batch: MiniBatch, x: Tensor, *, return_hidden: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits of the batch's seeds.

        Parameters
        ----------
        batch : MiniBatch
            ``len(batch.blocks)`` must equal ``num_layers``. Blocks with cached
            source nodes must have ``cached_emb`` filled.
        x : torch.Tensor
            ``[len(batch.input_nodes), in_dim]`` raw features
            (``batch.features``), float16 or float32 as stored: no cast needed.
        return_hidden : bool
            Also return the computed intermediate embeddings.

        Returns
        -------
        logits : torch.Tensor
            ``[len(batch.seeds), out_dim]``.
        hidden : list of torch.Tensor, only if ``return_hidden``
            ``hidden[l-1]`` is ``h^(l)`` (``l = 1 .. L-1``) of block ``l-1``'s
            destination nodes, i.e. of ``batch.layer_nodes[l-1][:num_dst]``,
            still attached to the autograd graph (call ``retain_grad()`` on them
            before ``backward()`` to read their gradients).
        """
        if len(batch.blocks) != self.num_layers:
            raise ValueError(
                f"batch has {len(batch.blocks)!r} blocks; this model has num_layers={self.num_layers!r}"
            )
        if x.dim() != 2 or x.shape[0] != batch.blocks[0].num_src or x.shape[1] != self.dims[0]:
            raise ValueError(
                f"x has shape {tuple(x.shape)!r}; expected ({batch.blocks[0].num_src}, {self.dims[0]}) "
                "(one row of raw features per input node)"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"x has dtype {x.dtype!r}; expected a floating dtype (float16 or float32)"
            )
        h = x
        hidden: list[Tensor] = []
        for layer, block in enumerate(batch.blocks):
            if layer > 0:
                if return_hidden:
                    hidden.append(h)
                h = block.assemble(h)
            h = self.forward_layer(layer, block, h)
        return (h, hidden) if return_hidden else h

    def reset_parameters(self) -> None:
        """Re-initialise every parameter."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
