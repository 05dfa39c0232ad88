"""Shadow runs (``--hist-shadow``): which half of a cache hit costs accuracy.

A hit does two things to a step: the node's input to the cached layer is an
older embedding (one computation, reused), and its sub-tree is not computed,
so the layers below get no gradient through it. A shadow run samples and
computes every node, as ``--cache none`` does, while the history works as
usual (same lookups, admissions, staleness and serve limits); at each node
that would have been served it keeps one of the two effects only:

``values``
    the node's embedding takes the cached value in the forward pass, while
    its gradient flows into the freshly computed sub-tree (a straight-through
    estimate): stale values, full gradient;
``gradients``
    the node keeps its fresh embedding, but no gradient flows below it:
    fresh values, the pruned run's missing gradient.

Shadow runs save nothing (every row is fetched); they are a diagnostic. The
cached layer must be one (sub-trees below two cached layers overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..batch import Block, _move, _pin
from ..config import HIST_SHADOW_KINDS as SHADOW_KINDS

__all__ = ["SHADOW_KINDS", "ShadowBlock"]


@dataclass
class ShadowBlock(Block):
    """A block computed in full whose would-be-served source rows keep one effect of a hit.

    Attributes
    ----------
    shadow_kind : str
        ``"values"`` or ``"gradients"`` (module docstring).
    shadow_pos : torch.Tensor
        ``int64 [P]`` local source positions a pruned run would have served.
    shadow_emb : torch.Tensor
        ``[P, d]`` the embeddings it would have served (used by ``"values"``).
    """

    shadow_kind: str = "values"
    shadow_pos: torch.Tensor | None = None
    shadow_emb: torch.Tensor | None = None

    @classmethod
    def of(cls, block: Block, kind: str, pos: torch.Tensor, emb: torch.Tensor) -> ShadowBlock:
        """``block`` (nothing pruned) with ``pos`` shadowed."""
        if kind not in SHADOW_KINDS:
            raise ValueError(f"shadow kind must be one of {SHADOW_KINDS}, got {kind!r}")
        if block.cached_pos is not None:
            raise ValueError("a shadowed block must be sampled without pruning")
        fields = {k: getattr(block, k) for k in block.__dataclass_fields__}
        return cls(**fields, shadow_kind=kind, shadow_pos=pos, shadow_emb=emb)

    def assemble(
        self, h_computed: torch.Tensor, h_cached: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = super().assemble(h_computed, h_cached)
        if self.shadow_pos is None or self.shadow_pos.numel() == 0:
            return h
        rows = h.index_select(0, self.shadow_pos)
        if self.shadow_kind == "values":
            # The served value forward, the fresh sub-tree's gradient backward.
            # (``rows - rows.detach()`` is exactly zero, so the value is exact.)
            new = self.shadow_emb.to(rows.dtype) + (rows - rows.detach())
        else:
            new = rows.detach()
        return h.index_copy(0, self.shadow_pos, new)

    def to(
        self, device: torch.device | str, non_blocking: bool = False, *, ids: bool = False
    ) -> ShadowBlock:
        out = super().to(device, non_blocking, ids=ids)
        return replace(
            out,
            shadow_pos=_move(self.shadow_pos, device, non_blocking),
            shadow_emb=_move(self.shadow_emb, device, non_blocking),
        )

    def pin_memory(self) -> ShadowBlock:
        out = super().pin_memory()
        return replace(out, shadow_pos=_pin(self.shadow_pos))
