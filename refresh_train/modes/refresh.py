"""``--cache refresh``: raw-feature tiers plus the selective historical embedding cache.

How a step goes
---------------
1. **Sample** (loader thread): before sampling the batch of step ``i``, the
   admissions of every step ``<= i - lag`` are written into the history
   table, in step order. The sampler's pruning hook then looks each node of
   a cached layer up (the table holds the hottest nodes, a prefix of the
   degree-ordered ids, so a lookup is one comparison and one read): a node
   with an entry no older than the staleness bound is *cached*: it is not
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
4. **After the step**: the admission policy picks which fresh embeddings
   to keep (the gradient criterion by default). An embedding whose row no
   later step may use (empty, or older than the staleness bound for every
   step to come) is written into its row at once; one that replaces a
   still-usable entry waits in a queue. Either way the entry becomes usable
   only in step 1 of the batch ``lag`` steps later, when its birth is set.

Why it is exact under the pipelined loader
------------------------------------------
The table is read and written by the sampling thread only, in batch order,
and the loader samples batch ``i`` only once step ``i - lag`` has finished
(:meth:`max_ahead`), so batch ``i`` always sees the table after exactly the
admissions of steps ``<= i - lag``: results are a function of the seed and
the flags, never of thread timing, at prefetch 0 as at any depth. Cached
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
gives ``raw_bytes`` to the device tier's rows (``K`` hottest) and
``hist_bytes`` to the table (``H`` hottest nodes per cached layer), which
include the queue of admissions that replace a usable entry: at most
``admit_cap`` entries per step for ``lag`` steps, with ``admit_cap`` sized
so that the queue takes :data:`PENDING_SHARE` of ``hist_bytes``. When a step
has more such candidates than ``admit_cap``, the hottest (lowest ids: highest
degree, most often sampled) are queued.
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

from ..history import BudgetSplit, HistoryTable, SplitCounters, make_policy
from ..history.cover import uncovered_rank
from .raw import RawCache

if TYPE_CHECKING:
    from refresh_store.store import Store

    from ..batch import MiniBatch
    from ..config import HistoryConfig, TierConfig
    from ..sampler import NeighborSampler

__all__ = ["RefreshCache", "PENDING_SHARE"]

#: Share of the table's bytes reserved for admissions that replace a usable
#: entry and so wait in the queue (an admission to an empty or expired row
#: is written in place at once).
PENDING_SHARE = 0.1

_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class _Admission:
    """Fresh embeddings of one layer admitted at one step, waiting to be written."""

    step: int
    layer: int
    ids: np.ndarray  # int64 [n]
    emb: torch.Tensor | None  # [n, width] on the device in the table dtype; None = in place
    ready: torch.cuda.Event | None = None


class _Counters:
    """Per-epoch counters; each field is written by one thread only."""

    def __init__(self, layers: Sequence[int], grid: int) -> None:
        self.lookups = dict.fromkeys(layers, 0)
        self.hits = dict.fromkeys(layers, 0)
        self.age_sum = 0
        self.admitted = 0
        self.nodes_pruned = 0
        self.rows_saved = 0
        self.split = SplitCounters(grid)


class RefreshCache(RawCache):
    """``--cache refresh``: see the module docstring.

    Parameters are those of :class:`~refresh_train.modes.CacheMode`; ``dims``
    and ``history`` are required.
    """

    name = "refresh"

    def __init__(
        self,
        store: Store,
        config: TierConfig,
        device: torch.device,
        *,
        dims: Sequence[int] | None = None,
        history: HistoryConfig | None = None,
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
        self.split = BudgetSplit(config.cache_budget_bytes, history.fraction)
        super().__init__(store, config, device, dims=dims, history=history, seed=seed)
        hc = history
        self.policy = make_policy(hc.policy, hc.grad_quantile, seed)
        self.staleness: float = hc.staleness_iters if self.policy.uses_staleness else math.inf
        self.lag = hc.resolved_lag(self.lookahead_batches())
        # The automatic split weighs what each hit saved, so it needs the counts.
        self.count_saved = hc.count_saved or self.split.automatic
        self.table = HistoryTable(
            self.hist_layers, widths.pop(), 0, _TORCH_DTYPES[hc.dtype], self.device
        )
        self.admit_cap = 0
        self._size_table()
        sizes = [self._sizes(f) for f in self.split.candidates()]
        self._cand_k = np.array([k for k, _, _ in sizes], dtype=np.int64)
        self._cand_h = np.array([h for _, h, _ in sizes], dtype=np.int64)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pending: deque[_Admission] = deque()
        self._lock = threading.Lock()
        self._steps_done = 0  # steps whose after_step ran (the next step's number)
        self._counters = _Counters(self.hist_layers, self.split.grid)

    # ------------------------------------------------------------- sizes
    def _raw_budget_bytes(self) -> int:
        return self.split.raw_bytes

    def _sizes(self, fraction: float) -> tuple[int, int, int]:
        """``(K, H, admit_cap)`` when the table gets ``fraction`` of the budget."""
        n = self.store.num_nodes
        hist = self.split.hist_bytes_at(fraction)
        k = min(n, (self.split.budget_bytes - hist) // self.tiers.row_bytes)
        total = hist // self.table.row_bytes
        cap = int(PENDING_SHARE * total) // self.lag
        h = min(n, (total - self.lag * cap) // len(self.hist_layers))
        return k, h, cap

    def _size_table(self) -> None:
        _, h, self.admit_cap = self._sizes(self.split.hist_fraction)
        self.table.resize(h)

    def device_bytes(self) -> dict[str, int]:
        """Most device bytes each structure may hold (their sum is within the budget)."""
        return {
            "raw_rows": self.tiers.budget_used_bytes,
            "table": self.table.nbytes,
            "pending": self.lag * self.admit_cap * self.table.row_bytes,
        }

    def _admitting(self, step: int) -> bool:
        return (
            self.admit_cap > 0
            and self.table.rows > 0
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
            batch = sampler.sample(
                seeds,
                batch_seed,
                prune=lambda layer, ids: self._prune(layer, ids, step, len(seeds)),
            )
            for layer, block in enumerate(batch.blocks):
                if block.cached_rows is not None:
                    block.cached_emb = self.table.gather(layer, block.cached_rows.numpy())
                    block.cached_rows = None  # rows mean nothing once the table moves on
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
                batch.extra["hist_ready"] = ready
        batch.extra["step"] = step
        if self.count_saved:
            self._count_saved(sampler, seeds, batch_seed, batch)
        return batch

    def _prune(self, layer: int, ids: np.ndarray, step: int, num_seeds: int) -> np.ndarray:
        if layer not in self.table.birth:
            return np.full(len(ids), -1, dtype=np.int64)
        rows = self.table.lookup(layer, ids, step, self.staleness, skip=num_seeds)
        hit = rows[rows >= 0]
        c = self._counters
        c.lookups[layer] += max(0, len(ids) - num_seeds)
        c.hits[layer] += len(hit)
        c.age_sum += int((step - self.table.birth[layer][hit]).sum())
        c.split.hits += len(hit)
        c.split.eligible += int(np.count_nonzero(ids[num_seeds:] < self.table.rows))
        return rows

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
            rows = full.input_nodes.numpy()
            rank = uncovered_rank(full, len(seeds), self.hist_layers)
            for i, (k, h) in enumerate(zip(self._cand_k, self._cand_h)):
                beyond = rows >= k
                c.split.noprune[i] += int(np.count_nonzero(beyond))
                c.split.ideal[i] += int(np.count_nonzero(beyond & (rank >= h)))

    def forward(self, model: torch.nn.Module, batch: MiniBatch) -> torch.Tensor:
        x = self._inputs(batch)
        ready = batch.extra.pop("hist_ready", None)
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for block in batch.blocks:
                if block.cached_emb is not None:
                    block.cached_emb.record_stream(current)
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
        records = []
        if fresh is not None:
            with self._lock:
                in_flight = {
                    v: np.concatenate([a.ids for a in self._pending if a.layer == v] or [[]])
                    for v in fresh
                }
            for v, h in fresh.items():
                records += self._admit(batch, v, h, step, in_flight[v])
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
        pos = self.policy.select(norms, n, step, layer)
        ids = batch.layer_nodes[layer - 1][:n].numpy()[pos]
        # Only the table's nodes, and not one whose admission is still queued
        # (its birth is then stable: only this thread queues admissions).
        keep = (ids < self.table.rows) & ~np.isin(ids, in_flight)
        pos, ids = pos[keep], ids[keep]
        emb = h.detach()[torch.from_numpy(pos).to(h.device)].to(self.table.dtype)
        finite = torch.isfinite(emb).all(dim=1).cpu().numpy()
        # A row no later step may use can take the embedding now; the sampling
        # thread reads a row only once its birth says it is usable.
        free = self.table.expired_for_good(layer, ids, step, self.staleness)
        direct, queued = free & finite, np.flatnonzero(~free & finite)
        if len(queued) > self.admit_cap:  # replacing a usable entry takes queue room
            queued = queued[np.argsort(ids[queued], kind="stable")[: self.admit_cap]]
            queued.sort()
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        out = []
        if direct.any():
            mine = ids[direct]
            self.table.write(layer, mine, emb[torch.from_numpy(direct).to(emb.device)])
            out.append(_Admission(step, layer, mine, None, ready))
        if len(queued):
            index = torch.from_numpy(queued).to(emb.device)
            out.append(_Admission(step, layer, ids[queued], emb[index], ready))
        self._counters.admitted += sum(len(a.ids) for a in out)
        return out

    def _commit_through(self, last_step: int) -> None:
        """Write every queued admission of steps ``<= last_step`` (sampling thread)."""
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
                if rec.emb is not None:
                    rec.emb.record_stream(self.stream)
            self.table.commit(rec.layer, rec.ids, rec.emb, rec.step)

    def end_epoch(self) -> None:
        if self.split.decide(self._counters.split):
            self._apply_split()
        self._counters.split = SplitCounters(self.split.grid)

    def _apply_split(self) -> None:
        # The side that shrinks goes first, so the two together stay within
        # the budget but for the copy of the one being resized.
        k = min(self.split.raw_bytes // self.tiers.row_bytes, self.tiers.num_rows)
        if k > self.tiers.num_cached:
            self._size_table()
        self.tiers.resize(k, self.store.features)
        self._drop_eval_tiers()  # they share the device tier's rows
        self._size_table()

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
            hist_lag_steps=self.lag,
            cache_split_hist_bytes=self.split.hist_bytes,
        )
        return out

    def reset_stats(self) -> None:
        super().reset_stats()
        split = self._counters.split
        self._counters = _Counters(self.hist_layers, self.split.grid)
        self._counters.split = split  # the split's counters span the epoch: end_epoch resets them

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            hist_layers=list(self.hist_layers),
            hist_policy=self.policy.name,
            hist_rows=self.table.rows,
            hist_admit_cap=self.admit_cap,
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
                    "in_place": a.emb is None,
                    # In-place rows are not yet usable, so the table's own
                    # state leaves them out: they travel with their record.
                    "emb": (self.table.gather(a.layer, a.ids) if a.emb is None else a.emb).cpu(),
                }
                for a in self._pending
            ]
        return {
            "split": self.split.state_dict(),
            "table": self.table.state_dict(),
            "pending": pending,
            "steps_done": self._steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.split.load_state_dict(state["split"])
        self._apply_split()
        self.table.load_state_dict(state["table"])
        self._pending = deque()
        for a in state["pending"]:
            ids = a["ids"].numpy().astype(np.int64)
            emb = a["emb"].to(self.device, self.table.dtype)
            if a["in_place"]:
                inside = ids < self.table.rows
                self.table.write(int(a["layer"]), ids[inside], emb[torch.from_numpy(inside)])
                emb = None
            self._pending.append(_Admission(int(a["step"]), int(a["layer"]), ids, emb))
        self._steps_done = int(state["steps_done"])
