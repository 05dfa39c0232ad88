"""Relational GraphSAGE over blocks sampled per relation (PyG ``SAGEConv`` per relation)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from refresh_train.batch import Block
from refresh_train.models._base import BlockGNN
from refresh_train.models._relational import check_num_relations, relation_blocks
from refresh_train.models._sparse import aggregate_linear, linear, project_first, project_linear

__all__ = ["RGraphSAGE"]


class RGraphSAGE(BlockGNN):
    """R-GraphSAGE: ``h_v' = W_root h_v + b_root + sum_r (W_r mean_{u in N_r(v)} h_u + b_r)``.

    The OGB-LSC MAG240M R-GraphSAGE baseline: per layer, one PyG ``SAGEConv``
    (``root_weight=False``) per relation and one ``Linear`` for the node's own
    embedding, summed. Each relation's mean runs as a sparse product over the
    CSR adjacency of that relation's edges (cached on the block), never as
    per-edge copies of the features, and float16 inputs are cast a chunk at a
    time (:func:`~refresh_train.models._sparse.aggregate_linear`), as in
    :class:`~refresh_train.models.sage.GraphSAGE`. A relation without sampled
    edges contributes its bias only (PyG's mean over no neighbours is zero).

    Parameters are those of :class:`~refresh_train.models._base.BlockGNN`, plus

    num_relations : int
        Relations of the store (``len(store.relations)``); blocks must carry
        ``edge_type`` in ``[0, num_relations)``.
    project_first : bool or None
        As for :class:`~refresh_train.models.sage.GraphSAGE`, per relation.
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
        project_first: bool | None = None,
        **opts,
    ) -> None:
        super().__init__(in_dim, hidden, out_dim, num_layers, **opts)
        check_num_relations(num_relations)
        if project_first not in (None, True, False):
            raise ValueError(f"project_first must be None, True or False; got {project_first!r}")
        self.num_relations = num_relations
        self.project_first = project_first
        self.convs = nn.ModuleList(
            nn.ModuleList(
                SAGEConv((self.dims[i], self.dims[i]), self.dims[i + 1], root_weight=False)
                for _ in range(num_relations)
            )
            for i in range(num_layers)
        )
        self.roots = nn.ModuleList(
            nn.Linear(self.dims[i], self.dims[i + 1]) for i in range(num_layers)
        )

    def conv(self, layer: int, block: Block, h: Tensor) -> Tensor:
        nd = block.num_dst
        a, b = self.dims[layer], self.dims[layer + 1]
        root = self.roots[layer]
        out = linear(h[:nd], root.weight, root.bias)
        for r, sub in enumerate(relation_blocks(block, self.num_relations)):
            lin = self.convs[layer][r].lin_l
            if sub.num_edges == 0:
                out = out + lin.bias
                continue
            first = self.project_first
            if first is None:
                first = project_first(sub.num_src, nd, sub.num_edges, a, b)
            neigh = project_linear if first else aggregate_linear
            out = out + neigh(sub, "mean", h, lin.weight, lin.bias)
        return out
