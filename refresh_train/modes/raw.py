"""``--cache none`` and ``--cache raw``: the raw-feature tiers alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..tiers import DeviceTier, StagedRows, build_raw_tiers, first_window
from .base import CacheMode

if TYPE_CHECKING:
    from ..batch import MiniBatch

__all__ = ["NoCache", "RawCache"]


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

    def _raw_budget_bytes(self) -> int:
        """Device bytes for raw rows."""
        return self.config.cache_budget_bytes

    def _build_tiers(self) -> DeviceTier:
        return build_raw_tiers(
            self.store,
            device=self.device,
            cache_budget_bytes=self._raw_budget_bytes(),
            host_budget_bytes=self.config.host_budget_bytes,
            host_policy=self.config.host_policy,
            io=self.io,
        )
