"""Epoch time of out-of-core GNN training: this trainer against what a PyG user writes today.

One command trains the same model (GraphSAGE, 3 layers), fanouts, batch size,
seed and number of epochs in three configurations:

(a) the PyG-style baseline - the strongest loop a PyG user runs today
    (``benchmarks/_pyg_baseline.py``): ``NeighborLoader``'s hierarchical
    sampling (re-done in plain torch: ``NeighborLoader`` needs pyg-lib or
    torch-sparse, which do not install here), PyG's own
    ``torch_geometric.nn.models.GraphSAGE`` run hop-trimmed so each layer
    computes only the nodes the next one reads (``--baseline-trim dst``;
    ``layer`` is PyG's ``trim_to_layer`` through ``BasicGNN.forward``, which
    still computes the outermost hop at every layer: about 3x the compute
    per batch here), a ``torch.utils.data.DataLoader`` whose
    ``--baseline-workers`` workers sample and gather from a ``numpy.memmap``
    of the feature file, persistent. It runs with cold features (evicted
    around every gather: features larger than RAM) and, when the feature file
    fits in the RAM available, also with warm ones (the page cache kept: what
    a user whose features fit RAM gets); the faster of the two is the
    headline (a) every ratio is taken against, and the report names it.
(b) ``none`` - this trainer with ``--cache none``: every row from disk
    through the I/O scheduler (O_DIRECT), sampling and fetching pipelined.
(c) ``raw`` - this trainer with ``--cache raw`` at a budget of 10% of the
    feature bytes (device tier = the hottest 10% of rows; host budget 0 so
    the total stays 10%).

and reports epoch time, batches/s, bytes per tier and accuracy after the
same epochs (sampled evaluation with the training fanouts: the trainer's for
(b) and (c), the baseline's own over NeighborLoader-style subgraphs for
(a)). On a CPU the model's compute dominates an epoch and hides the data path, so it
also reports (d) loader-only throughput - batches/s of sampling + feature
fetching with no model - for (a)'s loader and this pipeline with ``none``,
``raw`` and ``raw`` split between device and host tiers, and the sampler
alone against (a)'s sampling.

Cold features (every configuration but (a)'s warm variant): the feature file
is evicted from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``,
targeted, so other people's page cache on a shared machine is left alone)
before every run. The generated
features (5 GiB at the default 10M nodes) fit in this machine's 24 GiB of RAM,
unlike the 57-187 GB the project targets, so a page-cache reader would be
warm after its first batches; to measure the regime of features much larger
than RAM, readers that go through the page cache (the cold baseline's
memmap, and this trainer's disk tier if O_DIRECT were unavailable) have the
file evicted again before every batch (the baseline also after its gather,
and the evictions' time is left out of its figures; ``_pyg_baseline``'s
docstring says how with workers). This trainer's disk tier reads with
O_DIRECT (the report records the mode), so it never benefits from the page
cache; its device/host tiers are its only caches and their budgets are
counted. The topology is pre-read into memory for every configuration before
timing.

The machine is shared with other people's jobs: times are medians of
epochs/repeats and still noisy; the byte counters are exact.

Usage::

    python benchmarks/epoch_time.py                 # 10M nodes, 2 epochs (~30-40 min)
    python benchmarks/epoch_time.py --quick         # 1M nodes, 1 epoch, few batches
    python benchmarks/epoch_time.py --baseline-workers 0 --baseline-features cold

The dataset (papers100M layout from :func:`refresh_store.synthetic.make_dataset`,
converted with :func:`refresh_store.convert.convert`) is cached under
``bench_cache/epoch_time/``. Results: ``--out`` (JSON) and the same name
with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _pyg_baseline as pyg_baseline  # noqa: E402
from _common import drop_cache, preload  # noqa: E402
from _reference_sampler import ReferenceNeighborSampler  # noqa: E402

from refresh_store.convert import convert  # noqa: E402
from refresh_store.store import Store, open_store  # noqa: E402
from refresh_store.synthetic import make_dataset  # noqa: E402
from refresh_train.config import EvalConfig, LoaderConfig, TierConfig, TrainConfig  # noqa: E402
from refresh_train.loader import BatchLoader  # noqa: E402
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches  # noqa: E402
from refresh_train.trainer import Trainer  # noqa: E402

CACHE_DIR = ROOT / "bench_cache" / "epoch_time"


# ----------------------------------------------------------------- helpers
def ensure_store(args: argparse.Namespace) -> Path:
    """Generate and convert the benchmark dataset once; reuse it afterwards."""
    key = f"papers_n{args.nodes}_deg{args.avg_degree:g}_c{args.classes}_l{args.labelled:g}_s{args.seed}"
    cache_dir = Path(args.data_dir)
    dst = cache_dir / key / "store"
    if (dst / "zarr.json").exists():
        try:
            open_store(dst)
            return dst
        except Exception:  # a damaged cache: rebuild it
            shutil.rmtree(dst, ignore_errors=True)
    src_root = cache_dir / key / "src"
    print(f"generating {args.nodes:,} nodes into {src_root} ...", flush=True)
    t0 = time.perf_counter()
    src = make_dataset(
        "papers100m",
        args.nodes,
        src_root,
        seed=args.seed,
        num_classes=args.classes,
        avg_degree=args.avg_degree,
        labelled_fraction=args.labelled,
        progress=False,
        overwrite=True,
    )
    print(f"  generated in {time.perf_counter() - t0:.0f} s; converting ...", flush=True)
    t0 = time.perf_counter()
    convert(src, dst, progress=False, overwrite=True)
    print(f"  converted in {time.perf_counter() - t0:.0f} s", flush=True)
    shutil.rmtree(src_root, ignore_errors=True)  # the store is all we read
    return dst


def neighbor_loader_available() -> bool:
    """Whether PyG's NeighborLoader can sample here (needs pyg-lib or torch-sparse)."""
    try:
        import torch_geometric.typing as pyg_typing

        return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)
    except Exception:
        return False


# ---------------------------------------------------------------- baseline
def features_fit_in_ram(store: Store) -> bool:
    """Whether the feature file, with (a)'s in-RAM topology, fits in half the RAM available now.

    Half, so the trainer's own buffers, the workers and other people's jobs
    on a shared machine keep room: a warm baseline that the page cache
    cannot hold would quietly turn cold.
    """
    feature_bytes = store.num_nodes * store.region("features").row_bytes
    topology_bytes = 8 * (store.num_nodes + 1 + store.num_edges)  # int64 CSC copy
    return feature_bytes + topology_bytes <= psutil.virtual_memory().available // 2


def baseline_modes(store: Store, args: argparse.Namespace) -> list[str]:
    """Feature modes (a) runs: ``--baseline-features``, ``auto`` = both when they fit in RAM."""
    if args.baseline_features == "auto":
        return ["warm", "cold"] if features_fit_in_ram(store) else ["cold"]
    if args.baseline_features == "both":
        return ["warm", "cold"]
    return [args.baseline_features]


def baseline_name(features: str) -> str:
    return f"(a) PyG baseline, {features} features"


def train_baseline(store: Store, args: argparse.Namespace, features: str) -> list[dict[str, Any]]:
    """(a)'s training epochs (``_pyg_baseline.train_pyg_baseline``), recorded like the trainer's."""
    return pyg_baseline.train_pyg_baseline(
        store,
        fanouts=args.fanouts,
        batch_size=args.batch_size,
        hidden=args.hidden,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        model="sage",
        trim=args.baseline_trim,
        num_workers=args.baseline_workers,
        features=features,
        max_batches=args.max_batches,
        device=args.device,
        eval_batch_size=args.eval_batch_size,
        log=lambda line: print(line, flush=True),
    )


# ------------------------------------------------------------ this trainer
def trainer_config(
    store_path: Path, cache: str, args: argparse.Namespace, **tiers: Any
) -> TrainConfig:
    return TrainConfig(
        store=str(store_path),
        model="sage",
        layers=len(args.fanouts),
        hidden=args.hidden,
        fanouts=tuple(args.fanouts),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        dropout=0.5,
        seed=args.seed,
        tiers=TierConfig(cache=cache, **tiers),
        loader=LoaderConfig(prefetch_batches=args.prefetch),
        eval=EvalConfig(mode="sampled", batch_size=args.eval_batch_size, every_epochs=args.epochs),
        device=args.device,
        progress=False,
    )


def _make_cold(trainer: Trainer) -> str:
    """Evict features now, and before every batch unless the disk tier bypasses the cache."""
    path = trainer.store.region("features").path
    drop_cache(path)
    io_mode = trainer.cache.describe()["io_mode"]
    if io_mode != "direct":

        def evicting(hook):  # fetch and stage both read the feature file
            def run(arg):
                drop_cache(path)
                return hook(arg)

            return run

        trainer.cache.fetch = evicting(trainer.cache.fetch)  # type: ignore[method-assign]
        trainer.cache.stage = evicting(trainer.cache.stage)  # type: ignore[method-assign]
    return io_mode


def train_ours(store_path: Path, cache: str, args: argparse.Namespace, **tiers: Any):
    cfg = trainer_config(store_path, cache, args, **tiers)
    with Trainer(cfg) as trainer:
        io_mode = _make_cold(trainer)
        if args.max_batches:
            make = trainer.make_loader

            def limited(epoch: int) -> BatchLoader:
                full = make(epoch)
                n = args.max_batches
                return trainer.loader(full.seed_batches[:n], full.batch_seeds[:n])

            trainer.make_loader = limited  # type: ignore[method-assign]
        records = trainer.run()
        return records, trainer.cache.describe(), io_mode


# ------------------------------------------------------------- loader only
def loader_pass_batches(store: Store, args: argparse.Namespace, rep: int) -> list[np.ndarray]:
    """Seed batches of loader pass ``rep``: the first batches of epoch ``rep``.

    Each pass takes other batches, so a host tier that persists across passes
    (as it does across epochs) cannot serve a repeat of the batches it just saw.
    """
    parts = list(epoch_batches(store.train_idx, args.batch_size, args.seed, rep))
    return parts[: args.loader_batches]


def loader_only_baseline(store: Store, args: argparse.Namespace, features: str) -> dict[str, Any]:
    """(a)'s loader (sampling + gather, no model): same passes as :func:`loader_only_ours`."""
    return pyg_baseline.loader_only_pyg_baseline(
        store,
        fanouts=args.fanouts,
        batch_size=args.batch_size,
        seed=args.seed,
        num_workers=args.baseline_workers,
        features=features,
        batches=args.loader_batches,
        passes=args.repeats,
        device=args.device,
    )


def loader_only_ours(store_path: Path, cache: str, args: argparse.Namespace, **tiers: Any):
    cfg = trainer_config(store_path, cache, args, **tiers)
    rates, stats = [], {}
    with Trainer(cfg) as trainer:
        io_mode = _make_cold(trainer)
        for rep in range(args.repeats):
            parts = loader_pass_batches(trainer.store, args, rep)
            seeds = [batch_seed(rep, i) for i in range(len(parts))]
            drop_cache(trainer.store.region("features").path)
            trainer.cache.reset_stats()
            loader = trainer.loader(parts, seeds)
            t0 = time.perf_counter()
            for _batch in loader:
                pass
            if cfg.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates.append(len(parts) / (time.perf_counter() - t0))
            stats = trainer.cache.stats()
    return {
        "batches": len(parts),
        "batches_per_s": statistics.median(rates),
        "runs": rates,
        "io_mode": io_mode,
        "rows_device": stats["rows_device"],
        "rows_host": stats["rows_host"],
        "rows_disk": stats["rows_disk"],
        "disk_bytes_read": stats["disk_bytes_read"],
        "disk_reads": stats["disk_reads"],
    }


def sampler_only(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    parts = list(epoch_batches(store.train_idx, args.batch_size, args.seed, 0))[
        : args.sampler_batches
    ]
    # As the trainer builds it: the topology copied into RAM when it fits, like (a)'s tensors.
    ours = NeighborSampler(
        store.indptr, store.indices, list(args.fanouts), seed=args.seed, in_memory="auto"
    )
    # (a)'s sampler (NeighborLoader semantics: each node expanded once, so it
    # samples fewer edges than the MFG samplers), and the MFG stand-in that
    # re-samples every block's destinations as this trainer's sampler does.
    hier = pyg_baseline.HierarchicalSampler(
        store.indptr, store.indices, list(args.fanouts), seed=args.seed
    )
    ref = ReferenceNeighborSampler(store.indptr, store.indices, list(args.fanouts), seed=args.seed)
    out = {}
    for name, sampler in (("ours", ours), ("baseline", hier), ("mfg_reference", ref)):
        sampler.sample(parts[0], batch_seed(0, 0))  # warm-up (compiled kernels, allocator)
        times = []
        for i, seeds in enumerate(parts):
            t0 = time.perf_counter()
            sampler.sample(seeds, batch_seed(0, i))
            times.append(time.perf_counter() - t0)
        out[f"{name}_s_per_batch"] = statistics.median(times)
    out["speedup"] = out["baseline_s_per_batch"] / out["ours_s_per_batch"]
    out["batches"] = len(parts)
    return out


# ------------------------------------------------------------------ report
def _median(records: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in records)


def summarize(name: str, what: str, records: list[dict[str, Any]], extra: dict[str, Any]) -> dict:
    last = records[-1]
    return {
        "config": name,
        "what": what,
        "epochs": len(records),
        "epoch_time_s": [r["epoch_time_s"] for r in records],
        "epoch_time_median_s": _median(records, "epoch_time_s"),
        "batches_per_s_median": _median(records, "batches_per_s"),
        "sample_s_median": _median(records, "sample_s"),
        # Getting the features: staging the lookahead windows plus fetching.
        "fetch_s_median": statistics.median(r["fetch_s"] + r.get("stage_s", 0.0) for r in records),
        "compute_s_median": _median(records, "compute_s"),
        "bytes_device": last["bytes_device"],
        "bytes_host": last["bytes_host"],
        "bytes_disk": last["bytes_disk"],
        "disk_bytes_read": last.get("disk_bytes_read"),
        "train_loss": last["train_loss"],
        "valid_acc": last["valid_acc"],
        "test_acc": last["test_acc"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in records),
        "records": records,
        **extra,
    }


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    d = result["dataset"]
    lines = [
        "# Epoch time: out-of-core training from SSD",
        "",
        f"Machine: {m['cpus']} CPUs, {m['ram_gib']:.0f} GiB RAM, {m['platform']}, torch "
        f"{m['torch']}, models on {m.get('device', 'cpu')}, shared with other jobs (load average {m['load_start']} at start, "
        f"{m['load_end']} at the end): times are medians and noisy, byte counts are exact.",
        f"Dataset: synthetic papers100M layout, {d['num_nodes']:,} nodes, {d['num_edges']:,} "
        f"edges, {d['feature_dim']} x {d['dtype']} features ({_gib(d['feature_bytes'])} GiB), "
        f"{d['num_classes']} classes, {d['train']:,} train / {d['valid']:,} valid / "
        f"{d['test']:,} test nodes.",
        f"Model: GraphSAGE, {result['params']['layers']} layers, hidden {result['params']['hidden']}, "
        f"fanouts {result['params']['fanouts']}, batch {result['params']['batch_size']}, "
        f"lr {result['params']['lr']}, seed {result['params']['seed']}"
        + (
            f", {result['params']['epochs']} epoch(s) of training."
            if result.get("training")
            else " (loader-only run: no training)."
        ),
        f"Baseline (a): {result['baseline_kind']}. Headline (a), the faster variant, which "
        f"every ratio to (a) is taken against: **{_headline_text(result)}**.",
        "",
    ]
    if result.get("training"):
        lines += [
            "## Training epochs",
            "",
            "| config | epoch s (median) | batches/s | sample s | fetch s | compute s | "
            "device GiB | host GiB | disk GiB | disk read GiB | valid % | test % | vs (a) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base_t = _headline(result, "training")["epoch_time_median_s"]
        for r in result["training"]:
            lines.append(
                f"| {r['config']} | {r['epoch_time_median_s']:.1f} | "
                f"{r['batches_per_s_median']:.3f} | {r['sample_s_median']:.1f} | "
                f"{r['fetch_s_median']:.1f} | {r['compute_s_median']:.1f} | "
                f"{_gib(r['bytes_device'])} | {_gib(r['bytes_host'])} | {_gib(r['bytes_disk'])} | "
                f"{_gib(r['disk_bytes_read'])} | {_pct(r['valid_acc'])} | {_pct(r['test_acc'])} | "
                f"{base_t / r['epoch_time_median_s']:.2f}x |"
            )
        a_rec = _headline(result, "training")["records"][-1]
        lines += [
            "",
            "sample/fetch seconds are busy times of background stages that overlap with "
            "compute: (b) and (c)'s loader threads, (a)'s DataLoader workers "
            f"({a_rec['num_workers']} here; with 0 workers (a) runs them in line). (a) with "
            "warm features gathers from the page cache (counted as host GiB; the whole "
            "feature file stays cached there, "
            f"{_gib(result['dataset']['feature_bytes'])} GiB of RAM that (b) and (c) do not "
            "use), with cold features from disk; its evictions are left out of its times. "
            "(a)'s accuracies come from its own sampled evaluation (NeighborLoader-style "
            "subgraphs, same fanouts), (b)'s and (c)'s from the trainer's.",
            "",
        ]
    la = TierConfig()
    lines += [
        f"(c) and the split configuration use the trainer's default lookahead windows: the "
        f"disk rows of up to {la.lookahead_batches} upcoming batches read in one pass, at most "
        f"{_gib(la.lookahead_budget_bytes)} GiB per window and two windows at a time "
        "(`--lookahead`, `--lookahead-budget`); (b) `--cache none` reads each batch alone.",
        "",
    ]
    lo = result["loader_only"]
    lines += [
        "## Loader only (sampling + fetching, no model)",
        "",
        "Cold features for every loader but (a)'s warm variant. "
        f"{next(iter(lo.values()))['batches']} batches per pass, "
        f"{len(next(iter(lo.values()))['runs'])} "
        "passes each (pass p takes the first batches of epoch p, so a host tier kept across "
        "passes meets new batches); the spread of the passes shows how much the shared "
        "machine moved them.",
        "",
        "| loader | batches/s (median) | passes | vs (a) | rows device / host / disk | "
        "disk read GiB per pass | disk reads per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    base_rate = _headline(result, "loader_only")["batches_per_s"]
    none = lo.get("(b) none", {})
    if "rows_disk" in none:
        per_batch = (none["rows_device"] + none["rows_host"] + none["rows_disk"]) / none["batches"]
        lines[-3:-3] = [
            "",
            f"A batch needs {per_batch:,.0f} distinct rows on average, "
            f"{100 * per_batch / d['num_nodes']:.2f} % of all rows: the fraction that decides "
            "how much of the file block-granular reads touch (a batch of 1024 with fanouts "
            "15,10,5 samples at most 1024 x (1 + 15 + 150 + 750) positions, under 0.85 % "
            "of ogbn-papers100M's 111M rows).",
        ]
    for name, r in lo.items():
        runs = ", ".join(f"{x:.3f}" for x in r["runs"])
        rows = (
            "-"
            if "rows_disk" not in r
            else f"{r['rows_device']:,} / {r['rows_host']:,} / {r['rows_disk']:,}"
        )
        reads = "-" if "disk_reads" not in r else f"{r['disk_reads'] / r['batches']:,.0f}"
        lines.append(
            f"| {name} | {r['batches_per_s']:.3f} | {runs} | {r['batches_per_s'] / base_rate:.2f}x "
            f"| {rows} | {_gib(r.get('disk_bytes_read'))} | {reads} |"
        )
    lines += [
        "",
        "`disk read` is what the I/O scheduler asked of the file, alignment and coalescing "
        "included; `disk` (rows x row size) is what the batches needed. When a batch needs a "
        "large fraction of the rows, coalescing reads most of the file per batch.",
    ]
    s = result["sampler_only"]
    lines += [
        "",
        "## Sampler alone",
        "",
        f"Median per batch: this sampler {1000 * s['ours_s_per_batch']:.0f} ms, (a)'s "
        f"(NeighborLoader semantics, each node expanded once) "
        f"{1000 * s['baseline_s_per_batch']:.0f} ms: **{s['speedup']:.1f}x**. The plain-torch "
        "MFG sampler that re-samples every block's destinations, as this one does: "
        f"{1000 * s['mfg_reference_s_per_batch']:.0f} ms.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    lines.append("")
    return "\n".join(lines)


def _headline(result: dict[str, Any], part: str) -> dict[str, Any]:
    """(a)'s headline entry of ``part`` ("training" or "loader_only")."""
    name = result["baseline_headline"][part]
    if part == "training":
        return next(r for r in result["training"] if r["config"] == name)
    return result["loader_only"][name]


def _headline_text(result: dict[str, Any]) -> str:
    return "; ".join(f"{part}: {name}" for part, name in result["baseline_headline"].items())


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    tr = {r["config"]: r for r in result.get("training", [])}
    if "training" in result["baseline_headline"] and "(c) raw 10%" in tr:
        a, c = _headline(result, "training"), tr["(c) raw 10%"]
        speed = a["epoch_time_median_s"] / c["epoch_time_median_s"]
        gap = None if a["test_acc"] is None else abs(a["test_acc"] - c["test_acc"]) * 100
        out.append(
            {
                "target": "(c) epoch >= 3x faster than (a)",
                "measured": f"{speed:.2f}x",
                "met": speed >= 3,
            }
        )
        out.append(
            {
                "target": "accuracy of (c) within 0.5 points of (a) (test)",
                "measured": "-" if gap is None else f"{gap:.2f} points",
                "met": gap is not None and gap <= 0.5,
            }
        )
    lo = result["loader_only"]
    speed = lo["(c) raw 10%"]["batches_per_s"] / _headline(result, "loader_only")["batches_per_s"]
    out.append(
        {"target": "loader-only (c) >= 5x (a)", "measured": f"{speed:.2f}x", "met": speed >= 5}
    )
    s = result["sampler_only"]["speedup"]
    out.append({"target": "sampler >= 3x (a)'s sampling", "measured": f"{s:.1f}x", "met": s >= 3})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10_000_000)
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--labelled", type=float, default=0.0032, help="fraction of nodes in a split")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--eval-batch-size", type=int, default=2048)
    p.add_argument("--cache-fraction", type=float, default=0.10)
    p.add_argument("--max-batches", type=int, default=0, help="cap batches per epoch (0 = all)")
    p.add_argument("--loader-batches", type=int, default=12)
    p.add_argument("--sampler-batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-training", action="store_true", help="only (d) and the sampler")
    p.add_argument(
        "--baseline-workers",
        type=int,
        default=pyg_baseline.DEFAULT_NUM_WORKERS,
        help="DataLoader workers of (a) (default: the fastest measured on 2 cores)",
    )
    p.add_argument(
        "--baseline-trim",
        choices=pyg_baseline.TRIM_MODES,
        default="dst",
        help="how (a)'s model skips work (see benchmarks/_pyg_baseline.py; default: the strongest)",
    )
    p.add_argument(
        "--baseline-features",
        choices=("auto", "both", "warm", "cold"),
        default="auto",
        help="(a)'s feature modes; auto = warm and cold when the features fit in RAM, else cold",
    )
    p.add_argument("--quick", action="store_true", help="1M nodes, 1 epoch of 4 batches")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where every model runs")
    p.add_argument("--data-dir", default=str(CACHE_DIR), help="where the generated store is cached")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "epoch_time.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.labelled, args.epochs = 1_000_000, 0.02, 1
        args.max_batches, args.loader_batches, args.sampler_batches, args.repeats = 4, 4, 3, 1
    args.fanouts = [int(f) for f in args.fanouts.split(",")]

    load_start = os.getloadavg()
    store_path = ensure_store(args)
    store = open_store(store_path)
    preload((store.indptr, store.indices))  # no configuration pays first reads
    region = store.region("features")
    feature_bytes = store.num_nodes * region.row_bytes
    budget = int(args.cache_fraction * feature_bytes)
    modes = baseline_modes(store, args)
    baseline_kind = pyg_baseline.describe(
        model="sage",
        trim=args.baseline_trim,
        num_workers=args.baseline_workers,
        features=" and ".join(modes),
    )["baseline"] + (
        " (NeighborLoader itself is importable here but not used, so the sampler is the same "
        "everywhere)"
        if neighbor_loader_available()
        else " (NeighborLoader itself needs pyg-lib or torch-sparse, not importable here)"
    )
    torch.manual_seed(args.seed)
    result: dict[str, Any] = {
        "benchmark": "epoch_time",
        "baseline_kind": baseline_kind,
        "params": {
            "layers": len(args.fanouts),
            "hidden": args.hidden,
            "fanouts": ",".join(map(str, args.fanouts)),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "epochs": args.epochs,
            "seed": args.seed,
            "prefetch_batches": args.prefetch,
            "cache_budget_bytes": budget,
            "max_batches": args.max_batches,
            "loader_batches": args.loader_batches,
            "repeats": args.repeats,
            "baseline_workers": args.baseline_workers,
            "baseline_trim": args.baseline_trim,
            "baseline_features": modes,
        },
        "dataset": {
            "num_nodes": store.num_nodes,
            "num_edges": store.num_edges,
            "feature_dim": store.feature_dim,
            "dtype": str(store.dtype),
            "feature_bytes": feature_bytes,
            "num_classes": store.num_classes,
            "train": len(store.train_idx),
            "valid": len(store.valid_idx),
            "test": len(store.test_idx),
        },
    }
    raw_tiers = {"cache_budget_bytes": budget, "host_budget_bytes": 0}
    split_tiers = {"cache_budget_bytes": budget // 2, "host_budget_bytes": budget // 2}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")

    def checkpoint() -> None:  # what a run cut short (a time limit) still leaves behind
        partial.write_text(json.dumps(result, indent=1, default=str) + "\n")

    print("sampler alone ...", flush=True)
    result["sampler_only"] = sampler_only(store, args)
    checkpoint()
    print("loader only ...", flush=True)
    lo: dict[str, Any] = {}
    result["loader_only"] = lo
    for features in modes:
        checkpoint()
        lo[baseline_name(features)] = loader_only_baseline(store, args, features)
    result["baseline_headline"] = {
        "loader_only": max(lo, key=lambda k: lo[k]["batches_per_s"]),
    }
    for name, cache, tiers in (
        ("(b) none", "none", {}),
        ("(c) raw 10%", "raw", raw_tiers),
        ("raw 5% device + 5% host (clock)", "raw", split_tiers),
    ):
        checkpoint()
        lo[name] = loader_only_ours(store_path, cache, args, **tiers)
    if not args.skip_training:
        training: list[dict[str, Any]] = []
        result["training"] = training
        for features in modes:
            checkpoint()
            print(f"training (a), {features} features ...", flush=True)
            a = train_baseline(store, args, features)
            training.append(summarize(baseline_name(features), a[-1]["baseline"], a, {}))
        result["baseline_headline"]["training"] = min(
            training, key=lambda r: r["epoch_time_median_s"]
        )["config"]
        for name, cache, tiers in (("(b) none", "none", {}), ("(c) raw 10%", "raw", raw_tiers)):
            checkpoint()
            print(f"training {name} ...", flush=True)
            records, described, io_mode = train_ours(store_path, cache, args, **tiers)
            training.append(
                summarize(name, f"this trainer, --cache {cache}", records, {"tiers": described})
            )
    result["machine"] = {
        "cpus": os.cpu_count(),
        "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "load_start": ", ".join(f"{x:.1f}" for x in load_start),
        "load_end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    result["targets"] = targets(result)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    partial.unlink(missing_ok=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
