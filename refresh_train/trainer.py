"""The out-of-core trainer: epochs of pipelined mini-batches through the feature tiers.

One epoch: ``train_idx`` is shuffled for ``(seed, epoch)`` and cut into
batches (the last partial batch is kept); a :class:`~refresh_train.loader.BatchLoader`
samples and fetches them ahead of compute in background threads; the main
thread runs forward, backward and the Adam step. Then evaluation (sampled or
layer-wise), one metrics record (see :mod:`refresh_train.metrics`), the table
of all epochs so far, and an atomic checkpoint.

Under torchrun, each process is one rank of data-parallel training (see
:mod:`refresh_train.distributed`): it trains on its share of every global
batch through its own loader and caches, the model is wrapped in
``DistributedDataParallel``, evaluation is sharded, records are summed over
the ranks, and only rank 0 writes metrics and checkpoints.

A run stops early without losing its work (:mod:`refresh_train.stopping`):
Ctrl-C at the end of the current batch, a failed read of the store or a full
disk in one line; a mid-epoch checkpoint lets ``--resume`` continue with the
next batch to the result of an uninterrupted run.

Everything that depends on ``--cache`` goes through the
:class:`~refresh_train.modes.CacheMode` hooks (``sample``, ``max_ahead``,
``stage``, ``fetch``, ``forward``, ``after_step``, ``end_epoch``,
``eval_tiers``), so a new cache mode needs no change here.

Library use::

    from refresh_train.config import TrainConfig
    from refresh_train.trainer import train
    records = train(TrainConfig(store="papers.refresh", epochs=3, progress=False))
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from tqdm import tqdm

from refresh_store.errors import RefreshError
from refresh_store.store import open_store

from . import distributed as ddp
from .batch import MiniBatch
from .checkpoint import (
    CHECKPOINT_NAME,
    RESUME_KEYS,
    CheckpointError,
    CheckpointWriteError,
    check_resume_config,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig
from .distributed import DistContext
from .epoch import batch_seed, epoch_batches, num_batches
from .evaluate import evaluate
from .heap import limit_arenas, release_free_memory
from .loader import BatchLoader
from .memory_fit import fit_memory
from .metrics import JsonlWriter, MetricsWriteError, RssMonitor, format_table, hit_rates
from .models import build_model, model_options, sampler_options
from .modes import CACHE_MODES
from .predict import predict_split, resolve_target
from .sampler import NeighborSampler
from .stopping import EpochProgress, SigintLatch, TrainingInterrupted, TrainingStopped
from .store_checks import check_model_store, check_split_labels, check_store
from .tiers import resolve_device

__all__ = ["Trainer", "train", "RESUME_KEYS", "TrainingInterrupted", "TrainingStopped"]


def available_device(name: str) -> torch.device:
    """The (indexed) torch device for ``name``; raises :class:`ConfigError` if it is absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for but torch sees no CUDA device; use --device cpu"
        )
    return resolve_device(device)


class Trainer:
    """State of one training run (see :func:`train` for the one-call API).

    Parameters
    ----------
    config
        The run's settings.
    dist
        This process's rank in a torchrun launch (its process group already
        joined; see :func:`refresh_train.distributed.train_distributed`), or
        ``None`` for single-process training.

    Raises
    ------
    refresh_store.errors.StoreFormatError
        The store cannot be opened.
    ConfigError
        A setting does not fit the store or the machine.
    CheckpointError
        ``config.resume`` and no usable checkpoint.
    refresh_train.distributed.DistributedAbort
        Another rank failed to start (rank 0 raises that rank's error).
    """

    def __init__(self, config: TrainConfig, dist: DistContext | None = None) -> None:
        # Before the I/O and loader threads exist: they share two malloc arenas.
        limit_arenas()
        self.config = config
        self.dist = dist
        self.rank = dist.rank if dist is not None else 0
        self.world = dist.world_size if dist is not None else 1
        self.is_main = self.rank == 0
        try:
            self._build(config)
        except BaseException:
            # __exit__ never runs for a constructor that raised: release
            # what was opened (the disk tier's file and I/O threads) now,
            # without letting a failure to release hide the error itself.
            with suppress(Exception):
                self.close()
            raise

    def _build(self, config: TrainConfig) -> None:
        dist = self.dist
        # Under DDP a rank that fails here must not leave the others waiting
        # in a collective: every rank learns of it and stops (ddp.agree).
        ddp.agree(dist, lambda: self._setup(config))
        if dist is not None:
            ddp.agree(dist, lambda: ddp.check_same_store(self.store))
        self.records: list[dict[str, Any]] = []
        self._plan_recorded = False
        self.epochs_done = 0
        self.step = 0
        self._shares: list[ddp.BatchShare] = []
        # A resumed partial epoch, and the last epoch's sums before evaluation.
        self._resumed: EpochProgress | None = None
        self._trained: EpochProgress | None = None
        self._sigint = SigintLatch()
        if config.resume:
            ddp.agree(dist, self._resume)
        self.trained_model: torch.nn.Module = self.model
        if dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            # Inputs are on the device already (device_ids=None: DDP moves nothing).
            self.trained_model = DistributedDataParallel(self.model)
        self.metrics = (
            JsonlWriter(config.metrics_out, self.records if config.resume else None)
            if config.metrics_out and self.is_main
            else None
        )
        self.rss = RssMonitor()

    def _setup(self, config: TrainConfig) -> None:
        self.device = available_device(config.device)
        self.store = open_store(config.store)
        check_store(config, self.store)
        store = self.store
        if store.num_classes < 1:
            raise ConfigError(f"store {config.store!r} has no classes to learn (num_classes=0)")
        check_model_store(config, store)
        if config.predict_out is not None and self.dist is not None:
            raise ConfigError(
                "--predict-out runs in one process: train under torchrun, then predict with "
                "the same flags, --resume and --predict-out in a single process"
            )
        # Checked now, not after the last epoch: a bad split or an existing file stops the run here.
        self.predict_target = resolve_target(config, store)
        self.prediction: dict[str, Any] | None = None
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = build_model(
            config.model,
            in_dim=store.feature_dim,
            hidden=config.hidden,
            out_dim=store.num_classes,
            num_layers=config.layers,
            dropout=config.dropout,
            norm=config.norm,
            **model_options(config.model, store),
        )
        available = None
        if self.dist is not None:
            # Dropout masks from a stream of this rank's own.
            torch.manual_seed(ddp.dropout_seed(config.seed, self.rank))
            # The processes on this machine share its memory, each with a whole plan.
            available = int(psutil.virtual_memory().available) // self.dist.local_world_size
        # Sized before anything big is allocated or anything written: a run
        # that cannot fit stops here.
        # Depths the user left at their defaults are lowered until the plan fits.
        fit = fit_memory(config, store, model=model, available_bytes=available)
        self.plan, config, self.fit_changes = fit.plan, fit.config, fit.changes
        self.config = config
        if config.progress and self.is_main:
            print(self.plan.format_table(), flush=True)
        if fit.changes and self.is_main:
            print(fit.describe(), file=sys.stderr, flush=True)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        # The MLP reads only its seeds' features: sampling neighbours would be wasted I/O.
        self.fanouts = (0,) * config.layers if config.model == "mlp" else config.fanouts
        self.eval_fanouts = config.eval.fanouts or self.fanouts
        self.cache = CACHE_MODES[config.tiers.cache](
            store,
            config.tiers,
            self.device,
            dims=self.model.dims,
            history=config.history,
            fanouts=self.fanouts,
            seed=config.seed,
        )
        self.cache.keep_batch_buffers(
            self.plan.batch_buffers,
            self.plan.eval_batch_buffers,
            lower=self.plan.lower_batch_buffers,
        )
        self.sampler = NeighborSampler(
            store.indptr,
            store.indices,
            list(self.fanouts),
            seed=config.seed,
            in_memory=self.plan.topology_in_ram,
            **sampler_options(config.model, store),
        )
        self.row_bytes = store.region("features").row_bytes
        self.labels = np.asarray(store.labels, dtype=np.int64)
        check_split_labels(config, store, self.labels)

    # ------------------------------------------------------------------ resume
    def _resume(self) -> None:
        directory = self.config.checkpoint_dir
        assert directory is not None  # TrainConfig checks it
        if self.dist is None:
            state = load_checkpoint(directory, map_location=self.device)
        else:
            state = ddp.load_checkpoint_everywhere(directory, self.dist)
        check_resume_config(state["config"], self.config.to_dict(), directory)
        ddp.check_world_size(state, directory, self.world)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.records = list(state["records"])
        self.epochs_done = int(state["epoch"])
        self.step = int(state["extra"].get("step", 0))
        mid = state["extra"].get("mid_epoch")
        if mid is not None:
            self._resumed = EpochProgress.from_state(mid)
            if self._resumed.epoch != self.epochs_done or self.dist is not None:
                raise CheckpointError(
                    f"checkpoint in {directory!r} stopped in epoch {self._resumed.epoch + 1} "
                    f"after {self.epochs_done} finished epochs"
                    + (" and resumes only in one process" if self.dist is not None else "")
                    + "; start a new run without --resume"
                )
        if self.dist is None:
            rng, cache_state = state["rng"], state["extra"].get("cache", {})
        else:
            rng, cache_state = ddp.rank_resume_state(state, directory, self.dist)
        restore_rng_state(rng)
        self.cache.load_state_dict(cache_state)

    # ------------------------------------------------------------------ stages
    def _sampling(self, batch_seeds: list[int], first_step: int):
        """The loader's sample function for batches trained at steps ``first_step, ...``."""
        calls = iter(enumerate(batch_seeds))

        def sample(seeds: np.ndarray, bseed: int) -> MiniBatch:
            # The loader samples its batches once each, in order, from one thread.
            i, expected = next(calls)
            if bseed != expected:
                raise RuntimeError(f"batch {i} sampled out of order (batch seed {bseed})")
            return self.cache.sample(self.sampler, seeds, bseed, first_step + i)

        return sample

    def _fetch(self, batch: MiniBatch) -> MiniBatch:
        batch = self.cache.fetch(batch)
        batch.labels = torch.from_numpy(self.labels[batch.seeds.numpy()])
        if self.device.type != "cpu":
            batch = batch.to(self.device, non_blocking=True)
        return batch

    def make_loader(self, epoch: int, start: int = 0) -> BatchLoader:
        """The loader of epoch ``epoch`` (0-based) of this run, from its batch ``start`` on."""
        cfg = self.config
        parts = list(epoch_batches(self.store.train_idx, cfg.batch_size, cfg.seed, epoch))
        seeds = [batch_seed(epoch, i) for i in range(len(parts))]
        parts, seeds = parts[start:], seeds[start:]
        if self.dist is not None:
            # This rank's share of each global batch, sampled with the global batch's seed.
            parts, self._shares = ddp.shard_epoch(parts, self.labels, self.rank, self.world)
        return self.loader(parts, seeds)

    def loader(self, seed_batches: list[np.ndarray], batch_seeds: list[int]) -> BatchLoader:
        """A training loader over these seed batches, trained from the current step on."""
        return BatchLoader(
            seed_batches,
            batch_seeds,
            self._sampling(list(batch_seeds), self.step),
            self._fetch,
            self.config.loader.prefetch_batches,
            stage=self.cache.stage,
            stage_batches=self.cache.lookahead_batches(),
            max_ahead=self.cache.max_ahead(),
            budget_bytes=self.plan.loader_budget_bytes,
            batch_bytes=lambda batch: batch.nbytes(self.row_bytes),
        )

    # ------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training nodes; the record's training part.

        Raises
        ------
        TrainingStopped
            A batch could not be loaded (a read of the store failed); the
            steps done so far are saved first (see :mod:`refresh_train.stopping`).
        TrainingInterrupted
            SIGINT: stopped after the batch it came in, saved the same way.
        """
        cfg = self.config
        self.cache.reset_stats()
        done = self._resumed if self._resumed is not None else EpochProgress(epoch, 0)
        self._resumed = None
        start = done.batches_done
        loader = self.make_loader(epoch, start)
        self.model.train()
        compute_s = 0.0
        loss_sum = torch.tensor(done.loss_sum, dtype=torch.float64, device=self.device)
        correct = torch.tensor(done.correct, dtype=torch.int64, device=self.device)
        seen = done.seen
        i = 0  # batches of this call done

        def progress() -> EpochProgress:
            return EpochProgress(
                epoch, start + i, float(loss_sum.item()), int(correct.item()), seen
            )

        bar = tqdm(
            total=start + len(loader),
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=None if (cfg.progress and self.is_main) else True,  # None: only on a TTY
            leave=False,
            file=sys.stderr,
        )
        t_epoch = time.perf_counter()
        batches = iter(loader)
        try:
            # Each batch is deleted before the next is asked for: the serial loader
            # fetches the next one into the buffer the memory plan counted once.
            while True:
                try:
                    batch = next(batches, None)
                except (RefreshError, OSError) as exc:
                    if self.dist is not None:
                        raise
                    # A stage failed (a read of the store): the steps before are whole.
                    raise TrainingStopped(f"{exc}; {self._save_progress(progress())}") from exc
                if batch is None:
                    break
                t0 = time.perf_counter()
                if self.device.type == "cuda" and batch.features is not None:
                    # Made on the tiers' stream; keep it alive until this stream is done.
                    batch.features.record_stream(torch.cuda.current_stream(self.device))
                logits = self.cache.forward(self.trained_model, batch)
                labels = batch.labels
                if self.dist is None:
                    loss = F.cross_entropy(logits, labels, ignore_index=-1)
                    n = batch.num_seeds
                    loss_part = loss.detach().double() * n
                else:
                    share = self._shares[i]
                    loss, loss_part, labels, n = ddp.share_loss(logits, labels, share, self.world)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.cache.after_step(batch, logits.detach(), self.step)
                self.step += 1
                loss_sum += loss_part
                correct += (logits.detach().argmax(dim=1) == labels).sum()
                seen += n
                del batch, logits, labels, loss
                i += 1
                compute_s += time.perf_counter() - t0
                bar.update(1)
                if cfg.progress:
                    rates = hit_rates(self.cache.stats())
                    bar.set_postfix(
                        {f"hit_{k}": f"{v:.0%}" for k, v in rates.items()}, refresh=False
                    )
                if self._sigint.requested:
                    raise TrainingInterrupted(self._save_progress(progress()))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the loader's threads now, not when the frame is collected
            bar.close()
        self._trained = progress()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_time = time.perf_counter() - t_epoch
        stats = self.cache.stats()
        self.cache.end_epoch()
        times = loader.times
        loss_total, correct_total, seen = ddp.sum_over_ranks(
            (float(loss_sum.item()), int(correct.item()), seen), self.dist
        )
        record = {
            "epoch": epoch + 1,
            "epoch_time_s": epoch_time,
            "sample_s": times.sample_s,
            "stage_s": times.stage_s,
            "fetch_s": times.fetch_s,
            "data_wait_s": times.wait_s,
            "compute_s": compute_s,
            "batches": times.batches,
            "batches_per_s": times.batches / epoch_time if epoch_time > 0 else 0.0,
            "loader_peak_bytes": loader.peak_bytes_in_flight,
            "train_loss": loss_total / max(1, seen),
            "train_acc": correct_total / max(1, seen),
            **{k: v for k, v in stats.items()},
            **{f"hit_rate_{k}": v for k, v in hit_rates(stats).items()},
        }
        return ddp.merge_over_ranks(record, self.dist)

    def evaluate(self) -> dict[str, Any]:
        """Validation and test accuracy through the exact evaluation tiers."""
        try:
            out = evaluate(
                self.model,
                self.store,
                self.cache.eval_tiers(),
                self.config.eval,
                train_fanouts=tuple(self.eval_fanouts),
                device=self.device,
                seed=self.config.seed,
                prefetch_batches=max(1, self.config.loader.prefetch_batches),
                topology=(self.sampler.indptr, self.sampler.indices, self.sampler.edge_type),
                shard=None if self.dist is None else (self.rank, self.world),
            )
        finally:
            # Its buffers and I/O threads are held only while it runs.
            self.cache.release_eval_tiers()
        # Each rank evaluated its share: the sums of the counts give every
        # rank the accuracy of the whole valid and test sets.
        return ddp.merge_over_ranks(out, self.dist)

    def run(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done; every epoch's record.

        Raises
        ------
        TrainingStopped
            A read of the store failed, or writing a checkpoint or the metrics
            file did; the message says what the checkpoint directory holds.
        TrainingInterrupted
            SIGINT (single process): stopped at the end of a batch, saved.
        """
        cfg = self.config
        # Under torchrun every rank must stop at the same step: SIGINT keeps
        # its usual meaning there.
        with self._sigint if self.dist is None else nullcontext():
            for epoch in range(self.epochs_done, cfg.epochs):
                self._run_epoch(epoch)
                if self._sigint.requested and epoch + 1 < cfg.epochs:
                    raise TrainingInterrupted(self._saved_at_epoch_end())
        if self.predict_target is not None:
            self.prediction = predict_split(self, self.predict_target)
            if cfg.progress:
                p = self.prediction
                acc = "" if p["predict_acc"] is None else f", accuracy {p['predict_acc']:.4f}"
                print(
                    f"predictions of {p['predict_nodes']:,} {p['predict_split']} nodes "
                    f"-> {p['predict_path']} ({p['evaluator']}{acc})",
                    flush=True,
                )
        return self.records

    def _run_epoch(self, epoch: int) -> None:
        cfg = self.config
        release_free_memory()  # what the last epoch freed, before its peak is measured
        self.rss.reset()
        record = self.train_epoch(epoch)
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1) % cfg.eval.every_epochs == 0:
            try:
                record.update(self.evaluate())
            except (RefreshError, OSError) as exc:
                if self.dist is not None or self._trained is None:
                    raise
                raise TrainingStopped(f"{exc}; {self._save_progress(self._trained)}") from exc
        else:
            record.update({"valid_acc": None, "test_acc": None})
        record["peak_rss_bytes"] = ddp.max_over_ranks(self.rss.peak(), self.dist)
        record["cache"] = cfg.tiers.cache
        if not self._plan_recorded:  # the first record of this run (or resumed run)
            record["memory_plan"] = self.plan.to_dict()
            record["memory_fit"] = list(self.fit_changes)  # defaults lowered to fit
            self._plan_recorded = True
        self.records.append(record)
        self.epochs_done = epoch + 1
        if cfg.checkpoint_dir is not None:
            try:
                self._save_checkpoint()
            except CheckpointWriteError as exc:
                raise TrainingStopped(f"{exc} (it repeats epoch {epoch + 1})") from exc
        if self.metrics is not None:
            try:
                self.metrics.write(record)
            except MetricsWriteError as exc:
                saved = (
                    f"the checkpoint of epoch {epoch + 1} holds its record: --resume writes "
                    "the file again from it"
                    if cfg.checkpoint_dir is not None
                    else "no --checkpoint-dir, so the run cannot continue"
                )
                raise TrainingStopped(f"{exc}; {saved}") from exc
        if cfg.progress and self.is_main:
            print(format_table(self.records), flush=True)

    def _checkpoint_path(self) -> str:
        assert self.config.checkpoint_dir is not None
        return str(Path(self.config.checkpoint_dir) / CHECKPOINT_NAME)

    def _saved_at_epoch_end(self) -> str:
        """What a stop right after an epoch's checkpoint leaves, in words."""
        where = f"stopped after epoch {self.epochs_done}"
        if self.config.checkpoint_dir is None:
            return f"{where}; nothing was saved (no --checkpoint-dir)"
        return f"{where}; {self._checkpoint_path()!r} holds it — continue with --resume"

    def _save_progress(self, done: EpochProgress) -> str:
        """Save a mid-epoch checkpoint of ``done`` where that resumes exactly; what was kept, in words."""
        cfg = self.config
        total = num_batches(len(self.store.train_idx), cfg.batch_size)
        where = (
            f"stopped in epoch {done.epoch + 1} after {done.batches_done} of its {total} batches"
        )
        if cfg.checkpoint_dir is None:
            return f"{where}; nothing was saved (no --checkpoint-dir)"
        path = self._checkpoint_path()
        if not self.cache.resumes_mid_epoch:
            kept = (
                f"{path!r} still holds epoch {self.epochs_done}"
                if self.epochs_done
                else "no checkpoint was written yet"
            )
            return (
                f"{where}; --cache {cfg.tiers.cache} checkpoints only at epoch ends: {kept}, "
                f"and --resume repeats epoch {done.epoch + 1}"
            )
        try:
            self._save_checkpoint(done)
        except CheckpointWriteError as exc:
            return f"{where}; {exc}"
        return f"{where}; {path!r} holds them — continue with --resume"

    def _save_checkpoint(self, progress: EpochProgress | None = None) -> None:
        """The checkpoint of the epochs done so far (under DDP, every rank's part),
        and of the batches done of the next when ``progress`` is given."""
        directory = self.config.checkpoint_dir
        assert directory is not None

        def write(extra: dict[str, Any]) -> None:
            save_checkpoint(
                directory,
                epoch=self.epochs_done,
                model=self.model,
                optimizer=self.optimizer,
                records=self.records,
                config=self.config.to_dict(),
                extra=extra,
            )

        extra = {"step": self.step, "cache": self.cache.state_dict()}
        if progress is not None:
            extra["mid_epoch"] = progress.to_state()
        if self.dist is None:
            write(extra)
        else:
            ddp.save_checkpoint_ranks(directory, self.dist, self.epochs_done, extra, write)

    def close(self) -> None:
        """Stop threads and release tiers and files."""
        # DDP's reducer holds the process group. Freed after the group is
        # destroyed, it would destroy the group itself with the GIL held,
        # which can deadlock with gloo's threads (pytorch#56297): free it now.
        # It also releases a trainer whose construction failed part-way.
        if hasattr(self, "model"):
            self.trained_model = self.model
        for part in ("rss", "cache", "sampler"):
            if hasattr(self, part):
                getattr(self, part).close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train(config: TrainConfig) -> list[dict[str, Any]]:
    """Run (or resume) training as ``config`` says; one record per epoch.

    Parameters
    ----------
    config
        The run's settings.

    Returns
    -------
    list of dict
        The metric records of every epoch (on resume, also those of the
        epochs the checkpoint covers). See :mod:`refresh_train.metrics`.
    """
    with Trainer(config) as trainer:
        return trainer.run()
