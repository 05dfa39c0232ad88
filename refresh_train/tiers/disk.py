"""The disk tier: rows read from the store by the I/O scheduler."""

from __future__ import annotations

import threading

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.format import RowRegion
from refresh_store.io import IOConfig, IOScheduler

from ._base import FeatureTier

__all__ = ["DiskTier"]


class DiskTier(FeatureTier):
    """The last tier: every row it is asked for is read from the store file.

    Parameters
    ----------
    region
        The feature array on disk (:meth:`refresh_store.store.Store.region`).
    io
        How the I/O scheduler reads (mode, queue depth, coalescing).
    pin
        Allocate returned tensors in pinned memory (for asynchronous copies
        to a CUDA device).

    Notes
    -----
    Counters: ``rows_disk``/``bytes_disk`` count rows served (every requested
    position); ``disk_rows_unique``, ``disk_bytes_read`` (bytes asked of the
    file, alignment and coalescing included), ``disk_reads`` (read calls)
    and ``disk_seconds`` come from the scheduler.
    """

    name = "disk"

    def __init__(self, region: RowRegion, io: IOConfig | None = None, *, pin: bool = False) -> None:
        super().__init__(
            num_rows=region.nrows,
            row_shape=tuple(region.row_shape),
            dtype=np.dtype(region.dtype),
            device=torch.device("cpu"),
            below=None,
        )
        self.pin = bool(pin)
        self.scheduler = IOScheduler(region, io)
        # A lookahead window is read from the loader's staging thread while
        # the fetch thread may read a batch's other misses.
        self._count_lock = threading.Lock()

    def _read(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            out = self._batch_rows(len(ids), pin=self.pin)
        if len(ids):
            self.scheduler.gather(ids, out=out.numpy())
        with self._count_lock:
            self._rows += len(ids)
        return out

    def io_mode(self) -> str:
        """The mode the I/O scheduler opened the store in (:attr:`IOConfig.mode` as probed), for logs."""
        return self.scheduler.mode

    def _own_stats(self) -> dict[str, float | int]:
        s = self.scheduler.stats()
        return {
            "disk_rows_unique": int(s["rows_unique"]),
            "disk_bytes_read": int(s["bytes_read"]),
            "disk_reads": int(s["read_calls"]),
            "disk_seconds": float(s["seconds"]),
        }

    def _reset_own_stats(self) -> None:
        self.scheduler.reset_stats()

    def close(self) -> None:
        """Stop the scheduler's threads and close the file."""
        self.scheduler.close()
