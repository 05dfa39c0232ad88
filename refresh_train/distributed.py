"""Data-parallel training on ``torch.distributed`` (DDP), launched with ``torchrun``.

``torchrun --nproc_per_node 2 -m refresh_train --store S ...`` starts one
process per rank; each finds its place in the environment variables
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) and joins a process group (gloo on the
CPU, nccl with ``--device cuda``: rank ``r`` uses ``cuda:LOCAL_RANK``).
Without those variables the trainer is the single-process one, unchanged.

What is split, and why the result equals single-process training:

* *Training batches.* Every rank cuts the epoch into the same global batches
  (:func:`~refresh_train.sampler.epoch_batches`, same seed) and takes the
  seeds ``batch[rank::world]`` of each (:func:`shard`), sampled with the
  global batch's ``batch_seed``. Sampling is a pure function of
  ``(seed, batch_seed, layer, node)``, independent of the other seeds of the
  batch, so a seed's sampled neighbourhood, and so its logits, are the ones
  single-process training computes. Strided rather than contiguous shares,
  as ``torch.utils.data.DistributedSampler`` takes them.
* *Loss.* Rank ``r`` backpropagates ``sum of its cross-entropies * world /
  n``, with ``n`` the labelled seeds (label ``>= 0``) of the whole global
  batch (every rank counts them from the labels it holds, no communication);
  DDP averages the gradients over the ranks, so the update is the gradient
  of the global batch's mean loss over its labelled seeds, as
  ``cross_entropy(..., ignore_index=-1)`` gives single-process.
* *Division.* ``--batch-size`` must be a multiple of the world size, so
  every full batch gives every rank ``batch_size / world`` seeds. The last
  partial batch (the epoch keeps it) may split unevenly, which the loss's
  weighting makes exact; if it has fewer seeds than ranks, a rank left
  without a seed of its own trains on the batch's first seed with its label
  masked (loss 0, zero gradients), so every rank runs the same steps and
  all-reduces, and the update is that of the real seeds. That seed's fetch
  counts in the tier counters, not in ``train_loss``/``train_acc``.
* *Evaluation.* Each evaluation batch's nodes are split the same way
  (``batch[rank::world]``, the global batch's seed); the ranks sum their
  correct and labelled counts, so every rank reports the accuracy
  single-process evaluation gives (``correct / labelled``, the figure
  ``ogb``'s ``Evaluator`` computes).
* *Caches.* Each rank has its own loader, tiers and, with ``--cache
  refresh``, its own history table, which admits from the rank's own
  batches and prunes its own sampling: refresh results differ from
  single-process training (a table fed by half the batches). Every rank
  holds the whole memory plan (its own ``--cache-budget``, host tier,
  windows, topology copy).

Dropout draws from a per-rank stream (``derive_seed(seed, rank)``), so with
``dropout > 0`` the masks differ from single-process training; with
``--dropout 0`` (and ``--cache none|raw``) the weights equal single-process
training's up to float rounding. Batch norm (``--norm batch``) normalises
each rank's share of a batch, as DDP does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from refresh_store.errors import RefreshError

from .config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the command line reads the launch
# before it knows whether it will train (--help stays fast).

__all__ = [
    "DistContext",
    "DistributedAbort",
    "BatchShare",
    "shard",
    "shard_epoch",
    "check_config",
    "share_loss",
    "train_distributed",
]

T = TypeVar("T")

#: Variables torchrun sets that this module reads (``LOCAL_*`` optional).
ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_DROPOUT_TAG = 0xD409


class DistributedAbort(RefreshError):
    """Another rank failed; rank 0 reported why, so this rank exits quietly."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun launch.

    Attributes
    ----------
    rank, world_size
        Global rank and number of processes (all machines).
    local_rank, local_world_size
        Rank and number of processes on this machine (``local_rank`` picks
        the GPU; ``local_world_size`` shares the machine's memory).
    """

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and the console output."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistContext | None:
        """The launch torchrun describes in ``environ``, or ``None`` (not launched by torchrun).

        Raises
        ------
        ConfigError
            Some of the variables are set and others missing or malformed.
        """
        env = os.environ if environ is None else environ
        if "RANK" not in env and "WORLD_SIZE" not in env:
            return None
        missing = [k for k in ENV_KEYS if not env.get(k)]
        if missing:
            raise ConfigError(
                f"RANK/WORLD_SIZE are set but {missing[0]} is not: launch data-parallel "
                "training with torchrun (or unset RANK and WORLD_SIZE for one process)"
            )
        values = {}
        for key, default in (
            ("RANK", None),
            ("WORLD_SIZE", None),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "1"),
        ):
            text = env.get(key, default)
            try:
                values[key] = int(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(
                    f"environment variable {key}={text!r} is not an integer; "
                    "launch data-parallel training with torchrun"
                ) from None
        rank, world = values["RANK"], values["WORLD_SIZE"]
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(
                f"RANK={rank} and WORLD_SIZE={world} do not fit (need 0 <= RANK < WORLD_SIZE); "
                "launch data-parallel training with torchrun"
            )
        local_world = max(1, values["LOCAL_WORLD_SIZE"])
        if not 0 <= values["LOCAL_RANK"] < local_world:
            raise ConfigError(
                f"LOCAL_RANK={values['LOCAL_RANK']} is outside LOCAL_WORLD_SIZE={local_world}; "
                "launch data-parallel training with torchrun"
            )
        return cls(rank, world, values["LOCAL_RANK"], local_world)


def check_config(config: TrainConfig, ctx: DistContext) -> TrainConfig:
    """``config`` as rank ``ctx.rank`` runs it; raises on settings DDP cannot run.

    Only flags and the launch are looked at, so every rank reaches the same
    verdict before any process group exists.

    Raises
    ------
    ConfigError
        ``--batch-size`` not a multiple of the world size, or ``--device
        cuda:N`` (each rank takes ``cuda:LOCAL_RANK``).
    """
    world = ctx.world_size
    if config.batch_size % world:
        lower, upper = config.batch_size // world * world, -(-config.batch_size // world) * world
        fits = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {world} processes "
            f"(WORLD_SIZE): each process trains on batch-size/{world} seeds of every batch; "
            f"use --batch-size {fits}, or another process count (torchrun "
            "--nproc_per_node/--nnodes)"
        )
    device = str(config.device)
    if device.startswith("cuda"):
        if device != "cuda":
            raise ConfigError(
                f"--device {device!r} names one GPU, but under torchrun each process uses "
                "cuda:LOCAL_RANK; pass --device cuda"
            )
        return config.replace(device=f"cuda:{ctx.local_rank}")
    return config


# ---------------------------------------------------------------- sharding
def shard(seeds: NDArray[np.int64], rank: int, world_size: int) -> NDArray[np.int64]:
    """Rank ``rank``'s share of one global batch: ``seeds[rank::world_size]``."""
    return seeds[rank::world_size]


@dataclass(frozen=True)
class BatchShare:
    """What a rank needs to know about the global batch its share comes from.

    Attributes
    ----------
    size
        Seeds of the global batch.
    labelled
        Its seeds with a label (``>= 0``): the loss's denominator.
    pad
        The rank got no seed of its own and trains on a masked stand-in.
    """

    size: int
    labelled: int
    pad: bool


def shard_epoch(
    batches: list[NDArray[np.int64]], labels: NDArray[np.int64], rank: int, world_size: int
) -> tuple[list[NDArray[np.int64]], list[BatchShare]]:
    """This rank's seeds of every global batch of an epoch, and what each step's loss needs.

    A rank left without a seed (a last batch smaller than the world) gets
    the batch's first seed, marked ``pad``: the trainer masks its label.
    """
    own: list[NDArray[np.int64]] = []
    shares: list[BatchShare] = []
    for seeds in batches:
        mine = shard(seeds, rank, world_size)
        pad = len(mine) == 0
        own.append(seeds[:1] if pad else mine)
        labelled = int(np.count_nonzero(labels[seeds] >= 0))
        shares.append(BatchShare(size=len(seeds), labelled=labelled, pad=pad))
    return own, shares


def dropout_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s global torch generator (dropout masks) after the model is built."""
    from .epoch import derive_seed

    return derive_seed(_DROPOUT_TAG, seed, rank)


def share_loss(
    logits: torch.Tensor, labels: torch.Tensor, share: BatchShare, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """This rank's loss, its part of the epoch's loss sum, its labels, its seeds.

    DDP averages gradients over the ranks, so the loss to backpropagate is
    the share's summed cross-entropy times ``world / n`` (``n``: the global
    batch's labelled seeds); the ranks' gradients then average to the
    gradient of the global batch's mean loss. A padding share (no seed of
    its own) has its label masked: loss 0, zero gradients, no seed counted.
    """
    import torch.nn.functional as F

    if share.pad:
        labels = labels.new_full(labels.shape, -1)
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    n = max(1, share.labelled)
    loss = total * (world_size / n)
    # Summed over the ranks: the global batch's mean loss times its seeds,
    # as single-process training adds it up.
    part = total.detach().double() * (share.size / n)
    return loss, part, labels, 0 if share.pad else len(labels)


# ------------------------------------------------------------ collectives
def _dist() -> Any:
    import torch.distributed as dist

    return dist


def gather_all(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order (on every rank)."""
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T | None, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def barrier() -> None:
    """Wait until every rank is here."""
    _dist().barrier()


def merge_over_ranks(record: dict[str, Any], ctx: DistContext | None) -> dict[str, Any]:
    """``record`` merged over the ranks (:func:`~refresh_train.metrics.merge_records`).

    Itself with one process.
    """
    from .metrics import merge_records

    return record if ctx is None else merge_records(gather_all(record))


def sum_over_ranks(values: tuple[float, ...], ctx: DistContext | None) -> tuple[float, ...]:
    """Each of ``values`` summed over the ranks; themselves with one process."""
    if ctx is None:
        return values
    return tuple(sum(v) for v in zip(*gather_all(values)))


def max_over_ranks(value: int, ctx: DistContext | None) -> int:
    """The largest ``value`` of the ranks; itself with one process."""
    return value if ctx is None else max(gather_all(value))


def check_same_store(store: Any) -> None:
    """Refuse stores that differ between the ranks (one copy per machine, say).

    Compares the per-block checksums every store's manifest records, so
    nothing is read but the manifest.

    Raises
    ------
    ConfigError
        Some rank's store is not rank 0's (on every rank).
    """
    import hashlib
    import json

    text = json.dumps(store.manifest.get("checksums"), sort_keys=True)
    mine = (hashlib.sha256(text.encode()).hexdigest(), str(store.path))
    stores = gather_all(mine)
    other = next((r for r, s in enumerate(stores) if s[0] != stores[0][0]), None)
    if other is not None:
        raise ConfigError(
            f"--store differs between the processes: rank {other}'s {stores[other][1]!r} is not "
            f"rank 0's {stores[0][1]!r} (other checksums); give every machine a copy of the "
            "same store (check it with tools/convert.py verify)"
        )


def agree(ctx: DistContext | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it failed on any, fail everywhere.

    A :class:`RefreshError` on one rank would otherwise leave the others
    waiting in their next collective. Rank 0 raises its own error, or that
    of the first rank that failed (named); the other ranks raise
    :class:`DistributedAbort`, which the command line does not print, so
    the problem is reported once.
    """
    if ctx is None:
        return fn()
    error: RefreshError | None = None
    result: Any = None
    try:
        result = fn()
    except RefreshError as exc:
        error = exc
    failed = [(r, m) for r, m in enumerate(gather_all(None if error is None else str(error))) if m]
    if not failed:
        return result
    if ctx.is_main:
        if error is not None:
            raise error
        rank, message = failed[0]
        raise RefreshError(f"rank {rank}: {message}")
    raise DistributedAbort(f"rank {failed[0][0]} failed: {failed[0][1]}")


# -------------------------------------------------------------- checkpoints
# Rank 0 writes ``checkpoint.pt`` (model, optimiser, records, its own cache
# state) with every rank's RNG states in ``extra["rng_ranks"]``. A rank whose
# cache mode keeps state (``--cache refresh``: its own history table) writes
# it to ``cache-rank{r}.epoch{E}.pt`` in its own checkpoint directory first,
# and removes the previous epoch's only once ``checkpoint.pt`` is replaced,
# so a crash at any moment leaves a checkpoint whose files are all there.
# On resume rank 0 reads ``checkpoint.pt`` and sends it to every rank: the
# other machines need only their own cache-state files.


def save_checkpoint_ranks(
    directory: str | Path,
    ctx: DistContext,
    epoch: int,
    extra: dict[str, Any],
    write: Callable[[dict[str, Any]], object],
) -> None:
    """Every rank's part of the checkpoint of ``epoch`` finished epochs.

    ``extra`` is this rank's (``step``, ``cache``); ``write(extra)`` writes
    ``checkpoint.pt`` and is called on rank 0 only.
    """
    from .checkpoint import capture_rng_state, prune_rank_states, save_rank_state

    rng = gather_all(capture_rng_state())
    cache = extra.get("cache") or {}
    if not ctx.is_main and cache:
        save_rank_state(directory, ctx.rank, epoch, cache)
    barrier()
    if ctx.is_main:
        write(
            {
                **extra,
                "world_size": ctx.world_size,
                "rng_ranks": rng,
                "rank_cache_states": bool(cache),
            }
        )
    barrier()
    if not ctx.is_main:
        prune_rank_states(directory, ctx.rank, epoch)


def load_checkpoint_everywhere(directory: str | Path, ctx: DistContext) -> dict[str, Any]:
    """The checkpoint rank 0 reads, on every rank (rank 0's cache state on rank 0 only).

    Its tensors are on the CPU (``load_state_dict`` copies them to the device).

    Raises
    ------
    CheckpointError
        Rank 0 could not read it (on every rank, with rank 0's message).
    """
    from .checkpoint import CheckpointError, load_checkpoint

    if ctx.is_main:
        try:
            state = load_checkpoint(directory, map_location="cpu")
        except CheckpointError as exc:
            broadcast(str(exc))
            raise
        own_cache = state["extra"].get("cache", {})
        state["extra"] = {k: v for k, v in state["extra"].items() if k != "cache"}
        broadcast(state)
        state["extra"]["cache"] = own_cache
        return state
    state = broadcast(None)
    if isinstance(state, str):
        raise CheckpointError(state)
    return state


def check_world_size(state: dict[str, Any], directory: str | Path, world_size: int) -> None:
    """Refuse a checkpoint written by another number of processes.

    Each rank's cache state and RNG belong to its shares of the batches, so
    a run resumes with as many processes as wrote it.

    Raises
    ------
    CheckpointError
        ``state`` was written by another world size.
    """
    from .checkpoint import CheckpointError

    written_by = int(state["extra"].get("world_size", 1))
    if written_by != world_size:
        raise CheckpointError(
            f"checkpoint in {str(directory)!r} was written by {written_by} process(es) and this "
            f"run has {world_size} (WORLD_SIZE); resume with as many (torchrun "
            "--nproc_per_node/--nnodes, or no torchrun for 1) or start a new run"
        )


def rank_resume_state(
    state: dict[str, Any], directory: str | Path, ctx: DistContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """This rank's RNG state and cache state from a checkpoint of ``ctx.world_size`` ranks."""
    from .checkpoint import load_rank_state

    extra = state["extra"]
    rng = extra["rng_ranks"][ctx.rank]
    if ctx.is_main or not extra.get("rank_cache_states"):
        return rng, extra.get("cache", {})
    return rng, load_rank_state(directory, ctx.rank, int(state["epoch"]))


# --------------------------------------------------------------- the run
def init_process_group(ctx: DistContext, device: str) -> bool:
    """Join the launch's process group unless this process already has; whether it joined.

    gloo for the CPU, nccl for CUDA (the rank's GPU made current first).
    """
    import torch

    dist = _dist()
    if dist.is_initialized():
        return False
    backend = "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        backend = "nccl"
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
    return True


def train_distributed(config: TrainConfig, ctx: DistContext | None = None) -> list[dict[str, Any]]:
    """Run (or resume) data-parallel training as one rank of a torchrun launch.

    Parameters
    ----------
    config
        The run's settings (the same on every rank).
    ctx
        This process's place; default :meth:`DistContext.from_env`.

    Returns
    -------
    list of dict
        Every epoch's record, summed over the ranks (the same on every rank).

    Raises
    ------
    ConfigError
        Not launched by torchrun, or settings DDP cannot run
        (:func:`check_config`).
    DistributedAbort
        Another rank failed (rank 0 raises the error itself).
    """
    import torch

    from .trainer import Trainer

    ctx = ctx if ctx is not None else DistContext.from_env()
    if ctx is None:
        raise ConfigError("train_distributed needs a torchrun launch (RANK, WORLD_SIZE, ...)")
    try:
        config = check_config(config, ctx)
    except ConfigError:
        if ctx.is_main:
            raise
        raise DistributedAbort("rank 0 reports the problem") from None
    if str(config.device).startswith("cuda"):
        # A fact of this machine: its first process says it (one line per machine).
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if ctx.local_rank >= gpus:
            if ctx.local_rank > 0 and gpus == 0:
                raise DistributedAbort("local rank 0 reports the problem")
            raise ConfigError(
                f"--device cuda: process {ctx.local_rank} of this machine (LOCAL_RANK) needs "
                f"a GPU of its own but torch sees {gpus}; run at most {gpus} processes per "
                "machine (torchrun --nproc_per_node) or use --device cpu"
            )
    joined = init_process_group(ctx, str(config.device))
    try:
        with Trainer(config, dist=ctx) as trainer:
            return trainer.run()
    finally:
        if joined:
            _dist().destroy_process_group()
