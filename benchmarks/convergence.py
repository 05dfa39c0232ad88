"""Does the historical cache cost accuracy once training has converged?

The memory-access benchmark trains every run for 4 epochs, where the
validation accuracy is still rising, and entries of the history table never
grow much older than the run. This one trains SAGE (``--model gcn`` or
``gat`` for the others) on the same generated
``papers`` graph (2M nodes, 1 % labelled; ``--dataset products`` for the
ogbn-products-sized one) at a 10 % device budget (or the budgets of
``--budgets``) for many epochs, evaluating after each, with

* ``none``: raw features only (``raw`` trains identically: same samples, same rows);
* ``refresh``: the history cache with the published policy (``grad+stale``,
  staleness 200);
* ``refresh-nostale``: the gradient criterion without the staleness bound
  (``--hist-policy grad``), where entries may grow arbitrarily old: the
  variant that moved the fewest bytes in the 4-epoch ablation;
* ``refresh-q0.7``: the published policy admitting fewer embeddings
  (``--grad-quantile 0.7``), the 4-epoch sweep's best trade-off;
* ``refresh-stale100``: the published policy with half its staleness bound
  (``--staleness 100``), the 4-epoch setting closest to ``none`` over nine seeds;
* ``refresh-exact1``: the published policy with the last epoch trained
  exactly (``--hist-stop`` at its first step; the table's bytes then hold
  raw rows), so the output layer ends on fresh embeddings, as evaluation
  sees them;

and, only when ``--variants`` names them, the diagnostics of what a hit
costs: ``refresh-serves1`` (``--hist-max-serves 1``: every served entry a
computation of its own), ``refresh-shadow-values`` and
``refresh-shadow-gradients`` (``--hist-shadow``: nothing pruned, one effect
of each hit kept).

Per run and epoch it records training loss, validation and test accuracy
(sampled evaluation, fanouts 15,10,5; with ``--eval-every N`` only every Nth
epoch and the last are evaluated, for graphs whose test split takes longer
to evaluate than an epoch to train), memory access bytes, epoch time and
the history's hits and mean age of hits. The report gives, per variant, the
test accuracy at the epoch of best validation accuracy (model selection as a
user does it) and at the last epoch, the difference to ``none`` in points,
and whether validation accuracy still rose over the last quarter of the run.

    python benchmarks/convergence.py            # 12 epochs, seed 0 (about 1 h on 2 cores)
    python benchmarks/convergence.py --seeds 0,1 --epochs 20
    python benchmarks/convergence.py --seeds 0,1,2 --budgets 0.10,0.20 --variants none,refresh
    python benchmarks/convergence.py --dataset products --epochs 8 --eval-every 2 \
        --variants none,refresh --out benchmarks/results/convergence_products.json
    python benchmarks/convergence.py --model gcn --epochs 30 --variants none,refresh \
        --seeds 0,1,2 --out benchmarks/results/convergence_gcn30.json
    python benchmarks/convergence.py --quick    # 200K-node graph, 3 epochs

``--io buffered`` reads the features through the page cache, as in the
memory-access benchmark: the same records but for the times, faster.

Runs already in ``--out`` with the same settings are kept (a cut-short run
continues where it stopped); ``--report`` rewrites the table and plot from
the records; an ``--out`` holding runs of other settings is refused (exit
2), never overwritten. A run is keyed by variant, seed and budget; ``none`` holds no
feature memory, so one ``none`` run per seed serves every budget. Writes ``benchmarks/results/convergence.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import memory_access as ma  # noqa: E402
from _common import (  # noqa: E402
    cpu_kind,
    drop_cache,
    ensure_store,
    previous_results,
    report_saved,
)

from refresh_store.store import open_store  # noqa: E402
from refresh_train.config import EvalConfig  # noqa: E402
from refresh_train.epoch import num_batches  # noqa: E402
from refresh_train.modes.refresh import relative_error  # noqa: E402
from refresh_train.trainer import Trainer  # noqa: E402

#: Variant name -> (cache mode, history settings).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "refresh": ("refresh", {}),
    "refresh-nostale": ("refresh", {"policy": "grad"}),
    "refresh-q0.7": ("refresh", {"grad_quantile": 0.7}),
    "refresh-stale100": ("refresh", {"staleness_iters": 100}),
    # exact_epochs: the last epochs without the history (--hist-stop at their first step).
    "refresh-exact1": ("refresh", {"exact_epochs": 1}),
    "refresh-serves1": ("refresh", {"max_serves": 1}),
    "refresh-shadow-values": ("refresh", {"shadow": "values"}),
    "refresh-shadow-gradients": ("refresh", {"shadow": "gradients"}),
}
#: What runs unless --variants says otherwise (the diagnostics only when named).
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "refresh-serves1" and "shadow" not in v)
#: Per-epoch keys kept from the trainer's metrics records.
EPOCH_KEYS = (
    "epoch train_loss valid_acc test_acc memory_access_bytes epoch_time_s "
    "hist_hits hist_lookups hist_mean_age_of_hits hist_drift_rel_err hist_drift_mean_age"
).split()


def run_key(variant: str, seed: int, budget: float) -> tuple[str, int, float]:
    """A run's identity; ``none`` (no feature memory) has budget 0 whatever was asked."""
    return variant, seed, 0.0 if VARIANTS[variant][0] == "none" else budget


def run_one(
    store: Path, variant: str, seed: int, budget: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one variant from a cold page cache, evaluating after every epoch."""
    mode, hist = VARIANTS[variant]
    if exact := hist.get("exact_epochs"):
        per_epoch = num_batches(len(open_store(store).train_idx), args.batch_size)
        hist = {"stop_step": (args.epochs - exact) * per_epoch}
    cfg = ma.run_config(store, mode=mode, budget_frac=budget, seed=seed, model=args.model,
                        args=args, **hist)  # fmt: skip
    cfg = dataclasses.replace(
        cfg, eval=EvalConfig(mode="sampled", batch_size=2048, every_epochs=args.eval_every)
    )
    drop_cache(str(open_store(store).region("features").path))
    t0 = time.perf_counter()
    with Trainer(cfg) as trainer:
        records = trainer.run()
        wall = time.perf_counter() - t0
        floor = noise_floor(trainer, getattr(trainer.cache, "hist_layers", (2,))[0], seed)
    return {
        "variant": variant,
        "seed": seed,
        "budget_frac": budget,
        "io_mode": args.io,
        "cpu": cpu_kind(),
        "epochs": [{k: r.get(k) for k in EPOCH_KEYS} for r in records],
        "noise_floor_rel_err": floor,
        "wall_s": wall,
    }


def noise_floor(trainer: Trainer, layer: int, seed: int, batches: int = 8) -> float | None:
    """How far one fresh embedding is from another of the same node, with the final weights.

    Each batch of training seeds is sampled twice (other neighbours drawn,
    other dropout masks) and the embeddings ``h^(layer)`` of the seeds are
    compared: the mean relative L2 distance. A served entry differs from a
    fresh embedding by this much even if the weights had not moved since it
    was computed; what ``hist_drift_rel_err`` shows beyond it is the drift.
    With a history table the seeds are the training nodes it has slots for,
    the nodes ``hist_drift_rel_err`` is measured on (the most looked-up
    ones, whose neighbourhoods are larger than a typical node's). Runs after
    training, so it changes no recorded result. ``None`` if there are no such
    nodes.
    """
    store, model, cache = trainer.store, trainer.model, trainer.cache
    size = trainer.config.batch_size
    rng = np.random.default_rng(seed)
    ids = np.asarray(store.train_idx)
    if hasattr(cache, "table") and cache.table.rows:
        ids = ids[cache.order.slots(layer, ids) < cache.table.rows]
    if len(ids) == 0:
        return None
    seeds = rng.choice(ids, size=min(len(ids), batches * size), replace=False)
    model.train()  # dropout on, as in a training step
    errs = []
    with torch.no_grad():
        for i in range(0, len(seeds), size):
            part = seeds[i : i + size]
            pair = []
            for draw in (1, 2):
                batch = trainer.sampler.sample(part, 2**40 + 2 * i + draw)
                x = torch.from_numpy(np.asarray(store.features[batch.input_nodes.numpy()]))
                _, hidden = model(
                    batch.to(trainer.device), x.to(trainer.device), return_hidden=True
                )
                pair.append(hidden[layer - 1][: len(part)])
            errs.append(relative_error(*pair))
    return float(torch.cat(errs).mean())


# ------------------------------------------------------------------ report
def _evaluated(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs that were evaluated (all of them unless ``--eval-every`` was above 1;
    the last one always is)."""
    return [e for e in epochs if e.get("test_acc") is not None]


def _selected(run: dict[str, Any]) -> dict[str, Any]:
    """The evaluated epoch of best validation accuracy (the first of equals)."""
    return max(_evaluated(run["epochs"]), key=lambda e: (e["valid_acc"], -e["epoch"]))


def _quarter(run: dict[str, Any]) -> int:
    """How many epochs make the last quarter of ``run`` (at least one)."""
    return max(1, len(run["epochs"]) // 4)


def _last_quarter(run: dict[str, Any]) -> float:
    """Mean test accuracy over the evaluated epochs of the last quarter: one epoch's
    accuracy moves by a point or two from epoch to epoch on a test split of a few
    thousand nodes."""
    return statistics.mean(e["test_acc"] for e in _evaluated(run["epochs"][-_quarter(run) :]))


def _still_rising(run: dict[str, Any]) -> bool:
    """Whether validation accuracy's best of the last quarter beats the rest's by 0.2 points."""
    eps, q = run["epochs"], _quarter(run)
    head, tail = _evaluated(eps[:-q]), _evaluated(eps[-q:])
    if not head:
        return True
    return max(e["valid_acc"] for e in tail) > max(e["valid_acc"] for e in head) + 0.002


def _points(
    mine: list[float], runs: list[dict[str, Any]], ref: dict[int, float]
) -> tuple[float | None, float | None]:
    """Mean difference in points between ``mine`` (one per run) and ``ref`` by seed,
    and the half-width of its 95 % interval over those seeds (None below two)."""
    diffs = [100 * (m - ref[r["seed"]]) for m, r in zip(mine, runs) if r["seed"] in ref]
    return ma.paired_ci95(diffs) if diffs else (None, None)


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Records by (variant, budget), ``none``'s under budget 0."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        # Records from before runs carried their budget were all at 10 %.
        key = run_key(r["variant"], r["seed"], r.get("budget_frac", 0.10))
        groups.setdefault((key[0], key[2]), []).append(r)
    return groups


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and budget: accuracies (selected and last epoch), bytes, differences
    to ``none`` of the same seeds."""
    rows = []
    groups = _groups(records)
    none = [r for r in records if r["variant"] == "none"]
    none_sel = {r["seed"]: _selected(r)["test_acc"] for r in none}
    none_last = {r["seed"]: r["epochs"][-1]["test_acc"] for r in none}
    none_quarter = {r["seed"]: _last_quarter(r) for r in none}
    none_bytes = {r["seed"]: r["epochs"][-1]["memory_access_bytes"] for r in none}
    none_loss = {r["seed"]: r["epochs"][-1].get("train_loss") for r in none}
    for (name, budget), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][1], list(VARIANTS).index(kv[0][0]))
    ):
        sel = [_selected(r)["test_acc"] for r in rs]
        last = [r["epochs"][-1]["test_acc"] for r in rs]
        vs_sel, ci_sel = _points(sel, rs, none_sel)
        vs_last, ci_last = _points(last, rs, none_last)
        quarter = [_last_quarter(r) for r in rs]
        vs_quarter, ci_quarter = _points(quarter, rs, none_quarter)
        shares = [r["epochs"][-1]["memory_access_bytes"] / none_bytes[r["seed"]]
                  for r in rs if r["seed"] in none_bytes]  # fmt: skip
        # Training loss of the last epoch against none's of the same seed: whether a
        # lower accuracy comes with a worse fit of the training nodes or a better one.
        losses = [r["epochs"][-1].get("train_loss") for r in rs]
        # Runs through the page cache (--io buffered) did not read from a cold SSD.
        timed = [e["epoch_time_s"] for r in rs if ma.cold_read(r) for e in r["epochs"]]
        loss_diffs = [x - none_loss[r["seed"]] for x, r in zip(losses, rs)
                      if x is not None and none_loss.get(r["seed"]) is not None]  # fmt: skip
        rows.append({
            "variant": name, "budget_frac": budget, "runs": len(rs),
            "epochs": len(rs[0]["epochs"]),
            "selected_epoch": [_selected(r)["epoch"] for r in rs],
            "test_acc_selected": statistics.mean(sel),
            "test_acc_last": statistics.mean(last),
            "vs_none_selected_points": vs_sel,
            "vs_none_last_points": vs_last,
            # none against itself has no spread worth printing.
            "vs_none_selected_ci95": ci_sel if name != "none" else None,
            "vs_none_last_ci95": ci_last if name != "none" else None,
            "test_acc_last_quarter": statistics.mean(quarter),
            "vs_none_last_quarter_points": vs_quarter,
            "vs_none_last_quarter_ci95": ci_quarter if name != "none" else None,
            "share_of_none_last_epoch": statistics.mean(shares) if shares else None,
            "train_loss_last": statistics.mean(x for x in losses if x is not None)
            if any(x is not None for x in losses) else None,
            "vs_none_train_loss_last": statistics.mean(loss_diffs) if loss_diffs else None,
            "train_loss_below_none": sum(d < 0 for d in loss_diffs),
            "train_loss_paired": len(loss_diffs),
            "still_rising": any(_still_rising(r) for r in rs),
            "mean_age_of_hits_last": rs[0]["epochs"][-1].get("hist_mean_age_of_hits"),
            # How far a served entry was from the fresh embedding (seeds with an entry).
            "drift_rel_err_last": _mean_of_last(rs, "hist_drift_rel_err"),
            # ... and how far one fresh embedding is from another (noise_floor).
            "noise_floor": _mean([r.get("noise_floor_rel_err") for r in rs]),
            "epoch_time_s": statistics.median(timed) if timed else None,
        })  # fmt: skip
    return rows


def markdown(result: dict[str, Any]) -> str:
    def pts(x: float | None, ci: float | None = None) -> str:
        return "-" if x is None else f"{x:+.2f}" + ("" if ci is None else f" ± {ci:.2f}")

    lines = [
        "# Accuracy at convergence: `none` against `refresh`",
        "",
        f"Machine: {result['machine']}; load average {result['load_start']} at the start, "
        f"{result['load_end']} at the end of the last invocation (each run's own, at its "
        f"start and end, is its record's `load`). Settings: {result['settings']}.",
        "",
        "Selected = the epoch of best validation accuracy; last quarter = the mean over the",
        "last quarter of the epochs; bytes = the last epoch's memory",
        "access as a share of `none`'s. Accuracies are means over seeds; vs none = the mean",
        "of the per-seed differences, ± the half-width of its 95 % t-interval. Train loss =",
        "the last epoch's mean training loss; beside it the mean difference to `none`'s and",
        "on how many seeds it was lower. Entry error = in the last epoch, the mean relative",
        "L2 distance of a usable entry from the fresh embedding of the same node (measured",
        "on the seeds that had one: what a hit serves); in brackets the floor under it, the",
        "distance between two fresh embeddings of the same node with the final weights",
        "(other neighbours drawn, other dropout masks), over the training nodes the table",
        "has slots for (over all training nodes for a run without a table).",
        "",
        "| variant | budget | epochs | selected epoch | test acc % (selected) | vs none | "
        "test acc % (last) | vs none | test acc % (last quarter) | vs none | "
        "train loss (last) | bytes, last epoch | still rising | mean age of hits | "
        "entry error |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in result["summary"]:
        share = r["share_of_none_last_epoch"]
        age = r["mean_age_of_hits_last"]
        drift, floor = r.get("drift_rel_err_last"), r.get("noise_floor")
        error = "-" if drift is None else f"{100 * drift:.1f} %"
        if floor is not None:
            error += f" ({100 * floor:.1f} %)"
        lines.append(
            f"| {r['variant']} | {_budget(r['budget_frac'])} | {r['epochs']} | "
            f"{', '.join(map(str, r['selected_epoch']))} | "
            f"{100 * r['test_acc_selected']:.2f} | {pts(r['vs_none_selected_points'], r.get('vs_none_selected_ci95'))} | "
            f"{100 * r['test_acc_last']:.2f} | {pts(r['vs_none_last_points'], r.get('vs_none_last_ci95'))} | "
            f"{100 * r['test_acc_last_quarter']:.2f} | "
            f"{pts(r['vs_none_last_quarter_points'], r.get('vs_none_last_quarter_ci95'))} | "
            f"{_loss(r)} | {'-' if share is None else f'{100 * share:.1f} %'} | "
            f"{'yes' if r['still_rising'] else 'no'} | {'-' if age is None else f'{age:.0f}'} | "
            f"{error} |"
        )
    return "\n".join(lines) + "\n"


def _mean_of_last(runs: list[dict[str, Any]], key: str) -> float | None:
    """The mean over runs of ``key`` in their last epoch, where they have it."""
    return _mean([r["epochs"][-1].get(key) for r in runs])


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` if there are none."""
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _loss(r: dict[str, Any]) -> str:
    """``0.823 (-0.024, lower on 3 of 3)``: the loss, its difference to none's, and how often."""
    if r.get("train_loss_last") is None:
        return "-"
    if r["variant"] == "none" or not r.get("train_loss_paired"):
        return f"{r['train_loss_last']:.3f}"
    return (f"{r['train_loss_last']:.3f} ({r['vs_none_train_loss_last']:+.3f}, lower on "
            f"{r['train_loss_below_none']} of {r['train_loss_paired']})")  # fmt: skip


def _budget(frac: float) -> str:
    return "-" if not frac else f"{100 * frac:g} %"


def epoch_differences(
    records: list[dict[str, Any]],
) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Per (variant, budget) and epoch: the mean over seeds of the differences to
    ``none`` of the same seed in test accuracy (points, with the half-width of its
    95 % interval where two or more seeds pair) and in training loss, and the mean
    share of ``none``'s bytes. Epochs a seed's ``none`` lacks are left out."""
    none = {r["seed"]: r["epochs"] for r in records if r["variant"] == "none"}
    out = {}
    for key, group in _groups(records).items():
        rs = [r for r in group if r["seed"] in none]
        if key[0] == "none" or not rs:
            continue
        epochs = []
        for i in range(min(len(r["epochs"]) for r in rs)):
            pairs = [(r["epochs"][i], none[r["seed"]][i]) for r in rs if i < len(none[r["seed"]])]
            if not pairs:
                break
            # Epochs left unevaluated (--eval-every) still have their loss and bytes.
            scored = [100 * (e["test_acc"] - n["test_acc"]) for e, n in pairs
                      if e.get("test_acc") is not None and n.get("test_acc") is not None]  # fmt: skip
            acc, ci = ma.paired_ci95(scored) if scored else (None, None)
            losses = [e["train_loss"] - n["train_loss"] for e, n in pairs
                      if e.get("train_loss") is not None and n.get("train_loss") is not None]  # fmt: skip
            epochs.append({
                "epoch": pairs[0][0]["epoch"], "seeds": len(pairs), "acc": acc, "acc_ci95": ci,
                "train_loss": statistics.mean(losses) if losses else None,
                "share": statistics.mean(e["memory_access_bytes"] / n["memory_access_bytes"]
                                         for e, n in pairs),
            })  # fmt: skip
        out[key] = epochs
    return out


def plot(result: dict[str, Any], out: Path) -> str | None:
    """Per epoch, each variant against ``none`` of the same seeds: test accuracy
    (band: 95 % interval over seeds), training loss, and bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    diffs = epoch_differences(result["records"])
    if not diffs:
        return None
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4.3))
    order = sorted(diffs, key=lambda k: (list(VARIANTS).index(k[0]), k[1]))
    for j, key in enumerate(order):
        eps = diffs[key]
        x = [e["epoch"] for e in eps]
        seeds = max(e["seeds"] for e in eps)
        label = f"{key[0]}, {_budget(key[1])} ({seeds} seed{'s' if seeds > 1 else ''})"
        style = dict(color=f"C{j}", ms=3, label=label)
        scored = [e for e in eps if e["acc"] is not None]
        ax1.plot([e["epoch"] for e in scored], [e["acc"] for e in scored], "o-", **style)
        band = [e for e in eps if e["acc_ci95"] is not None]
        if band:
            ax1.fill_between([e["epoch"] for e in band], [e["acc"] - e["acc_ci95"] for e in band],
                             [e["acc"] + e["acc_ci95"] for e in band], color=f"C{j}", alpha=0.12)  # fmt: skip
        loss = [e for e in eps if e["train_loss"] is not None]
        ax2.plot([e["epoch"] for e in loss], [e["train_loss"] for e in loss], "o-", **style)
        ax3.plot(x, [100 * e["share"] for e in eps], "o-", **style)
    for ax in (ax1, ax2):
        ax.axhline(0, color="grey", lw=0.8)
    ax1.axhline(-0.5, color="grey", lw=0.8, ls=":")
    ax1.set_ylabel("test accuracy minus none's (points)")
    ax2.set_ylabel("training loss minus none's")
    ax3.set_ylabel("memory access, % of none")
    ax3.set_ylim(0, 105)
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("epoch")
    ax3.legend(fontsize=8)
    graph = result.get("graph", "papers")
    model = result.get("model", "sage").upper()
    fig.suptitle(f"{model} on {graph}: each variant against none of the same seeds, per epoch")
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def report(result: dict[str, Any], out: Path) -> int:
    result["summary"] = summarize(result["records"])
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    png = plot(result, out)
    if png:
        print("plot:", png)
    return 0


# ------------------------------------------------------------------ main
def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--budgets", default="0.10",
                   help="device budgets, shares of the feature bytes (comma-separated)")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=1,
                   help="evaluate every this many epochs, and after the last (default 1)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--dataset", default="papers", choices=("papers", "products"),
                   help="which generated graph (default papers)")  # fmt: skip
    p.add_argument("--model", default="sage", choices=("sage", *ma.SECTION_MODELS),
                   help="which model every run trains (default sage)")  # fmt: skip
    p.add_argument("--papers-nodes", type=int, default=2_000_000)
    p.add_argument("--products-nodes", type=int, default=2_449_029)
    p.add_argument("--device", default="cpu")
    ma.add_io_argument(p)
    p.add_argument("--quick", action="store_true", help="200K-node graph, 3 epochs, hidden 64")
    p.add_argument("--report", action="store_true",
                   help="only rewrite the table and plot from the records in --out")  # fmt: skip
    p.add_argument("--data-dir", default=str(ma.CACHE_DIR))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convergence.json"))
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        return report_saved(out, report)
    variants = args.variants.split(",")
    if bad := [v for v in variants if v not in VARIANTS]:
        print(f"error: --variants: unknown variant {bad[0]!r}; use {', '.join(VARIANTS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        budgets = []
    if not budgets or not all(0.0 < b < 1.0 for b in budgets):
        print(f"error: --budgets {args.budgets!r}: give shares of the feature bytes between "
              "0 and 1, comma-separated (e.g. 0.10,0.20)", file=sys.stderr)  # fmt: skip
        return 2
    if args.eval_every < 1:
        print(f"error: --eval-every {args.eval_every}: give a number of epochs of at least 1",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.quick:
        args.epochs, args.hidden = 3, 64
    args.quick = bool(args.quick)
    spec = ma.dataset_specs(
        argparse.Namespace(
            quick=args.quick, papers_nodes=args.papers_nodes, products_nodes=args.products_nodes
        )
    )[args.dataset]
    every = ("every epoch" if args.eval_every == 1
             else f"every {args.eval_every} epochs and after the last")  # fmt: skip
    settings = (f"{args.model.upper()} 3x{args.hidden}, fanouts 15,10,5, batch {args.batch_size}, lr {args.lr}, "
                f"{args.epochs} epochs, host budget 0, lookahead 0, prefetch 2, sampled "
                f"evaluation {every}; {args.dataset} graph {spec['nodes']:,} nodes")  # fmt: skip
    if args.device != "cpu":
        settings += f", models on {args.device}"
    if (old := previous_results(out, settings, _adopt)) is None:
        return 2
    previous = {
        run_key(r["variant"], r["seed"], r["budget_frac"]): r for r in old.get("records", [])
    }
    result: dict[str, Any] = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "settings": settings,
        "load_start": _load(),
        "graph": args.dataset,
        "model": args.model,
        "dataset": spec,
        "records": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    store = ensure_store(args.dataset, spec, Path(args.data_dir))
    todo = list(dict.fromkeys(
        run_key(v, int(s), b) for b in budgets for s in args.seeds.split(",") for v in variants
    ))  # fmt: skip
    # Records of variants, seeds and budgets outside this invocation stay.
    kept = [r for k, r in previous.items() if k not in todo]
    for i, key in enumerate(todo):
        if key in previous:
            result["records"].append(previous[key])
            continue
        at = f", {_budget(key[2])}" if key[2] else ""
        print(f"[{i + 1}/{len(todo)}] {key[0]}, seed {key[1]}{at}", flush=True)
        load = os.getloadavg()[0]
        rec = run_one(store, *key, args)
        rec["load"] = [round(load, 1), round(os.getloadavg()[0], 1)]
        last = rec["epochs"][-1]
        print(f"    test acc {last['test_acc']:.4f} after {len(rec['epochs'])} epochs, "
              f"{last['memory_access_bytes'] / 2**20:,.0f} MiB in the last", flush=True)  # fmt: skip
        result["records"].append(rec)
        _save(result, kept, out)
    result["records"] += kept
    _save(result, [], out)
    return report(result, out)


def _adopt(old: dict[str, Any], settings: str) -> bool:
    """Whether ``old``'s records were measured with ``settings``; gives records written
    before runs carried their budget (one budget per file, in its settings) theirs."""
    if old.get("settings") == settings:
        return all("budget_frac" in r for r in old.get("records", []))
    m = re.search(r"device budget ([0-9.]+) % of the feature bytes, ", old.get("settings", ""))
    if not m or old["settings"].replace(m.group(0), "") != settings:
        return False
    for r in old["records"]:
        r["budget_frac"] = run_key(r["variant"], r["seed"], float(m.group(1)) / 100)[2]
    old["settings"] = settings
    return True


def _save(result: dict[str, Any], kept: list[dict[str, Any]], out: Path) -> None:
    """Write the records so far and ``kept`` (an earlier invocation's) atomically."""
    result["load_end"] = _load()
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**result, "records": result["records"] + kept}, indent=1))
    os.replace(tmp, out)


if __name__ == "__main__":
    raise SystemExit(main())
