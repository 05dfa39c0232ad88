"""Memory access volume, accuracy and epoch time of ``--cache none | raw | refresh``.

The paper's figure of merit is the raw-feature traffic of training: bytes
moved onto the device from the host and the disk per epoch (the trainer's
``memory_access_bytes``). This benchmark trains the same model, seeds and
epochs with every cache mode at device budgets of 1, 5, 10 and 20 % of the
feature bytes and reports, per run, that traffic, the epoch time and the
final test accuracy, in the paper's regime: a large graph, few labelled
nodes, one batch touching a few percent of the rows.

Datasets (generated, then converted; cached under ``bench_cache/memory_access``):

* ``papers``: the ogbn-papers100M layout, 2M nodes, power-law degrees,
  1 % of nodes labelled, 128 float32 features; batch 128 touches about 4 %
  of the rows (a batch of 1024 touches under 1 % of the real graph's).
* ``products``: an ogbn-products-sized graph (2,449,029 nodes, 100 float32
  features, 47 classes), split as the real one but with 10 % of the nodes in
  a split (about 20K training nodes) so that every run fits the CPU time.

Sections (``--sections``):

``grid``     3-layer SAGE, every mode at every budget, both datasets
``models``   GCN and GAT at 10 %, every mode, both datasets (``--models gat``: one of them)
``policies`` each ``--hist-policy`` (and ``--hist-layers 2,1``) on ``papers``, at 10 %
             and, on the first seed, at every other budget of ``--budgets``
``sweeps``   ``--grad-quantile``, ``--staleness`` and ``--hist-warmup`` at 10 % on
             ``papers`` (a warmup of 100 steps is most of its first epoch of 125);
             ``--hist-max-serves`` and ``--hist-shadow`` when ``--max-serves`` /
             ``--shadows`` name values
``ideal``    what a perfect history cache would leave: the sampler alone, with
             the table's nodes always cached (an upper bound on any policy)
``loader``   loader-only passes (sampling + fetching, no model) from a cold
             SSD at 10 % on ``papers``, refresh with the table a training run left
``baseline`` the strongest PyG-style loop (``benchmarks/_pyg_baseline.py``:
             trimmed layers, DataLoader workers), SAGE on ``papers``, features
             warm in the page cache (they fit RAM here) and cold (larger than
             the RAM the run may use), against which epoch times compare

Every section runs on every seed of ``--seeds`` (0, 1, 2 unless told), each
run paired with ``none`` of its seed; the baseline on the first only, ``ideal``
and ``loader`` on seed 0.

Equal memory for all: every run has the same device budget (``--cache-budget``)
for feature data, host budget 0 and no lookahead windows (``--lookahead 0``),
so the RAM each configuration holds for feature data is its device budget
(recorded per run as ``feature_ram_bytes``) plus one batch in flight per
loader stage; ``none`` holds none of it. Disk reads are O_DIRECT and the
feature file is evicted from the page cache before every run, so every run
starts cold. Byte counts are exact and deterministic per seed; times come
from a shared 2-core machine and are noisy (medians of epochs).

``--io buffered`` reads the features through the page cache instead (the
file then stays in RAM after the first epoch): the same rows in the same
order, so the same bytes, losses and accuracies bit for bit, faster, since
no epoch after the first waits for the disk. It is for adding seeds to
accuracy figures; such runs are marked (``io_mode``) and their epoch times
are left out of every table, since they neither start cold nor hold the
equal feature memory.

Usage::

    python benchmarks/memory_access.py                    # everything (hours on 2 cores)
    python benchmarks/memory_access.py --sections grid,ideal
    python benchmarks/memory_access.py --quick --out FILE.json   # a few minutes

Finished runs are kept in ``--out`` and skipped when the command is run
again with the same settings (``--fresh`` reruns the chosen ones and keeps
the others); an ``--out`` holding runs of other settings is refused (exit 2),
never overwritten. Results: ``--out``
(JSON records) and the same name with ``.md`` (tables) and ``_*.png`` (plots).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402
    cpu_kind,
    drop_cache,
    ensure_store,
    previous_results,
    report_saved,
)
from _pyg_baseline import train_pyg_baseline  # noqa: E402

from refresh_store.store import Store, open_store  # noqa: E402
from refresh_train.config import (  # noqa: E402
    HIST_SHADOW_KINDS,
    EvalConfig,
    HistoryConfig,
    LoaderConfig,
    TierConfig,
    TrainConfig,
)
from refresh_train.history.cover import uncovered_rank  # noqa: E402
from refresh_train.history.slots import SlotOrder  # noqa: E402
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches  # noqa: E402
from refresh_train.trainer import Trainer  # noqa: E402

CACHE_DIR = ROOT / "bench_cache" / "memory_access"
MODES = ("none", "raw", "refresh")
#: The models section's models, each at 10 % beside its own none (SAGE is the grid's).
SECTION_MODELS = ("gcn", "gat")
POLICY_NAMES = ("grad+stale", "grad", "stale", "random")
#: History settings a run may vary (HistoryConfig fields, named alike in records).
VARIANT_KEYS = (
    "policy", "grad_quantile", "staleness_iters", "layers", "order", "warmup_steps", "max_serves",
    "shadow",
)  # fmt: skip


# ------------------------------------------------------------------ datasets
def dataset_specs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What each dataset is generated with."""
    if args.quick:
        return {
            "papers": dict(layout="papers100m", nodes=200_000, labelled=0.02, classes=32,
                           avg_degree=10.0),
            "products": dict(layout="ogbn", nodes=150_000, labelled=0.1, classes=47,
                             avg_degree=25.0),
        }  # fmt: skip
    return {
        "papers": dict(layout="papers100m", nodes=args.papers_nodes, labelled=0.01, classes=32,
                       avg_degree=10.0),
        "products": dict(layout="ogbn", nodes=args.products_nodes, labelled=0.1, classes=47,
                         avg_degree=25.0),
    }  # fmt: skip


def feature_bytes(store: Store) -> int:
    return store.num_nodes * store.region("features").row_bytes


# ------------------------------------------------------------------ one run
def run_config(
    store_path: Path, *, mode: str, budget_frac: float, seed: int, model: str, args, **hist: Any
) -> TrainConfig:
    store = open_store(store_path)
    budget = int(budget_frac * feature_bytes(store)) if mode != "none" else 0
    # "direct" leaves the trainer's default (O_DIRECT where the file system has it).
    io = {"io_mode": "buffered"} if getattr(args, "io", "direct") == "buffered" else {}
    return TrainConfig(
        store=str(store_path),
        model=model,
        layers=3,
        hidden=args.hidden,
        fanouts=(15, 10, 5),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        tiers=TierConfig(
            cache=mode, cache_budget_bytes=budget, host_budget_bytes=0, lookahead_batches=0, **io
        ),
        history=HistoryConfig(**hist),
        loader=LoaderConfig(prefetch_batches=2),
        eval=EvalConfig(mode="sampled", batch_size=2048, every_epochs=args.epochs),
        device=args.device,
        progress=False,
    )


def train_run(cfg: TrainConfig) -> dict[str, Any]:
    """Train from a cold page cache; the run's record."""
    drop_cache(str(open_store(cfg.store).region("features").path))
    t0 = time.perf_counter()
    with Trainer(cfg) as trainer:
        records = trainer.run()
        describe = trainer.cache.describe()
        device_bytes = getattr(trainer.cache, "device_bytes", lambda: {})()
    wall = time.perf_counter() - t0
    last = records[-1]
    per_epoch = [r["memory_access_bytes"] for r in records]
    keep = (
        "hist_hits hist_lookups nodes_pruned rows_saved hist_occupancy hist_mean_age_of_hits "
        "hist_admitted cache_split_raw_bytes cache_split_hist_bytes hit_rate_device "
        "hist_drift_rel_err hist_drift_mean_age hist_drift_probes"
    ).split()
    return {
        "memory_access_bytes": float(np.mean(per_epoch)),
        "memory_access_bytes_per_epoch": per_epoch,
        "memory_access_bytes_last": per_epoch[-1],
        "epoch_time_s": statistics.median(r["epoch_time_s"] for r in records),
        "epoch_times_s": [r["epoch_time_s"] for r in records],
        "compute_s": statistics.median(r["compute_s"] for r in records),
        "train_loss": [r["train_loss"] for r in records],
        "test_acc": last["test_acc"],
        "valid_acc": last["valid_acc"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
        "feature_ram_bytes": cfg.tiers.cache_budget_bytes,
        "device_bytes": device_bytes,
        "describe": describe,
        "last_epoch": {k: last.get(k) for k in keep},
        "wall_s": wall,
    }


# ------------------------------------------------------------------ ideal bound
def ideal_bound(store_path: Path, budget_frac: float, args, batches: int = 16) -> dict[str, Any]:
    """Rows a perfect history cache would still fetch, as a share of ``none``'s.

    The sampler alone, on the first ``batches`` batches of epoch 0: the
    device tier holds the hottest ``K`` rows and the table the first ``H``
    slots of the cached layers (the nodes they look up most, as the refresh
    mode orders them; ``_degree``: the ``H`` hottest ids, the earlier
    order), always usable (no staleness, no lag, no admission rule); seeds
    are never pruned. Every split in steps of 1/16 is tried
    (:func:`refresh_train.history.cover.uncovered_rank` answers all at
    once); the best is reported.
    """
    store = open_store(store_path)
    n, row = store.num_nodes, store.region("features").row_bytes
    budget = budget_frac * n * row
    emb = args.hidden * 2  # float16 entries
    sampler = NeighborSampler(store.indptr, store.indices, [15, 10, 5], seed=0, in_memory="auto")
    parts = list(epoch_batches(store.train_idx, args.batch_size, 0, 0))[:batches]
    full = [sampler.sample(seeds, batch_seed(0, i)) for i, seeds in enumerate(parts)]
    sampler.close()
    base = sum(len(b.input_nodes) for b in full)
    out: dict[str, Any] = {
        "rows_per_batch_none": base / len(full),
        "rows_share_of_graph": base / len(full) / n,
        "raw_only_share": sum(int((b.input_nodes >= int(budget / row)).sum()) for b in full) / base,
    }
    most = int(budget // (emb))
    for layers, kind in (((2,), "lookups"), ((2,), "degree"), ((2, 1), "lookups")):
        order = (
            SlotOrder.by_lookups(
                store.indptr, store.indices, store.train_idx, [15, 10, 5], layers, most
            )  # fmt: skip
            if kind == "lookups"
            else SlotOrder.by_degree()
        )
        ranks = [uncovered_rank(b, len(p), layers, slots=order.slots) for b, p in zip(full, parts)]
        best = None
        for i in range(17):
            hf = i / 16
            h = int(budget * hf / emb / len(layers))
            if kind == "lookups":
                h = min(h, max(order.ranked(v) for v in layers))
            k = int(budget * (1 - hf) / row)
            left = sum(
                int(np.count_nonzero((b.input_nodes.numpy() >= k) & (r >= h)))
                for b, r in zip(full, ranks)
            )
            if best is None or left / base < best[1]:
                best = (hf, left / base)
        key = "l" + "".join(map(str, layers)) + ("_degree" if kind == "degree" else "")
        out[f"ideal_{key}_share"], out[f"ideal_{key}_hist_fraction"] = best[1], best[0]
    return out


# ------------------------------------------------------------------ loader-only
def loader_only(store_path: Path, mode: str, args, passes: int = 3) -> dict[str, Any]:
    """Batches/s of sampling + fetching with no model, from a cold SSD.

    Refresh first trains ``args.epochs`` epochs so that its table holds what
    training leaves; each pass then walks the next epoch's batches and
    advances the steps without admitting anything.
    """
    cfg = run_config(store_path, mode=mode, budget_frac=0.10, seed=0, model="sage", args=args)
    out = []
    with Trainer(cfg) as trainer:
        if mode == "refresh":
            trainer.run()
        path = str(trainer.store.region("features").path)
        for p in range(passes):
            drop_cache(path)
            loader = trainer.make_loader(args.epochs + p)
            t0 = time.perf_counter()
            n = 0
            for batch in loader:
                trainer.cache.after_step(batch, None, trainer.step)  # type: ignore[arg-type]
                trainer.step += 1
                n += 1
            out.append(n / (time.perf_counter() - t0))
    return {"batches_per_s": statistics.median(out), "passes": out}


# ------------------------------------------------------------------ PyG-style baseline
def baseline_run(store_path: Path, features: str, args) -> dict[str, Any]:
    """The PyG-style loop with the grid's model, batch, epochs and seed 0."""
    store = open_store(store_path)
    records = train_pyg_baseline(
        store,
        fanouts=[15, 10, 5],
        batch_size=args.batch_size,
        hidden=args.hidden,
        epochs=args.epochs,
        lr=args.lr,
        seed=0,
        model="sage",
        features=features,
        device=args.device,
    )
    last = records[-1]
    return {
        "memory_access_bytes": float(np.mean([r["bytes_gathered"] for r in records])),
        "epoch_time_s": statistics.median(r["epoch_time_s"] for r in records),
        "epoch_times_s": [r["epoch_time_s"] for r in records],
        "compute_s": statistics.median(r["compute_s"] for r in records),
        "train_loss": [r["train_loss"] for r in records],
        "test_acc": last["test_acc"],
        "valid_acc": last["valid_acc"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
        "feature_ram_bytes": feature_bytes(store) if features == "warm" else 0,
        "baseline": last.get("baseline"),
        "last_epoch": {},
    }


# ------------------------------------------------------------------ plan
def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the chosen sections, as keyword sets for :func:`run_config`.

    Ordered so that a run cut short still has a full picture: the grid's first
    seed, then the baseline, policies, sweeps and models of that seed, then the
    other seeds' runs of every chosen section but raw, then their raw runs.
    """
    datasets = [ds for ds in ("papers", "products") if ds in args.datasets]
    seeds = args.seeds

    def grid(seed: int) -> list[dict[str, Any]]:
        out = []
        for ds in datasets:
            out.append(dict(section="grid", dataset=ds, mode="none", budget_frac=0.0,
                            seed=seed, model="sage"))  # fmt: skip
            for b in args.budgets:
                for mode in ("raw", "refresh"):
                    out.append(dict(section="grid", dataset=ds, mode=mode, budget_frac=b,
                                    seed=seed, model="sage"))  # fmt: skip
        return out

    def variants(seed: int) -> list[dict[str, Any]]:
        """The policies, sweeps and models of one seed (each paired with none of that seed)."""
        first = dict(dataset="papers", model="sage", budget_frac=0.10, seed=seed)
        out: list[dict[str, Any]] = []
        if "policies" in args.sections:
            # At 10 % on every seed (the accuracy differences), and at the other
            # budgets on the first seed: a policy's bytes against the budget,
            # which do not depend on the seed.
            budgets = [0.10] + [b for b in args.budgets if b != 0.10 and seed == seeds[0]]
            for b in budgets:
                at = dict(first, section="policies", mode="refresh", budget_frac=b)
                for policy in POLICY_NAMES[1:]:
                    out.append(dict(at, policy=policy))
                out.append(dict(at, layers=(2, 1)))
            # The table's slots by degree, as before they went to the most looked-up
            # nodes: on the first seed (what it changes is mostly the bytes).
            if seed == seeds[0]:
                out.append(dict(first, section="policies", mode="refresh", order="degree"))
        if "sweeps" in args.sections:
            for q in args.quantiles:
                if q != 0.9:
                    out.append(dict(first, section="sweeps", mode="refresh", grad_quantile=q))
            for t in args.staleness:
                if t != 200:
                    out.append(dict(first, section="sweeps", mode="refresh", staleness_iters=t))
            for w in args.warmups:
                if w != 0:
                    out.append(dict(first, section="sweeps", mode="refresh", warmup_steps=w))
            for n in args.max_serves:
                out.append(dict(first, section="sweeps", mode="refresh", max_serves=n))
            for kind in args.shadows:
                out.append(dict(first, section="sweeps", mode="refresh", shadow=kind))
        if "models" in args.sections:
            for ds in datasets:
                for model in args.models:
                    for mode in MODES:
                        out.append(dict(section="models", dataset=ds, mode=mode, model=model,
                                        budget_frac=0.0 if mode == "none" else 0.10, seed=seed))  # fmt: skip
        return out

    runs: list[dict[str, Any]] = []
    if "grid" in args.sections:
        runs += grid(seeds[0])
    if "baseline" in args.sections:
        first = dict(dataset="papers", model="sage", budget_frac=0.0, seed=seeds[0])
        for features in ("warm", "cold"):
            runs.append(dict(first, section="baseline", mode=f"pyg-{features}"))
    runs += variants(seeds[0])
    # The other seeds' runs after the first seed's full picture, their raw runs
    # last: raw trains exactly like none, and its bytes do not depend on the
    # seed (0.1 % on papers), so they add no accuracy and little else. Every
    # variant is paired with none of its own seed (the grid's for SAGE).
    later = [r for seed in seeds[1:] for r in
             (grid(seed) if "grid" in args.sections else []) + variants(seed)]  # fmt: skip
    runs += sorted(later, key=lambda r: r["mode"] == "raw")
    return runs


def run_key(run: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in sorted(run.items()) if k != "section"}, sort_keys=True)


# ------------------------------------------------------------------ report
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _secs(x: float | None) -> str:
    """An epoch time, or ``-`` where only page-cache (``--io buffered``) runs have one."""
    return "-" if x is None else f"{x:.1f}"


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _acc(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def _select(records, **kw):
    return [r for r in records if all(r.get(k) == v for k, v in kw.items())]


def summarize(records: list[dict[str, Any]], ideal: dict[str, Any]) -> dict[str, Any]:
    """Shares of ``none``'s traffic and accuracy spreads per (dataset, model, mode, budget)."""
    out: dict[str, Any] = {}
    for r in records:
        # The policy as varied by the run (None = the default), not the record's name for it.
        varied = {k: r.get(k) for k in VARIANT_KEYS} | {"policy": r.get("run", r).get("policy")}
        if varied["layers"]:
            varied["layers"] = tuple(varied["layers"])
        key = (r["dataset"], r["model"], r["mode"], r["budget_frac"], r["section"],
               *(varied[k] for k in VARIANT_KEYS))  # fmt: skip
        out.setdefault(key, []).append(r)
    rows = []
    for key, rs in out.items():
        ds, model, mode, b = key[:4]
        nones = _select(records, dataset=ds, model=model, mode="none")
        # Paired: against none of the same seeds where each has one (a one-seed
        # sweep against the mean of three seeds would carry that seed's luck).
        seeds = {r["seed"] for r in rs}
        if seeds <= {n["seed"] for n in nones}:
            nones = [n for n in nones if n["seed"] in seeds]
        none_bytes = statistics.mean(n["memory_access_bytes"] for n in nones) if nones else None
        none_acc = statistics.mean(n["test_acc"] for n in nones) if nones else None
        mean_bytes = statistics.mean(r["memory_access_bytes"] for r in rs)
        acc = [r["test_acc"] for r in rs]
        timed = [r["epoch_time_s"] for r in rs if cold_read(r)]
        by_seed = {n["seed"]: n["test_acc"] for n in nones}
        diffs = {r["seed"]: 100 * (r["test_acc"] - by_seed[r["seed"]]) for r in rs
                 if r["seed"] in by_seed and mode != "none"}  # fmt: skip
        # A policy or sweep setting against the default policy of the same seed: what
        # changing that one setting did, without none's run in the difference.
        default = {
            d["seed"]: d["test_acc"]
            for d in _select(
                records, dataset=ds, model=model, mode="refresh", section="grid", budget_frac=b
            )
        }
        vs_default = {
            r["seed"]: 100 * (r["test_acc"] - default[r["seed"]])
            for r in rs
            if r["seed"] in default and key[4] in ("policies", "sweeps")
        }
        errors = [r["last_epoch"].get("hist_drift_rel_err") for r in rs]
        errors = [e for e in errors if e is not None]
        rows.append({
            "dataset": ds, "model": model, "mode": mode, "budget_frac": b, "section": key[4],
            **dict(zip(VARIANT_KEYS, key[5:])), "runs": len(rs),
            "memory_access_bytes": mean_bytes,
            "share_of_none": mean_bytes / none_bytes if none_bytes else None,
            "test_acc_mean": statistics.mean(acc),
            "test_acc_std": statistics.pstdev(acc) if len(acc) > 1 else 0.0,
            "acc_minus_none_points": 100 * (statistics.mean(acc) - none_acc) if none_acc is not None else None,
            "acc_minus_none_by_seed": diffs,
            "acc_minus_none_ci95_points": paired_ci95(list(diffs.values()))[1] if diffs else None,
            "paired_seeds": len(diffs),
            "acc_minus_default_points": statistics.mean(vs_default.values()) if vs_default else None,
            "acc_minus_default_ci95_points":
                paired_ci95(list(vs_default.values()))[1] if vs_default else None,
            "paired_default_seeds": len(vs_default),
            # How far a served entry was from the fresh embedding, in the last epoch.
            "entry_error": statistics.mean(errors) if errors else None,
            "test_nodes": rs[0].get("test_nodes"),
            "epoch_time_s": statistics.median(timed) if timed else None,
            "hist_fraction_end": (rs[0]["last_epoch"].get("cache_split_hist_bytes") or 0)
            / max(1, rs[0]["feature_ram_bytes"]),
        })  # fmt: skip
    return {"rows": rows, "ideal": ideal}


def add_io_argument(p: argparse.ArgumentParser) -> None:
    """``--io``: how runs read the features (shared with ``convergence.py``)."""
    p.add_argument("--io", default="direct", choices=("direct", "buffered"),
                   help="buffered: features through the page cache (the same bytes and "
                        "accuracies, faster; epoch times then left out)")  # fmt: skip


def cold_read(r: dict[str, Any]) -> bool:
    """Whether a run read from a cold SSD (not ``--io buffered``), so its times count."""
    return r.get("io_mode", "direct") == "direct"


def paired_ci95(diffs: list[float]) -> tuple[float, float | None]:
    """Mean of per-seed paired differences and the half-width of its 95 % t-interval.

    Each difference is one seed's run minus ``none`` of that seed, so the
    interval covers both the training noise and the test set's sampling
    noise. ``None`` for a single seed: one difference has no spread.
    """
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, None
    from scipy.stats import t  # a dev dependency; only the report needs it

    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, float(t.ppf(0.975, len(diffs) - 1) * se)


def test_set_se_points(acc: float, test_nodes: int) -> float:
    """Binomial standard error of one accuracy measured on ``test_nodes`` nodes, in points."""
    return 100 * (acc * (1 - acc) / test_nodes) ** 0.5


def _diff(r: dict[str, Any], against: str = "none") -> str:
    """Accuracy against ``none`` (or ``default``, the default policy), with its 95 %
    interval where two or more seeds are paired."""
    mean = r.get(f"acc_minus_{against}_points")
    if mean is None:
        return "-"
    ci = r.get(f"acc_minus_{against}_ci95_points")
    seeds = r["paired_seeds"] if against == "none" else r.get(f"paired_{against}_seeds")
    return f"{mean:+.2f}" + ("" if ci is None else f" ± {ci:.2f} ({seeds})")


def runs_load(records: list[dict[str, Any]]) -> str:
    """The range of the load the runs saw at their starts, over those that kept it.

    The records gather runs of many invocations: this says more than the load
    of the last invocation, which may have run none of them.
    """
    starts = [r["load"][0] for r in records if "load" in r]
    if not starts:
        return ""
    return (f"load average (1 minute) {min(starts):.1f}-{max(starts):.1f} at the starts of "
            f"the {len(starts)} runs that kept it; ")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = s["rows"]
    lines = [
        "# Memory access volume: `none`, `raw`, `refresh`",
        "",
        f"Machine: {result['machine']}; {runs_load(result.get('records', []))}load average {result['load_start']} at the start "
        f"of the last invocation, {result['load_end']} at its end. Settings: {result['settings']}.",
        "",
        "Memory access = raw-feature bytes moved onto the device from the host and disk tiers",
        "per epoch (mean over the run's epochs, the first included). Share = that of `none`",
        "on the same dataset and model; accuracy = final sampled test accuracy, mean ± std",
        'over seeds; "vs none" = against `none` of the same seeds (all of `none`\'s where',
        "one is missing), ± the half-width of the 95 % t-interval of the per-seed",
        "differences (the number of paired seeds in brackets).",
        "",
    ]
    for ds in ("papers", "products"):
        grid = [r for r in rows if r["section"] == "grid" and r["dataset"] == ds]
        if not grid:
            continue
        nodes = next((r["test_nodes"] for r in grid if r.get("test_nodes")), None)
        none_acc = next((r["test_acc_mean"] for r in grid if r["mode"] == "none"), None)
        lines += [f"## SAGE on `{ds}`", ""]
        if nodes and none_acc is not None:
            lines += [f"Test set: {nodes:,} nodes; one accuracy near none's has a binomial "
                      f"standard error of {test_set_se_points(none_acc, nodes):.2f} points.", ""]  # fmt: skip
        lines += [
                  "| budget | mode | seeds | MiB/epoch | share of none | test acc % | vs none (points) | epoch s | table share at end |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in sorted(grid, key=lambda r: (r["budget_frac"], MODES.index(r["mode"]))):
            acc = f"{100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f}"
            diff = _diff(r)
            table = "-" if r["mode"] != "refresh" else f"{100 * r['hist_fraction_end']:.0f} %"
            lines.append(
                f"| {100 * r['budget_frac']:.0f} % | {r['mode']} | {r['runs']} | {_mb(r['memory_access_bytes'])} | "
                f"{_pct(r['share_of_none'])} | {acc} | {diff} | {_secs(r['epoch_time_s'])} | {table} |"
            )
        ideal = s["ideal"].get(ds, {})
        if ideal:
            lines += ["", "What a perfect history cache would leave (the sampler alone, the table's",
                      "nodes always usable; best split of the budget):", "",
                      "| budget | raw rows only | ideal, layer 2 | ideal, layer 2, degree order | ideal, layers 2+1 |",
                      "|---:|---:|---:|---:|---:|"]  # fmt: skip
            for b, v in sorted(ideal.items()):
                lines.append(
                    f"| {100 * float(b):.0f} % | {_pct(v['raw_only_share'])} | "
                    f"{_pct(v['ideal_l2_share'])} (table {100 * v['ideal_l2_hist_fraction']:.0f} %) | "
                    f"{_pct(v.get('ideal_l2_degree_share'))} | "
                    f"{_pct(v['ideal_l21_share'])} (table {100 * v['ideal_l21_hist_fraction']:.0f} %) |"
                )
        lines.append("")
    # "degree": grid runs whose table took the prefix of degree-ordered ids (the
    # order before slots went to the most looked-up nodes).
    sections = ("policies", "sweeps", "models", "degree")
    other = sorted(
        (r for r in rows if r["section"] in sections),
        # This table's runs first, the degree-ordered ones after; then by section and dataset.
        key=lambda r: (r["order"] is not None, r["dataset"] != "papers", sections.index(r["section"]),
                       r["model"], MODES.index(r["mode"]), r["budget_frac"]),
    )  # fmt: skip
    if other:
        lines += ["## Policies, sweeps, models, and the degree-ordered table", "",
                  "vs default = against the default policy's run of the same seed (the grid's);",
                  "entry error = in the last epoch, the mean relative L2 distance of a usable",
                  "entry from the fresh embedding of the same node (`hist_drift_rel_err`).", "",
                  "| section | dataset | model | mode | budget | variant | runs | share of none | test acc % | vs none (points) | vs default (points) | entry error |",
                  "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in other:
            variant = _variant(r) or "default"
            diff = _diff(r)
            vs_default = _diff(r, "default")
            error = "-" if r.get("entry_error") is None else f"{100 * r['entry_error']:.1f} %"
            lines.append(
                f"| {r['section']} | {r['dataset']} | {r['model']} | {r['mode']} | "
                f"{100 * r['budget_frac']:.0f} % | {variant} | {r['runs']} | "
                f"{_pct(r['share_of_none'])} | {100 * r['test_acc_mean']:.2f} | {diff} | "
                f"{vs_default} | {error} |"
            )
        lines.append("")
    timing = epoch_times(result.get("records", []))
    if timing:
        # Runs recorded before the load was kept have none to show.
        load = any("load" in r for _, r in timing["rows"])
        lines += [f"## Epoch time, SAGE on `papers`, seed {timing['seed']} (cold SSD for this trainer)",
                  "",
                  "Model step = the median epoch's forward, backward and optimizer time; the rest",
                  "of an epoch is waiting for the loader (sampling and fetching)."
                  + (" Load = the load average (1 minute) at the run's start and end; it counts"
                     " the run's own disk reader threads." if load else ""),
                  "",
                  "| configuration | epoch s (median) | each epoch s | model step s | MiB/epoch "
                  "| test acc % | vs strongest PyG-style | vs raw |" + (" load |" if load else ""),
                  "|---|---:|---|---:|---:|---:|---:|---:|" + ("---|" if load else "")]  # fmt: skip
        for name, r in timing["rows"]:
            vs_pyg = timing["pyg"] / r["epoch_time_s"] if timing["pyg"] else None
            vs_raw = timing["raw"] / r["epoch_time_s"] if timing["raw"] else None
            each = " / ".join(f"{t:.1f}" for t in r.get("epoch_times_s", []))
            lines.append(
                f"| {name} | {r['epoch_time_s']:.1f} | {each} | {r['compute_s']:.1f} | "
                f"{r['memory_access_bytes'] / 2**20:,.0f} | {100 * r['test_acc']:.2f} | "
                f"{'-' if vs_pyg is None else f'{vs_pyg:.2f}x'} | "
                f"{'-' if vs_raw is None else f'{vs_raw:.2f}x'} |"
                + (
                    f" {' -> '.join(f'{x:.0f}' for x in r.get('load', [])) or '-'} |"
                    if load
                    else ""
                )
            )
        lines.append("")
    lo = result.get("loader_only")
    if lo:
        lines += ["## Loader only (sampling + fetching, no model), cold SSD, 10 % on `papers`", "",
                  "Refresh's passes admit nothing, so its table ages pass by pass (the first pass",
                  "sees it closest to how training left it).", "",
                  "| mode | batches/s (median) | each pass | vs none |", "|---|---:|---|---:|"]  # fmt: skip
        base = lo.get("none", {}).get("batches_per_s")
        for mode in MODES:
            if mode in lo:
                v = lo[mode]["batches_per_s"]
                each = " / ".join(f"{x:.2f}" for x in lo[mode].get("passes", []))
                lines.append(
                    f"| {mode} | {v:.2f} | {each} | {f'{v / base:.2f}x' if base else '-'} |"
                )
        lines.append("")
    lines += ["## Targets", "", "| target | result |", "|---|---|"]
    lines += [f"| {t['target']} | {t['result']} |" for t in targets(result)]
    return "\n".join(lines) + "\n"


def epoch_times(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch-time comparison at 10 % on ``papers``: (name, record) pairs and the references.

    One seed's runs, the seed the PyG-style baseline ran (the grid's first): times of
    runs made at other moments of a shared machine would not compare.
    """
    records = [x for x in records if cold_read(x)]
    base = [x for x in records if x["section"] == "baseline"]
    seed = base[0]["seed"] if base else min((x["seed"] for x in records), default=0)
    pick = []
    for mode in MODES:
        r = [x for x in records if x["section"] == "grid" and x["dataset"] == "papers"
             and x["model"] == "sage" and x["seed"] == seed and x["mode"] == mode
             and x["budget_frac"] in (0.0, 0.10)]  # fmt: skip
        if r:
            pick.append((f"`--cache {mode}`" + (" 10 %" if mode != "none" else ""), r[0]))
    pick += [(f"PyG-style, features {x['mode'][4:]}", x) for x in base]
    if not pick:
        return None
    raw = [r for name, r in pick if r["mode"] == "raw"]
    return {
        "seed": seed,
        "rows": pick,
        "pyg": min((x["epoch_time_s"] for x in base), default=None),
        "raw": raw[0]["epoch_time_s"] if raw else None,
        "refresh": next((r["epoch_time_s"] for _, r in pick if r["mode"] == "refresh"), None),
    }


def targets(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = result["summary"]["rows"]
    out = []
    for ds in ("papers", "products"):
        grid = [r for r in rows if r["section"] == "grid" and r["dataset"] == ds]
        if not grid:
            continue
        for b in sorted({r["budget_frac"] for r in grid if r["budget_frac"]}):
            ref = _select(grid, mode="refresh", budget_frac=b)
            raw = _select(grid, mode="raw", budget_frac=b)
            if not ref or not raw:
                continue
            ref, raw = ref[0], raw[0]
            met_none = ref["share_of_none"] <= 0.30
            met_raw = ref["memory_access_bytes"] <= 0.5 * raw["memory_access_bytes"]
            out.append({
                "target": f"`{ds}` {100 * b:.0f} %: refresh <= 30 % of none's bytes and <= half of raw's",
                "result": f"{_pct(ref['share_of_none'])} of none ({'met' if met_none else 'not met'}), "
                f"{ref['memory_access_bytes'] / raw['memory_access_bytes']:.2f}x raw's "
                f"({'met' if met_raw else 'not met'})",
            })  # fmt: skip
    t = epoch_times(result.get("records", []))
    if t and t["refresh"]:
        if t["raw"]:
            x = t["raw"] / t["refresh"]
            out.append({"target": "refresh epoch >= 2x faster than raw (cold SSD, 10 %, papers)",
                        "result": f"{x:.2f}x ({'met' if x >= 2 else 'not met'})"})  # fmt: skip
        if t["pyg"]:
            x = t["pyg"] / t["refresh"]
            out.append({"target": "refresh epoch >= 4.6x the strongest PyG-style baseline",
                        "result": f"{x:.2f}x ({'met' if x >= 4.6 else 'not met'})"})  # fmt: skip
    accs = [r for r in rows if r["mode"] != "none" and r["acc_minus_none_points"] is not None
            and r["section"] in ("grid", "models")]  # fmt: skip
    if accs:
        worst = min(accs, key=lambda r: r["acc_minus_none_points"])
        best = max(accs, key=lambda r: r["acc_minus_none_points"])
        # The target guards against a loss of accuracy; a gain is reported beside it.
        ok = worst["acc_minus_none_points"] >= -0.5

        def where(r: dict[str, Any]) -> str:
            return f"{r['dataset']}, {r['model']}, {r['mode']}, {100 * r['budget_frac']:.0f} %"

        seed = _worst_seed(rows)
        out.append({
            "target": "test accuracy at most 0.5 point below none (every dataset, model, budget)",
            "result": f"{'met' if ok else 'not met'} on the mean over seeds: largest drop "
            f"{_diff(worst)} points ({where(worst)}); largest gain {_diff(best)} ({where(best)})"
            + (f"; single seeds: largest drop {seed[0]:+.2f} ({where(seed[1])}, seed "
               f"{seed[2]})" if seed else ""),
        })  # fmt: skip
    return out


def _worst_seed(rows: list[dict[str, Any]]) -> tuple[float, dict[str, Any], int] | None:
    """The largest drop of one refresh run's accuracy below `none` of the same dataset,
    model and seed (grid and models sections): ``(points, its summary row, seed)``."""
    diffs = [(d, r, seed) for r in rows
             if r["mode"] == "refresh" and r["section"] in ("grid", "models")
             for seed, d in r["acc_minus_none_by_seed"].items()]  # fmt: skip
    return min(diffs, key=lambda d: d[0]) if diffs else None


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """Bytes per epoch against budget per mode/dataset; accuracy against staleness; the
    bytes/accuracy trade-off of every setting at 10 % (:func:`frontier`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = result["summary"]["rows"]
    files = []
    grid = [r for r in rows if r["section"] == "grid"]
    if len({r["budget_frac"] for r in grid if r["mode"] != "none"}) > 1:  # lines, not points
        fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
        for ax, ds in zip(axes, ("papers", "products")):
            for mode in ("raw", "refresh"):
                pts = sorted((r["budget_frac"], r["share_of_none"]) for r in grid
                             if r["dataset"] == ds and r["mode"] == mode)  # fmt: skip
                if pts:
                    label = "refresh, grad+stale (default)" if mode == "refresh" else mode
                    ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=label)
            before = sorted((r["budget_frac"], r["share_of_none"]) for r in rows
                            if r["section"] == "degree" and r["dataset"] == ds)  # fmt: skip
            if before:
                ax.plot([100 * p[0] for p in before], [100 * p[1] for p in before], "o:",
                        color="grey", label="refresh, degree-ordered table (before)")  # fmt: skip
            ideal = result["summary"]["ideal"].get(ds, {})
            if ideal:
                pts = sorted((float(b), v["ideal_l2_share"]) for b, v in ideal.items())
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "k^--",
                        label="perfect table (layer 2)")  # fmt: skip
            # Each policy's bytes against the budget (one line per policy; a
            # policy run at 10 % only is one marker).
            pol: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                if r["dataset"] == ds and r["section"] == "policies" and r["order"] is None:
                    label = r["policy"] or "layers " + ",".join(map(str, r["layers"] or ()))
                    pol.setdefault(label, []).append((r["budget_frac"], r["share_of_none"]))
            for j, (label, pts) in enumerate(pol.items()):
                pts.sort()
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "x-", ms=7,
                        lw=0.9, color=f"C{j + 2}", label=f"refresh, {label}")  # fmt: skip
            ax.axhline(100, color="grey", lw=0.8)
            ax.set_title(f"SAGE on {ds}")
            ax.set_xlabel("device budget, % of feature bytes")
            ax.set_ylabel("memory access per epoch, % of none")
            ax.set_ylim(0, 105)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        fig.tight_layout()
        path = out.with_name(out.stem + "_bytes.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    pts = staleness_points(rows)
    if len(pts) > 1:
        fig, ax = plt.subplots(figsize=(5.4, 4.8))
        h1 = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                     label="test accuracy minus none's (points; bars: 95 % interval over seeds)")  # fmt: skip
        bars = [p for p in pts if p[4] is not None]
        if bars:
            ax.errorbar([p[0] for p in bars], [p[1] for p in bars], yerr=[p[4] for p in bars],
                        fmt="none", ecolor="C0", capsize=3, lw=0.8)  # fmt: skip
        ax2 = ax.twinx()
        h2 = ax2.plot([p[0] for p in pts], [100 * p[2] for p in pts], "s--", color="C1",
                      label="memory access, % of none")  # fmt: skip
        ax.axhline(0, color="C0", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(-1, 1.5 * max(p[0] for p in pts))
        ax.set_xlabel("--staleness (steps)")
        ax.set_ylabel("test accuracy minus none's (points)")
        ax2.set_ylabel("memory access, % of none")
        ax.set_title("refresh, 10 % budget, papers")
        ax.legend(handles=h1 + h2, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7)
        # Labelled once the axes' limits are final, so that labels keep clear of each other.
        _label_points(fig, ax, [(f"{p[3]} seed{'s' if p[3] > 1 else ''}", p[0], p[1]) for p in pts])
        fig.tight_layout()
        path = out.with_name(out.stem + "_staleness.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    settings = settings_over_seeds(rows)
    if len(settings) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for j, (_, share, diff, ci, _) in enumerate(settings):
            ax.errorbar([100 * share], [diff], yerr=None if ci is None else [ci], fmt="o",
                        color=f"C{j % 10}", capsize=3, lw=0.8)  # fmt: skip
        ax.autoscale_view()
        _label_points(
            fig, ax, [(label, 100 * share, diff) for label, share, diff, _, _ in settings]
        )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(-0.5, color="grey", lw=0.8, ls=":")
        ax.axvline(30, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("memory access per epoch, % of none")
        ax.set_ylabel("test accuracy minus none's (points; bars: 95 % interval)")
        seeds = sorted({n for *_, n in settings})
        ax.set_title(
            f"papers, SAGE, 10 % budget, settings run on {'/'.join(map(str, seeds))} seeds"
        )
        fig.tight_layout()
        path = out.with_name(out.stem + "_settings.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    points = frontier(result["records"])
    if len(points) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for j, (label, share, diff) in enumerate(points):
            ax.plot([100 * share], [diff], "o", color="grey" if label == "raw" else f"C{j % 10}")
        ax.autoscale_view()
        _label_points(fig, ax, [(label, 100 * share, diff) for label, share, diff in points])
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(-0.5, color="grey", lw=0.8, ls=":")
        ax.axvline(30, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("memory access per epoch, % of none")
        ax.set_ylabel("test accuracy minus none's (points)")
        ax.set_title("papers, SAGE, 10 % budget, seed 0, 4 epochs")
        fig.tight_layout()
        path = out.with_name(out.stem + "_frontier.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def _sage_refresh_at_10(r: dict[str, Any]) -> bool:
    """A summary row of refresh with SAGE at 10 % on ``papers`` (the sweeps' setting)."""
    key = (r["dataset"], r["model"], r["mode"], r["budget_frac"])
    return key == ("papers", "sage", "refresh", 0.10)


def staleness_points(
    rows: list[dict[str, Any]],
) -> list[tuple[int, float, float, int, float | None]]:
    """``(staleness, accuracy minus none's in points, share of none's bytes, seeds,
    half-width of the accuracy difference's 95 % interval or None for one seed)``.

    Refresh at 10 % on ``papers`` varying only ``--staleness`` (the grid's run is the
    default, 200). Accuracy is the difference to ``none`` of the same seeds, so
    settings run on different numbers of seeds still compare.
    """
    stale = [r for r in rows if _sage_refresh_at_10(r) and r["section"] in ("grid", "sweeps")
             and all(r.get(k) is None for k in VARIANT_KEYS if k != "staleness_iters")]  # fmt: skip
    return sorted((r["staleness_iters"] if r["staleness_iters"] is not None else 200,
                   r["acc_minus_none_points"], r["share_of_none"], r["runs"],
                   r.get("acc_minus_none_ci95_points"))
                  for r in stale if r["acc_minus_none_points"] is not None)  # fmt: skip


def _label_points(fig, ax, points: list[tuple[str, float, float]]) -> None:
    """Label each point beside it, on the first side where no earlier label is (else the first)."""
    renderer = fig.canvas.get_renderer()
    sides = ((4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right"))
    tries = (*sides, sides[0])  # the last: every side taken, the first stays
    placed = []
    for label, x, y in points:
        for i, (dx, dy, ha) in enumerate(tries):
            note = ax.annotate(label, (x, y), fontsize=7, xytext=(dx, dy), ha=ha,
                               textcoords="offset points")  # fmt: skip
            box = note.get_window_extent(renderer)
            if i == len(sides) or not any(box.overlaps(b) for b in placed):
                break
            note.remove()
        placed.append(box)


def settings_over_seeds(
    rows: list[dict[str, Any]], min_seeds: int = 3
) -> list[tuple[str, float, float, float | None, int]]:
    """Every refresh setting at 10 % on ``papers`` (SAGE) run on at least ``min_seeds`` seeds.

    ``(label, share of none's bytes, mean accuracy minus none's in points,
    half-width of its 95 % interval, seeds)``, each seed paired with ``none``
    of its seed (:func:`summarize`'s rows).
    """
    out = []
    for r in rows:
        if not _sage_refresh_at_10(r) or r["section"] not in ("grid", "policies", "sweeps"):
            continue
        if r["paired_seeds"] < min_seeds:
            continue
        out.append((_variant(r) or "default", r["share_of_none"], r["acc_minus_none_points"],
                    r["acc_minus_none_ci95_points"], r["paired_seeds"]))  # fmt: skip
    return sorted(out, key=lambda p: p[1])


def frontier(records: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Bytes against accuracy of every setting run at 10 % on ``papers`` with seed 0.

    ``(label, share of none's bytes, test accuracy minus none's in points)``
    per run, ``raw`` included, each paired with ``none`` of the same seed
    (the sweeps ran one seed; the grid's other seeds would not compare).
    """
    mine = [r for r in records if r["dataset"] == "papers" and r["model"] == "sage"
            and r["seed"] == 0 and r["run"].get("order") is None]  # fmt: skip
    none = [r for r in mine if r["mode"] == "none"]
    if not none:
        return []
    base = none[0]
    out = []
    for r in mine:
        if r["budget_frac"] != 0.10 or r["mode"] not in ("raw", "refresh"):
            continue
        label = "raw" if r["mode"] == "raw" else _variant(r["run"]) or "refresh (defaults)"
        out.append((label, r["memory_access_bytes"] / base["memory_access_bytes"],
                    100 * (r["test_acc"] - base["test_acc"])))  # fmt: skip
    # Settings that train alike (q=1.0 admits what the stale policy does) share a point.
    merged: dict[tuple[float, float], list[str]] = {}
    for label, share, diff in out:
        merged.setdefault((share, diff), []).append(label)
    return sorted(((" = ".join(v), *k) for k, v in merged.items()), key=lambda p: p[1])


def _variant(settings: dict[str, Any]) -> str:
    """The history settings a run varies, e.g. ``staleness=50, layers=2,1`` ("" for none)."""
    return ", ".join(
        f"{_SHORT.get(k, k)}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k in VARIANT_KEYS
        if (v := settings.get(k)) is not None
    )


_SHORT = {"staleness_iters": "staleness", "grad_quantile": "q", "warmup_steps": "warmup",
          "max_serves": "max serves"}  # fmt: skip


# ------------------------------------------------------------------ main
def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="grid,models,policies,sweeps,ideal,loader,baseline")
    p.add_argument("--budgets", default="0.01,0.05,0.10,0.20")
    p.add_argument("--datasets", default="papers,products",
                   help="graphs whose grid and model runs to do (the other sections use papers)")  # fmt: skip
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default=",".join(SECTION_MODELS),
                   help="the models section's models (SAGE is the grid's)")  # fmt: skip
    p.add_argument("--quantiles", default="0.5,0.7,0.9,1.0")
    p.add_argument("--staleness", default="0,20,50,200,1000")
    p.add_argument("--warmups", default="0,100", help="--hist-warmup steps to sweep")
    p.add_argument(
        "--max-serves",
        default="",
        help="--hist-max-serves values to sweep, e.g. 1,4 (default: none)",
    )
    p.add_argument(
        "--shadows",
        default="",
        help="--hist-shadow runs, values and/or gradients (default: none): which half "
        "of a hit costs accuracy",
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--papers-nodes", type=int, default=2_000_000)
    p.add_argument("--products-nodes", type=int, default=2_449_029)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where every model runs")
    add_io_argument(p)
    p.add_argument(
        "--quick", action="store_true", help="small graphs, 10 %% only, 1 seed, 2 epochs"
    )
    p.add_argument("--fresh", action="store_true",
                   help="rerun the chosen runs even if --out has them (others are kept)")  # fmt: skip
    p.add_argument("--report", action="store_true",
                   help="only rewrite the tables and plots from the records in --out")  # fmt: skip
    p.add_argument("--data-dir", default=str(CACHE_DIR))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_access.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.sections, args.budgets, args.seeds, args.epochs = "grid,ideal,baseline", "0.10", "0", 2
        args.hidden = 64
    args.sections = set(args.sections.split(","))
    if args.io == "buffered" and (timed := sorted(args.sections & {"baseline", "loader"})):
        what = f"the {' and '.join(timed)} section" + (
            "s measure" if len(timed) > 1 else " measures"
        )
        print(f"error: --io buffered: {what} time from a cold SSD; leave them out (e.g. --sections "
              "grid,models,policies,sweeps) or read directly", file=sys.stderr)  # fmt: skip
        return 2
    args.datasets = set(args.datasets.split(","))
    if bad := args.datasets - {"papers", "products"}:
        print(f"error: --datasets: unknown graph {sorted(bad)[0]!r}; use papers or products",
              file=sys.stderr)  # fmt: skip
        return 2
    args.models = args.models.split(",")
    if bad := [m for m in args.models if m not in SECTION_MODELS]:
        print(f"error: --models: unknown model {bad[0]!r} for the models section; use "
              f"{' or '.join(SECTION_MODELS)} (SAGE runs in the grid)", file=sys.stderr)  # fmt: skip
        return 2
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.quantiles = [float(q) for q in args.quantiles.split(",")]
    args.staleness = [int(t) for t in args.staleness.split(",")]
    args.warmups = [int(w) for w in args.warmups.split(",")]
    args.max_serves = [int(n) for n in args.max_serves.split(",") if n]
    args.shadows = [k for k in args.shadows.split(",") if k]
    if bad := [k for k in args.shadows if k not in HIST_SHADOW_KINDS]:
        print(f"error: --shadows: unknown kind {bad[0]!r}; use "
              f"{' or '.join(HIST_SHADOW_KINDS)}", file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report:
        # A long run writes its tables only at the end; this reads what it has so far.
        return report_saved(out, report)
    settings = (f"SAGE/GCN/GAT 3 layers, hidden {args.hidden}, fanouts 15,10,5, batch "
                f"{args.batch_size}, lr {args.lr}, {args.epochs} epochs, host budget 0, "
                "lookahead 0, prefetch 2, history defaults unless stated")  # fmt: skip
    if args.device != "cpu":
        settings += f", models on {args.device}"
    # --fresh reruns the runs this invocation plans; every other record is kept.
    # A --quick run without --out must not replace the full benchmark's records.
    if (old := previous_results(out, settings)) is None:
        return 2
    previous = {run_key(r["run"]): r for r in old.get("records", [])}
    old_ideal, old_loader = old.get("ideal_raw"), old.get("loader_only")
    result: dict[str, Any] = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "settings": settings,
        "load_start": _load(),
        "datasets": dataset_specs(args),
        "records": [],
    }

    def save() -> None:
        # Records of the earlier invocation not reached yet are kept, so a run cut short
        # at any point loses only the run it was in.
        result["load_end"] = _load()
        have = {run_key(r["run"]) for r in result["records"]}
        saved = {**result, "records": result["records"] + [
            r for k, r in previous.items() if k not in have]}  # fmt: skip
        saved["summary"] = summarize(saved["records"], saved.get("ideal_raw", {}))
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(saved, indent=1, default=str))
        os.replace(tmp, out)

    # papers is always built: the policies, sweeps, baseline and loader sections use it.
    stores = {
        ds: ensure_store(ds, spec, Path(args.data_dir))
        for ds, spec in result["datasets"].items()
        if ds in args.datasets or ds == "papers"
    }
    # How finely test_acc can tell two runs apart depends on it (see test_set_se_points).
    test_nodes = {ds: int(open_store(path).test_idx.shape[0]) for ds, path in stores.items()}
    runs = plan(args)
    planned = {run_key(r) for r in runs}
    # Runs of other sections from an earlier invocation with the same settings stay.
    result["records"] = [r for k, r in previous.items() if k not in planned]
    if old_ideal:
        result["ideal_raw"] = old_ideal
    have_ideal = result.get("ideal_raw") or {}
    if "ideal" in args.sections and (
        args.fresh
        or any(
            "ideal_l2_degree_share" not in have_ideal.get(ds, {}).get(str(b), {})
            for ds in stores
            for b in args.budgets
        )
    ):
        result["ideal_raw"] = {
            **have_ideal,
            **{
                ds: {str(b): ideal_bound(path, b, args) for b in args.budgets}
                for ds, path in stores.items()
            },
        }
        save()
    if "loader" not in args.sections and old_loader:
        result["loader_only"] = old_loader
    for i, run in enumerate(runs):
        key = run_key(run)
        if key in previous and not args.fresh:
            result["records"].append(_with_policy(previous[key]))
            continue
        print(f"[{i + 1}/{len(runs)}] {run}", flush=True)
        load = os.getloadavg()[0]
        if run["section"] == "baseline":
            rec = baseline_run(stores[run["dataset"]], run["mode"].split("-")[1], args)
        else:
            hist = {k: run[k] for k in VARIANT_KEYS
                    if k in run}  # fmt: skip
            cfg = run_config(stores[run["dataset"]], mode=run["mode"],
                             budget_frac=run["budget_frac"], seed=run["seed"],
                             model=run["model"], args=args, **hist)  # fmt: skip
            rec = train_run(cfg)
        rec.update({k: v for k, v in run.items()})
        rec["run"] = run
        rec["test_nodes"] = test_nodes[run["dataset"]]
        rec["io_mode"] = args.io
        rec["cpu"] = cpu_kind()
        rec["load"] = [round(load, 1), round(os.getloadavg()[0], 1)]
        result["records"].append(_with_policy(rec))
        print(f"    {rec['memory_access_bytes'] / 2**20:,.0f} MiB/epoch, acc {rec['test_acc']:.4f}, "
              f"{rec['epoch_time_s']:.1f} s/epoch", flush=True)  # fmt: skip
        save()
    if "loader" in args.sections:
        result["loader_only"] = {m: loader_only(stores["papers"], m, args) for m in MODES}
    save()
    return report(result, out)


def _with_policy(rec: dict[str, Any]) -> dict[str, Any]:
    """Name the admission policy in every record: the history's for refresh, None otherwise."""
    if "policy" not in rec:
        rec["policy"] = (
            rec["run"].get("policy", POLICY_NAMES[0]) if rec["mode"] == "refresh" else None
        )
    return rec


def report(result: dict[str, Any], out: Path) -> int:
    """Write the markdown tables and the plots next to ``out`` and print the tables."""
    result["summary"] = summarize(result["records"], result.get("ideal_raw", {}))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    files = plots(result, out)
    print(md)
    for f in files:
        print("plot:", f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
