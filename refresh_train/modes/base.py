"""The contract of a cache mode: the hooks a training step goes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from refresh_store.io import IOConfig

from ..tiers import DeviceTier, FeatureTier, HostTier, build_raw_tiers, resolve_device

if TYPE_CHECKING:
    from refresh_store.store import Store

    from ..batch import MiniBatch
    from ..config import HistoryConfig, TierConfig
    from ..sampler import NeighborSampler

__all__ = ["CacheMode"]


class CacheMode:
    """What ``--cache NAME`` selects: how a step's inputs are sampled, fetched and used.

    The base class is the exact raw-feature path over a device -> host ->
    disk chain; subclasses override the hooks they change. See
    :mod:`refresh_train.modes` for when each hook runs.

    Parameters
    ----------
    store
        The open store.
    config
        Tier settings (budgets, policy, I/O).
    device
        Compute device.
    dims
        The model's widths ``[in_dim, hidden, ..., out_dim]`` (``BlockGNN.dims``);
        modes that cache embeddings need them.
    history
        Settings of the historical embedding cache (modes that have one).
    fanouts
        The sampler's fanouts, from the seeds outward (the refresh mode ranks
        its table's nodes with them).
    seed
        The run's seed.
    """

    name: ClassVar[str] = ""
    #: A checkpoint taken between two steps of an epoch resumes to the result
    #: of an uninterrupted run: true when results do not depend on the mode's
    #: state (:meth:`state_dict` empty, :meth:`end_epoch` changes nothing
    #: that results depend on). The trainer keeps only epoch-end checkpoints otherwise.
    resumes_mid_epoch: ClassVar[bool] = True

    def __init__(
        self,
        store: Store,
        config: TierConfig,
        device: torch.device,
        *,
        dims: Sequence[int] | None = None,
        history: HistoryConfig | None = None,
        fanouts: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.config = config
        self.device = resolve_device(device)
        self.dims = tuple(dims) if dims is not None else None
        self.fanouts = tuple(fanouts) if fanouts is not None else None
        self.history_config = history
        self.seed = int(seed)
        self.io = IOConfig(
            mode=config.io_mode, queue_depth=config.io_queue_depth, engine=config.io_engine
        )
        self.tiers: DeviceTier = self._build_tiers()
        self._eval_tiers: DeviceTier | None = None
        self._eval_batch_buffers: int | None = None

    def _build_tiers(self) -> DeviceTier:
        raise NotImplementedError

    # ---- hooks -------------------------------------------------------------
    def sample(
        self, sampler: NeighborSampler, seeds: np.ndarray, batch_seed: int, step: int
    ) -> MiniBatch:
        """Sample the batch that global step ``step`` trains on.

        Called from one thread, in step order, at most :meth:`max_ahead`
        steps before step ``step - max_ahead()`` has finished.
        """
        return sampler.sample(seeds, batch_seed)

    def max_ahead(self) -> int | None:
        """How far sampling may run ahead of training, in batches (``None`` = no bound).

        With ``m``, batch ``i`` is sampled only after step ``i - m`` has
        finished (its :meth:`after_step` included), so the state a batch's
        sampling sees is fixed whatever the threads' timing.
        """
        return None

    def lookahead_batches(self) -> int:
        """Sampled batches the loader hands :meth:`stage` at once; 0 = no staging."""
        return 0

    def stage(self, batches: list[MiniBatch]) -> int:
        """Prepare the fetch of the leading ``batches`` (consecutive, in loader order).

        Returns how many of them it took as one window (at least 1); the
        loader hands the rest to the next call.
        """
        return len(batches)

    def fetch(self, batch: MiniBatch) -> MiniBatch:
        """Fill ``batch.features`` (rows of ``batch.input_nodes`` on the device)."""
        batch.features = self.tiers.read(batch.input_nodes)
        return batch

    def forward(self, model: torch.nn.Module, batch: MiniBatch) -> torch.Tensor:
        """Logits of the batch's seeds."""
        return model(batch, self._inputs(batch))

    @staticmethod
    def _inputs(batch: MiniBatch) -> torch.Tensor:
        x = batch.features
        if x is None:
            raise RuntimeError("forward() got a batch without features: fetch() fills them")
        # Float16 rows go in as they are: the models cast them a chunk at a
        # time inside their first layer, never the whole batch at once.
        return x if x.is_floating_point() else x.float()

    def after_step(self, batch: MiniBatch, logits: torch.Tensor, step: int) -> None:
        """Called after the optimiser step of global step ``step``."""

    def end_epoch(self) -> None:
        """Called after each epoch's training pass (no loader runs then)."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume for results to match (saved in checkpoints).

        The raw tiers hold none: their contents change counters, never results.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    # ---- evaluation and bookkeeping ----------------------------------------
    def eval_tiers(self) -> FeatureTier:
        """An exact feature path for evaluation with its own counters.

        Shares the device tier's rows (no second copy); no host caching, so
        evaluation leaves the training tiers' state untouched.
        """
        if self._eval_tiers is None:
            self._eval_tiers = build_raw_tiers(
                self.store,
                device=self.device,
                cache_budget_bytes=0,
                host_budget_bytes=0,
                io=self.io,
                shared_cache=self.tiers.cache,
            )
            if self._eval_batch_buffers is not None:
                from ..tiers import LOWER_BATCH_BUFFERS

                self._eval_tiers.keep_batch_buffers(self._eval_batch_buffers, LOWER_BATCH_BUFFERS)
        return self._eval_tiers

    def _drop_eval_tiers(self) -> None:
        if self._eval_tiers is not None:
            self._eval_tiers.close()
            self._eval_tiers = None

    def release_eval_tiers(self) -> None:
        """Close the evaluation chain (its buffers and I/O threads) until it is needed again.

        The trainer calls it after each evaluation, so that what evaluation
        reads is held only while it runs (the memory plan's ``eval`` phase).
        """
        self._drop_eval_tiers()

    def keep_batch_buffers(
        self, train: int, eval: int | None = None, *, lower: int | None = None
    ) -> None:
        """Batch buffers the training (and evaluation) chain's top tier keeps for reuse.

        The trainer matches them to the batches its loaders keep fetched at
        once (see :meth:`~refresh_train.tiers.FeatureTier.keep_batch_buffers`
        and :mod:`refresh_train.memory_plan`); ``lower`` is what each tier
        below the training chain's top keeps (default
        :data:`~refresh_train.tiers.LOWER_BATCH_BUFFERS`).
        """
        from ..tiers import LOWER_BATCH_BUFFERS

        self.tiers.keep_batch_buffers(train, LOWER_BATCH_BUFFERS if lower is None else lower)
        self._eval_batch_buffers = eval
        if self._eval_tiers is not None and eval is not None:
            self._eval_tiers.keep_batch_buffers(eval, LOWER_BATCH_BUFFERS)

    def stats(self) -> dict[str, Any]:
        """Counters of the training pass since the last :meth:`reset_stats`.

        The tiers' rows and bytes, ``memory_access_bytes`` (raw-feature bytes
        moved onto the device from the host and disk tiers), and how the
        device budget is split (``cache_split_raw_bytes``,
        ``cache_split_hist_bytes``).
        """
        out = dict(self.tiers.stats())
        out["memory_access_bytes"] = int(out.get("bytes_host", 0)) + int(out.get("bytes_disk", 0))
        out["cache_split_raw_bytes"] = self.tiers.budget_used_bytes
        out["cache_split_hist_bytes"] = 0
        return out

    def reset_stats(self) -> None:
        """Zero the training counters (the trainer does it every epoch)."""
        self.tiers.reset_stats()

    def _host(self) -> HostTier:
        host = self.tiers.below
        if not isinstance(host, HostTier):
            raise TypeError(f"the tier below the device tier is a {type(host).__name__}")
        return host

    def describe(self) -> dict[str, Any]:
        """Sizes of the tiers, for logs."""
        host = self._host()
        return {
            "cache": self.name,
            "device_rows": self.tiers.num_cached,
            "device_bytes": self.tiers.budget_used_bytes,
            "host_rows": host.capacity,
            "host_bytes": host.budget_used_bytes,
            "host_policy": type(host.policy).name,
            "row_bytes": self.tiers.row_bytes,
            "io_mode": host.io_mode(),
            "lookahead_batches": self.lookahead_batches(),
            "lookahead_budget_bytes": self.config.lookahead_budget_bytes
            if self.lookahead_batches()
            else 0,
        }

    def close(self) -> None:
        """Release tiers, buffers and files."""
        self.tiers.close()
        self._drop_eval_tiers()
