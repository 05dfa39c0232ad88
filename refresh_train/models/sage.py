"""GraphSAGE over sampled blocks: PyG ``SAGEConv`` weights, sparse aggregation."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._sparse import aggregate_linear, linear, project_first, project_linear

__all__ = ["GraphSAGE"]

_SPARSE_AGGRS = {"mean": "mean", "sum": "sum", "add": "sum"}


class GraphSAGE(BlockGNN):
    """GraphSAGE: ``h_v' = W_root h_v + W_neigh mean_{u in N(v)} h_u`` per layer.

    Each layer is a PyG ``SAGEConv`` (its parameters and their names), but the
    mean (or sum) runs as one sparse product over the block's cached CSR
    adjacency instead of PyG's per-edge gather, and ``W_neigh`` is applied
    before the product when that takes fewer operations
    (:func:`~refresh_train.models._sparse.project_first`). ``SAGEConv.forward``
    accepts a torch CSR ``adj_t`` too (no torch-sparse needed: its
    ``message_and_aggregate`` calls ``torch.sparse.mm(adj_t, x, "mean")`` on
    CPU, sum-then-divide on CUDA), but that ``mean`` divides by the stored
    entries of a row, so parallel edges would have to stay unmerged against
    torch's CSR invariants; it also cannot project first, and needs a float32
    ``x``. Any ``aggr`` other than mean and sum runs through
    ``SAGEConv.forward`` edge-wise.

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    aggr : str
        PyG aggregation of the neighbours (default ``"mean"``); ``"mean"`` and
        ``"sum"`` run sparse.
    project_first : bool or None
        Apply ``W_neigh`` before (``True``) or after (``False``) aggregating;
        ``None`` (default) picks the cheaper order per block. Results agree up
        to float rounding.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        num_layers: int,
        *,
        aggr: str = "mean",
        project_first: bool | None = None,
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        if project_first not in (None, True, False):
            raise ValueError(f"project_first must be None, True or False; got {project_first!r}")
        self.aggr = aggr
        self.project_first = project_first
        self.convs = nn.ModuleList(
            SAGEConv((self.dims[i], self.dims[i]), self.dims[i + 1], aggr=aggr)
            for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        conv = self.convs[layer]
        nd = block.num_dst
        kind = _SPARSE_AGGRS.get(self.aggr) if isinstance(self.aggr, str) else None
        if kind is None:
            h = h.float()
            return conv((h, h[:nd]), block.edge_index)
        first = self.project_first
        if first is None:
            first = project_first(
                block.num_src, nd, block.num_edges, self.dims[layer], self.dims[layer + 1]
            )
        lin_l, lin_r = conv.lin_l, conv.lin_r
        neigh = project_linear if first else aggregate_linear
        return neigh(block, kind, h, lin_l.weight, lin_l.bias) + linear(h[:nd], lin_r.weight)
