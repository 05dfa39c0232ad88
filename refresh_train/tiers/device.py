"""The device tier: the hottest rows, kept on the compute device."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.store import drop_resident_pages

from ._base import FeatureTier, row_words
from ._copy_kernels import put_rows, take_rows

__all__ = ["DeviceTier"]

# Rows are copied to the device in pieces of this size, so that loading a
# large cache never holds a second full copy in host memory.
_LOAD_PIECE_BYTES = 64 << 20  # 64 MiB


class DeviceTier(FeatureTier):
    """Rows ``[0, K)`` on the compute device; misses are read from ``below``.

    Node ids of a store are degree-reordered (node 0 has the highest degree),
    so the prefix ``[0, K)`` is the set of rows that neighbour sampling
    touches most often: a static cache needs no lookup table, only ``id < K``.

    Parameters
    ----------
    below
        Tier that serves ids ``>= K`` (returns CPU tensors, pinned for CUDA).
    source
        Array of at least ``K`` rows to load the cache from (the store's
        feature memmap); read once, sequentially.
    num_rows_cached
        ``K``; 0 makes this tier a pure transfer stage to ``device``.
    device
        Where rows live and are returned (CUDA, or CPU standing in for it).
    shared_cache
        Use this tensor of ``K`` rows on ``device`` (another device tier's
        :attr:`cache`) instead of loading from ``source``: a second chain
        with its own counters and no second copy.

    Notes
    -----
    On CUDA every read runs on a side stream (copies from pinned memory are
    asynchronous) and waits for it before returning, so a background fetch
    thread overlaps transfers with the compute stream. A consumer on another
    stream should call ``tensor.record_stream(stream)`` on what it receives.
    """

    name = "device"

    def __init__(
        self,
        below: FeatureTier,
        source: np.ndarray | None,
        num_rows_cached: int,
        device: torch.device | str,
        *,
        shared_cache: torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            num_rows=below.num_rows,
            row_shape=below.row_shape,
            dtype=below.dtype,
            device=torch.device(device),
            below=below,
        )
        k = int(num_rows_cached)
        if not 0 <= k <= self.num_rows:
            raise ValueError(f"num_rows_cached must be in [0, {self.num_rows}], got {k!r}")
        self.num_cached = k
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if shared_cache is not None:
            if (
                tuple(shared_cache.shape) != (k, *self.row_shape)
                or shared_cache.device != self.device
            ):
                raise ValueError(
                    f"shared_cache must have shape {(k, *self.row_shape)} on {self.device}, "
                    f"got {tuple(shared_cache.shape)} on {shared_cache.device}"
                )
            self.cache = shared_cache
            return
        self.cache = self._alloc_rows(k)
        self._load(source, 0, k)

    def _alloc_rows(self, k: int) -> torch.Tensor:
        if self.device.type == "cpu":
            # Through numpy, which asks for huge pages: random rows of a large
            # cache then miss the TLB far less often.
            return torch.from_numpy(np.empty((k, *self.row_shape), self.dtype))
        return self._empty(k)

    def _load(self, source: np.ndarray | None, lo: int, hi: int) -> None:
        """Copy rows ``[lo, hi)`` of ``source`` into the cache, a piece at a time."""
        if hi <= lo:
            return
        if source is None or len(source) < hi:
            raise ValueError(f"source must hold at least {hi} rows to load the device tier")
        step = max(1, _LOAD_PIECE_BYTES // max(1, self.row_bytes))
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            piece = torch.from_numpy(np.array(source[a:b]))  # a writable copy
            self.cache[a:b].copy_(piece)
        # The rows read through a memory map stay in this process's RSS until
        # reclaimed; they are copied now, so give them back.
        drop_resident_pages(source)

    def resize(self, num_rows_cached: int, source: np.ndarray) -> None:
        """Hold rows ``[0, num_rows_cached)`` from now on (rows kept are not read again).

        Not safe while reads are in flight; tiers sharing this cache
        (``shared_cache``) must be rebuilt.
        """
        k = int(num_rows_cached)
        if not 0 <= k <= self.num_rows:
            raise ValueError(f"num_rows_cached must be in [0, {self.num_rows}], got {k!r}")
        if k == self.num_cached:
            return
        old, keep = self.cache, min(k, self.num_cached)
        self.cache = self._alloc_rows(k)
        self.cache[:keep].copy_(old[:keep])
        del old
        self.num_cached = k
        self._load(source, keep, k)

    @property
    def budget_used_bytes(self) -> int:
        """Bytes of the cached rows."""
        return self.num_cached * self.row_bytes

    def misses(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """The sorted distinct ``ids`` this tier does not hold (what it asks of ``below``)."""
        return np.unique(ids[ids >= self.num_cached]).astype(np.int64, copy=False)

    def _read(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        if self.stream is None:
            return self._read_on_stream(ids, out)
        with torch.cuda.stream(self.stream):
            rows = self._read_on_stream(ids, out)
        self.stream.synchronize()
        return rows

    def _read_on_stream(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        below: FeatureTier = self.below  # type: ignore[assignment]  # set in __init__
        on_cpu = self.device.type == "cpu"
        k = self.num_cached
        hit = ids < k
        n_hit = int(np.count_nonzero(hit))
        self._rows += n_hit
        if out is None:
            # From this tier's pool even when the tiers below serve every
            # row: the batches a caller holds come from one pool, whose size
            # the trainer matches to the batches in flight.
            out = self._batch_rows(len(ids))
        if n_hit == 0 and on_cpu:
            return below.read_trusted(ids, out)
        if n_hit == 0:
            out.copy_(below.read_trusted(ids, None), non_blocking=True)
            return out
        if n_hit == len(ids):
            torch.index_select(self.cache, 0, self._index(ids), out=out)
            return out
        hit_pos = np.flatnonzero(hit)
        miss_pos = np.flatnonzero(~hit)
        # The misses come back in a buffer the tier below reuses once this
        # batch drops it (its BufferPool; torch's pinned cache with CUDA).
        rows = below.read_trusted(ids[miss_pos], None)
        if on_cpu:  # whole-row copies without the GIL (torch's index ops copy per element)
            out_words = row_words(out)
            take_rows(row_words(self.cache), ids[hit_pos], out_words, hit_pos)
            put_rows(row_words(rows), out_words, miss_pos)
            return out
        out.index_copy_(
            0, self._index(hit_pos), self.cache.index_select(0, self._index(ids[hit_pos]))
        )
        out.index_copy_(0, self._index(miss_pos), rows.to(self.device, non_blocking=True))
        return out

    def _index(self, idx: NDArray[np.int64]) -> torch.Tensor:
        t = torch.from_numpy(idx)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Drop the cached rows and close the tiers below."""
        self.cache = self._empty(0)
        super().close()
