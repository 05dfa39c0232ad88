"""The host tier: a RAM buffer of recently read rows under a replacement policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from numpy.typing import NDArray

from ._base import BufferPool, FeatureTier, row_words
from ._copy_kernels import put_rows, take_rows
from ._lookahead import StagedRows
from ._policies import ReplacementPolicy
from .disk import DiskTier

__all__ = ["HostTier"]


class HostTier(FeatureTier):
    """Staging buffer in host RAM that also keeps rows it has read.

    Rows it holds are served from RAM; the misses are read from ``below``
    (one call per batch), returned, and admitted into the buffer under
    ``policy`` (misses beyond the capacity in one batch are not admitted).

    It also stages lookahead windows (:meth:`stage`): the rows several
    upcoming batches need, read from ``below`` in one pass into a buffer of
    their own (outside ``budget_bytes``; the loader's lookahead budget bounds
    it). A read inside :meth:`staged` takes every row the window holds from
    it, then the cache's hits, and reads the rest from ``below``.

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
        self._staged = 0  # rows read into lookahead windows
        self._from_window = 0  # request positions served from a window
        self._windows = BufferPool(max_buffers=2)  # the loader keeps two windows
        self._local = threading.local()

    @property
    def budget_used_bytes(self) -> int:
        """Bytes of the buffer (what the budget pays for)."""
        return self.capacity * self.row_bytes

    def stage(self, ids: NDArray[np.int64], batches: int) -> StagedRows:
        """Read sorted distinct ``ids`` from ``below`` now, for ``batches`` later reads.

        Rows the cache holds now are left out. Call from the loader's staging
        thread; the reads of :meth:`staged` batches then take their rows from
        the returned window.
        """
        if self.capacity:
            with self._lock:
                ids = ids[self.policy.lookup(ids) < 0]
        rows = self._windows.rows(len(ids), self.row_shape, self.dtype)
        if len(ids):
            self.below.read_trusted(ids, rows)  # type: ignore[union-attr]  # set in __init__
        with self._lock:
            self._staged += len(ids)
        return StagedRows(ids, rows, batches)

    @contextmanager
    def staged(self, window: StagedRows | None) -> Iterator[None]:
        """Reads of this thread inside the block may take rows from ``window``."""
        self._local.window = window
        try:
            yield
        finally:
            self._local.window = None

    def _read(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        below: FeatureTier = self.below  # type: ignore[assignment]  # set in __init__
        if out is None:
            out = self._batch_rows(len(ids), pin=self.pin)
        window: StagedRows | None = getattr(self._local, "window", None)
        if (self.capacity == 0 and window is None) or len(ids) == 0:
            return below.read_trusted(ids, out)
        with self._lock:
            # Whole-row copies without the GIL (torch's index ops copy per element).
            out_words = row_words(out)
            served = np.zeros(len(ids), np.bool_)
            # A window's rows were counted by the disk tier when it was read, so
            # the window serves every row it holds (even one the cache took in
            # since) and only re-uses count here.
            if window is not None and window.rows is not None:
                pos, at = window.find(ids)
                if len(pos):
                    take_rows(row_words(window.rows), at, out_words, pos)
                    self._rows += window.take(at)
                    self._from_window += len(pos)
                    served[pos] = True
            miss_pos = np.empty(0, np.int64)
            if self.capacity:
                slots = self.policy.lookup(ids)  # records accesses of window rows too
                hit_pos = np.flatnonzero((slots >= 0) & ~served)
                if len(hit_pos):
                    take_rows(row_words(self.buffer), slots[hit_pos], out_words, hit_pos)
                    self._rows += len(hit_pos)
                    served[hit_pos] = True
                miss_pos = np.flatnonzero(slots < 0)  # admitted below, wherever served from
            rest = np.flatnonzero(~served)
            if len(rest) == len(ids):
                below.read_trusted(ids, out)
            elif len(rest):
                put_rows(row_words(below.read_trusted(ids[rest], None)), out_words, rest)
            if self.capacity and len(miss_pos):
                keys, first = np.unique(ids[miss_pos], return_index=True)
                new_slots = self.policy.admit(keys)
                ok = new_slots >= 0
                if ok.any():
                    take_rows(out_words, miss_pos[first[ok]], row_words(self.buffer), new_slots[ok])
                    self._admitted += int(ok.sum())
        return out

    def io_mode(self) -> str:
        """How the disk tier under this one reads (its I/O scheduler's mode), for logs."""
        for tier in self.chain()[1:]:
            if isinstance(tier, DiskTier):
                return tier.io_mode()
        raise TypeError(f"no disk tier below this host tier: {[t.name for t in self.chain()]}")

    def _own_stats(self) -> dict[str, float | int]:
        return {
            "host_admitted": self._admitted,
            "host_capacity_rows": self.capacity,
            "host_staged_rows": self._staged,
            "host_window_rows": self._from_window,
        }

    def _reset_own_stats(self) -> None:
        self._admitted = self._staged = self._from_window = 0

    def close(self) -> None:
        """Drop the buffer and close the tiers below."""
        self.buffer = self._empty(0)
        super().close()
