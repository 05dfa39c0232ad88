"""The host tier: a RAM buffer of recently read rows under a replacement policy."""

from __future__ import annotations

import threading

import numpy as np
import torch
from numpy.typing import NDArray

from ._base import FeatureTier, row_words
from ._copy_kernels import put_rows, take_rows
from ._policies import ReplacementPolicy

__all__ = ["HostTier"]


class HostTier(FeatureTier):
    """Staging buffer in host RAM that also keeps rows it has read.

    Rows it holds are served from RAM; the misses are read from ``below``
    (one call per batch), returned, and admitted into the buffer under
    ``policy`` (misses beyond the capacity in one batch are not admitted).

    Parameters
    ----------
    below
        The tier to read misses from (usually :class:`~.disk.DiskTier`).
    budget_bytes
        Bytes of the buffer; ``budget_bytes // row_bytes`` rows. 0 keeps
        only the per-batch transfer staging: every row comes from ``below``.
    policy
        Name of a replacement policy in :data:`refresh_train.tiers.POLICIES`
        or a policy class.
    pin
        Keep the buffer and the returned staging tensors in pinned memory, so
        that copies to a CUDA device run asynchronously.
    """

    name = "host"

    def __init__(
        self,
        below: FeatureTier,
        budget_bytes: int,
        policy: str | type[ReplacementPolicy] = "clock",
        *,
        pin: bool = False,
    ) -> None:
        from . import POLICIES

        if below.device.type != "cpu":
            raise ValueError(f"the tier below a host tier must return CPU rows, not {below.device}")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes!r}")
        super().__init__(
            num_rows=below.num_rows,
            row_shape=below.row_shape,
            dtype=below.dtype,
            device=torch.device("cpu"),
            below=below,
        )
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
            policy = POLICIES[policy]
        self.pin = bool(pin)
        self.capacity = min(int(budget_bytes) // self.row_bytes, self.num_rows)
        self.policy = policy(self.capacity, self.num_rows if self.capacity else 0)
        self.buffer = self._empty(self.capacity, pin=self.pin and self.capacity > 0)
        # One batch at a time: a hit's slot must not be refilled while it is copied out.
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def budget_used_bytes(self) -> int:
        """Bytes of the buffer (what the budget pays for)."""
        return self.capacity * self.row_bytes

    def _read(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        below: FeatureTier = self.below  # type: ignore[assignment]  # set in __init__
        if out is None:
            out = self._batch_rows(len(ids), pin=self.pin)
        if self.capacity == 0:
            return below._read(ids, out)
        with self._lock:
            slots = self.policy.lookup(ids)
            hit = slots >= 0
            hit_pos = np.flatnonzero(hit)
            self._rows += len(hit_pos)
            if len(hit_pos) == len(ids):
                torch.index_select(self.buffer, 0, torch.from_numpy(slots), out=out)
                return out
            # Whole-row copies without the GIL (torch's index ops copy per element).
            buffer_words, out_words = row_words(self.buffer), row_words(out)
            if len(hit_pos):
                take_rows(buffer_words, slots[hit_pos], out_words, hit_pos)
            miss_pos = np.flatnonzero(~hit)
            miss_ids = ids[miss_pos]
            if len(hit_pos) == 0:
                rows = below._read(miss_ids, out)
            else:
                rows = below._read(miss_ids, None)
                put_rows(row_words(rows), out_words, miss_pos)
            keys, first = np.unique(miss_ids, return_index=True)
            new_slots = self.policy.admit(keys)
            ok = new_slots >= 0
            if ok.any():
                take_rows(row_words(rows), first[ok], buffer_words, new_slots[ok])
                self._admitted += int(ok.sum())
        return out

    def _own_stats(self) -> dict[str, float | int]:
        return {"host_admitted": self._admitted, "host_capacity_rows": self.capacity}

    def _reset_own_stats(self) -> None:
        self._admitted = 0

    def close(self) -> None:
        """Drop the buffer and close the tiers below."""
        self.buffer = self._empty(0)
        super().close()
