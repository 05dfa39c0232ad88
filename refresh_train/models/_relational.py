"""Shared pieces of the relational models (:mod:`.rsage`, :mod:`.rgat`).

A block sampled per relation carries ``edge_type``; a relational layer runs
one PyG conv per relation over that relation's edges and sums the results
with a root (self) term, as the OGB-LSC R-GNN baselines and PyG's
``HeteroConv(aggr="sum")`` do. The per-relation views of a block are built
once and cached on it, like the sparse adjacency of :mod:`._sparse`.
"""

from __future__ import annotations

import torch

from refresh_train.batch import Block

__all__ = ["relation_blocks", "compact_sources", "check_num_relations"]

_CACHE_ATTR = "_relation_cache"


def check_num_relations(num_relations: object) -> None:
    """Raise ``ValueError`` unless ``num_relations`` is a positive integer."""
    if isinstance(num_relations, bool) or not isinstance(num_relations, int) or num_relations < 1:
        raise ValueError(f"num_relations must be a positive integer; got {num_relations!r}")


def relation_blocks(block: Block, num_relations: int) -> list[Block]:
    """``num_relations`` blocks over the same source and destination nodes, block ``r``
    holding the edges of relation ``r`` (cached on ``block``).

    Raises
    ------
    ValueError
        The block has no ``edge_type`` (sampled without relations).
    """
    if block.edge_type is None:
        raise ValueError(
            "block has no edge_type: relational models need a store with edge types, "
            "sampled per relation (NeighborSampler(..., edge_type=store.edge_type))"
        )
    cached = block.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] is block.edge_index and cached[1] is block.edge_type:
        return cached[2]
    et = block.edge_type.to(torch.int64)
    # One stable sort groups the edges by relation, destination order kept.
    order = torch.sort(et, stable=True).indices
    counts = torch.bincount(et, minlength=num_relations)[:num_relations].tolist()
    out, lo = [], 0
    for r in range(num_relations):
        idx = order[lo : lo + counts[r]]
        lo += counts[r]
        out.append(Block(block.num_src, block.num_dst, block.edge_index.index_select(1, idx)))
    block.__dict__[_CACHE_ATTR] = (block.edge_index, block.edge_type, out)
    return out


def compact_sources(sub: Block) -> tuple[torch.Tensor, Block]:
    """The distinct sources of ``sub`` and a block over them only (cached on ``sub``).

    Returns ``(src, compact)``: ``compact.edge_index[0]`` indexes ``src``, so a
    layer can project just the sources a relation reads.
    """
    cached = sub.__dict__.get("_compact")
    if cached is None:
        src, local = torch.unique(sub.edge_index[0], return_inverse=True)
        compact = Block(int(src.numel()), sub.num_dst, torch.stack([local, sub.edge_index[1]]))
        cached = sub.__dict__["_compact"] = (src, compact)
    return cached
