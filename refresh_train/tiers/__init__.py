"""Raw-feature tiers and the cache modes that compose them.

Tiers compose as in DGL GraphBolt: each one has ``read(ids) -> rows`` and
``stats()``, serves the rows it holds and hands only the misses to the tier
below. The training chain of ``--cache raw`` is

    DeviceTier (rows [0, K), on the compute device)
      -> HostTier (RAM buffer with a replacement policy; pinned for CUDA)
        -> DiskTier (the I/O scheduler)

and ``--cache none`` is the same chain with ``K = 0`` and no host caching,
so every row comes from disk and still travels through the same staging and
transfer path. A new tier or policy is a new class that passes the contract
test in ``tests/refresh_train/test_tiers.py``.

Cache modes
-----------
``--cache NAME`` picks a :class:`CacheMode` from :data:`CACHE_MODES`. A mode
owns the tiers and is the trainer's single hook point for everything a
cache may change in a step:

- :meth:`CacheMode.prune` is handed to the sampler (a historical embedding
  cache stops expanding nodes whose embedding it holds);
- :meth:`CacheMode.stage` sees windows of :meth:`CacheMode.lookahead_batches`
  sampled batches before their fetch and may read ahead what they need
  (``--cache raw`` reads each window's disk rows in one pass, see
  :mod:`._lookahead`);
- :meth:`CacheMode.fetch` fills a batch's inputs (raw features, and cached
  embeddings of pruned nodes);
- :meth:`CacheMode.forward` runs the model on a batch;
- :meth:`CacheMode.after_step` sees the batch after the optimiser step
  (admission of fresh embeddings);
- :meth:`CacheMode.eval_tiers` gives evaluation an exact path with its own
  counters: evaluation never uses a cache that could change results;
- :meth:`CacheMode.state_dict` / :meth:`CacheMode.load_state_dict` go into
  checkpoints, so that a resumed run continues with the same cache state.

``prune``, ``stage`` and ``fetch`` run in the loader's background threads, up to
``prefetch_batches`` batches ahead of ``forward``/``after_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from refresh_store.io_scheduler import IOConfig

from ._base import FeatureTier, check_ids, resolve_device
from ._lookahead import StagedRows, first_window
from ._policies import ClockPolicy, LruPolicy, ReplacementPolicy, S3FifoPolicy
from .device import DeviceTier
from .disk import DiskTier
from .host import HostTier

if TYPE_CHECKING:
    from refresh_store.store import Store

    from ..batch import MiniBatch
    from ..config import TierConfig

__all__ = [
    "FeatureTier",
    "DeviceTier",
    "HostTier",
    "DiskTier",
    "StagedRows",
    "ReplacementPolicy",
    "ClockPolicy",
    "LruPolicy",
    "S3FifoPolicy",
    "POLICIES",
    "register_policy",
    "CacheMode",
    "NoCache",
    "RawCache",
    "CACHE_MODES",
    "register_cache_mode",
    "build_raw_tiers",
    "check_ids",
]

#: Replacement policies of the host tier, by name.
POLICIES: dict[str, type[ReplacementPolicy]] = {
    "clock": ClockPolicy,
    "s3fifo": S3FifoPolicy,
    "lru": LruPolicy,
}


def register_policy(cls: type[ReplacementPolicy]) -> type[ReplacementPolicy]:
    """Class decorator adding a replacement policy to :data:`POLICIES` under ``cls.name``."""
    POLICIES[cls.name] = cls
    return cls


def build_raw_tiers(
    store: Store,
    *,
    device: torch.device,
    cache_budget_bytes: int,
    host_budget_bytes: int,
    host_policy: str = "clock",
    io: IOConfig | None = None,
    shared_cache: torch.Tensor | None = None,
) -> DeviceTier:
    """The device -> host -> disk chain over a store's features.

    Parameters
    ----------
    store
        An open store.
    device
        Compute device; pinned host memory is used when it is CUDA.
    cache_budget_bytes
        Bytes of the device tier: ``K = cache_budget_bytes // row_bytes``
        hottest rows (capped at the number of nodes).
    host_budget_bytes
        Bytes of the host tier's buffer (0 = staging only).
    host_policy
        Key of :data:`POLICIES`.
    io
        I/O scheduler settings of the disk tier.
    shared_cache
        Rows ``[0, K)`` already on ``device`` to share instead of loading.

    Returns
    -------
    DeviceTier
        The top of the chain.
    """
    device = resolve_device(device)
    pin = device.type == "cuda"
    region = store.region("features")
    disk = DiskTier(region, io, pin=pin)
    try:
        host = HostTier(disk, host_budget_bytes, host_policy, pin=pin)
        k = min(cache_budget_bytes // disk.row_bytes, disk.num_rows)
        if shared_cache is not None:
            k = int(shared_cache.shape[0])
        return DeviceTier(host, store.features, k, device, shared_cache=shared_cache)
    except BaseException:
        disk.close()
        raise


class CacheMode:
    """What ``--cache NAME`` selects: how a step's inputs are sampled, fetched and used.

    The base class is the exact raw-feature path; subclasses override the
    hooks they change. See the module docstring for when each hook runs.

    Parameters
    ----------
    store
        The open store.
    config
        Tier settings (budgets, policy, I/O).
    device
        Compute device.
    """

    name: ClassVar[str] = ""

    def __init__(self, store: Store, config: TierConfig, device: torch.device) -> None:
        self.store = store
        self.config = config
        self.device = resolve_device(device)
        self.io = IOConfig(
            mode=config.io_mode, queue_depth=config.io_queue_depth, engine=config.io_engine
        )
        self.tiers: DeviceTier = self._build_tiers()
        self._eval_tiers: DeviceTier | None = None

    def _build_tiers(self) -> DeviceTier:
        raise NotImplementedError

    # ---- hooks -------------------------------------------------------------
    def prune(self) -> Callable[[int, np.ndarray], np.ndarray] | None:
        """The sampler's pruning hook, or ``None`` to expand every node."""
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
        x = batch.features
        if x is None:
            raise RuntimeError("forward() got a batch without features: fetch() fills them")
        if not x.is_floating_point() or x.dtype != torch.float32:
            x = x.float()
        return model(batch, x)

    def after_step(self, batch: MiniBatch, logits: torch.Tensor, step: int) -> None:
        """Called after the optimiser step of global step ``step``."""

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
        return self._eval_tiers

    def stats(self) -> dict[str, Any]:
        """Counters of the training tiers since the last :meth:`reset_stats`."""
        return self.tiers.stats()

    def reset_stats(self) -> None:
        """Zero the training tiers' counters (the trainer does it every epoch)."""
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
            "io_mode": host.below.scheduler.mode,  # type: ignore[union-attr]
            "lookahead_batches": self.lookahead_batches(),
            "lookahead_budget_bytes": self.config.lookahead_budget_bytes
            if self.lookahead_batches()
            else 0,
        }

    def close(self) -> None:
        """Release tiers, buffers and files."""
        self.tiers.close()
        if self._eval_tiers is not None:
            self._eval_tiers.close()
            self._eval_tiers = None


class NoCache(CacheMode):
    """``--cache none``: every row from disk (device and host tiers hold nothing)."""

    name = "none"

    def _build_tiers(self) -> DeviceTier:
        return build_raw_tiers(
            self.store, device=self.device, cache_budget_bytes=0, host_budget_bytes=0, io=self.io
        )


class RawCache(CacheMode):
    """``--cache raw``: hottest rows on the device, recent rows on the host, the rest from disk.

    The rest is read a window of batches at a time: :meth:`stage` reads the
    union of what up to ``lookahead_batches`` upcoming batches need from
    disk in one pass (as many consecutive batches as fit
    ``lookahead_budget_bytes``), and each batch's fetch takes its rows from
    that window. The loader keeps at most two windows: the one being
    fetched and the next one, read meanwhile; so their rows take at most
    twice the budget.
    """

    name = "raw"

    def lookahead_batches(self) -> int:
        cfg = self.config
        fits = cfg.lookahead_budget_bytes >= self.tiers.row_bytes
        return cfg.lookahead_batches if fits and cfg.lookahead_batches > 1 else 0

    def stage(self, batches: list[MiniBatch]) -> int:
        needs = []
        for batch in batches:
            # Kept on the batch: a batch left for the next window is not sorted twice.
            need = batch.extra.get("lookahead_need")
            if need is None:
                need = self.tiers.misses(batch.input_nodes.numpy())
                batch.extra["lookahead_need"] = need
            needs.append(need)
        n, ids = first_window(needs, self.config.lookahead_budget_bytes // self.tiers.row_bytes)
        window = self._host().stage(ids, n) if len(ids) else None
        for batch in batches[:n]:
            del batch.extra["lookahead_need"]
            if window is not None:
                batch.extra["staged"] = window
        return n

    def fetch(self, batch: MiniBatch) -> MiniBatch:
        window: StagedRows | None = batch.extra.pop("staged", None)
        if window is None:
            return super().fetch(batch)
        try:
            with self._host().staged(window):
                return super().fetch(batch)
        finally:
            window.release()

    def _build_tiers(self) -> DeviceTier:
        return build_raw_tiers(
            self.store,
            device=self.device,
            cache_budget_bytes=self.config.cache_budget_bytes,
            host_budget_bytes=self.config.host_budget_bytes,
            host_policy=self.config.host_policy,
            io=self.io,
        )


#: Cache modes by ``--cache`` name.
CACHE_MODES: dict[str, type[CacheMode]] = {"none": NoCache, "raw": RawCache}


def register_cache_mode(cls: type[CacheMode]) -> type[CacheMode]:
    """Class decorator adding a cache mode to :data:`CACHE_MODES` under ``cls.name``.

    The historical embedding cache registers ``"refresh"`` this way.
    """
    CACHE_MODES[cls.name] = cls
    return cls
