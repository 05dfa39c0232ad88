"""Raw-feature tiers: device, host and disk, composed into chains.

Tiers compose as in DGL GraphBolt: each one has ``read(ids) -> rows`` and
``stats()``, serves the rows it holds and hands only the misses to the tier
below. The training chain of ``--cache raw`` is

    DeviceTier (rows [0, K), on the compute device)
      -> HostTier (RAM buffer with a replacement policy; pinned for CUDA)
        -> DiskTier (the I/O scheduler)

and ``--cache none`` is the same chain with ``K = 0`` and no host caching,
so every row comes from disk and still travels through the same staging and
transfer path. A new tier or policy is a new class that passes the contract
test in ``tests/refresh_train/tiers/test_tiers.py``.

Which chain a run uses is decided by its cache mode (``--cache``), see
:mod:`refresh_train.modes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from refresh_store.io import IOConfig

from ._base import BATCH_BUFFERS, LOWER_BATCH_BUFFERS, FeatureTier, check_ids, resolve_device
from ._lookahead import StagedRows, first_window
from ._policies import ClockPolicy, LruPolicy, ReplacementPolicy, S3FifoPolicy
from .device import DeviceTier
from .disk import DiskTier
from .host import HostTier

if TYPE_CHECKING:
    from refresh_store.store import Store


__all__ = [
    "BATCH_BUFFERS",
    "LOWER_BATCH_BUFFERS",
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
    "build_raw_tiers",
    "check_ids",
    "first_window",
    "resolve_device",
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
