"""``--cache refresh`` end to end: pruning, admission, staleness, bytes, timing, resume, config.

The mode (refresh_train/modes/refresh.py) is driven through the real
trainer on a small planted store. Its hooks are wrapped (``Recorder``) to
see what each batch was served and what each step admitted, and every
claim of the mode's docstring is checked against a brute-force model built
from those records: pruned blocks against the unpruned sample of the same
seeds, served embeddings against the fresh embeddings of their birth step,
admissions against the quantile rule.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from _params import DEVICES
from _planted import planted_store

from refresh_train.checkpoint import CHECKPOINT_NAME
from refresh_train.cli import config_from_args, main
from refresh_train.config import (
    ConfigError,
    EvalConfig,
    HistoryConfig,
    LoaderConfig,
    TierConfig,
    TrainConfig,
)
from refresh_train.evaluate import evaluate
from refresh_train.history import INITIAL_HIST_FRACTION, SplitCounters
from refresh_train.history.table import EMPTY
from refresh_train.metrics import read_jsonl
from refresh_train.modes import CACHE_MODES, NoCache, RefreshCache
from refresh_train.sampler import NeighborSampler, num_batches
from refresh_train.trainer import Trainer, train

RESULT_KEYS = ("train_loss", "train_acc", "valid_acc", "test_acc")
HIST_KEYS = (
    "hist_lookups",
    "hist_hits",
    "hist_admitted",
    "nodes_pruned",
    "rows_saved",
    "hist_entries",
    "hist_occupancy",
    "hist_mean_age_of_hits",
)
NEW_KEYS = (
    "memory_access_bytes",
    "hist_lookups",
    "hist_hits",
    "nodes_pruned",
    "rows_saved",
    "hist_occupancy",
    "hist_mean_age_of_hits",
    "cache_split_raw_bytes",
    "cache_split_hist_bytes",
    "hist_drift_probes",
    "hist_drift_rel_err",
    "hist_drift_mean_age",
)
NUM_NODES = 1000
BATCH = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("refresh") / "s", num_nodes=NUM_NODES)


def _hist(**kw) -> HistoryConfig:
    base = dict(staleness_iters=20, lag_steps=2)
    base.update(kw)
    return HistoryConfig(**base)


def _config(
    store,
    *,
    cache: str = "refresh",
    budget_rows: int = 200,
    host_rows: int = 0,
    lookahead: int = 0,
    prefetch: int = 0,
    **kw,
) -> TrainConfig:
    """2-layer SAGE, 16 batches of 32 seeds per epoch, a budget of 200 feature rows."""
    row = store.region("features").row_bytes
    base = dict(
        store=str(store.path),
        model="sage",
        layers=2,
        hidden=16,
        fanouts=(5, 5),
        batch_size=BATCH,
        epochs=2,
        lr=0.01,
        seed=1,
        tiers=TierConfig(
            cache=cache,
            cache_budget_bytes=budget_rows * row,
            host_budget_bytes=host_rows * row,
            lookahead_batches=lookahead,
        ),
        history=_hist(),
        eval=EvalConfig(mode="sampled", batch_size=512),
        loader=LoaderConfig(prefetch_batches=prefetch),
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


@dataclass
class Outcome:
    records: list[dict]
    weights: dict[str, torch.Tensor]


def _train(cfg: TrainConfig) -> Outcome:
    with Trainer(cfg) as t:
        records = t.run()
        return Outcome(
            records, {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
        )


def assert_same_outcome(a: Outcome, b: Outcome, keys=RESULT_KEYS) -> None:
    """Bit-for-bit equal records (``keys``) and model weights."""
    assert len(a.records) == len(b.records)
    for ra, rb in zip(a.records, b.records):
        for k in keys:
            assert ra.get(k) == rb.get(k), (
                f"epoch {ra['epoch']}: {k} {ra.get(k)!r} != {rb.get(k)!r}"
            )
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), f"weights {k} differ"


def _layer_keys(layers) -> tuple[str, ...]:
    return tuple(f"hist_{w}_l{v}" for v in layers for w in ("lookups", "hits"))


# ------------------------------------------------------- brute-force pruning
def reference_pruned(full, cached: dict[int, set[int]]) -> dict[int, dict]:
    """The blocks a sample pruned at ``cached[l]`` (global ids per layer) must have.

    Built from ``full``, the unpruned sample of the same seeds and batch
    seed: what a node draws at a block is a pure function of (seed, batch
    seed, layer, node), so the pruned sample is the unpruned one with the
    cached nodes' sub-trees cut, relabelled in first-appearance order.
    """
    drawn: dict[int, dict[int, list[int]]] = {}
    for layer, block in enumerate(full.blocks):
        nodes = full.layer_nodes[layer].numpy()
        per: dict[int, list[int]] = {int(v): [] for v in nodes[: block.num_dst]}
        dst_ids = nodes[: block.num_dst]
        for s, d in block.edge_index.t().tolist():
            per[int(dst_ids[d])].append(int(nodes[s]))
        drawn[layer] = per
    dst = full.seeds.tolist()
    out: dict[int, dict] = {}
    for layer in range(full.num_layers - 1, -1, -1):
        local = {v: i for i, v in enumerate(dst)}
        src = list(dst)
        edges = []
        for j, v in enumerate(dst):
            for u in drawn[layer][v]:
                if u not in local:
                    local[u] = len(src)
                    src.append(u)
                edges.append([local[u], j])
        ref = {"nodes": src, "num_dst": len(dst), "edges": edges, "cached": None, "computed": None}
        marked = [v in cached.get(layer, ()) for v in src] if layer >= 1 else []
        if any(marked):
            ref["cached"] = [i for i, m in enumerate(marked) if m]
            ref["computed"] = [i for i, m in enumerate(marked) if not m]
            dst = [src[i] for i in ref["computed"]]
        else:
            dst = src
        out[layer] = ref
    return out


def assert_pruned_like(batch, ref: dict[int, dict], rows=None) -> None:
    """``batch`` has exactly the blocks of :func:`reference_pruned`."""
    for layer, block in enumerate(batch.blocks):
        r = ref[layer]
        where = f"block {layer}"
        assert batch.layer_nodes[layer].tolist() == r["nodes"], where
        assert (block.num_src, block.num_dst) == (len(r["nodes"]), r["num_dst"]), where
        assert block.edge_index.t().tolist() == r["edges"], where
        if r["cached"] is None:
            assert block.cached_pos is None and block.computed_pos is None, where
            assert block.cached_ids is None, where
            continue
        assert block.cached_pos.tolist() == r["cached"], where
        assert block.computed_pos.tolist() == r["computed"], where
        assert block.cached_ids.tolist() == [r["nodes"][i] for i in r["cached"]], where
        if rows is not None:
            assert block.cached_rows.tolist() == [rows(layer, r["nodes"][i]) for i in r["cached"]]
    assert batch.input_nodes.tolist() == ref[0]["nodes"]


def corner_graph():
    """300 nodes: a hub (node 0, in-degree 240 with repeated edges), self-loops
    (one repeated), repeated edges, isolated nodes 280..299."""
    rng = np.random.default_rng(5)
    src = [rng.integers(0, 280, 1200), np.arange(20, 220), np.arange(20, 60), [7, 9, 9]]
    dst = [rng.integers(1, 280, 1200), np.zeros(240, np.int64), [7, 9, 9]]
    src, dst = np.concatenate(src), np.concatenate(dst)
    src, dst = np.concatenate([src, src[:100]]), np.concatenate([dst, dst[:100]])  # duplicates
    order = np.lexsort((src, dst))
    indptr = np.zeros(301, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=300), out=indptr[1:])
    return indptr, src[order].astype(np.int64)


def _table_row(layer, ids):
    """The history row a fake table keeps node ``ids`` of ``layer`` at."""
    return ids * 3 + layer


@pytest.mark.parametrize(
    ("fanouts", "hist_layers"),
    [
        pytest.param((-1, 3), (1,), id="L2-{1}"),
        pytest.param((4, -1, 2), (2,), id="L3-{2}"),
        pytest.param((4, -1, 2), (2, 1), id="L3-{2,1}"),
        pytest.param((3, 3, 3), (1,), id="L3-{1}"),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_pruned_blocks_hold_exactly_the_non_cached_subtrees(relabel, fanouts, hist_layers, threads):
    indptr, indices = corner_graph()
    seeds = np.array([0, 7, 9, 285, 3, 150, 279, 44])  # hub, self-loops, isolated, ...
    sampler = NeighborSampler(indptr, indices, fanouts, seed=3, num_threads=threads)
    rng = np.random.default_rng(0)
    pruned_something = 0
    try:
        for bseed in range(4):
            full = sampler.sample(seeds, bseed)
            for share in (0.1, 0.5, 0.95):
                # An arbitrary cached set per layer (seeds included now and then).
                cached = {
                    v: set(np.flatnonzero(rng.random(300) < share).tolist()) for v in hist_layers
                }

                def hook(layer, ids, cached=cached):
                    hit = np.isin(ids, list(cached.get(layer, ())))
                    return np.where(hit, _table_row(layer, ids), -1)

                got = sampler.sample(seeds, bseed, prune=hook)
                assert_pruned_like(got, reference_pruned(full, cached), _table_row)
                pruned_something += sum(b.cached_pos is not None for b in got.blocks)
                # The unpruned sample is the reference of an empty cached set.
                assert_pruned_like(full, reference_pruned(full, {}))
    finally:
        sampler.close()
    assert pruned_something > 0


# ------------------------------------------------------------- instrumentation
@dataclass
class Served:
    step: int
    layer: int
    ids: np.ndarray
    births: np.ndarray
    emb: torch.Tensor


@dataclass
class Recorder:
    """Wraps RefreshCache's hooks (for one test) and records what they did.

    ``served``: what each batch took from the table, with the birth steps the
    table held for those nodes when the batch was sampled. ``fresh``: every
    embedding a step computed at a cached layer, in the table's dtype.
    ``admitted``: the admissions each step queued. ``lookups``: the nodes
    each batch looked up (non-seed sources of a cached layer) and which of
    them it was served. ``mismatches``: admissions that differ from the
    quantile rule (checked at prefetch 0 only, where nothing else touches
    the queue during a step).
    """

    check_admission: bool = False
    compare_pruning: bool = True
    served: list[Served] = field(default_factory=list)
    fresh: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)
    admitted: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)
    lookups: list[tuple[int, int, np.ndarray, set]] = field(default_factory=list)
    admission_checks: int = 0
    capped_steps: int = 0
    shadowed: int = 0
    mismatches: list[str] = field(default_factory=list)
    fetched: list[np.ndarray] = field(default_factory=list)
    pruning_checked: int = 0
    saved: dict[int, tuple[int, int]] = field(default_factory=dict)
    sampled: list[tuple[np.ndarray, int]] = field(default_factory=list)
    seeds: dict[int, np.ndarray] = field(default_factory=dict)

    def install(self, monkeypatch, cls=RefreshCache) -> Recorder:
        sample, fetch, after_step = cls.sample, cls.fetch, cls.after_step
        rec = self

        def rec_sample(mode, sampler, seeds, batch_seed, step):
            batch = sample(mode, sampler, seeds, batch_seed, step)
            rec._on_sample(mode, sampler, seeds, batch_seed, step, batch)
            return batch

        def rec_fetch(mode, batch):
            rec.fetched.append(batch.input_nodes.numpy().copy())
            return fetch(mode, batch)

        def rec_after_step(mode, batch, logits, step):
            expected = rec._before_admission(mode, batch, step)
            after_step(mode, batch, logits, step)
            rec._after_admission(mode, step, expected)

        monkeypatch.setattr(cls, "sample", rec_sample)
        monkeypatch.setattr(cls, "fetch", rec_fetch)
        monkeypatch.setattr(cls, "after_step", rec_after_step)
        return self

    # sampling thread; the table changes only in this thread, at the next sample
    def _on_sample(self, mode, sampler, seeds, batch_seed, step, batch) -> None:
        self.sampled.append((np.array(seeds).copy(), batch_seed))
        self.seeds[step] = np.array(seeds).copy()
        cached: dict[int, set[int]] = {}
        n = len(seeds)
        for layer in mode.hist_layers:
            block = batch.blocks[layer]
            ids = block.cached_ids.numpy() if block.cached_ids is not None else np.zeros(0, int)
            cached[layer] = set(ids.tolist())
            self.lookups.append((step, layer, batch.layer_nodes[layer].numpy()[n:], cached[layer]))
            if len(ids):
                births = mode.table.birth[layer][mode.order.slots(layer, ids)].copy()
                emb = block.cached_emb.detach().cpu().clone()
                self.served.append(Served(step, layer, ids.copy(), births, emb))
        if self.compare_pruning:
            full = sampler.sample(seeds, batch_seed)
            assert_pruned_like(batch, reference_pruned(full, cached))
            self.pruning_checked += 1
            nodes = sum(len(a) - len(b) for a, b in zip(full.layer_nodes, batch.layer_nodes))
            self.saved[step] = (nodes, len(full.input_nodes) - len(batch.input_nodes))

    # main thread
    def _before_admission(self, mode, batch, step):
        fresh = batch.extra.get("hist_fresh")
        if fresh is None:
            return None
        # Nodes admitted in the last lag steps are in flight, whatever the timing.
        queued = {
            v: {u for (layer, u, j) in self.admitted if layer == v and step - mode.lag < j < step}
            for v in fresh
        }
        expected = {}
        for layer, h in fresh.items():
            nodes = batch.layer_nodes[layer - 1][: h.shape[0]].numpy()
            rows = h.detach().to(mode.table.dtype).cpu()
            for i, v in enumerate(nodes.tolist()):
                self.fresh[(layer, v, step)] = rows[i]
            if self.check_admission:
                norms = None
                if h.grad is not None:
                    norms = torch.linalg.vector_norm(h.grad.float(), dim=1).cpu().numpy()
                shadowed = batch.extra.get("hist_shadow", {}).get(layer)
                if shadowed is not None:  # the nodes a pruned run would not have computed
                    keep = np.setdiff1d(np.arange(len(nodes)), shadowed[0].numpy())
                    nodes, norms = nodes[keep], None if norms is None else norms[keep]
                    self.shadowed += len(shadowed[0])
                expected[layer] = self._rule(mode, nodes, norms, queued[layer], step, layer)
        return expected

    def _rule(self, mode, nodes, norms, queued, step, layer):
        """The admission the mode's docstring describes, computed apart."""
        n = len(nodes)
        q = mode.policy.quantile
        name = mode.policy.name
        if name in ("grad+stale", "grad"):
            count = math.floor(Fraction(str(q)) * n)
            pos = np.sort(np.lexsort((np.arange(n), norms))[:count])
        elif name == "stale":
            pos = np.arange(n)
        else:  # random: tested apart in test_history.py
            pos = mode.policy.select(None, n, step, layer)
        ids = nodes[pos]
        slots = mode.order.slots(layer, ids)
        keep = (slots < mode.table.rows) & ~np.isin(ids, list(queued))
        pos, ids, slots = pos[keep], ids[keep], slots[keep]
        # Only rows no later step may use are written: a usable entry expires.
        birth = mode.table.birth[layer][slots]
        free = (birth == EMPTY) | (birth + mode.staleness <= step)
        if math.isfinite(mode.max_serves):
            # ... or has served its lookups in the batches trained so far
            free |= self._uses(mode, layer, ids, step) >= mode.max_serves
        if not free.all():
            self.capped_steps += 1
        pos, ids = pos[free], ids[free]
        return pos, ids

    def _uses(self, mode, layer, nodes, step) -> np.ndarray:
        """Lookups of steps <= ``step`` served by each node's entry (admitted <= step - lag)."""
        births = admission_steps(self)
        uses = served_uses(self, mode.lag, mode.staleness, step + 1)
        current = [max([b for b in births.get((layer, v), ()) if b <= step - mode.lag],
                       default=None) for v in nodes.tolist()]  # fmt: skip
        return np.array([uses[(layer, v, b)] for v, b in zip(nodes.tolist(), current)])

    def _after_admission(self, mode, step, expected) -> None:
        with mode._lock:
            new = [a for a in mode._pending if a.step == step]
        for a in new:
            emb = mode.table.gather(a.layer, a.ids).cpu()  # written at once, usable later
            for i, v in enumerate(mode.order.nodes(a.layer, a.ids).tolist()):
                self.admitted[(a.layer, v, step)] = emb[i]
        if not expected:
            return
        got = {}
        for a in new:
            got[a.layer] = sorted(got.get(a.layer, []) + mode.order.nodes(a.layer, a.ids).tolist())
        for layer, (_pos, ids) in expected.items():
            self.admission_checks += 1
            if got.get(layer, []) != sorted(ids.tolist()):
                self.mismatches.append(f"step {step} layer {layer}: {got.get(layer)} != {ids}")


def check_served(
    rec: Recorder, lag: int, staleness: float, max_serves: float = math.inf
) -> dict[str, int]:
    """The history's contract, checked on a recorded run.

    Every embedding a batch was served is one admitted for that node at its
    birth step, equal (in the table dtype) to what that step computed, with
    ``lag <= step - birth <= staleness``; and every node a batch looked up
    was served exactly when an admission of it at least ``lag`` and at most
    ``staleness`` steps old existed (the newest one at least ``lag`` old
    counts) that earlier batches had served fewer than ``max_serves`` times.
    Returns counts, so callers can see the bounds were exercised.
    """
    assert rec.served, "nothing was served: the check would prove nothing"
    served = 0
    for s in rec.served:
        age = s.step - s.births
        assert (age >= lag).all(), (
            f"step {s.step} layer {s.layer}: an entry {int(age.min())} steps old was used; "
            f"the lag is {lag}"
        )
        assert (age <= staleness).all(), (
            f"step {s.step} layer {s.layer}: an entry {int(age.max())} steps old was used; "
            f"the staleness bound is {staleness}"
        )
        for v, birth, emb in zip(s.ids.tolist(), s.births.tolist(), s.emb):
            key = (s.layer, v, birth)
            assert key in rec.admitted, f"{key} served but never admitted"
            assert torch.equal(emb, rec.admitted[key]), f"{key}: served != admitted"
            assert torch.equal(emb, rec.fresh[key]), f"{key}: served != computed at birth"
            served += 1
    births = admission_steps(rec)
    expired = exhausted = 0
    uses: Counter = Counter()  # (layer, node, birth) -> lookups served so far
    for step, layer, nodes, got in rec.lookups:
        want = set()
        for v in nodes.tolist():
            birth = usable_birth(births, layer, v, step, lag, staleness)
            if birth is not None and uses[(layer, v, birth)] < max_serves:
                want.add(v)
                uses[(layer, v, birth)] += 1
            elif birth is not None:
                exhausted += 1
            elif births.get((layer, v)) and births[(layer, v)][0] <= step - lag:
                expired += 1
        assert got == want, f"step {step} layer {layer}: served {sorted(got ^ want)} wrongly"
    return {"served": served, "expired": expired, "exhausted": exhausted, "uses": uses}


def admission_steps(rec: Recorder) -> dict[tuple[int, int], list[int]]:
    """The steps that admitted each ``(layer, node)``, in order."""
    births: dict[tuple[int, int], list[int]] = {}
    for layer, v, step in sorted(rec.admitted, key=lambda k: k[2]):
        births.setdefault((layer, v), []).append(step)
    return births


def usable_birth(births, layer: int, v: int, step: int, lag: int, staleness: float) -> int | None:
    """The birth of the entry of ``v`` a lookup at ``step`` may use, if any.

    The newest admission at least ``lag`` steps old counts, if it is at most
    ``staleness`` steps old.
    """
    visible = [b for b in births.get((layer, v), ()) if b <= step - lag]
    if visible and step - visible[-1] <= staleness:
        return visible[-1]
    return None


def served_uses(rec: Recorder, lag: int, staleness: float, before: int) -> Counter:
    """``(layer, node, birth)`` -> lookups the batches of steps ``< before`` served from it."""
    births = admission_steps(rec)
    uses: Counter = Counter()
    for step, layer, _, got in rec.lookups:
        if step < before:
            for v in got:
                uses[(layer, v, usable_birth(births, layer, v, step, lag, staleness))] += 1
    return uses


def assert_drift_matches(
    rec: Recorder, records: list[dict], layers, lag, staleness, max_serves: float = math.inf
) -> int:
    """Each epoch's hist_drift_* figures equal a recomputation from the recorded run.

    A seed probed at ``step`` is one with a usable entry then (with a serve
    limit: served fewer times by the batches before); its error is the
    distance from that entry (as admitted) to the seed's embedding that step
    computed, over the latter's norm. Returns the number of probes.
    """
    births = admission_steps(rec)
    per_epoch = num_batches(NUM_NODES // 2, BATCH)
    total = 0
    for r in records:
        errs, ages = [], []
        for step in range((r["epoch"] - 1) * per_epoch, r["epoch"] * per_epoch):
            uses = served_uses(rec, lag, staleness, step) if math.isfinite(max_serves) else {}
            for layer in layers:
                for v in rec.seeds[step].tolist():
                    birth = usable_birth(births, layer, v, step, lag, staleness)
                    if birth is None or uses.get((layer, v, birth), 0) >= max_serves:
                        continue
                    old = rec.admitted[(layer, v, birth)].double()
                    new = rec.fresh[(layer, v, step)].double()
                    errs.append(float((old - new).norm() / new.norm()))
                    ages.append(step - birth)
        assert r["hist_drift_probes"] == len(errs)
        if errs:
            assert r["hist_drift_mean_age"] == sum(ages) / len(ages)
            # The recorder keeps the fresh embeddings in the table's dtype
            # (float16 by default: rounded by up to 2**-11), the mode does not.
            assert r["hist_drift_rel_err"] == pytest.approx(sum(errs) / len(errs), rel=1e-3)
            assert lag <= min(ages) and max(ages) <= staleness
        else:
            assert r["hist_drift_rel_err"] is None and r["hist_drift_mean_age"] is None
        total += len(errs)
    return total


def assert_counters_match(rec: Recorder, records: list[dict], layers) -> None:
    """Each epoch's hist_* counters equal what the recorded batches were served."""
    per_epoch = num_batches(NUM_NODES // 2, BATCH)
    for r in records:
        steps = range((r["epoch"] - 1) * per_epoch, r["epoch"] * per_epoch)
        lookups = [x for x in rec.lookups if x[0] in steps]
        for v in layers:
            assert r[f"hist_lookups_l{v}"] == sum(len(x[2]) for x in lookups if x[1] == v)
            assert r[f"hist_hits_l{v}"] == sum(len(x[3]) for x in lookups if x[1] == v)
        ages = np.concatenate([s.step - s.births for s in rec.served if s.step in steps] or [[]])
        assert r["hist_hits"] == len(ages)
        assert r["hist_mean_age_of_hits"] == (int(ages.sum()) / len(ages) if len(ages) else None)
        if rec.saved:
            assert r["nodes_pruned"] == sum(rec.saved[i][0] for i in steps)
            assert r["rows_saved"] == sum(rec.saved[i][1] for i in steps)


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("history", "budget_rows"),
    [
        pytest.param(_hist(staleness_iters=0), 200, id="staleness-0"),
        pytest.param(_hist(staleness_iters=1), 200, id="staleness-below-lag"),
        pytest.param(_hist(warmup_steps=10**6), 200, id="warmup"),
        pytest.param(_hist(fraction=0.0), 200, id="no-table"),
        # Admits every step (hidden states kept, gradients retained, queued), but
        # the lag outlasts the run, so nothing becomes visible.
        pytest.param(
            _hist(lag_steps=100, staleness_iters=200, fraction=0.5),
            2000,
            id="admitted-never-visible",
        ),
    ],
)
def test_nothing_served_trains_exactly_like_cache_none(store, history, budget_rows):
    none = _train(_config(store, cache="none", prefetch=2))
    refresh = _train(_config(store, history=history, budget_rows=budget_rows, prefetch=2))
    admitting = history.lag_steps == 100
    for r in refresh.records:
        assert r["hist_hits"] == 0 and (r["hist_admitted"] > 0) == admitting
    assert refresh.records[0]["hist_lookups"] > 0
    assert_same_outcome(none, refresh)


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(_hist(staleness_iters=6, grad_quantile=0.5, fraction=0.3), id="grad+stale"),
        pytest.param(_hist(staleness_iters=5, policy="stale", fraction=0.3), id="stale"),
        pytest.param(_hist(staleness_iters=7, policy="random", fraction=0.3), id="random"),
        pytest.param(_hist(policy="grad", lag_steps=3, fraction=0.3), id="grad-no-bound"),
        pytest.param(_hist(staleness_iters=4, dtype="float32", fraction=0.3), id="fp32"),
        pytest.param(_hist(staleness_iters=12, max_serves=2, fraction=0.3), id="max-serves"),
        pytest.param(_hist(policy="grad", max_serves=1, fraction=0.3), id="grad-serve-once"),
    ],
)
def test_every_served_embedding_is_an_admitted_one_within_the_bounds(store, monkeypatch, history):
    rec = Recorder().install(monkeypatch)
    out = _train(_config(store, history=history))
    staleness = math.inf if history.policy == "grad" else history.staleness_iters
    cap = history.max_serves or math.inf
    counts = check_served(rec, history.lag_steps, staleness, cap)
    assert counts["served"] == sum(r["hist_hits"] for r in out.records)
    assert_counters_match(rec, out.records, (1,))
    assert assert_drift_matches(rec, out.records, (1,), history.lag_steps, staleness, cap) > 0
    if math.isfinite(staleness):
        assert counts["expired"] > 0, "no entry outlived the bound: the bound was not exercised"
    if math.isfinite(cap):
        assert counts["exhausted"] > 0, "no entry served its limit: the limit was not exercised"
        assert max(counts["uses"].values()) == cap
        # Exhausted rows are renewed: a node's entries keep serving in the last epoch.
        assert out.records[-1]["hist_hits"] > 0
        renewed = Counter((layer, v) for layer, v, _ in counts["uses"])
        assert max(renewed.values()) > 1, "no node was served from two of its entries"
    assert rec.pruning_checked == 2 * num_batches(NUM_NODES // 2, BATCH)


def test_multi_layer_caching_serves_only_admitted_embeddings(store, monkeypatch):
    rec = Recorder().install(monkeypatch)
    history = _hist(layers=(2, 1), staleness_iters=8, fraction=0.4)
    out = _train(_config(store, layers=3, fanouts=(4, 4, 4), history=history))
    check_served(rec, 2, 8)
    assert_counters_match(rec, out.records, (2, 1))
    assert assert_drift_matches(rec, out.records, (2, 1), 2, 8) > 0
    last = out.records[-1]
    assert last["hist_hits_l2"] > 0 and last["hist_hits_l1"] > 0
    assert last["nodes_pruned"] > last["rows_saved"] > 0
    assert {s.layer for s in rec.served} == {1, 2}


class EagerCommit(RefreshCache):
    """A broken variant: admissions are visible to the very next batch."""

    def after_step(self, batch, logits, step):
        super().after_step(batch, logits, step)
        self._commit_through(step)


def test_the_served_check_catches_admissions_made_visible_eagerly(store, monkeypatch):
    monkeypatch.setitem(CACHE_MODES, "refresh", EagerCommit)
    rec = Recorder().install(monkeypatch)
    _train(_config(store, epochs=1, history=_hist(staleness_iters=6, fraction=0.3)))
    with pytest.raises(AssertionError, match="the lag is 2"):
        check_served(rec, 2, 6)


@pytest.mark.parametrize(
    ("max_serves", "shadow"), [(None, None), (2, None), (None, "values"), (None, "gradients")]
)
def test_admission_follows_the_quantile_rule(store, monkeypatch, max_serves, shadow):
    """floor(q n) smallest gradient norms, of the table's nodes not admitted in the
    last lag steps whose rows no later step may use (with a serve limit: also the
    rows whose entry served its limit in the batches trained so far), with the
    embeddings computed; in a shadow run, of the nodes it did not shadow."""
    rec = Recorder(check_admission=True, compare_pruning=False).install(monkeypatch)
    history = _hist(
        grad_quantile=0.5,
        staleness_iters=10,
        fraction=0.3,
        lag_steps=3,
        max_serves=max_serves,
        shadow=shadow,
    )
    _train(_config(store, history=history))
    assert (rec.shadowed > 0) == (shadow is not None)
    assert rec.admission_checks == 2 * num_batches(NUM_NODES // 2, BATCH)
    assert rec.mismatches == []
    assert 0 < rec.capped_steps < rec.admission_checks, "usable entries never or always skipped"
    for key, emb in rec.admitted.items():
        assert torch.equal(emb, rec.fresh[key]), key


def test_no_admission_before_the_warmup_step(store, monkeypatch):
    rec = Recorder(compare_pruning=False).install(monkeypatch)
    out = _train(_config(store, history=_hist(warmup_steps=10, fraction=0.3)))
    assert min(step for _, _, step in rec.admitted) == 10
    assert min(s.step - s.births.max() for s in rec.served) >= 2
    assert out.records[0]["hist_hits"] > 0


def test_after_the_stop_step_training_is_exact_and_the_table_gives_its_bytes_back(
    store, tmp_path, monkeypatch
):
    """--hist-stop: the table is used before the stop step only; the epoch after it
    trains exactly as --cache none from the same model, on the whole budget of raw rows."""
    per_epoch = num_batches(NUM_NODES // 2, BATCH)
    stop = 2 * per_epoch
    history = _hist(stop_step=stop, fraction=0.3)
    cfg = _config(store, epochs=3, history=history, prefetch=2)
    rec = Recorder(compare_pruning=False).install(monkeypatch)
    stopped = _train(cfg)
    assert rec.served and max(s.step for s in rec.served) < stop
    assert rec.admitted and max(step for _, _, step in rec.admitted) < stop
    assert all(not cached for step, _, _, cached in rec.lookups if step >= stop)
    first, _, last = stopped.records
    assert first["hist_hits"] > 0 and first["cache_split_hist_bytes"] > 0
    assert last["hist_lookups"] == last["hist_hits"] == last["hist_admitted"] == 0
    budget = cfg.tiers.cache_budget_bytes
    assert last["cache_split_hist_bytes"] == 0 and last["cache_split_raw_bytes"] == budget
    assert last["rows_device"] > first["rows_device"]
    monkeypatch.undo()

    # The same two epochs, then the third with --cache none from their checkpoint.
    ckpt = str(tmp_path / "ck")
    _train(cfg.replace(epochs=2, checkpoint_dir=ckpt))
    exact = _train(
        cfg.replace(tiers=replace(cfg.tiers, cache="none"), checkpoint_dir=ckpt, resume=True)
    )
    assert [r["epoch"] for r in exact.records] == [1, 2, 3]  # 1-2 restored from the checkpoint
    assert "hist_lookups" not in exact.records[-1]  # --cache none trained the last epoch
    assert_same_outcome(stopped, exact)


def test_a_stop_at_step_0_trains_exactly_like_cache_none(store):
    none = _train(_config(store, cache="none"))
    refresh = _train(_config(store, history=_hist(stop_step=0, fraction=0.3)))
    assert all(r["hist_lookups"] == r["hist_admitted"] == 0 for r in refresh.records)
    assert_same_outcome(none, refresh)


def test_counting_what_pruning_saved_changes_no_result(store):
    """The second, unpruned sampling per batch (--no-hist-count-saved turns it off)
    must not disturb the sampler: same model, same hits, counts reported or None."""
    history = _hist(fraction=0.3)
    counted = _train(_config(store, history=history))
    plain = _train(_config(store, history=replace(history, count_saved=False)))
    keys = RESULT_KEYS + ("hist_lookups", "hist_hits", "hist_admitted", "hist_entries")
    assert_same_outcome(counted, plain, keys)
    assert all(r["rows_saved"] > 0 and r["nodes_pruned"] > 0 for r in counted.records)
    assert all(r["rows_saved"] is None and r["nodes_pruned"] is None for r in plain.records)


def test_the_whole_budget_can_go_to_the_table(store):
    records = train(_config(store, history=_hist(fraction=1.0)))
    for r in records:
        assert r["rows_device"] == 0 and r["cache_split_raw_bytes"] == 0
        assert r["hist_hits"] > 0


# ----------------------------------------------------------------- budget
@pytest.fixture(scope="module")
def budget_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    return [
        planted_store(root / f"s{d}", num_nodes=300, feature_dim=d, dtype=t)
        for d, t in ((3, np.float32), (16, np.float16), (50, np.float32))
    ]


def _mode(store, budget: int, history: HistoryConfig, hidden: int) -> RefreshCache:
    tiers = TierConfig(
        cache="refresh", cache_budget_bytes=budget, host_budget_bytes=0, lookahead_batches=0
    )
    dims = [store.feature_dim, hidden, hidden, store.num_classes]
    return RefreshCache(
        store, tiers, torch.device("cpu"), dims=dims, history=history, fanouts=(3, 3, 3)
    )


def _assert_within_budget(mode: RefreshCache, budget: int) -> None:
    parts = mode.device_bytes()
    assert sum(parts.values()) <= budget, parts
    assert parts["table"] == mode.table.nbytes
    assert parts["raw_rows"] == mode.tiers.num_cached * mode.tiers.row_bytes
    assert parts["raw_rows"] <= mode.split.raw_bytes
    assert parts["table"] <= mode.split.hist_bytes
    assert mode.table.rows <= mode.store.num_nodes


def test_device_bytes_never_exceed_the_budget(budget_stores):
    def counters(noprune, ideal):
        c = SplitCounters(16, np.ones(17, np.int64), math.inf, 1, 1.0)  # every table node usable
        c.steps = 1
        c.noprune[:] = noprune
        np.fill_diagonal(c.covered, noprune - ideal)
        c.band_lookups[:] = 1
        return c

    raw_wins = counters(np.arange(17) + 1, np.arange(17) + 1)  # the smallest table wins
    table_wins = counters(np.full(17, 100), 100 - np.arange(17))  # the largest table wins
    checked = 0
    for store in budget_stores:
        for budget in (0, 1, 100, 1000, 4096, 12_345, 100_000):
            for fraction in (None, 0.0, 0.1, 0.5, 1.0):
                for layers, hidden, dtype, lag in (
                    ((2,), 8, "float16", 1),
                    ((2, 1), 24, "float32", 3),
                    ((1,), 24, "float16", 7),
                ):
                    hist = HistoryConfig(
                        layers=layers, fraction=fraction, lag_steps=lag, dtype=dtype
                    )
                    mode = _mode(store, budget, hist, hidden)
                    try:
                        _assert_within_budget(mode, budget)
                        if fraction is None:
                            # Walk the split to both ends through end_epoch.
                            for c in [raw_wins] * 2 + [table_wins] * 2:
                                mode._counters.split = c
                                mode.end_epoch()
                                _assert_within_budget(mode, budget)
                            assert mode.split.hist_fraction == 1.0
                        checked += 1
                    finally:
                        mode.close()
    assert checked == 3 * 7 * 5 * 3


def _track_device_bytes(monkeypatch) -> list[tuple[str, int, int]]:
    """(where, bytes the device holds, budget) after every step and every end_epoch."""
    seen: list[tuple[str, int, int]] = []
    after_step, end_epoch = RefreshCache.after_step, RefreshCache.end_epoch

    def held(mode):
        return mode.tiers.budget_used_bytes + mode.table.nbytes

    def tracked_after_step(mode, batch, logits, step):
        after_step(mode, batch, logits, step)
        seen.append((f"step {step}", held(mode), mode.config.cache_budget_bytes))

    def tracked_end_epoch(mode):
        end_epoch(mode)
        seen.append(("end_epoch", held(mode), mode.config.cache_budget_bytes))

    monkeypatch.setattr(RefreshCache, "after_step", tracked_after_step)
    monkeypatch.setattr(RefreshCache, "end_epoch", tracked_end_epoch)
    return seen


def test_raw_rows_table_and_queued_admissions_fit_the_budget_in_a_run(store, monkeypatch):
    seen = _track_device_bytes(monkeypatch)
    for rows in (100, 200, 400):
        _train(_config(store, budget_rows=rows, history=_hist(lag_steps=3, fraction=0.25)))
    assert len(seen) == 3 * 2 * (num_batches(NUM_NODES // 2, BATCH) + 1)
    over = [s for s in seen if s[1] > s[2]]
    assert over == []


def test_two_cached_layers_keep_their_queue_within_the_budget(store, monkeypatch):
    seen = _track_device_bytes(monkeypatch)
    history = _hist(layers=(2, 1), lag_steps=3, fraction=0.5)
    _train(_config(store, layers=3, fanouts=(5, 5, 5), epochs=1, history=history))
    assert [s for s in seen if s[1] > s[2]] == []


def test_the_queue_fits_the_budget_after_the_split_moves(store, monkeypatch):
    seen = _track_device_bytes(monkeypatch)
    for rows in (100, 200, 400):
        _train(_config(store, budget_rows=rows, epochs=3, history=_hist(lag_steps=3)))
    assert [s for s in seen if s[1] > s[2]] == []


# ---------------------------------------------------------- end to end
def test_a_refresh_run_hits_prunes_saves_traffic_and_reports_every_metric(store, tmp_path):
    budget_rows = 200
    runs = {}
    for cache in ("none", "raw", "refresh"):
        cfg = _config(
            store,
            cache=cache,
            budget_rows=budget_rows,
            host_rows=100,
            lookahead=4,
            prefetch=2,
            metrics_out=str(tmp_path / f"{cache}.jsonl"),
        )
        runs[cache] = train(cfg)
        lines = read_jsonl(tmp_path / f"{cache}.jsonl")
        for rec, line in zip(runs[cache], lines):
            assert rec["memory_access_bytes"] == rec["bytes_host"] + rec["bytes_disk"]
            for key in ("memory_access_bytes", "cache_split_raw_bytes", "cache_split_hist_bytes"):
                assert line[key] == rec[key], key
    budget = budget_rows * store.region("features").row_bytes
    for none, raw, ref in zip(runs["none"], runs["raw"], runs["refresh"]):
        assert none["cache_split_raw_bytes"] == none["cache_split_hist_bytes"] == 0
        assert raw["cache_split_raw_bytes"] == budget  # 200 whole rows
        assert raw["cache_split_hist_bytes"] == 0
        for key in NEW_KEYS + _layer_keys((1,)):
            assert key in ref and ref[key] is not None, key
        assert ref["hist_hits"] > 0 and ref["nodes_pruned"] > 0 and ref["rows_saved"] > 0
        assert (
            ref["hist_lookups"] == ref["hist_lookups_l1"] >= ref["hist_hits"] == ref["hist_hits_l1"]
        )
        assert 0 < ref["hist_occupancy"] <= 1
        assert 2 <= ref["hist_mean_age_of_hits"] <= 20
        # Seeds with a usable entry, against their fresh embeddings: entries drift.
        assert ref["hist_drift_probes"] > 0 and 2 <= ref["hist_drift_mean_age"] <= 20
        assert 0 < ref["hist_drift_rel_err"] < 10
        assert ref["cache_split_raw_bytes"] + ref["cache_split_hist_bytes"] <= budget
        assert ref["cache_split_hist_bytes"] > 0
        # Pruning saved exactly rows_saved input rows of the same batches (none reads all).
        rows = sum(ref[f"rows_{t}"] for t in ("device", "host", "disk"))
        assert rows == none["rows_disk"] - ref["rows_saved"]
        assert ref["nodes_pruned"] == ref["rows_saved"]  # two layers: only inputs are pruned
        assert ref["memory_access_bytes"] < none["memory_access_bytes"]


def test_the_command_line_contract_runs_refresh(store, tmp_path):
    metrics = tmp_path / "m.jsonl"
    argv = (
        f"--store {store.path} --cache refresh --cache-budget 512KiB --host-budget 0 "
        f"--fanouts 4,4 --hidden 16 --batch-size 64 --epochs 2 --hist-lag 2 --staleness 30 "
        f"--metrics-out {metrics} --no-progress --eval-batch-size 512"
    ).split()
    assert main(argv) == 0
    lines = read_jsonl(metrics)
    assert [r["epoch"] for r in lines] == [1, 2]
    for line in lines:
        for key in ("bytes_host", "bytes_disk", "hist_hits", "test_acc", "epoch_time_s"):
            assert key in line, key
    assert lines[-1]["hist_hits"] > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
def test_every_gnn_trains_with_refresh_and_gets_hits(store, model, device):
    records = train(_config(store, model=model, device=device, prefetch=2))
    for r in records:
        assert np.isfinite(r["train_loss"]) and r["hist_hits"] > 0 and r["rows_saved"] > 0
    assert records[-1]["valid_acc"] > 0.5  # 4 balanced classes: chance is 0.25


@pytest.mark.parametrize("device", DEVICES)
def test_hist_layers_2_1_on_a_3_layer_model(store, tmp_path, device):
    cfg = config_from_args(
        f"--store {store.path} --cache refresh --layers 3 --fanouts 4,4,4 --hidden 16 "
        f"--batch-size {BATCH} --epochs 2 --cache-budget 16KiB --host-budget 0 --lookahead 0 "
        f"--hist-layers 2,1 --hist-lag 2 --staleness 10 --hist-fraction 0.4 --device {device} "
        "--prefetch 2 --no-progress --eval-batch-size 512".split()
    )
    assert cfg.history.layers == (2, 1)
    with Trainer(cfg) as t:
        records = t.run()
        assert t.cache.describe()["hist_layers"] == [2, 1]
    last = records[-1]
    assert last["hist_hits_l2"] > 0 and last["hist_hits_l1"] > 0
    assert last["hist_hits"] == last["hist_hits_l2"] + last["hist_hits_l1"]
    assert last["hist_lookups"] == last["hist_lookups_l2"] + last["hist_lookups_l1"]
    assert last["nodes_pruned"] > last["rows_saved"] > 0  # layer 1 loses nodes above the inputs
    assert last["valid_acc"] > 0.5


# ------------------------------------------------------------- determinism
class RunAhead:
    """Makes each step wait until sampling is as far ahead as max_ahead allows.

    A serial run (prefetch 0) samples batch ``i`` just before step ``i``;
    this makes a pipelined run sample batch ``i + lag - 1`` before step
    ``i`` admits: the other end of the timings the loader permits.
    """

    def __init__(self, monkeypatch, batches_per_epoch: int) -> None:
        self.cond = threading.Condition()
        self.sampled = -1
        self.late = 0
        sample, after_step = RefreshCache.sample, RefreshCache.after_step

        def ahead_sample(mode, sampler, seeds, batch_seed, step):
            batch = sample(mode, sampler, seeds, batch_seed, step)
            with self.cond:
                self.sampled = max(self.sampled, step)
                self.cond.notify_all()
            return batch

        def ahead_after_step(mode, batch, logits, step):
            last = (step // batches_per_epoch + 1) * batches_per_epoch - 1
            target = min(step + mode.lag - 1, last)
            with self.cond:
                if not self.cond.wait_for(lambda: self.sampled >= target, timeout=20):
                    self.late += 1
            after_step(mode, batch, logits, step)

        monkeypatch.setattr(RefreshCache, "sample", ahead_sample)
        monkeypatch.setattr(RefreshCache, "after_step", ahead_after_step)


def _sleepy(monkeypatch, seed: int) -> None:
    """Random sleeps (0-4 ms) in the sampling and fetch stages."""
    rng = random.Random(seed)
    sample, fetch = RefreshCache.sample, RefreshCache.fetch

    def slow_sample(mode, *args):
        time.sleep(rng.uniform(0, 0.004))
        return sample(mode, *args)

    def slow_fetch(mode, batch):
        time.sleep(rng.uniform(0, 0.004))
        return fetch(mode, batch)

    monkeypatch.setattr(RefreshCache, "sample", slow_sample)
    monkeypatch.setattr(RefreshCache, "fetch", slow_fetch)


@pytest.mark.parametrize(
    "lag",
    [
        pytest.param(1, id="lag1"),
        pytest.param(
            3,
            id="lag3",
        ),
    ],
)
@pytest.mark.parametrize("max_serves", [None, 2])
def test_results_do_not_depend_on_loader_timing(store, monkeypatch, lag, max_serves):
    history = _hist(lag_steps=lag, staleness_iters=20, fraction=0.3, max_serves=max_serves)
    cfg = _config(store, history=history)
    keys = RESULT_KEYS + HIST_KEYS + _layer_keys((1,))
    serial = _train(cfg)
    assert serial.records[-1]["hist_hits"] > 0
    for prefetch in (2, 4):
        with monkeypatch.context() as m:
            _sleepy(m, seed=prefetch)
            assert_same_outcome(serial, _train(cfg.replace(loader=LoaderConfig(prefetch))), keys)
    with monkeypatch.context() as m:
        ahead = RunAhead(m, num_batches(NUM_NODES // 2, BATCH))
        assert_same_outcome(serial, _train(cfg.replace(loader=LoaderConfig(4))), keys)
        assert ahead.late == 0, "sampling never got as far ahead as the test wanted"


def test_admissions_do_not_depend_on_how_far_sampling_ran_ahead(store):
    """Drives the hooks by hand in two orders the loader allows (max_ahead = lag)."""

    def admissions(run_ahead: bool):
        cfg = _config(store, epochs=1, history=_hist(lag_steps=3, fraction=0.3))
        with Trainer(cfg) as t:
            loader = t.make_loader(0)
            parts, seeds = loader.seed_batches, loader.batch_seeds
            mode, out, batches = t.cache, [], {}
            nxt = 0
            for i in range(len(parts)):
                last = min(len(parts) - 1, i + (mode.max_ahead() - 1 if run_ahead else 0))
                while nxt <= last:
                    batches[nxt] = mode.sample(t.sampler, parts[nxt], seeds[nxt], nxt)
                    nxt += 1
                batch = t._fetch(batches.pop(i))
                logits = mode.forward(t.model, batch)
                loss = torch.nn.functional.cross_entropy(logits, batch.labels)
                t.optimizer.zero_grad()
                loss.backward()
                t.optimizer.step()
                mode.after_step(batch, logits.detach(), i)
                out.append(sorted(int(v) for a in mode._pending if a.step == i for v in a.ids))
            return out

    serial, ahead = admissions(False), admissions(True)
    assert any(serial)
    assert serial == ahead


# ------------------------------------------------------------ checkpoints
def _cache_state(mode: RefreshCache) -> dict:
    return {
        "fraction": mode.split.hist_fraction,
        "rows": mode.table.rows,
        "device_rows": mode.tiers.num_cached,
        "steps_done": mode._steps_done,
        "birth": {v: b.copy() for v, b in mode.table.birth.items()},
        "serves": {v: b.copy() for v, b in mode.table.serves.items()},
        "served_seen": {v: b.copy() for v, b in mode._served_seen.items()},
        "emb": {v: e.detach().cpu().clone() for v, e in mode.table.emb.items()},
        "pending": [
            (
                a.step,
                a.layer,
                a.ids.tolist(),
                mode.table.gather(a.layer, a.ids).cpu(),
            )
            for a in mode._pending
        ],
    }


@pytest.mark.parametrize("max_serves", [None, 2])
def test_resume_continues_exactly_like_an_uninterrupted_run(store, tmp_path, max_serves):
    history = _hist(lag_steps=3, staleness_iters=10, max_serves=max_serves)
    cfg = _config(store, epochs=3, budget_rows=400, history=history)
    full = _train(cfg.replace(checkpoint_dir=str(tmp_path / "full")))
    ckpt = tmp_path / "part"
    with Trainer(cfg.replace(epochs=2, checkpoint_dir=str(ckpt))) as t:
        t.run()
        saved = _cache_state(t.cache)
        assert saved["pending"] and t.cache.table.live(saved["steps_done"], 10) > 0
    assert saved["fraction"] != INITIAL_HIST_FRACTION, "the split never moved: pick a budget"
    payload = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    assert set(payload["extra"]["cache"]) >= {"table", "pending", "split"}
    with Trainer(cfg.replace(checkpoint_dir=str(ckpt), resume=True)) as t:
        restored = _cache_state(t.cache)
        for key in ("fraction", "rows", "device_rows", "steps_done"):
            assert restored[key] == saved[key], key
        for v in saved["birth"]:
            assert np.array_equal(restored["birth"][v], saved["birth"][v])
            assert np.array_equal(restored["serves"][v], saved["serves"][v])
        assert saved["served_seen"].keys() == restored["served_seen"].keys()
        for v in saved["served_seen"]:
            assert np.array_equal(restored["served_seen"][v], saved["served_seen"][v])
        if max_serves:
            assert max(b.max() for b in saved["serves"].values()) == max_serves
            assert torch.equal(restored["emb"][v], saved["emb"][v])
        assert len(restored["pending"]) == len(saved["pending"])
        for a, b in zip(restored["pending"], saved["pending"]):
            assert a[:3] == b[:3] and torch.equal(a[3], b[3])
        records = t.run()
        resumed = Outcome(records, {k: v.detach().clone() for k, v in t.model.state_dict().items()})
    keys = RESULT_KEYS + HIST_KEYS + _layer_keys((1,)) + ("rows_device", "rows_disk")
    keys += ("cache_split_raw_bytes", "cache_split_hist_bytes")
    assert_same_outcome(full, resumed, keys)


def test_resuming_with_other_hist_layers_is_reported_in_one_line(store, tmp_path, capsys):
    argv = (
        f"--store {store.path} --cache refresh --fanouts 3,3,3 --hidden 16 --batch-size 64 "
        f"--cache-budget 16KiB --host-budget 0 --lookahead 0 --hist-lag 2 --no-progress "
        f"--eval-batch-size 512 --checkpoint-dir {tmp_path / 'ck'}"
    ).split()
    assert main([*argv, "--epochs", "1", "--hist-layers", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--hist-layers", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refresh-train: error:") and "hist" in err


def test_resuming_with_a_smaller_budget_keeps_within_it(store, tmp_path):
    cfg = _config(store, epochs=1, checkpoint_dir=str(tmp_path), history=_hist(fraction=0.5))
    with Trainer(cfg) as t:
        t.run()
        assert t.cache.table.rows > 0
    row = store.region("features").row_bytes
    small = TierConfig(cache="refresh", cache_budget_bytes=50 * row, host_budget_bytes=0)
    with Trainer(cfg.replace(epochs=2, resume=True, tiers=small)) as t:
        _assert_within_budget(t.cache, small.cache_budget_bytes)


def test_resuming_a_raw_checkpoint_with_refresh_trains_or_says_why(store, tmp_path, capsys):
    argv = (
        f"--store {store.path} --fanouts 3,3 --hidden 16 --batch-size 64 --host-budget 0 "
        f"--cache-budget 16KiB --lookahead 0 --hist-lag 2 --no-progress --eval-batch-size 512 "
        f"--checkpoint-dir {tmp_path / 'ck'}"
    ).split()
    assert main([*argv, "--epochs", "1", "--cache", "raw"]) == 0
    capsys.readouterr()
    status = main([*argv, "--epochs", "2", "--cache", "refresh", "--resume"])
    err = capsys.readouterr().err
    assert status == 0 or (status == 2 and err.count("\n") == 1)


# ------------------------------------------------------------- evaluation
@pytest.mark.parametrize("mode", ["sampled", "layerwise"])
def test_evaluation_never_reads_the_history(store, monkeypatch, mode):
    cfg = _config(store, eval=EvalConfig(mode=mode, batch_size=512), history=_hist(fraction=0.3))
    with Trainer(cfg) as t:
        records = t.run()
        table = t.cache.table
        assert table.live(t.cache._steps_done, 20) > 0
        calls = {"lookup": 0, "gather": 0}
        for name in calls:
            method = getattr(table, name)

            def counted(*args, _name=name, _method=method, **kw):
                calls[_name] += 1
                return _method(*args, **kw)

            monkeypatch.setattr(table, name, counted)
        again = t.evaluate()
        assert calls == {"lookup": 0, "gather": 0}
        exact = NoCache(t.store, TierConfig(cache="none"), t.device)
        try:
            reference = evaluate(
                t.model,
                t.store,
                exact.eval_tiers(),
                cfg.eval,
                train_fanouts=tuple(cfg.fanouts),
                device=t.device,
                seed=cfg.seed,
                prefetch_batches=1,
            )
        finally:
            exact.close()
        for key in ("valid_acc", "test_acc"):
            assert records[-1][key] == again[key] == reference[key], key
        t.train_epoch(cfg.epochs)  # the wrappers do see training's lookups
        assert calls["lookup"] > 0 and calls["gather"] > 0


# ------------------------------------------------------------- the split
def test_the_automatic_split_follows_its_counters_and_describe(store, monkeypatch):
    rec = Recorder(compare_pruning=False).install(monkeypatch)
    decided: list[SplitCounters] = []
    end_epoch = RefreshCache.end_epoch

    def spy_end_epoch(mode):
        decided.append(mode._counters.split.decayed(1.0))  # a copy
        end_epoch(mode)

    monkeypatch.setattr(RefreshCache, "end_epoch", spy_end_epoch)
    cfg = _config(store, budget_rows=600, epochs=3, history=_hist(lag_steps=2))
    budget = cfg.tiers.cache_budget_bytes
    moves = 0
    with Trainer(cfg) as t:
        mode = t.cache
        sampler = NeighborSampler(store.indptr, store.indices, list(cfg.fanouts), seed=cfg.seed)
        cand = mode.split.candidates()
        for epoch in range(cfg.epochs):
            before = mode.describe()
            rec.sampled.clear()
            record = t.train_epoch(epoch)
            after = mode.describe()
            assert record["cache_split_raw_bytes"] == before["device_bytes_raw_rows"]
            assert record["cache_split_hist_bytes"] == before["device_bytes_table"]
            assert record["cache_split_hist_bytes"] <= int(budget * before["hist_fraction"])
            assert record["hist_rows"] == before["hist_rows"]
            assert record["cache_split_raw_bytes"] + record["cache_split_hist_bytes"] <= budget
            assert sum(v for k, v in after.items() if k.startswith("device_bytes_")) <= budget
            # The counts the decision used are what every candidate would have
            # fetched: recounted by sampling each batch with that table always usable.
            c = decided[-1]
            # Earlier epochs' counts carry over at the split's weight.
            carried = decided[-2].decayed(mode.split.carry) if epoch else c.decayed(0.0)
            assert c.steps == record["batches"] + carried.steps
            assert c.band_lookups.sum() <= record["hist_lookups"] + carried.band_lookups.sum()
            for i in (0, 4, 8, 12, 16):
                k, h = mode._sizes(cand[i])
                noprune = ideal = 0
                for seeds, bseed in rec.sampled:

                    def prune(layer, ids, _s=seeds, _h=h):
                        m = np.zeros(len(ids), dtype=bool)
                        if layer in mode.hist_layers:
                            m = mode.order.slots(layer, ids) < _h
                        m[: len(_s)] = False
                        return m

                    noprune += int((sampler.sample(seeds, bseed).input_nodes >= k).sum())
                    pruned = sampler.sample(seeds, bseed, prune=prune)
                    ideal += int((pruned.input_nodes >= k).sum())
                got = (c.noprune[i] - carried.noprune[i], c.ideal[i] - carried.ideal[i])
                assert got == (noprune, ideal), i
            # ... and the split moved as the rule says, the table and the tier with it.
            pred = c.predicted()
            now = int(np.argmin(np.abs(cand - before["hist_fraction"])))
            best = int(np.argmin(pred))
            if best != now and pred[best] < (1 - mode.split.margin) * pred[now]:
                assert after["hist_fraction"] == cand[best]
                grew = cand[best] > before["hist_fraction"]
                assert (after["hist_rows"] > before["hist_rows"]) == grew
                assert (after["device_rows"] < before["device_rows"]) == grew
                moves += 1
            else:
                assert after == before
    assert moves >= 1, "the split never moved: the test proves nothing"


def test_a_fixed_split_is_reported_and_never_moves(store):
    cfg = _config(store, epochs=3, history=_hist(fraction=0.3))
    budget = cfg.tiers.cache_budget_bytes
    with Trainer(cfg) as t:
        records = t.run()
        assert t.cache.describe()["hist_split"] == "fixed"
        assert t.cache.split.hist_fraction == 0.3 and t.cache.split.moves == []
    assert {r["cache_split_hist_bytes"] for r in records} == {int(budget * 0.3)}
    assert len({r["cache_split_raw_bytes"] for r in records}) == 1


# ------------------------------------------------------------- config / CLI
def test_every_history_flag_reaches_the_config(store):
    cfg = config_from_args(
        f"--store {store.path} --cache refresh --layers 3 --fanouts 3,3,3 --hist-layers 1,2 "
        "--grad-quantile 0.75 --staleness 17 --hist-policy random --hist-max-serves 3 "
        "--hist-warmup 5 --hist-stop 40 "
        "--hist-fraction 0.4 --hist-lag 3 --hist-dtype float32 --hist-order degree "
        "--no-hist-count-saved".split()
    )
    assert cfg.tiers.cache == "refresh"
    assert cfg.history == HistoryConfig(
        layers=(2, 1),
        grad_quantile=0.75,
        staleness_iters=17,
        policy="random",
        max_serves=3,
        warmup_steps=5,
        stop_step=40,
        fraction=0.4,
        lag_steps=3,
        dtype="float32",
        order="degree",
        count_saved=False,
    )


def test_history_defaults(store):
    h = config_from_args(["--store", str(store.path), "--cache", "refresh"]).history
    assert h == HistoryConfig()
    assert (h.grad_quantile, h.staleness_iters, h.policy) == (0.9, 200, "grad+stale")
    assert (h.warmup_steps, h.fraction, h.dtype, h.count_saved) == (0, None, "float16", True)
    assert h.stop_step is None and h.max_serves is None and h.shadow is None
    assert h.order == "lookups"
    assert h.resolved_layers(3) == (2,) and h.resolved_lag(8) == 10 and h.resolved_lag(0) == 4


@pytest.mark.parametrize("spelling", ["dash", "underscore"])
def test_history_toml_keys_and_flags_win(store, tmp_path, spelling):
    def key(name):
        return name if spelling == "dash" else name.replace("-", "_")

    toml = tmp_path / "run.toml"
    toml.write_text(
        f'store = "{store.path.as_posix()}"\n'
        'cache = "refresh"\n'
        'fanouts = "3,3,3"\n'
        f"{key('hist-layers')} = [1, 2]\n"
        f"{key('grad-quantile')} = 0.6\n"
        "staleness = 9\n"
        f'{key("hist-policy")} = "stale"\n'
        f"{key('hist-max-serves')} = 7\n"
        f"{key('hist-warmup')} = 4\n"
        f"{key('hist-stop')} = 12\n"
        f"{key('hist-fraction')} = 1\n"
        f"{key('hist-lag')} = 5\n"
        f'{key("hist-dtype")} = "float32"\n'
        f'{key("hist-order")} = "degree"\n'
        f"{key('no-hist-count-saved')} = true\n"
    )
    h = config_from_args(["--config", str(toml), "--staleness", "11"]).history
    assert h == HistoryConfig(
        layers=(2, 1),
        grad_quantile=0.6,
        staleness_iters=11,  # the flag wins over the file
        policy="stale",
        max_serves=7,
        warmup_steps=4,
        stop_step=12,
        fraction=1,
        lag_steps=5,
        dtype="float32",
        order="degree",
        count_saved=False,
    )
    toml.write_text(
        f'store = "{store.path.as_posix()}"\nhist-layers = 1\nhist-count-saved = false\n'
    )
    h = config_from_args(["--config", str(toml)]).history
    assert h.layers == (1,) and h.count_saved is False


def test_hist_shadow_from_a_flag_or_the_toml_file(store, tmp_path):
    argv = ["--store", str(store.path), "--cache", "refresh", "--hist-shadow", "gradients"]
    assert config_from_args(argv).history.shadow == "gradients"
    toml = tmp_path / "run.toml"
    toml.write_text(f'store = "{store.path.as_posix()}"\nhist-shadow = "values"\n')
    assert config_from_args(["--config", str(toml)]).history.shadow == "values"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grad-quantile", "0"], "grad_quantile must be in (0, 1]"),
        (["--grad-quantile", "1.5"], "grad_quantile must be in (0, 1]"),
        (["--staleness", "-1"], "staleness_iters must be an integer >= 0"),
        (["--hist-policy", "lru"], "hist_policy must be one of"),
        (["--hist-max-serves", "0"], "hist_max_serves must be an integer >= 1"),
        (["--hist-shadow", "both"], "hist_shadow must be one of"),
        (["--hist-shadow", "values", "--hist-layers", "2,1"], "hist_shadow needs one cached layer"),
        (["--hist-layers", "0"], "hist_layers must list layers >= 1"),
        (["--hist-layers", "3"], "hist_layers 3 is not a hidden layer of a 3-layer model"),
        (["--hist-layers", "2,x"], "--hist-layers must be comma-separated"),
        (["--model", "mlp"], "--cache refresh caches the hidden embeddings"),
        (["--hist-fraction", "2"], "hist_fraction must be in [0, 1]"),
        (["--hist-fraction", "-0.5"], "hist_fraction must be in [0, 1]"),
        (["--hist-dtype", "bfloat16"], "hist_dtype must be one of"),
        (["--hist-order", "random"], "hist_order must be one of"),
        (["--hist-lag", "0"], "lag_steps must be an integer >= 1"),
        (["--hist-warmup", "-2"], "warmup_steps must be an integer >= 0"),
        (["--hist-stop", "-1"], "stop_step must be an integer >= 0"),
        (["--staleness", "soon"], "invalid int value"),
    ],
)
def test_bad_history_values_exit_2_with_one_line(store, capsys, args, message):
    argv = ["--store", str(store.path), "--cache", "refresh", "--fanouts", "3,3,3", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refresh-train: error:")
    assert message in err


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(grad_quantile=0.0), "grad_quantile"),
        (dict(grad_quantile=1.5), "grad_quantile"),
        (dict(staleness_iters=-1), "staleness_iters"),
        (dict(policy="lru"), "hist_policy"),
        (dict(layers=(0,)), "hist_layers"),
        (dict(fraction=2), "hist_fraction"),
        (dict(lag_steps=0), "lag_steps"),
        (dict(dtype="int8"), "hist_dtype"),
        (dict(order="pagerank"), "hist_order"),
        (dict(stop_step=1.5), "stop_step"),
        (dict(max_serves=0), "hist_max_serves"),
        (dict(shadow="both"), "hist_shadow"),
        (dict(shadow="values", layers=(2, 1)), "hist_shadow"),
        (dict(max_serves=True), "hist_max_serves"),
    ],
)
def test_history_config_rejects_bad_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        HistoryConfig(**kw)


def test_a_bad_toml_history_value_is_reported(store, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(f'store = "{store.path.as_posix()}"\ngrad-quantile = "high"\n')
    with pytest.raises(ConfigError, match="grad_quantile"):
        config_from_args(["--config", str(toml)])


def test_one_layer_models_without_refresh_still_configure(store):
    TrainConfig(store=str(store.path), layers=1, fanouts=(5,), tiers=TierConfig(cache="raw"))
    config_from_args(f"--store {store.path} --model mlp --layers 1 --fanouts 5".split())


@pytest.mark.parametrize("trial", range(20))
def test_candidate_counts_in_one_pass_equal_one_count_per_candidate(trial):
    """``_count_candidates`` against counting each candidate's rows on its own."""
    rng = np.random.default_rng(trial)
    grid = int(rng.integers(1, 17))
    n = grid + 1
    # K shrinks and H grows with the table's share, ties included.
    cand_k = np.sort(rng.integers(0, 500, n))[::-1].copy()
    cand_h = np.sort(rng.integers(0, 300, n))
    rows = rng.integers(0, 600, int(rng.integers(0, 400)))
    rank = rng.integers(0, 350, len(rows))
    rank[rng.random(len(rows)) < 0.2] = np.iinfo(np.int64).max  # no table spares them
    fake = type("Fake", (), {})()
    fake.split = type("Split", (), {"grid": grid})()
    fake._cand_k, fake._cand_h = cand_k, cand_h
    fake._band = lambda slots: RefreshCache._band(fake, slots)
    got = SplitCounters(grid, np.zeros(n, dtype=np.int64), 200, 2, 0.9)
    RefreshCache._count_candidates(fake, rows, rank, got)
    for i, k in enumerate(cand_k):
        beyond = rows >= k
        assert got.noprune[i] == np.count_nonzero(beyond)
        band = np.searchsorted(cand_h, rank[beyond], side="right")
        want = np.bincount(band, minlength=n + 1)[:n]
        np.testing.assert_array_equal(got.covered[i], want)


def test_measuring_the_drift_changes_no_result(store, monkeypatch):
    cfg = _config(store, history=_hist(staleness_iters=6, fraction=0.3), prefetch=2)
    measured = _train(cfg)
    assert sum(r["hist_drift_probes"] for r in measured.records) > 0
    monkeypatch.setattr(RefreshCache, "_probe", lambda self, seeds, step: {})
    unmeasured = _train(cfg)
    assert sum(r["hist_drift_probes"] for r in unmeasured.records) == 0
    assert_same_outcome(measured, unmeasured, RESULT_KEYS + ("memory_access_bytes", "hist_hits"))


# ------------------------------------------------------------- shadow runs
def _logits_of_each_step(monkeypatch, cls) -> list[torch.Tensor]:
    """Records the logits of every training step (prefetch 0: in step order)."""
    logits: list[torch.Tensor] = []
    forward = cls.forward

    def recorded(mode, model, batch):
        out = forward(mode, model, batch)
        if model.training:
            logits.append(out.detach().clone())
        return out

    monkeypatch.setattr(cls, "forward", recorded)
    return logits


def test_shadow_runs_keep_one_effect_of_each_hit(store, monkeypatch):
    """Without dropout, every run trains like none until the first hit; at that step
    a `values` shadow computes what the pruned run computes and a `gradients` shadow
    what none computes; after it both train differently from none, and neither
    prunes anything."""
    history = _hist(staleness_iters=20, fraction=0.3)
    runs, records = {}, {}
    for name, cache, shadow in (
        ("none", "none", None),
        ("pruned", "refresh", None),
        ("values", "refresh", "values"),
        ("gradients", "refresh", "gradients"),
    ):
        with monkeypatch.context() as m:
            runs[name] = _logits_of_each_step(m, NoCache if cache == "none" else RefreshCache)
            cfg = _config(store, cache=cache, dropout=0.0, history=replace(history, shadow=shadow))
            records[name] = _train(cfg).records
    none, pruned = runs["none"], runs["pruned"]
    first = next(i for i, (a, b) in enumerate(zip(none, pruned)) if not torch.equal(a, b))
    assert first > 0
    for name in ("values", "gradients"):
        assert all(torch.equal(a, b) for a, b in zip(runs[name][:first], none[:first])), name
        assert all(r["hist_hits"] > 0 and r["nodes_pruned"] == 0 for r in records[name][1:])
        bytes_ = [r["memory_access_bytes"] for r in records[name]]
        assert bytes_ > [r["memory_access_bytes"] for r in records["pruned"]]
    torch.testing.assert_close(runs["values"][first], pruned[first], rtol=1e-5, atol=1e-6)
    assert not torch.equal(runs["values"][first], none[first])
    assert torch.equal(runs["gradients"][first], none[first])
    # The missing gradient changed the next update; so did the served values' gradient.
    assert not torch.equal(runs["gradients"][first + 1], none[first + 1])
    assert not torch.equal(runs["values"][first + 1], pruned[first + 1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "history",
    [
        pytest.param(_hist(max_serves=2, fraction=0.3), id="max-serves"),
        pytest.param(_hist(shadow="values", fraction=0.3), id="shadow-values"),
        pytest.param(_hist(shadow="gradients", fraction=0.3), id="shadow-gradients"),
    ],
)
def test_serve_limits_and_shadow_runs_train_on_every_device(store, history, device):
    """On CUDA the table's serves, the shadowed rows and their copies cross streams."""
    records = train(_config(store, device=device, prefetch=2, history=history))
    for r in records:
        assert np.isfinite(r["train_loss"]) and r["hist_hits"] > 0
        assert (r["nodes_pruned"] == 0) == (history.shadow is not None)
    assert records[-1]["valid_acc"] > 0.5
