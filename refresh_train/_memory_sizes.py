"""Sizes the memory plan counts: formulas that mirror the code allocating each structure.

Every formula here follows one allocation site (named in its docstring), so
that a change there has one place to be mirrored; the memory plan's tests
compare each formula with the structure it sizes. The probes at the end
measure what no formula can know in advance: how many nodes and edges a
batch of this store actually samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .plan_table import BatchShape

if TYPE_CHECKING:
    from refresh_store.store import Store

    from .batch import MiniBatch
    from .config import TrainConfig

_F32 = 4

#: What a step holds besides its tensors (autograd's graph, BLAS scratch):
#: 2-4 MiB measured on small steps here, rounded up.
STEP_OVERHEAD_BYTES = 4 << 20  # 4 MiB

#: RSS of a fresh ``python -c "import torch, numba, zarr, torch_geometric"``
#: that also imports this project's trainer modules: 413 MiB (403 MiB for the
#: four libraries alone), median of 3 fresh processes of
#: ``benchmarks/memory_plan.py`` on the 2-core benchmark machine (Python
#: 3.11.7, torch 2.13.0+cpu, numba 0.68.1, zarr 3.1.6, torch_geometric 2.8.1;
#: ``benchmarks/results/memory_plan.md``). The plan takes the larger of this
#: and the planning process's own RSS.
LIBRARIES_BYTES = 413 << 20  # 413 MiB

#: What a process grows by on first use beyond its imports: Numba kernels
#: loaded from their cache, library code pages the first step and the first
#: evaluation touch (ogb's evaluator imports pandas), torch's thread pools.
#: Measured by the same script as RSS after a 2-epoch run on a 600-node store
#: minus RSS after the imports: 138 MiB (median of 3), rounded up to 160 MiB.
RUNTIME_BYTES = 160 << 20  # 160 MiB

#: Device memory of a CUDA context and torch's kernels (not measured here:
#: a commonly seen figure, an estimate).
CUDA_CONTEXT_BYTES = 512 << 20  # 512 MiB

#: Training batches sampled at start to measure per-batch node and edge counts.
PROBE_BATCHES = 4
#: The measured per-batch figures are the largest probe's times this (capped
#: at the fanouts' worst case): full batches of an epoch differ by a few per
#: cent from one another.
PROBE_MARGIN = 1.10

#: ``BufferPool`` allocates 1/8 more than asked, so that a slightly larger
#: batch reuses the buffer.
POOL_HEADROOM = 1.125

Blocks = Sequence[tuple[int, int, int]]
"""``(num_src, num_dst, num_edges)`` per block, block 0 (the input side) first."""


def worst_case(
    num_seeds: int, fanouts: Sequence[int], num_nodes: int, num_edges: int
) -> list[tuple[int, int, int]]:
    """``(src, dst, edges)`` per block (block 0 first) that no batch can exceed."""
    out = []
    dst = num_seeds
    for f in fanouts:  # from the seeds outward: the last block first
        edges = num_edges if f < 0 else min(num_edges, dst * f)
        src = min(num_nodes, dst + edges)
        out.append((src, dst, edges))
        dst = src
    return out[::-1]


def _cast_rows(width: int) -> int:
    """Rows of one float32 cast chunk (``models._sparse._chunk_len``)."""
    from .models import CAST_CHUNK_BYTES

    return max(1, CAST_CHUNK_BYTES // (max(1, width) * _F32))


def _layer_terms(
    model: str,
    dims: Sequence[int],
    blocks: Blocks,
    x_itemsize: int,
    *,
    dropout: float,
    norm: str,
    heads: int,
    training: bool,
) -> tuple[int, int, int]:
    """``(retained, adjacency, transient)`` bytes of one forward (and backward) pass.

    ``retained``: tensors autograd keeps for the backward pass; ``adjacency``:
    the CSR structures cached on the blocks (``models._sparse``);
    ``transient``: the largest set of short-lived tensors of one layer,
    forward or backward. The input features are not counted.
    """
    from .models import project_first

    n_layers = len(blocks)
    retained = adjacency = transient = 0
    for layer, (s, d, e) in enumerate(blocks):
        a, b = int(dims[layer]), int(dims[layer + 1])
        last = layer == n_layers - 1
        low = layer == 0 and x_itemsize < _F32  # float16 rows, cast a chunk at a time
        xb = x_itemsize if layer == 0 else _F32
        needs_gx = training and layer > 0  # raw features take no gradient
        keep = 1 if training else 0
        chunk = _cast_rows(a)
        r = t_fwd = t_bwd = 0
        # Dropout at the input of layers >= 1: its output (kept alive through
        # the root term's view h[:num_dst]) and a bool mask.
        if training and layer > 0 and dropout > 0:
            r += s * a * (_F32 + 1)
            t_fwd += s * a * _F32
        if model == "mlp":
            # linear(h[:num_dst]): the output, and a cast chunk for float16 rows.
            t_fwd += 2 * d * b * _F32 + (min(chunk, d) * a * _F32 if low else 0)
            t_bwd += 2 * d * a * _F32 if needs_gx else 0
        elif model == "gat":
            # Hidden layers project to `b` (heads x b/heads); the last to heads x b.
            p = b if not last else heads * b
            cast = min(chunk, s) * a * _F32 if low else 0  # linear()'s cast buffer
            # Projected sources and destinations, their per-head logits, a
            # handful of [E, heads] tensors (gathered logits, leaky ReLU,
            # softmax, merged CSR values), the output, residual and bias terms.
            r += keep * ((s + d) * p + (s + d) * heads + 6 * e * heads + 2 * d * b) * _F32
            t_fwd += ((s + 2 * d) * p + 4 * e * heads + 2 * d * b) * _F32 + cast
            # The sources' projection gradient and per-head buffers; then x's.
            if training:
                t_bwd += (2 * s * p + 2 * e * heads) * _F32 + cast
                t_bwd += 3 * s * a * _F32 if needs_gx else 0
            adjacency += 8 * (d + 1) + 16 * e + 4 * e * heads
            adjacency += 8 * (s + 1) + 20 * e if training else 0
        else:
            ee = e + (d if model == "gcn" else 0)  # GCN adds the self-loops
            out = d * b * _F32
            build = 32 * ee  # sort keys while the block's CSR is built, before anything else
            if project_first(s, d, ee, a, b):
                # A (x W^T): every source projected (kept for the product), then
                # the product and its bias; float16 sources cast a chunk at a time.
                r += keep * s * b * _F32
                neigh = s * b * _F32 + 2 * out + (min(chunk, s) * a * _F32 if low else 0)
                neigh_bwd = s * b * _F32
            elif low:
                # Chunked (A x) W^T: one chunk's gathered, cast and aggregated rows
                # (a chunk holds at most `chunk` edges), recomputed for W's gradient.
                k = min(chunk, s, max(1, ee))
                rows = min(chunk, d, 2 * math.ceil(chunk * d / max(1, ee)))
                neigh = k * a * (xb + _F32) + rows * a * _F32 + out
                neigh_bwd = neigh
            else:
                # (A x) W^T: the [num_dst, d_in] aggregate, kept for W's gradient
                # (without autograd it dies with its projection).
                agg = d * a * _F32
                r += keep * agg
                neigh = out + (0 if training else agg)
                neigh_bwd = agg
            if model == "sage":
                # The root term (float16 rows cast a chunk at a time), then the sum.
                root = 2 * out + (min(chunk, d) * a * _F32 if low else 0)
                t_fwd += max(build, neigh, root, 3 * out)
            else:
                t_fwd += max(build, neigh)
            if training:
                t_bwd += out + neigh_bwd
            if needs_gx:
                # grad of the aggregate, A^T (grad W), the root's, then through
                # dropout and the previous layer's ReLU.
                t_bwd += (2 * d * a + 3 * s * a) * _F32
            # CSR of the block: crow, col, entry, values; the transpose in backward.
            adjacency += 8 * (d + 1) + 20 * ee
            adjacency += 8 * (s + 1) + 20 * ee if needs_gx else 0
            adjacency += 16 * ee + 8 * d if low else 0  # the destination chunks
        if not last:
            # ReLU's output (kept), and a norm's input and output.
            r += keep * d * b * _F32 * (1 + (2 if norm != "none" else 0))
        else:
            r += keep * 2 * d * b * _F32  # logits and log-softmax
        # Without autograd a layer's input (the previous layer's output) is
        # all that is left of the layers before it.
        t_fwd += 0 if training or layer == 0 else s * a * _F32
        retained += r
        transient = max(transient, t_fwd, t_bwd)
    return retained, adjacency, transient


_RELATIONAL_AS = {"rsage": "sage", "rgat": "gat"}


def step_bytes(
    model: str,
    dims: Sequence[int],
    blocks: Blocks,
    x_itemsize: int,
    *,
    dropout: float,
    norm: str = "none",
    heads: int = 1,
    training: bool = True,
) -> int:
    """Activations and their gradients of one step of ``model`` on these blocks (an estimate).

    Mirrors :mod:`refresh_train.models`: what autograd keeps per layer (the
    aggregate of ``(A x) W^T`` in float32, the sources' projection of
    ``A (x W^T)`` and of GAT, dropout masks and outputs, ReLU outputs), the
    CSR adjacency cached on each block, and the largest layer's short-lived
    tensors (float16 inputs cast one chunk at a time, at most
    ``CAST_CHUNK_BYTES`` per buffer). Without ``training`` (evaluation, no
    autograd) nothing is kept: the largest layer's input and short-lived
    tensors, and the blocks' adjacency. Parameters,
    gradients of parameters, Adam state and the input features are not
    counted.
    """
    # A relational layer runs its homogeneous counterpart once per relation on
    # that relation's edges (which add up to the block's): estimated as one.
    model = _RELATIONAL_AS.get(model, model)
    r, adj, t = _layer_terms(
        model,
        dims,
        blocks,
        x_itemsize,
        dropout=dropout,
        norm=norm,
        heads=heads,
        training=training,
    )
    return r + adj + t + STEP_OVERHEAD_BYTES


def widest_layer(dims: Sequence[int]) -> list[int]:
    """``[d_in, d_out]`` of the widest layer (layer-wise inference runs one at a time)."""
    i = max(range(len(dims) - 1), key=lambda j: dims[j] + dims[j + 1])
    return [dims[i], dims[i + 1]]


def policy_bytes(policy: str, capacity: int, num_keys: int) -> int:
    """Arrays of a host-tier replacement policy (``tiers._policies``)."""
    base = 8 * num_keys + 8 * capacity  # slot_of [num_keys], slot_key [capacity]
    if policy == "clock":
        return base + 9 * capacity + 24  # ref bits, stamps, state
    if policy == "lru":
        return base + 16 * capacity + 24  # prev, next, ends
    if policy == "s3fifo":
        ghost = 1 << max(1, int(capacity).bit_length())
        return base + capacity + 16 * max(1, capacity) + 40 + 8 * ghost  # freq, rings, ghosts
    return base + 24 * capacity  # a policy registered elsewhere: a guess


def scheduler_bytes(queue_depth: int, row_bytes: int, gather_rows: int) -> int:
    """An I/O scheduler's read buffers and one gather's plan (``refresh_store.io``).

    Each of ``queue_depth`` reader threads (or AIO slots) holds a buffer of
    ``max_read_bytes`` or one row and the blocks it straddles (4 KiB blocks
    assumed, the coarsest alignment); a gather's plan takes seven int64 per
    requested row.
    """
    from refresh_store.io import IOConfig

    block = 4096
    buf = max(IOConfig().max_read_bytes, -(-row_bytes // block) * block + block)
    return queue_depth * buf + 56 * gather_rows


def sampler_scratch_bytes(num_nodes: int, blocks: Blocks) -> int:
    """One sampling thread's reused buffers (``_sampler_relabel.Scratch``)."""
    from .sampler import DENSE_MAP_MAX_NODES

    widest = max(d + e for _, d, e in blocks)
    n_dst = max(d for _, d, _ in blocks)
    if num_nodes <= DENSE_MAP_MAX_NODES:
        # int32 id map; starts, degs (int64) and src ids (int32) per slot, offsets.
        return 4 * num_nodes + math.ceil(1.25 * (20 * widest + 8 * n_dst))
    # Hash relabelling: keys and values sized to twice the slots, src ids, offsets.
    return math.ceil(1.25 * (8 * widest + 8 * n_dst + 64 * widest))


# ----------------------------------------------------------------- probe batches
def _batch_blocks(batch: MiniBatch) -> list[tuple[int, int, int]]:
    return [(b.num_src, b.num_dst, b.num_edges) for b in batch.blocks]


def probe_training(
    store: Store,
    config: TrainConfig,
    fanouts: Sequence[int],
    smallest_k: int,
    max_batches: int,
) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
    """Block sizes of the first full batches of epoch 0, and their input rows ``>= smallest_k``.

    Sampled from the store's memory-mapped topology with the run's seed:
    ids and edges only, no features.
    """
    from .models import sampler_options
    from .sampler import NeighborSampler, batch_seed, epoch_batches

    sampler = NeighborSampler(
        store.indptr,
        store.indices,
        list(fanouts),
        seed=config.seed,
        **sampler_options(config.model, store),
    )
    try:
        shapes, beyond = [], []
        parts = epoch_batches(store.train_idx, config.batch_size, config.seed, 0)
        for i, seeds in enumerate(parts):
            if i >= max_batches or (i and len(seeds) < config.batch_size):
                break
            batch = sampler.sample(seeds, batch_seed(0, i))
            shapes.append(_batch_blocks(batch))
            beyond.append(int(np.count_nonzero(batch.input_nodes.numpy() >= smallest_k)))
        return shapes, beyond
    finally:
        sampler.close()


def probe_sampled_eval(
    store: Store, config: TrainConfig, fanouts: Sequence[int]
) -> tuple[list[list[tuple[int, int, int]]], int]:
    """Block sizes of sampled evaluation's first batch of the validation and test nodes."""
    from .models import sampler_options
    from .sampler import NeighborSampler

    sampler = NeighborSampler(
        store.indptr,
        store.indices,
        list(fanouts),
        seed=config.seed,
        **sampler_options(config.model, store),
    )
    try:
        shapes = []
        nodes = 0
        # Evaluation goes through the validation then the test nodes in their
        # stored order: the first batch of each.
        for name in ("valid_idx", "test_idx"):
            idx = np.asarray(getattr(store, name), dtype=np.int64)
            nodes += len(idx)
            if len(idx):
                batch = sampler.sample(idx[: config.eval.batch_size].copy(), 0)
                shapes.append(_batch_blocks(batch))
        return shapes, nodes
    finally:
        sampler.close()


def layerwise_block(store: Store, batch_size: int) -> list[tuple[int, int, int]]:
    """A bound on every one-hop block of layer-wise inference (full neighbourhoods).

    No chunk of ``batch_size`` destinations has more in-edges than the
    ``batch_size`` largest in-degrees together.
    """
    deg = np.diff(np.asarray(store.indptr, dtype=np.int64))
    if len(deg) == 0:
        return [(0, 0, 0)]
    dst = min(batch_size, len(deg))
    edges = int(np.partition(deg, len(deg) - dst)[len(deg) - dst :].sum())
    return [(min(store.num_nodes, dst + edges), dst, edges)]


# ------------------------------------------------------------- per-batch figures
def batch_shape(
    probes: Sequence[list[tuple[int, int, int]]],
    input_rows_beyond: Sequence[int],
    worst: list[tuple[int, int, int]],
    num_seeds: int,
    row_bytes: int,
    margin: float,
    extra_blocks_bytes: int = 0,
) -> BatchShape:
    """Per-batch figures from the probes' block sizes: the largest times ``margin``, capped
    at the fanouts' worst case; ``extra_blocks_bytes`` adds a mode's per-batch arrays."""
    blocks = []
    for layer, cap in enumerate(worst):
        got = [p[layer] for p in probes]
        blocks.append(
            tuple(min(c, math.ceil(max(g[k] for g in got) * margin)) for k, c in enumerate(cap))
        )
    # The seeds are exactly the batch size.
    s, d, e = blocks[-1]
    blocks[-1] = (max(s, num_seeds), num_seeds, e)
    rows = blocks[0][0]
    beyond = min(rows, math.ceil(max(input_rows_beyond) * margin))
    # edge_index int64 [2, E], layer nodes int64, seeds and labels int64.
    ids = sum(16 * e + 8 * s for s, _, e in blocks) + 16 * num_seeds
    return BatchShape(
        blocks=tuple(blocks),  # type: ignore[arg-type]
        input_rows=rows,
        rows_beyond_device=beyond,
        features_bytes=rows * row_bytes,
        blocks_bytes=ids + extra_blocks_bytes,
        probed=len(probes),
    )


# ------------------------------------------------------------- the cache mode's sizes
@dataclass
class CacheSizes:
    """What the cache mode will choose (modes/raw.py, modes/refresh.py)."""

    hist_layers: tuple[int, ...] = ()
    table_row: int = 0  # bytes of one node's embedding in the history table
    k_start: int = 0  # device-tier rows at the start
    k_min: int = 0  # fewest device-tier rows the automatic split may choose
    h_start: int = 0  # table nodes at the start
    h_max: int = 0  # most table nodes the split may choose
    device_max: int = 0  # most device bytes of rows and table together
    split_resize: int = 0  # a new copy of the larger side while the split moves
    auto: bool = False  # the split is measured (no --hist-fraction)
    slot_map_bytes: int = 0  # --hist-order lookups: node lists and hash maps (host)
    score_bytes: int = 0  # --hist-order lookups: the scores while the order is computed


def cache_sizes(config: TrainConfig, n: int, row: int, dims: list[int]) -> CacheSizes:
    from .history import BudgetSplit

    tiers, hist = config.tiers, config.history
    if tiers.cache == "raw":
        k = min(n, tiers.cache_budget_bytes // row)
        return CacheSizes(k_start=k, k_min=k, device_max=k * row)
    if tiers.cache != "refresh":
        return CacheSizes()
    layers = hist.resolved_layers(config.layers)
    table_row = dims[layers[0]] * (2 if hist.dtype == "float16" else 4)
    split = BudgetSplit(tiers.cache_budget_bytes, hist.fraction)
    fractions = [split.hist_fraction] + (list(split.candidates()) if split.automatic else [])
    sizes = []
    for f in fractions:
        h_bytes = split.hist_bytes_at(f)
        k = min(n, (split.budget_bytes - h_bytes) // row)
        h = min(n, h_bytes // (table_row * len(layers)))
        sizes.append((k, h))
    resize = 0
    if split.automatic:
        resize = max(max(k * row for k, _ in sizes), max(h * table_row for _, h in sizes))
    slot_map = scores = 0
    if hist.order == "lookups":
        from .history.slots import score_bytes, slot_map_bytes

        most = min(n, tiers.cache_budget_bytes // (table_row * len(layers)))
        slot_map = len(layers) * slot_map_bytes(most)
        scores = score_bytes(n, len(layers))
    return CacheSizes(
        hist_layers=layers,
        table_row=table_row,
        k_start=sizes[0][0],
        k_min=min(k for k, _ in sizes),
        h_start=sizes[0][1],
        h_max=max(h for _, h in sizes),
        device_max=max(k * row + h * table_row * len(layers) for k, h in sizes),
        split_resize=resize,
        auto=hist.fraction is None,
        slot_map_bytes=slot_map,
        score_bytes=scores,
    )
