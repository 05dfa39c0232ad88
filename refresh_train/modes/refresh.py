"""``--cache refresh``: raw-feature tiers plus the selective historical embedding cache.

How a step goes
---------------
1. **Sample** (loader thread): before sampling the batch of step ``i``, the
   admissions of every step ``<= i - lag`` are written into the history
   table, in step order. The sampler's pruning hook then looks each node of
   a cached layer up (the table's slots belong to the nodes the layer looks
   up most, :mod:`refresh_train.history.slots`; a lookup is one probe of a
   hash map, one comparison and one read): a node with an entry no older
   than the staleness bound (and, with ``--hist-max-serves N``, one that
   has served fewer than ``N`` lookups) is *cached*: it is not
   expanded, so its whole sub-tree is neither sampled nor fetched, and its
   embedding is copied out of the table into the batch right away. A
   batch's seeds are never served from the table: their loss trains every
   layer.
2. **Fetch** (loader thread): raw rows of the remaining input nodes through
   the device -> host -> disk tiers, as ``--cache raw`` (lookahead windows
   included).
3. **Forward/backward** (main thread): the model injects the cached
   embeddings (:meth:`refresh_train.batch.Block.assemble`) and keeps the
   freshly computed embeddings of the cached layers with their gradients.
4. **After the step**: seeds are never served, but a seed that has a
   usable entry shows what serving it would have cost: its fresh embedding
   against that entry gives the relative error of a served embedding
   (``hist_drift_rel_err``, with ``hist_drift_mean_age``), the weights'
   drift since the entry was computed together with the noise any two
   computations of a node differ by (other neighbours drawn, other dropout
   masks). The entries were copied out when the batch was sampled, so only
   the sampling thread reads the table. Then the admission policy picks
   which fresh embeddings to keep (the gradient criterion by default). Of
   those, the ones whose row no later step may use (empty, older than the
   staleness bound for every step to come, or served ``N`` times by the
   batches trained so far) are written into their rows at once; a usable
   entry is never overwritten, it expires. A written entry becomes usable
   when the batch ``lag`` steps later is sampled, which sets its birth.

With ``shadow`` (``--hist-shadow``) nothing is pruned: lookups, serves and
admissions go on as usual, and each node a lookup found is computed anyway
and keeps one effect of the hit (:mod:`refresh_train.history.shadow`); the
admission policy chooses among the other nodes, as it would in a pruned run.

With ``stop_step`` (``--hist-stop``) the table is neither read nor written
from that step on, so the steps after it train exactly; at the first epoch
end after it the table's bytes go to raw rows.

Why it is exact under the pipelined loader
------------------------------------------
The table is read and written by the sampling thread only, in batch order,
and the loader samples batch ``i`` only once step ``i - lag`` has finished
(:meth:`max_ahead`), so batch ``i`` always sees the table after exactly the
admissions of steps ``<= i - lag``: results are a function of the seed and
the flags, never of thread timing, at prefetch 0 as at any depth. Serves
are counted twice for the same reason: the table counts them as batches are
sampled (what a lookup checks), and the main thread counts those of the
batches it has trained (each batch carries its own), which is what decides
that a row is free: a row exhausted by that count is exhausted for the
sampling thread too, which has seen at least those batches. Cached
embeddings are copied into the batch while the sampling thread holds the
table, so a later write can never change what a batch already holds, and
an entry is used at step ``i`` only if ``i - birth <=
staleness``, checked against the step that uses it. On CUDA the table lives
on the device and is written and read on a side stream that waits for the
compute stream's admissions (events), and the compute stream waits for a
batch's copies before its forward pass.

Bytes
-----
``cache_budget_bytes`` is shared: :class:`~refresh_train.history.BudgetSplit`
gives ``raw_bytes`` to the device tier's rows (the ``K`` hottest) and
``hist_bytes`` to the table (the first ``H`` slots of each cached layer; no
more than the nodes that have a slot, so a table may use less than its
share). Admissions need no room of their own: they are written into rows no
batch will read before their birth is set.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..history import BudgetSplit, HistoryTable, SplitCounters, make_policy
from ..history.cover import uncovered_rank
from ..history.shadow import ShadowBlock
from ..history.slots import SlotOrder
from .raw import RawCache

if TYPE_CHECKING:
    from refresh_store.store import Store

    from ..batch import MiniBatch
    from ..config import HistoryConfig, TierConfig
    from ..sampler import NeighborSampler

__all__ = ["RefreshCache", "relative_error"]

_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def relative_error(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Per row, ``|old - new| / |new|`` (L2, in float32): how far ``old`` is from ``new``."""
    new = new.float()
    return torch.linalg.vector_norm(old.float() - new, dim=1) / torch.linalg.vector_norm(
        new, dim=1
    ).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class _Admission:
    """Slots of one layer that step ``step`` wrote, not yet usable."""

    step: int
    layer: int
    ids: np.ndarray  # int64 [n]: slots of the table
    ready: torch.cuda.Event | None = None  # the writes, on the compute stream


class _Counters:
    """Per-epoch counters; each field is written by one thread only."""

    def __init__(self, layers: Sequence[int], split: SplitCounters) -> None:
        self.lookups = dict.fromkeys(layers, 0)
        self.hits = dict.fromkeys(layers, 0)
        self.age_sum = 0
        self.admitted = 0
        self.nodes_pruned = 0
        self.rows_saved = 0
        self.split = split
        # Seeds with a usable entry, compared with their fresh embedding (main thread).
        self.probes = 0
        self.probe_age_sum = 0
        self.probe_err_sum: torch.Tensor | float = 0.0  # a tensor on the device once added to


class RefreshCache(RawCache):
    """``--cache refresh``: see the module docstring.

    Parameters are those of :class:`~refresh_train.modes.CacheMode`; ``dims``
    and ``history`` are required, and ``fanouts`` with ``history.order ==
    "lookups"`` (the default).
    """

    name = "refresh"
    # Between two steps the sampling thread has already committed the
    # admissions of up to ``lag`` steps beyond the next batch's view, so the
    # table is ahead of what that batch must see: only epoch ends (no batch
    # in flight) are exact resume points.
    resumes_mid_epoch = False

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
        if dims is None or history is None:
            raise ValueError("the refresh cache needs the model's dims and a HistoryConfig")
        num_layers = len(dims) - 1
        self.hist_layers = history.resolved_layers(num_layers)
        widths = {int(dims[v]) for v in self.hist_layers if 1 <= v < num_layers}
        if len(widths) != 1 or len(self.hist_layers) != len(set(self.hist_layers)):
            raise ValueError(
                f"hist layers {self.hist_layers!r} must be hidden layers 1..{num_layers - 1} "
                "of one width"
            )
        width = widths.pop()
        self.split = BudgetSplit(config.cache_budget_bytes, history.fraction)
        # The split's sizes, before the tiers are built from them.
        self._raw_row_bytes = store.region("features").row_bytes
        self._entry_bytes = (
            width * torch.empty((), dtype=_TORCH_DTYPES[history.dtype]).element_size()
        )
        self.order = self._slot_order(store, history, fanouts, num_layers)
        super().__init__(
            store, config, device, dims=dims, history=history, fanouts=fanouts, seed=seed
        )
        hc = history
        self.policy = make_policy(hc.policy, hc.grad_quantile, seed)
        self.staleness: float = hc.staleness_iters if self.policy.uses_staleness else math.inf
        self.lag = hc.resolved_lag(self.lookahead_batches())
        # The automatic split counts its candidates on the unpruned samples.
        self.count_saved = hc.count_saved or self.split.automatic
        self.max_serves: float = hc.max_serves if hc.max_serves is not None else math.inf
        self.shadow = hc.shadow  # one cached layer (HistoryConfig checks)
        self.table = HistoryTable(
            self.hist_layers, width, 0, _TORCH_DTYPES[hc.dtype], self.device, self.max_serves
        )
        # Per cached layer, the lookups each row's entry served in the batches
        # trained so far (main thread; only with a serve limit).
        self._served_seen: dict[int, np.ndarray] = {}
        self._pending: deque[_Admission] = deque()
        self._size_table()
        sizes = [self._sizes(f) for f in self.split.candidates()]
        self._cand_k = np.array([k for k, _ in sizes], dtype=np.int64)
        self._cand_h = np.array([h for _, h in sizes], dtype=np.int64)
        # _count_candidates relies on the table growing as the raw rows shrink.
        assert (np.diff(self._cand_k) <= 0).all() and (np.diff(self._cand_h) >= 0).all()
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # (step, layer, ids) admitted in the last lag steps (main thread only).
        self._recent: deque[tuple[int, int, np.ndarray]] = deque()
        self._lock = threading.Lock()
        self._steps_done = 0  # steps whose after_step ran (the next step's number)
        self._counters = _Counters(self.hist_layers, self._split_counters())

    # ------------------------------------------------------------- sizes
    def _slot_order(
        self, store: Store, history: HistoryConfig, fanouts: Sequence[int] | None, num_layers: int
    ) -> SlotOrder:
        """Which nodes get the table's slots (:mod:`refresh_train.history.slots`)."""
        if history.order == "degree":
            return SlotOrder.by_degree()
        if fanouts is None or len(fanouts) != num_layers:
            raise ValueError(
                f"hist_order 'lookups' needs the sampler's {num_layers} fanouts, got {fanouts!r}"
            )
        most = self.split.budget_bytes // (self._entry_bytes * len(self.hist_layers))
        return SlotOrder.by_lookups(
            store.indptr, store.indices, store.train_idx, fanouts, self.hist_layers, most
        )

    def _raw_budget_bytes(self) -> int:
        return self._sizes(self.split.hist_fraction)[0] * self._raw_row_bytes

    def _sizes(self, fraction: float) -> tuple[int, int]:
        """``(K, H)``: raw rows and table slots per layer when the table gets ``fraction``.

        A table never has more slots than a layer has nodes with one; the
        bytes it leaves unused stay unused (so that a memory plan made
        before the order is known holds).
        """
        n = self.store.num_nodes
        hist = self.split.hist_bytes_at(fraction)
        k = min(n, (self.split.budget_bytes - hist) // self._raw_row_bytes)
        h = min(n, hist // (self._entry_bytes * len(self.hist_layers)))
        ranked = [self.order.ranked(v) for v in self.hist_layers]
        if None not in ranked:
            h = min(h, max(ranked))
        return k, h

    def _split_counters(self) -> SplitCounters:
        """Empty counters for the automatic split, with what its model needs."""
        # Per band of slots, the (node, layer) pairs that hold one.
        bands = sum(
            np.diff(np.minimum(self._cand_h, r if r is not None else self.store.num_nodes),
                    prepend=0)
            for r in (self.order.ranked(v) for v in self.hist_layers)
        )  # fmt: skip
        return SplitCounters(
            self.split.grid, bands, self.staleness, self.lag, self.policy.admitted_share
        )

    def device_bytes(self) -> dict[str, int]:
        """Device bytes of the raw rows and of the table (their sum is within the budget)."""
        return {"raw_rows": self.tiers.budget_used_bytes, "table": self.table.nbytes}

    def _stopped(self, step: int) -> bool:
        """Whether the history is off at ``step`` (``--hist-stop``)."""
        stop = self.history_config.stop_step  # type: ignore[union-attr]
        return stop is not None and step >= stop

    def _admitting(self, step: int) -> bool:
        return (
            self.table.rows > 0
            and not self._stopped(step)
            and step >= self.history_config.warmup_steps  # type: ignore[union-attr]
            and self.staleness >= self.lag  # else no entry would ever be used
        )

    # ------------------------------------------------------------- hooks
    def max_ahead(self) -> int | None:
        return self.lag

    def sample(
        self, sampler: NeighborSampler, seeds: np.ndarray, batch_seed: int, step: int
    ) -> MiniBatch:
        stream = self.stream
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            self._commit_through(step - self.lag)
            found: dict[int, np.ndarray] = {}  # per cached layer, the lookups' rows
            batch = sampler.sample(
                seeds,
                batch_seed,
                prune=lambda layer, ids: self._prune(layer, ids, step, len(seeds), found),
            )
            if math.isfinite(self.max_serves):
                batch.extra["hist_served"] = {v: rows[rows >= 0] for v, rows in found.items()}
            if self.shadow is not None:
                self._shadow(batch, found)
            for layer, block in enumerate(batch.blocks):
                if block.cached_rows is not None:
                    block.cached_emb = self.table.gather(layer, block.cached_rows.numpy())
                    block.cached_rows = None  # rows mean nothing once the table moves on
            if self._admitting(step):  # the step keeps its fresh embeddings to compare with
                batch.extra["hist_probe"] = self._probe(seeds, step)
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
                batch.extra["hist_ready"] = ready
        batch.extra["step"] = step
        self._counters.split.steps += 1
        if self.count_saved and not self._stopped(step):
            self._count_saved(sampler, seeds, batch_seed, batch)
        return batch

    def _shadow(self, batch: MiniBatch, found: dict[int, np.ndarray]) -> None:
        """Mark the nodes the lookups found on their (unpruned) blocks."""
        shadowed = {}
        for v, rows in found.items():
            pos = np.flatnonzero(rows >= 0)
            emb = self.table.gather(v, rows[pos])
            pos_t = torch.from_numpy(pos)
            batch.blocks[v] = ShadowBlock.of(batch.blocks[v], self.shadow, pos_t, emb)
            shadowed[v] = (pos_t, emb)
        batch.extra["hist_shadow"] = shadowed  # counted in the batch's bytes

    def _probe(
        self, seeds: np.ndarray, step: int
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, int]]:
        """Per cached layer: the seeds with a usable entry, that entry, and the sum of their ages.

        What a hit on each of them would have served at ``step``; the step's
        fresh embeddings of the seeds measure its error (:meth:`_drift`).
        """
        out = {}
        for v in self.hist_layers:
            rows = self.table.lookup(v, self.order.slots(v, seeds), step, self.staleness)
            pos = np.flatnonzero(rows >= 0)
            if len(pos):
                age = int((step - self.table.birth[v][rows[pos]]).sum())
                out[v] = (torch.from_numpy(pos), self.table.gather(v, rows[pos]), age)
        return out

    def _drift(self, probes: dict, fresh: dict[int, torch.Tensor]) -> None:
        """Add the relative L2 error of each probed entry against the seed's fresh embedding."""
        c = self._counters
        for v, (pos, old, age) in probes.items():
            err = relative_error(old, fresh[v].detach()[pos.to(old.device)])
            # Summed on the device: no synchronisation per step.
            c.probe_err_sum = c.probe_err_sum + err.sum(dtype=torch.float64)
            c.probes += len(pos)
            c.probe_age_sum += age

    def _prune(
        self, layer: int, ids: np.ndarray, step: int, num_seeds: int, found: dict
    ) -> np.ndarray:
        if layer not in self.table.birth or self._stopped(step):
            return np.full(len(ids), -1, dtype=np.int64)
        slots = self.order.slots(layer, ids)
        rows = self.table.lookup(layer, slots, step, self.staleness, skip=num_seeds)
        hit = rows[rows >= 0]
        if math.isfinite(self.max_serves):
            self.table.serve(layer, hit)
        found[layer] = rows
        c = self._counters
        c.lookups[layer] += max(0, len(ids) - num_seeds)
        c.hits[layer] += len(hit)
        c.age_sum += int((step - self.table.birth[layer][hit]).sum())
        # How often each band's nodes are looked up, held by the table or not:
        # what the split's model of the usable share needs.
        c.split.band_lookups += self._bands(slots[num_seeds:])
        if self.shadow is not None:
            return np.full(len(ids), -1, dtype=np.int64)  # computed anyway
        return rows

    def _band(self, slots: np.ndarray) -> np.ndarray:
        """Each slot's band ``j`` (``[H_{j-1}, H_j)`` of the candidates); ``grid + 1``: none."""
        return np.searchsorted(self._cand_h, slots, side="right")

    def _bands(self, slots: np.ndarray) -> np.ndarray:
        """How many of ``slots`` fall in each band of the candidates."""
        band = self._band(slots)
        return np.bincount(band, minlength=self.split.grid + 2)[: self.split.grid + 1]

    def _count_saved(
        self, sampler: NeighborSampler, seeds: np.ndarray, batch_seed: int, batch: MiniBatch
    ) -> None:
        # The same draws without pruning (sampling is a pure function of the
        # seeds and batch seed), so the difference is exactly what pruning
        # saved; the automatic split weighs every candidate on it.
        pruned = any(b.cached_pos is not None for b in batch.blocks)
        full = sampler.sample(seeds, batch_seed) if pruned else batch
        c = self._counters
        c.nodes_pruned += sum(len(a) - len(b) for a, b in zip(full.layer_nodes, batch.layer_nodes))
        c.rows_saved += len(full.input_nodes) - len(batch.input_nodes)
        if self.split.automatic:
            rank = uncovered_rank(full, len(seeds), self.hist_layers, slots=self.order.slots)
            self._count_candidates(full.input_nodes.numpy(), rank, c.split)

    def _count_candidates(self, rows: np.ndarray, rank: np.ndarray, split: SplitCounters) -> None:
        """Add each candidate's ``noprune`` and ``covered`` counts for one batch.

        Candidate ``i`` fetches the rows ``>= K_i``; ``K_i`` does not grow with
        ``i`` (the table's share does), so a row is fetched by every candidate
        from the first whose ``K`` is at most the row on. One histogram over
        (that first candidate, band) and a running sum over candidates give
        every count in one pass over the rows, instead of one per candidate.
        """
        n = self.split.grid + 1
        first = n - np.searchsorted(self._cand_k[::-1], rows, side="right")
        band = self._band(rank)
        fetched = first < n
        pairs = first[fetched] * (n + 1) + band[fetched]
        hist = np.bincount(pairs, minlength=n * (n + 1)).reshape(n, n + 1)
        split.noprune += np.cumsum(hist.sum(axis=1))
        split.covered += np.cumsum(hist[:, :n], axis=0)

    def forward(self, model: torch.nn.Module, batch: MiniBatch) -> torch.Tensor:
        x = self._inputs(batch)
        ready = batch.extra.pop("hist_ready", None)
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for block in batch.blocks:
                if block.cached_emb is not None:
                    block.cached_emb.record_stream(current)
            for _, old, _ in batch.extra.get("hist_probe", {}).values():
                old.record_stream(current)
            for _, emb in batch.extra.get("hist_shadow", {}).values():
                emb.record_stream(current)
        if not self._admitting(batch.extra.get("step", -1)):
            return model(batch, x)
        logits, hidden = model(batch, x, return_hidden=True)
        fresh = {v: hidden[v - 1] for v in self.hist_layers}
        if self.policy.needs_grad:
            for h in fresh.values():
                if h.requires_grad:
                    h.retain_grad()
        batch.extra["hist_fresh"] = fresh
        return logits

    def after_step(self, batch: MiniBatch, logits: torch.Tensor, step: int) -> None:
        fresh: dict[int, torch.Tensor] | None = batch.extra.pop("hist_fresh", None)
        probes = batch.extra.pop("hist_probe", None)
        if fresh is not None and probes:
            self._drift(probes, fresh)
        # Admissions of steps j <= step - lag are written by now (batch j + lag,
        # trained at or before this step, was sampled after them); later ones
        # may or may not be, depending on how far sampling ran ahead, so they
        # count as in flight whatever the timing.
        while self._recent and self._recent[0][0] <= step - self.lag:
            self._recent.popleft()
        for v, rows in batch.extra.pop("hist_served", {}).items():
            seen = self._served_seen[v]
            seen[rows[rows < len(seen)]] += 1  # a row beyond a shrunk table is gone
        records: list[_Admission] = []
        if fresh is not None:
            for v, h in fresh.items():
                in_flight = [ids for _, layer, ids in self._recent if layer == v]
                mine = self._admit(batch, v, h, step, np.concatenate(in_flight or [[]]))
                self._recent.extend((step, v, a.ids) for a in mine)
                records += mine
        with self._lock:
            self._pending.extend(records)
            self._steps_done = step + 1

    def _admit(
        self, batch: MiniBatch, layer: int, h: torch.Tensor, step: int, in_flight: np.ndarray
    ) -> list[_Admission]:
        n = h.shape[0]
        norms = None
        if self.policy.needs_grad:
            grad = h.grad if h.grad is not None else torch.zeros_like(h)
            norms = torch.linalg.vector_norm(grad.float(), dim=1)
        shadowed = batch.extra.get("hist_shadow", {}).get(layer)
        if shadowed is not None and len(shadowed[0]):
            # As in a pruned run: the policy chooses among the nodes not served.
            candidates = np.setdiff1d(np.arange(n), shadowed[0].numpy())
            if norms is not None:
                norms = norms[torch.from_numpy(candidates).to(norms.device)]
            pos = candidates[self.policy.select(norms, len(candidates), step, layer)]
        else:
            pos = self.policy.select(norms, n, step, layer)
        ids = self.order.slots(layer, batch.layer_nodes[layer - 1][:n].numpy()[pos])
        # Only nodes with a slot in the table, and not one admitted in the last lag steps:
        # every other node's birth is final now (see after_step). A usable
        # entry is left to expire, so the row taken is one no later step may
        # use, and no batch sampled from now on reads it before its birth is set.
        keep = (ids < self.table.rows) & ~np.isin(ids, in_flight)
        free = self.table.expired_for_good(layer, ids[keep], step, self.staleness)
        if math.isfinite(self.max_serves):
            free |= self._served_seen[layer][ids[keep]] >= self.max_serves
        keep[keep] = free
        pos, ids = pos[keep], ids[keep]
        if len(ids) == 0:
            return []
        emb = h.detach()[torch.from_numpy(pos).to(h.device)].to(self.table.dtype)
        finite = torch.isfinite(emb).all(dim=1).cpu().numpy()
        if not finite.all():
            emb, ids = emb[torch.from_numpy(finite).to(emb.device)], ids[finite]
        self.table.write(layer, ids, emb)
        if math.isfinite(self.max_serves):
            self._served_seen[layer][ids] = 0  # the batches from now on serve the new entry
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        self._counters.admitted += len(ids)
        return [_Admission(step, layer, ids, ready)]

    def _commit_through(self, last_step: int) -> None:
        """Make the admissions of steps ``<= last_step`` usable (sampling thread)."""
        with self._lock:
            if self._steps_done <= last_step:
                raise RuntimeError(
                    f"a batch was sampled before step {last_step} had finished "
                    f"(steps done: {self._steps_done}); the loader must keep sampling at most "
                    f"{self.lag} batches ahead (max_ahead)"
                )
            due = []
            while self._pending and self._pending[0].step <= last_step:
                due.append(self._pending.popleft())
        for rec in due:
            if rec.ready is not None and self.stream is not None:
                self.stream.wait_event(rec.ready)
            self.table.commit(rec.layer, rec.ids, None, rec.step)

    def end_epoch(self) -> None:
        counts = self._counters.split
        if self._stopped(self._steps_done):
            # No later step reads the table: its bytes hold raw rows from now on.
            if self.split.release():
                self._apply_split()
        elif self.split.decide(counts):
            self._apply_split()
        self._counters.split = counts.decayed(self.split.carry)

    def _apply_split(self) -> None:
        # The side that shrinks goes first, so the two together stay within
        # the budget but for the copy of the one being resized.
        k = min(self._sizes(self.split.hist_fraction)[0], self.tiers.num_rows)
        if k > self.tiers.num_cached:
            self._size_table()
        self.tiers.resize(k, self.store.features)
        self._drop_eval_tiers()  # they share the device tier's rows
        self._size_table()

    def _size_table(self) -> None:
        _, h = self._sizes(self.split.hist_fraction)
        self.table.resize(h)
        if math.isfinite(self.max_serves):
            for v in self.hist_layers:
                seen = np.zeros(h, dtype=np.int64)
                old = self._served_seen.get(v, seen)[:h]
                seen[: len(old)] = old
                self._served_seen[v] = seen
        # Admissions of nodes beyond a smaller table lost their rows with it.
        for i, a in enumerate(self._pending):
            if (a.ids >= h).any():
                self._pending[i] = _Admission(a.step, a.layer, a.ids[a.ids < h], a.ready)

    # ------------------------------------------------------------- counters
    def stats(self) -> dict[str, Any]:
        out = super().stats()
        c = self._counters
        hits = sum(c.hits.values())
        live = self.table.live(self._steps_done, self.staleness)
        out.update(
            hist_lookups=sum(c.lookups.values()),
            hist_hits=hits,
            **{f"hist_lookups_l{v}": c.lookups[v] for v in self.hist_layers},
            **{f"hist_hits_l{v}": c.hits[v] for v in self.hist_layers},
            hist_admitted=c.admitted,
            nodes_pruned=c.nodes_pruned if self.count_saved else None,
            rows_saved=c.rows_saved if self.count_saved else None,
            hist_rows=self.table.rows,
            hist_entries=live,
            hist_occupancy=live / (self.table.rows * len(self.hist_layers))
            if self.table.rows
            else 0.0,
            hist_mean_age_of_hits=c.age_sum / hits if hits else None,
            hist_drift_probes=c.probes,
            hist_drift_rel_err=float(c.probe_err_sum) / c.probes if c.probes else None,
            hist_drift_mean_age=c.probe_age_sum / c.probes if c.probes else None,
            hist_lag_steps=self.lag,
            cache_split_hist_bytes=self.table.nbytes,
        )
        return out

    def reset_stats(self) -> None:
        super().reset_stats()
        split = self._counters.split
        self._counters = _Counters(self.hist_layers, self._split_counters())
        self._counters.split = split  # the split's counters span the epoch: end_epoch resets them

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            hist_layers=list(self.hist_layers),
            hist_policy=self.policy.name,
            hist_max_serves=self.max_serves if math.isfinite(self.max_serves) else None,
            hist_shadow=self.shadow,
            hist_order=self.order.kind,
            hist_rows=self.table.rows,
            hist_lag_steps=self.lag,
            hist_fraction=self.split.hist_fraction,
            hist_split="automatic" if self.split.automatic else "fixed",
            **{f"device_bytes_{k}": v for k, v in self.device_bytes().items()},
        )
        return out

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            pending = [
                {
                    "step": a.step,
                    "layer": a.layer,
                    "ids": torch.from_numpy(a.ids.copy()),
                    # Rows not yet usable: the table's own state leaves them
                    # out, so they travel with their admission.
                    "emb": self.table.gather(a.layer, a.ids).cpu(),
                }
                for a in self._pending
            ]
        return {
            "split": self.split.state_dict(),
            "slot_order": self.order.fingerprint(),
            "table": self.table.state_dict(),
            "pending": pending,
            "steps_done": self._steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or "table" not in state:
            raise CheckpointError(
                "the checkpoint was not written by a --cache refresh run, so it holds no history "
                "table; resume it with the --cache it was written with"
            )
        saved = sorted(int(k[len("layer") :]) for k in state["table"] if k.startswith("layer"))
        if saved != sorted(self.hist_layers):
            raise CheckpointError(
                f"the checkpoint's history table caches layers {saved!r}, this run "
                f"{sorted(self.hist_layers)!r}; resume with the same --hist-layers"
            )
        if state.get("slot_order", self.order.fingerprint()) != self.order.fingerprint():
            raise CheckpointError(
                "the checkpoint's history table gives its slots to other nodes than this run "
                "would (another --hist-order, --fanouts, training split or store); resume with "
                "the settings it was written with"
            )
        self.split.load_state_dict(state["split"])
        self._apply_split()
        self.table.load_state_dict(state["table"])
        self._pending = deque()
        for a in state["pending"]:
            ids = a["ids"].numpy().astype(np.int64)
            inside = ids < self.table.rows
            emb = a["emb"].to(self.device, self.table.dtype)[torch.from_numpy(inside)]
            self.table.write(int(a["layer"]), ids[inside], emb)
            self._pending.append(_Admission(int(a["step"]), int(a["layer"]), ids[inside]))
        # Sized for this run's budget, which may differ from the checkpoint's.
        self._size_table()
        self._recent = deque((a.step, a.layer, a.ids) for a in self._pending)
        self._steps_done = int(state["steps_done"])
        if math.isfinite(self.max_serves):
            # At an epoch end every sampled batch has trained: both counts agree,
            # but for the rows holding a pending admission (none served yet).
            self._served_seen = {v: self.table.serves[v].copy() for v in self.hist_layers}
            for a in self._pending:
                self._served_seen[a.layer][a.ids] = 0
