"""The mini-batch object that travels from the sampler to the model.

One :class:`MiniBatch` holds everything a training step needs about one batch of
seed nodes: the per-layer message-flow graphs (:class:`Block`), the global ids of
the nodes each layer reads, and — filled in by later stages — the raw input
features, the labels and the historical embeddings of pruned nodes.

Conventions
-----------
Ids
    *Global* ids are the store's reordered node ids (node 0 has the highest
    degree). *Local* ids index the source nodes of one block: ``0 .. num_src-1``.
    Every ``*_ids`` / ``*_nodes`` field and ``seeds`` hold global ids; every
    ``edge_index`` / ``*_pos`` field holds local ids. All are ``torch.int64``.
Layers
    With ``L`` blocks, ``blocks[0]`` is the input-side layer (it consumes raw
    features) and ``blocks[L-1]`` produces the seeds. Block ``l`` consumes the
    embeddings ``h^(l)`` of its source nodes and produces ``h^(l+1)`` of its
    destination nodes; ``h^(0)`` are the raw features and ``h^(L)`` the logits.
Destination prefix
    A block's destination nodes are the first ``num_dst`` of its source nodes:
    ``layer_nodes[l][:blocks[l].num_dst]`` are block ``l``'s destination ids, and
    the source-side input of a destination node's own ("root") term is row
    ``i < num_dst`` of the source embeddings, as PyG's bipartite convs expect
    (``conv((x_src, x_src[:num_dst]), edge_index)``).
Edges
    ``edge_index[0]`` is the local source id, ``edge_index[1]`` the local
    destination id (PyG's ``source_to_target`` flow). Edges are grouped by
    destination, in destination order. Blocks sampled per relation (typed
    stores) also carry ``edge_type`` (``int8 [E]``, the relation id of each
    edge, an index into the store's ``relations``).
Historical-cache pruning
    For ``l >= 1`` a source node of block ``l`` may arrive as a finished
    embedding ``h^(l)`` read from a history table instead of being computed by
    block ``l-1``: such a node is *cached* and its sub-tree is not sampled.
    ``blocks[l].cached_pos`` lists the local source positions of cached nodes and
    ``blocks[l].computed_pos`` the positions of the others, in the order in
    which block ``l-1`` produces them (block ``l-1``'s destination nodes are
    exactly ``layer_nodes[l][computed_pos]``). When nothing was pruned at block
    ``l`` both are ``None`` and block ``l-1``'s destinations are all source nodes
    of block ``l`` in order. :meth:`Block.assemble` builds a block's source
    embeddings from the computed rows and the cached rows.
    Without pruning the seeds are a prefix of every ``layer_nodes[l]``.

The sampler (:mod:`refresh_train.sampler`) creates MiniBatch objects; the
feature tiers fill ``features`` (rows aligned with ``input_nodes``) and
``labels`` (aligned with ``seeds``); the historical cache fills
``Block.cached_emb``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

__all__ = ["Block", "MiniBatch"]


def _move(t: torch.Tensor | None, device: torch.device | str, non_blocking: bool):
    if t is None:
        return None
    return t.to(device, non_blocking=non_blocking)


def _pin(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or t.is_pinned():
        return t
    return t.pin_memory()


def _tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors in ``value``, looking into dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


@dataclass
class Block:
    """One layer's bipartite message-flow graph.

    Attributes
    ----------
    num_src : int
        Number of source nodes (local ids ``0 .. num_src-1``).
    num_dst : int
        Number of destination nodes; they are the first ``num_dst`` source nodes.
    edge_index : torch.Tensor
        ``int64 [2, E]`` local ids: row 0 source, row 1 destination, grouped by
        destination in ascending order.
    computed_pos : torch.Tensor or None
        ``int64 [C]`` local source positions whose input embedding is computed by
        the previous block, in the order of that block's destination nodes.
        ``None`` means "all source nodes, in order" (nothing pruned here).
    cached_pos : torch.Tensor or None
        ``int64 [P]`` local source positions whose input embedding comes from a
        history table; ``None`` when nothing was pruned at this block.
        ``computed_pos`` and ``cached_pos`` partition ``0 .. num_src-1``.
    cached_ids : torch.Tensor or None
        ``int64 [P]`` global ids of the cached source nodes.
    cached_rows : torch.Tensor or None
        ``int64 [P]`` rows of the history table to read for the cached nodes,
        when the sampler's ``prune`` hook returned rows rather than a mask.
    cached_emb : torch.Tensor or None
        ``[P, d]`` embeddings of the cached nodes, filled by the history cache
        before the forward pass.
    edge_type : torch.Tensor or None
        ``int8 [E]`` relation of each edge (per-relation sampling of a typed
        store); ``None`` for homogeneous sampling.
    """

    num_src: int
    num_dst: int
    edge_index: torch.Tensor
    computed_pos: torch.Tensor | None = None
    cached_pos: torch.Tensor | None = None
    cached_ids: torch.Tensor | None = None
    cached_rows: torch.Tensor | None = None
    cached_emb: torch.Tensor | None = None
    edge_type: torch.Tensor | None = None

    @property
    def num_edges(self) -> int:
        """Number of sampled edges."""
        return int(self.edge_index.shape[1])

    @property
    def has_cached(self) -> bool:
        """Whether some source nodes of this block are served by a history table."""
        return self.cached_pos is not None

    @property
    def num_computed(self) -> int:
        """Number of source nodes the previous block must produce."""
        if self.computed_pos is None:
            return self.num_src
        return int(self.computed_pos.numel())

    def assemble(
        self, h_computed: torch.Tensor, h_cached: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Build this block's ``[num_src, d]`` source embeddings.

        Parameters
        ----------
        h_computed : torch.Tensor
            ``[num_computed, d]`` output of the previous block.
        h_cached : torch.Tensor, optional
            ``[P, d]`` embeddings of the cached nodes; defaults to ``cached_emb``.

        Returns
        -------
        torch.Tensor
            ``h_computed`` itself when nothing was pruned, else a new tensor with
            rows scattered to ``computed_pos`` and ``cached_pos``. Gradients flow
            to both inputs.

        Raises
        ------
        ValueError
            If the shapes do not match the block, or cached rows are needed but
            neither given nor filled in ``cached_emb``.
        """
        if h_computed.shape[0] != self.num_computed:
            raise ValueError(
                f"h_computed has {h_computed.shape[0]!r} rows; this block expects "
                f"num_computed={self.num_computed!r}"
            )
        if self.cached_pos is None:
            return h_computed
        if h_cached is None:
            h_cached = self.cached_emb
        if h_cached is None:
            raise ValueError(
                f"block has {self.cached_pos.numel()} cached source nodes but no cached "
                "embeddings: pass h_cached or fill Block.cached_emb"
            )
        if h_cached.shape != (self.cached_pos.numel(), h_computed.shape[1]):
            raise ValueError(
                f"h_cached has shape {tuple(h_cached.shape)!r}; expected "
                f"{(self.cached_pos.numel(), h_computed.shape[1])!r}"
            )
        h = h_computed.new_empty((self.num_src, h_computed.shape[1]))
        h = h.index_copy(0, self.computed_pos, h_computed)
        return h.index_copy(0, self.cached_pos, h_cached.to(h.dtype))

    def to(
        self, device: torch.device | str, non_blocking: bool = False, *, ids: bool = False
    ) -> Block:
        """Copy of the block with its tensors on ``device``.

        ``cached_ids`` and ``cached_rows`` (host-side lookups) move only when
        ``ids`` is true.
        """
        mv = _move
        return replace(
            self,
            edge_index=mv(self.edge_index, device, non_blocking),
            edge_type=mv(self.edge_type, device, non_blocking),
            computed_pos=mv(self.computed_pos, device, non_blocking),
            cached_pos=mv(self.cached_pos, device, non_blocking),
            cached_emb=mv(self.cached_emb, device, non_blocking),
            cached_ids=mv(self.cached_ids, device, non_blocking) if ids else self.cached_ids,
            cached_rows=mv(self.cached_rows, device, non_blocking) if ids else self.cached_rows,
        )

    def pin_memory(self) -> Block:
        """Copy of the block with the tensors :meth:`to` moves in pinned memory."""
        return replace(
            self,
            edge_index=_pin(self.edge_index),
            edge_type=_pin(self.edge_type),
            computed_pos=_pin(self.computed_pos),
            cached_pos=_pin(self.cached_pos),
            cached_emb=_pin(self.cached_emb),
        )


@dataclass
class MiniBatch:
    """Everything one training step needs about one batch of seed nodes.

    Attributes
    ----------
    seeds : torch.Tensor
        ``int64 [B]`` global ids of the output nodes, in the batch's order; the
        model's output row ``i`` belongs to ``seeds[i]``.
    blocks : list of Block
        ``blocks[0]`` consumes raw features, ``blocks[-1]`` produces the seeds.
    input_nodes : torch.Tensor
        ``int64 [blocks[0].num_src]`` global ids whose raw features block 0
        reads (``features`` row ``i`` belongs to ``input_nodes[i]``). The same
        tensor as ``layer_nodes[0]``.
    layer_nodes : list of torch.Tensor
        ``layer_nodes[l]`` are the global ids of block ``l``'s source nodes.
    features : torch.Tensor or None
        ``[len(input_nodes), D]`` raw features, filled by the feature tiers.
    labels : torch.Tensor or None
        ``int64 [B]`` labels of the seeds, filled by the trainer.
    batch_seed : int
        The seed the neighbourhoods were drawn with (for reproduction).
    extra : dict
        Free-form annotations later stages attach (timings, tier counters).
    """

    seeds: torch.Tensor
    blocks: list[Block]
    input_nodes: torch.Tensor
    layer_nodes: list[torch.Tensor]
    features: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    batch_seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    @property
    def num_seeds(self) -> int:
        """Number of seed (output) nodes."""
        return int(self.seeds.numel())

    def nbytes(self, row_bytes: int) -> int:
        """Bytes the batch holds once its features are fetched.

        The loader's unit of account (:class:`~refresh_train.loader.BatchLoader`
        bounds the sum over batches in flight): the features,
        ``len(input_nodes) * row_bytes`` before they are fetched and the
        tensor's own size after, plus every id and block tensor (edge
        indices, pruning positions, cached ids and embeddings, labels) and
        every tensor in ``extra``, each storage counted once. A sampled batch
        already holds all but the features, so its figure does not change
        when it is fetched.

        Parameters
        ----------
        row_bytes : int
            Bytes of one raw feature row in the store.
        """
        tensors: list[torch.Tensor | None] = [self.seeds, self.input_nodes, self.labels]
        tensors += self.layer_nodes
        for b in self.blocks:
            tensors += [b.edge_index, b.edge_type, b.computed_pos, b.cached_pos, b.cached_ids]
            tensors += [b.cached_rows, b.cached_emb]
        tensors += _tensors_in(self.extra)
        if self.features is not None:
            tensors.append(self.features)
            total = 0
        else:
            total = int(self.input_nodes.numel()) * int(row_bytes)
        seen: set[int] = set()
        for t in tensors:
            if t is None or t.device.type == "meta":
                continue
            key = t.untyped_storage().data_ptr() if t.numel() else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
        return total

    def to(
        self, device: torch.device | str, non_blocking: bool = False, *, ids: bool = False
    ) -> MiniBatch:
        """Copy of the batch with what the model reads on ``device``.

        Moves the blocks' edge indices and positions, ``features``, ``labels``
        and cached embeddings. The global-id tensors (``seeds``,
        ``input_nodes``, ``layer_nodes``, ``cached_ids``, ``cached_rows``) index
        host-side stores and stay where they are unless ``ids`` is true.

        Parameters
        ----------
        device : torch.device or str
            Target device.
        non_blocking : bool
            Passed to :meth:`torch.Tensor.to`; asynchronous only from pinned
            memory (see :meth:`pin_memory`).
        ids : bool
            Also move the global-id tensors.
        """
        layer_nodes = self.layer_nodes
        seeds, input_nodes = self.seeds, self.input_nodes
        if ids:
            layer_nodes = [_move(t, device, non_blocking) for t in self.layer_nodes]
            seeds = _move(seeds, device, non_blocking)
            input_nodes = (
                layer_nodes[0] if layer_nodes else _move(input_nodes, device, non_blocking)
            )
        return replace(
            self,
            seeds=seeds,
            blocks=[b.to(device, non_blocking, ids=ids) for b in self.blocks],
            input_nodes=input_nodes,
            layer_nodes=layer_nodes,
            features=_move(self.features, device, non_blocking),
            labels=_move(self.labels, device, non_blocking),
            extra=dict(self.extra),
        )

    def pin_memory(self) -> MiniBatch:
        """Copy of the batch with the tensors :meth:`to` moves in pinned memory."""
        return replace(
            self,
            blocks=[b.pin_memory() for b in self.blocks],
            features=_pin(self.features),
            labels=_pin(self.labels),
            extra=dict(self.extra),
        )
