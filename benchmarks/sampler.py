"""Sampler-alone throughput: ReFresh's Numba sampler vs the plain-torch baseline.

One command::

    python benchmarks/sampler.py            # 1M nodes, ~15M edges, fanouts 15,10,5, batch 1024

builds (once, cached under ``bench_cache/``) a power-law graph in the store's
CSC layout, opens it with ``np.memmap`` as the trainer does, and times
``sample()`` per batch for

* ``reference``: :class:`refresh_train._reference_sampler.ReferenceNeighborSampler`,
  the plain-torch re-implementation of PyG ``NeighborLoader``'s uniform
  sampling. ``NeighborLoader`` itself samples through pyg-lib or
  torch-sparse, which do not install here; the report records whether either
  was importable, and this script always times the stand-in;
* ``numba``: :class:`refresh_train.sampler.NeighborSampler` with 1 and 2 threads.

Every sampler sees the same seed batches (an epoch of a random 10% train split).
Reported: median and quartiles of ms per batch over the timed batches (after
warm-up batches that include JIT compilation), batches/s from the median, and
the mean sampled nodes/edges per batch (equal work check). The machine is
shared, so timings are noisy: medians are what to read.

Graph: undirected Chung-Lu with popularity ``(rank + 10) ** -skew`` for both
endpoints, stored in both directions (so E counts directed entries), ids in
descending expected degree (like the store's degree reordering), int32
indices.

Writes ``benchmarks/results/sampler.json`` and ``benchmarks/results/sampler.md``.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh_train._reference_sampler import ReferenceNeighborSampler  # noqa: E402
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches  # noqa: E402


def build_graph(cache: Path, nodes: int, edges: int, skew: float, seed: int) -> tuple[Path, Path]:
    """Write (once) ``indptr.npy`` (int64) and ``indices.npy`` (int32) under ``cache``."""
    d = cache / f"sampler_graph_n{nodes}_e{edges}_s{skew}_seed{seed}"
    ip, ix = d / "indptr.npy", d / "indices.npy"
    if ip.exists() and ix.exists():
        return ip, ix
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = (np.arange(nodes, dtype=np.float64) + 10.0) ** -skew
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    pairs = edges // 2
    a = np.searchsorted(cdf, rng.random(pairs)).astype(np.int32)
    b = np.searchsorted(cdf, rng.random(pairs)).astype(np.int32)
    dst = np.concatenate([a, b])
    src = np.concatenate([b, a])
    del a, b
    order = np.argsort(dst, kind="stable")
    indices = src[order]
    counts = np.bincount(dst, minlength=nodes)
    indptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    for path, arr in ((ip, indptr), (ix, indices)):
        tmp = path.with_suffix(".partial.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    return ip, ix


def _pyg_native_available() -> bool:
    try:
        import torch_geometric.typing as t
    except ImportError:
        return False
    return bool(t.WITH_PYG_LIB or t.WITH_TORCH_SPARSE)


def time_sampler(sample, batches: list[np.ndarray], warmup: int) -> dict:
    for i in range(warmup):
        sample(batches[i % len(batches)], batch_seed(99, i))
    times, nodes, edges = [], [], []
    for i, seeds in enumerate(batches):
        t0 = time.perf_counter()
        mb = sample(seeds, batch_seed(0, i))
        times.append(time.perf_counter() - t0)
        nodes.append(sum(int(t.numel()) for t in mb.layer_nodes))
        edges.append(sum(b.num_edges for b in mb.blocks))
    q = statistics.quantiles(times, n=4)
    med = statistics.median(times)
    return {
        "ms_per_batch_median": 1e3 * med,
        "ms_per_batch_q1": 1e3 * q[0],
        "ms_per_batch_q3": 1e3 * q[2],
        "batches_per_s": 1.0 / med,
        "mean_nodes_per_batch": float(np.mean(nodes)),
        "mean_edges_per_batch": float(np.mean(edges)),
        "timed_batches": len(times),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--edges", type=int, default=15_000_000, help="directed CSC entries")
    p.add_argument("--skew", type=float, default=0.8)
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=40, help="timed batches per sampler")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "bench_cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampler")
    args = p.parse_args(argv)
    fanouts = [int(f) for f in args.fanouts.split(",")]

    t0 = time.perf_counter()
    ip_path, ix_path = build_graph(args.cache_dir, args.nodes, args.edges, args.skew, args.seed)
    build_s = time.perf_counter() - t0
    indptr = np.load(ip_path, mmap_mode="r", allow_pickle=False)
    indices = np.load(ix_path, mmap_mode="r", allow_pickle=False)
    deg = np.diff(indptr)

    rng = np.random.default_rng(args.seed)
    train_idx = np.sort(rng.choice(args.nodes, size=args.nodes // 10, replace=False))
    batches = list(epoch_batches(train_idx, args.batch_size, args.seed, 0, drop_last=True))
    batches = batches[: args.batches]

    results = {}
    ref = ReferenceNeighborSampler(indptr, indices, fanouts, seed=args.seed)
    results["reference (plain torch, PyG NeighborLoader stand-in)"] = time_sampler(
        ref.sample, batches, args.warmup
    )
    for threads in (1, 2):
        s = NeighborSampler(indptr, indices, fanouts, seed=args.seed, num_threads=threads)
        results[f"numba, {threads} thread{'s' if threads > 1 else ''}"] = time_sampler(
            s.sample, batches, args.warmup
        )
        s.close()
    base = results["reference (plain torch, PyG NeighborLoader stand-in)"]["ms_per_batch_median"]
    for r in results.values():
        r["speedup_vs_reference"] = base / r["ms_per_batch_median"]

    report = {
        "benchmark": "sampler",
        "command": "python benchmarks/sampler.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "graph": {
            "nodes": args.nodes,
            "csc_entries": int(indptr[-1]),
            "skew": args.skew,
            "max_in_degree": int(deg.max()),
            "mean_in_degree": float(deg.mean()),
            "isolated_nodes": int((deg == 0).sum()),
            "indices_dtype": str(indices.dtype),
            "opened_as": "np.memmap (page cache warm)",
            "build_s": build_s,
        },
        "fanouts": fanouts,
        "batch_size": args.batch_size,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "pyg_native_sampling_available": _pyg_native_available(),
        "note": "shared machine; medians over timed batches, warm-up (incl. JIT) excluded",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Sampler alone, {args.nodes:,} nodes / {int(indptr[-1]):,} CSC entries (power law, max in-degree "
        f"{int(deg.max()):,}), fanouts {args.fanouts}, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, median of {len(batches)} batches.",
        "",
        "| sampler | ms/batch (median) | IQR | batches/s | nodes/batch | edges/batch | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['ms_per_batch_median']:.1f} | {r['ms_per_batch_q1']:.1f}–{r['ms_per_batch_q3']:.1f} "
            f"| {r['batches_per_s']:.1f} | {r['mean_nodes_per_batch']:,.0f} | {r['mean_edges_per_batch']:,.0f} "
            f"| {r['speedup_vs_reference']:.2f}x |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
