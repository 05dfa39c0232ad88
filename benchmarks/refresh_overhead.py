"""What ``--cache refresh`` adds to a batch besides the rows it saves, piece by piece.

The refresh mode's loader does work that ``raw`` does not: with the automatic
budget split it samples each batch a second time without pruning, ranks the
rows a table would spare (:func:`~refresh_train.history.cover.uncovered_rank`)
and counts, per candidate split, the rows it would fetch
(:meth:`~refresh_train.modes.RefreshCache._count_candidates`). This times
each step on the memory-access benchmark's ``papers`` graph (the same
store, batch 128, fanouts 15,10,5, 10 % budget), the candidate counting
both in one pass and as one pass per candidate (how it was counted before),
and, for scale, the training step's CPU dropout on layer 1's hidden rows
against a multiply of the same tensor.

Medians per batch over ``--repeats`` passes of ``--batches`` batches; the
machine is shared, so compare only figures of one run.

Usage::

    python benchmarks/refresh_overhead.py            # the 2M-node papers graph
    python benchmarks/refresh_overhead.py --quick    # 200K nodes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import memory_access as ma  # noqa: E402
from _common import ensure_store, save_results  # noqa: E402

from refresh_train.history import SplitCounters  # noqa: E402
from refresh_train.history.cover import uncovered_rank  # noqa: E402
from refresh_train.sampler import batch_seed, epoch_batches  # noqa: E402
from refresh_train.trainer import Trainer  # noqa: E402


def count_per_candidate(cache: Any, rows: np.ndarray, rank: np.ndarray, split: Any) -> None:
    """The candidate counts as they were taken before: one pass over the rows per candidate."""
    n = cache.split.grid + 1
    for i, k in enumerate(cache._cand_k):
        beyond = rows >= k
        split.noprune[i] += int(np.count_nonzero(beyond))
        split.covered[i] += np.bincount(cache._band(rank[beyond]), minlength=n + 1)[:n]


def _median_ms(fn: Callable[[int], Any], batches: int, repeats: int) -> float:
    fn(0)  # compile and warm
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(batches):
            fn(i)
        passes.append((time.perf_counter() - t0) / batches * 1e3)
    return statistics.median(passes)


def measure(store_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cfg = ma.run_config(store_path, mode="refresh", budget_frac=0.10, seed=0, model="sage",
                        args=args)  # fmt: skip
    with Trainer(cfg) as trainer:
        cache = trainer.cache
        sampler = trainer.sampler
        parts = list(epoch_batches(trainer.store.train_idx, args.batch_size, 0, 0))
        parts = parts[: args.batches]
        seeds = [np.asarray(p) for p in parts]
        full = [sampler.sample(s, batch_seed(0, i)) for i, s in enumerate(seeds)]
        ranks = [uncovered_rank(b, len(s), cache.hist_layers, slots=cache.order.slots)
                 for b, s in zip(full, seeds)]  # fmt: skip
        rows = [b.input_nodes.numpy() for b in full]
        counters = cache._split_counters()
        n = len(seeds)
        torch.manual_seed(0)
        hidden = [torch.randn(len(b.layer_nodes[1]), args.hidden) for b in full]
        timed = {
            "sample, unpruned": lambda i: sampler.sample(seeds[i % n], batch_seed(0, i % n)),
            "uncovered_rank": lambda i: uncovered_rank(
                full[i % n], len(seeds[i % n]), cache.hist_layers, slots=cache.order.slots
            ),
            "count candidates, one pass per candidate (before)": lambda i: count_per_candidate(
                cache, rows[i % n], ranks[i % n], counters
            ),
            "count candidates, one pass (now)": lambda i: cache._count_candidates(
                rows[i % n], ranks[i % n], counters
            ),
            "dropout on layer 1's hidden rows (training step)": lambda i: F.dropout(
                hidden[i % n], p=0.5, training=True
            ),
            "multiply of the same tensor (scale)": lambda i: hidden[i % n] * 2.0,
        }
        # The two ways of counting must agree before either is timed.
        a = SplitCounters(cache.split.grid, counters.band_nodes, 200, 2, 0.9)
        b = SplitCounters(cache.split.grid, counters.band_nodes, 200, 2, 0.9)
        for r, k in zip(rows, ranks):
            count_per_candidate(cache, r, k, a)
            cache._count_candidates(r, k, b)
        if not (np.array_equal(a.noprune, b.noprune) and np.array_equal(a.covered, b.covered)):
            raise SystemExit(
                "error: the one-pass candidate counts differ from the per-candidate ones"
            )
        ms = {name: _median_ms(fn, args.batches, args.repeats) for name, fn in timed.items()}
        return {
            "input_rows_per_batch": statistics.mean(len(r) for r in rows),
            "layer1_rows_per_batch": statistics.mean(len(h) for h in hidden),
            "candidates": cache.split.grid + 1,
            "ms_per_batch": ms,
        }


def markdown(result: dict[str, Any]) -> str:
    m = result["ms_per_batch"]
    before = m["count candidates, one pass per candidate (before)"]
    now = m["count candidates, one pass (now)"]
    lines = [
        "# Refresh's extra loader work per batch",
        "",
        f"Machine: {result['machine']}; load average {result['load']}. {result['settings']}.",
        f"A batch has {result['input_rows_per_batch']:,.0f} input rows and "
        f"{result['layer1_rows_per_batch']:,.0f} rows at layer 1; "
        f"{result['candidates']} candidate splits.",
        "",
        "| step | ms per batch (median) |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {v:.2f} |" for name, v in m.items()]
    lines += ["", f"Counting in one pass: {before / now:.1f}x faster than one pass per candidate."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="the 200K-node papers graph")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--papers-nodes", type=int, default=2_000_000)
    p.add_argument("--data-dir", default=str(ma.CACHE_DIR))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refresh_overhead.json"))
    args = p.parse_args(argv)
    if args.batches < 1 or args.repeats < 1:
        print("error: --batches and --repeats must be at least 1", file=sys.stderr)
        return 2
    args.products_nodes, args.epochs, args.lr, args.device = 0, 1, 0.003, "cpu"
    spec = ma.dataset_specs(args)["papers"]
    store = ensure_store("papers", spec, Path(args.data_dir))
    result = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "settings": f"papers {spec['nodes']:,} nodes, batch {args.batch_size}, fanouts "
        f"15,10,5, refresh at 10 %, hidden {args.hidden}, {args.batches} batches x "
        f"{args.repeats} passes",
        **measure(store, args),
    }
    result["load"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    save_results(Path(args.out), result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
