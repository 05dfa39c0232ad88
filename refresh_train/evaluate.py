"""Evaluation: sampled mini-batch inference and exact layer-wise inference out of core.

Two ways to get logits for a set of target nodes (valid and test):

*Sampled* (:func:`predict_sampled`): the training pipeline in ``eval()``
mode, with the training fanouts or others (``-1`` everywhere = the exact
full neighbourhood, at the cost of its exponential blow-up).

*Layer-wise* (:func:`predict_layerwise`): exact full-neighbourhood
inference one layer at a time, as DGL and PyG do for large graphs. Layer
``l`` is computed for every node from full one-hop blocks (fanout ``-1``)
in chunks of destination nodes; its output ``h^(l+1)`` goes to a temporary
file on disk, written by row ranges with ``pwrite`` and read back by the
I/O scheduler, so RAM holds only one chunk's blocks and rows whatever the
number of nodes. Only the last layer is restricted to the target nodes.
Each node is computed once per layer, so the cost is linear in the graph.

Both read raw features through an exact tier chain with its own counters
(:meth:`refresh_train.modes.CacheMode.eval_tiers`): evaluation never uses a
cache that could change its result. Accuracy comes from
``ogb.nodeproppred.Evaluator``, or from ``ogb.lsc.MAG240MEvaluator`` for a
store converted from MAG240M (the manifest records the source).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.format import RowRegion
from refresh_store.io import IOConfig, IOScheduler

from .batch import MiniBatch
from .config import EvalConfig
from .epoch import derive_seed
from .loader import BatchLoader
from .models import BlockGNN
from .sampler import NeighborSampler
from .tiers import FeatureTier

__all__ = [
    "MAG240M_EVALUATOR",
    "OGBN_EVALUATOR",
    "accuracy",
    "evaluate",
    "predict_layerwise",
    "predict_sampled",
    "store_evaluator",
    "store_source",
]

# Every ogbn node task scores plain accuracy; this name only selects that metric.
_OGB_ACC_TASK = "ogbn-papers100M"
#: Official evaluators by name: MAG240M stores are scored by OGB-LSC's, others by ogbn's.
OGBN_EVALUATOR = "ogb.nodeproppred.Evaluator"
MAG240M_EVALUATOR = "ogb.lsc.MAG240MEvaluator"
_EVAL_SEED_TAG = 0xE7A1


def accuracy(
    y_true: NDArray[np.int64], y_pred: NDArray[np.int64], *, evaluator: str = OGBN_EVALUATOR
) -> float | None:
    """Accuracy as the named official evaluator computes it (``None`` for no nodes).

    ``evaluator`` is :data:`OGBN_EVALUATOR` (``ogb.nodeproppred.Evaluator``)
    or :data:`MAG240M_EVALUATOR` (``ogb.lsc.MAG240MEvaluator``, 1-D inputs).
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if len(y_true) == 0:
        return None
    if evaluator == MAG240M_EVALUATOR:
        from ogb.lsc import MAG240MEvaluator

        got = MAG240MEvaluator().eval(
            {"y_true": torch.from_numpy(y_true), "y_pred": torch.from_numpy(y_pred)}
        )
        return float(got["acc"])
    if evaluator != OGBN_EVALUATOR:
        raise ValueError(f"evaluator must be {OGBN_EVALUATOR!r} or {MAG240M_EVALUATOR!r}")
    from ogb.nodeproppred import Evaluator

    pair = {"y_true": y_true.reshape(-1, 1), "y_pred": y_pred.reshape(-1, 1)}
    return float(Evaluator(_OGB_ACC_TASK).eval(pair)["acc"])


def store_source(store: Any) -> dict[str, Any]:
    """The manifest's ``source`` entry (format, MAG240M test split) of an open store."""
    source = getattr(store, "manifest", {}).get("source", {})
    return source if isinstance(source, dict) else {}


def store_evaluator(store: Any) -> str:
    """The official evaluator of a store's task: OGB-LSC's for a MAG240M store."""
    return MAG240M_EVALUATOR if store_source(store).get("format") == "mag240m" else OGBN_EVALUATOR


def _to_device(batch: MiniBatch, device: torch.device) -> MiniBatch:
    if device.type == "cpu":
        return batch
    return batch.to(device, non_blocking=True)


@torch.no_grad()
def predict_sampled(
    model: BlockGNN,
    sampler: NeighborSampler,
    tiers: FeatureTier,
    nodes: NDArray[np.int64],
    *,
    batch_size: int,
    device: torch.device,
    prefetch_batches: int = 2,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """Logits (on the CPU) from sampled neighbourhoods.

    Batches are drawn with fixed batch seeds, so every call samples the same
    neighbourhoods. The model is put in ``eval()`` mode and left there.
    With ``shard=(rank, world)`` only the nodes at :func:`shard_positions`
    are computed, each with its batch's seed (so with the logits a single
    process gives them), and the result has one row per such node, in order.
    """
    model.eval()
    nodes = np.array(nodes, dtype=np.int64)  # a writable copy: batches become tensors
    rank, world = shard
    parts, seeds = [], []
    for i, start in enumerate(range(0, len(nodes), batch_size)):
        part = nodes[start : start + batch_size][rank::world]
        if len(part):
            parts.append(np.ascontiguousarray(part))
            seeds.append(derive_seed(_EVAL_SEED_TAG, i))
    num_out = sum(len(p) for p in parts)

    def fetch(batch: MiniBatch) -> MiniBatch:
        batch.features = tiers.read(batch.input_nodes)
        return _to_device(batch, device)

    out = torch.empty((num_out, model.dims[-1]), dtype=torch.float32)
    loader = BatchLoader(parts, seeds, sampler.sample, fetch, prefetch_batches)
    pos = 0
    for batch in loader:
        x = batch.features
        logits = model(batch, x)  # float16 rows go in as they are (the models cast per chunk)
        out[pos : pos + batch.num_seeds] = logits.float().cpu()
        pos += batch.num_seeds
    return out


def shard_positions(n: int, batch_size: int, shard: tuple[int, int]) -> NDArray[np.int64]:
    """Positions (of ``n`` evaluation nodes) that rank ``shard[0]`` of ``shard[1]`` evaluates.

    The nodes are cut into batches of ``batch_size`` as a single process cuts
    them, and each batch is split ``batch[rank::world]``, as training batches are.
    """
    rank, world = shard
    pos = np.arange(n, dtype=np.int64)
    if world == 1:
        return pos
    return np.concatenate(
        [pos[i : i + batch_size][rank::world] for i in range(0, n, batch_size)]
        or [np.empty(0, dtype=np.int64)]
    )


class _RowFile:
    """A temporary ``[n, d]`` float32 array on disk: rows written by range, read by id."""

    def __init__(self, path: Path, n: int, d: int) -> None:
        self.path = path
        self.n, self.d = n, d
        self.row_bytes = 4 * d
        with open(path, "wb") as f:
            f.truncate(n * self.row_bytes)
        self._fd = os.open(path, os.O_WRONLY)
        self._reader: IOScheduler | None = None
        self.bytes_read = 0

    def write(self, start: int, rows: NDArray[np.float32]) -> None:
        data = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], start * self.row_bytes + done)

    def finish_writing(self) -> None:
        os.close(self._fd)
        self._fd = -1
        region = RowRegion(
            path=str(self.path),
            nrows=self.n,
            row_shape=(self.d,),
            dtype=np.dtype(np.float32),
            chunk_rows=max(1, self.n),
            chunk_offsets=np.zeros(1, dtype=np.int64),
        )
        # Buffered: the file was just written, its pages are likely still cached.
        self._reader = IOScheduler(region, IOConfig(mode="buffered", queue_depth=8))

    def read(self, ids: NDArray[np.int64]) -> torch.Tensor:
        if self._reader is None:
            raise RuntimeError("finish_writing() comes before read()")
        self.bytes_read += len(ids) * self.row_bytes
        return torch.from_numpy(self._reader.gather(ids))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.path.unlink(missing_ok=True)


@torch.no_grad()
def predict_layerwise(
    model: BlockGNN,
    indptr: NDArray[np.int64],
    indices: NDArray[np.integer],
    tiers: FeatureTier,
    nodes: NDArray[np.int64],
    *,
    batch_size: int,
    device: torch.device,
    tmp_dir: str | Path | None = None,
    prefetch_batches: int = 2,
    stats: dict[str, Any] | None = None,
    edge_type: NDArray[np.int8] | None = None,
) -> torch.Tensor:
    """Exact logits ``[len(nodes), C]`` (CPU) by layer-wise full-neighbourhood inference.

    Parameters
    ----------
    model
        Put in ``eval()`` mode and left there.
    indptr, indices
        The CSC topology (store memmaps).
    tiers
        Where layer 0 reads raw features.
    nodes
        Target nodes of the last layer.
    batch_size
        Destination nodes per one-layer block.
    device
        Compute device.
    tmp_dir
        Directory of the per-layer temporary files (``[N, hidden]`` float32
        each, at most two at a time); default: the system's temporary
        directory.
    prefetch_batches
        Blocks sampled and read ahead of compute.
    stats
        If given, ``hidden_bytes_read`` and ``hidden_bytes_written`` are
        added to it (traffic of the temporary files).
    edge_type
        The store's edge types, for a relational model (its blocks carry
        each edge's relation).
    """
    model.eval()
    nodes = np.array(nodes, dtype=np.int64)  # a writable copy: batches become tensors
    num_nodes = len(indptr) - 1
    one_hop = NeighborSampler(indptr, indices, [-1], seed=0, **_relations(model, edge_type))
    written = 0
    prev: _RowFile | None = None
    with tempfile.TemporaryDirectory(prefix="refresh-layerwise-", dir=tmp_dir) as tmp:
        try:
            for layer in range(model.num_layers):
                last = layer == model.num_layers - 1
                targets = nodes if last else np.arange(num_nodes, dtype=np.int64)
                parts = [targets[i : i + batch_size] for i in range(0, len(targets), batch_size)]
                source = prev

                def fetch(batch: MiniBatch, source: _RowFile | None = source) -> MiniBatch:
                    ids = batch.input_nodes
                    batch.features = tiers.read(ids) if source is None else source.read(ids.numpy())
                    return _to_device(batch, device)

                if last:
                    out: _RowFile | torch.Tensor = torch.empty(
                        (len(nodes), model.dims[-1]), dtype=torch.float32
                    )
                else:
                    out = _RowFile(
                        Path(tmp) / f"h{layer + 1}.f32", num_nodes, model.dims[layer + 1]
                    )
                loader = BatchLoader(
                    parts, [0] * len(parts), one_hop.sample, fetch, prefetch_batches
                )
                pos = 0
                for batch in loader:
                    x = batch.features.to(device, non_blocking=True)
                    y = model.forward_layer(layer, batch.blocks[0], x).float().cpu()
                    if isinstance(out, _RowFile):
                        out.write(pos, y.numpy())
                        written += y.numel() * 4
                    else:
                        out[pos : pos + len(y)] = y
                    pos += len(y)
                if prev is not None:
                    if stats is not None:
                        stats["hidden_bytes_read"] = (
                            stats.get("hidden_bytes_read", 0) + prev.bytes_read
                        )
                    prev.close()
                if isinstance(out, _RowFile):
                    out.finish_writing()
                    prev = out
                else:
                    prev = None
        finally:
            if prev is not None:
                prev.close()
    if stats is not None:
        stats["hidden_bytes_written"] = stats.get("hidden_bytes_written", 0) + written
    return out  # type: ignore[return-value]  # the last layer's tensor


def _relations(model: BlockGNN, edge_type: NDArray[np.int8] | None) -> dict[str, Any]:
    """Per-relation sampling for a relational model (it has ``num_relations``)."""
    num = getattr(model, "num_relations", None)
    if not num or edge_type is None:
        return {}
    return {"edge_type": edge_type, "num_relations": num}


def evaluate(
    model: BlockGNN,
    store: Any,
    tiers: FeatureTier,
    config: EvalConfig,
    *,
    train_fanouts: tuple[int, ...],
    device: torch.device,
    seed: int = 0,
    prefetch_batches: int = 2,
    topology: tuple[NDArray[np.int64], NDArray[np.integer]] | tuple | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Validation and test accuracy of ``model``, with evaluation's own counters.

    Parameters
    ----------
    model
        Evaluated in ``eval()`` mode; its training mode is restored after.
    store
        The open store (topology, labels and splits).
    tiers
        An exact feature chain (its counters are reset here and reported with
        an ``eval_`` prefix).
    config
        Mode, fanouts and batch size.
    train_fanouts
        Used when ``config.fanouts`` is ``None``.
    device
        Compute device.
    seed
        Seed of sampled evaluation's sampler.
    prefetch_batches
        Batches sampled and read ahead of compute.
    topology
        ``(indptr, indices)`` to sample from instead of the store's memory
        maps: the trainer passes its sampler's, a copy in RAM when it made
        one, so that evaluation does not read the topology into the
        process a second time; a third entry, the edge types (or None), is
        used by relational models (default: the store's).
    shard
        ``(rank, world)`` of data-parallel evaluation: only this rank's
        share of the nodes (:func:`shard_positions`) is evaluated, and the
        result also has ``valid_correct``, ``valid_labelled``,
        ``test_correct`` and ``test_labelled`` for the ranks to sum (its
        accuracies are those of the share). Layer-wise inference computes
        the hidden layers of every node on each rank (they need the
        previous layer of the whole graph), and only the last layer of the
        share.

    Returns
    -------
    dict with ``valid_acc``, ``test_acc``, ``eval_s``, ``eval_mode`` and the
    ``eval_``-prefixed tier counters.
    """
    was_training = model.training
    t0 = time.perf_counter()
    tiers.reset_stats()
    valid = np.asarray(store.valid_idx, dtype=np.int64)
    test = np.asarray(store.test_idx, dtype=np.int64)
    all_nodes = nodes = np.concatenate([valid, test])
    positions = None
    if shard is not None:
        positions = shard_positions(len(nodes), config.batch_size, shard)
        nodes = nodes[positions]
    indptr, indices, *typed = topology if topology is not None else (store.indptr, store.indices)
    edge_type = typed[0] if typed and typed[0] is not None else getattr(store, "edge_type", None)
    extra: dict[str, Any] = {}
    try:
        if config.mode == "layerwise":
            logits = predict_layerwise(
                model,
                indptr,
                indices,
                tiers,
                nodes,
                batch_size=config.batch_size,
                device=device,
                tmp_dir=config.tmp_dir,
                prefetch_batches=prefetch_batches,
                stats=extra,
                edge_type=edge_type,
            )
        else:
            fanouts = config.fanouts if config.fanouts is not None else train_fanouts
            sampler = NeighborSampler(
                indptr, indices, list(fanouts), seed=seed, **_relations(model, edge_type)
            )
            logits = predict_sampled(
                model,
                sampler,
                tiers,
                all_nodes,
                batch_size=config.batch_size,
                device=device,
                prefetch_batches=prefetch_batches,
                shard=(0, 1) if shard is None else shard,
            )
    finally:
        model.train(was_training)
    pred = logits.argmax(dim=1).numpy()
    labels = np.asarray(store.labels[nodes], dtype=np.int64)
    labelled = labels >= 0
    in_valid = (positions if positions is not None else np.arange(len(nodes))) < len(valid)
    out: dict[str, Any] = {}
    evaluator = store_evaluator(store)
    for split, mask in (("valid", in_valid), ("test", ~in_valid)):
        mask = mask & labelled
        out[f"{split}_acc"] = accuracy(labels[mask], pred[mask], evaluator=evaluator)
        if shard is not None:
            out[f"{split}_correct"] = int(np.count_nonzero(labels[mask] == pred[mask]))
            out[f"{split}_labelled"] = int(np.count_nonzero(mask))
    out.update({"eval_mode": config.mode, "eval_s": time.perf_counter() - t0})
    out["evaluator"] = evaluator
    out.update({f"eval_{k}": v for k, v in tiers.stats().items()})
    out.update({f"eval_{k}": v for k, v in extra.items()})
    return out
