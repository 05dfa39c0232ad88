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
the process CPU time per batch, and the mean sampled nodes/edges per batch
(equal work check). The machine is shared, so wall times are noisy: read the
medians, and the CPU times, which other tenants' load barely moves.

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

import refresh_train.sampler as sampler_mod  # noqa: E402
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


def _timed(fn, torch_threads: int | None):
    """Wrap ``sample`` so it runs with the given torch intra-op thread count."""
    if torch_threads is None:
        return fn

    def run(seeds, bseed):
        before = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        try:
            return fn(seeds, bseed)
        finally:
            torch.set_num_threads(before)

    return run


def time_interleaved(samplers: dict, batches: list[np.ndarray], warmup: int) -> dict:
    """Time every sampler on every batch, rotating the order per batch so each
    sees the same background load (the machine is shared)."""
    names = list(samplers)
    for name in names:
        for i in range(warmup):
            samplers[name](batches[i % len(batches)], batch_seed(99, i))
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    nodes: dict[str, list[int]] = {n: [] for n in names}
    edges: dict[str, list[int]] = {n: [] for n in names}
    for i, seeds in enumerate(batches):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            c0, t0 = time.process_time(), time.perf_counter()
            mb = samplers[name](seeds, batch_seed(0, i))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            nodes[name].append(sum(int(t.numel()) for t in mb.layer_nodes))
            edges[name].append(sum(b.num_edges for b in mb.blocks))
    out = {}
    for name in names:
        q = statistics.quantiles(times[name], n=4)
        med = statistics.median(times[name])
        out[name] = {
            "ms_per_batch_median": 1e3 * med,
            "ms_per_batch_q1": 1e3 * q[0],
            "ms_per_batch_q3": 1e3 * q[2],
            "batches_per_s": 1.0 / med,
            "cpu_ms_per_batch_median": 1e3 * statistics.median(cpu[name]),
            "mean_nodes_per_batch": float(np.mean(nodes[name])),
            "mean_edges_per_batch": float(np.mean(edges[name])),
            "timed_batches": len(times[name]),
        }
    return out


def run_graph(args, fanouts: list[int], skew: float) -> dict:
    t0 = time.perf_counter()
    ip_path, ix_path = build_graph(args.cache_dir, args.nodes, args.edges, skew, args.seed)
    build_s = time.perf_counter() - t0
    indptr = np.load(ip_path, mmap_mode="r", allow_pickle=False)
    indices = np.load(ix_path, mmap_mode="r", allow_pickle=False)
    deg = np.diff(indptr)
    rng = np.random.default_rng(args.seed)
    train_idx = np.sort(rng.choice(args.nodes, size=args.nodes // 10, replace=False))
    batches = list(epoch_batches(train_idx, args.batch_size, args.seed, 0, drop_last=True))
    batches = batches[: args.batches]

    ref = ReferenceNeighborSampler(indptr, indices, fanouts, seed=args.seed)
    ours = {
        t: NeighborSampler(indptr, indices, fanouts, seed=args.seed, num_threads=t) for t in (1, 2)
    }
    saved = sampler_mod.DENSE_MAP_MAX_NODES
    sampler_mod.DENSE_MAP_MAX_NODES = 0
    hashed = NeighborSampler(indptr, indices, fanouts, seed=args.seed)
    sampler_mod.DENSE_MAP_MAX_NODES = saved
    samplers = {
        REF1: _timed(ref.sample, 1),
        REF2: _timed(ref.sample, 2),
        "numba, 1 thread": ours[1].sample,
        "numba, 2 threads": ours[2].sample,
        "numba, 1 thread, hash-table relabel": hashed.sample,
    }
    results = time_interleaved(samplers, batches, args.warmup)
    for s in ours.values():
        s.close()
    base = min(results[REF1]["ms_per_batch_median"], results[REF2]["ms_per_batch_median"])
    base_cpu = results[REF1]["cpu_ms_per_batch_median"]
    for r in results.values():
        r["speedup_vs_best_reference"] = base / r["ms_per_batch_median"]
        r["cpu_speedup_vs_reference_1_thread"] = base_cpu / r["cpu_ms_per_batch_median"]
    return {
        "graph": {
            "nodes": args.nodes,
            "csc_entries": int(indptr[-1]),
            "skew": skew,
            "max_in_degree": int(deg.max()),
            "mean_in_degree": float(deg.mean()),
            "median_in_degree": float(np.median(deg)),
            "isolated_nodes": int((deg == 0).sum()),
            "indices_dtype": str(indices.dtype),
            "opened_as": "np.memmap (page cache warm)",
            "build_s": build_s,
        },
        "timed_batches": len(batches),
        "results": results,
    }


REF1 = "reference (plain torch, NeighborLoader stand-in), 1 torch thread"
REF2 = "reference (plain torch, NeighborLoader stand-in), 2 torch threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--edges", type=int, default=15_000_000, help="directed CSC entries")
    p.add_argument(
        "--skews",
        default="0.5,0.8",
        help="popularity exponents, one graph each (larger = more skewed)",
    )
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=30, help="timed batches per sampler")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "bench_cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sampler")
    args = p.parse_args(argv)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    skews = [float(s) for s in args.skews.split(",")]

    graphs = [run_graph(args, fanouts, skew) for skew in skews]
    report = {
        "benchmark": "sampler",
        "command": "python benchmarks/sampler.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "fanouts": fanouts,
        "batch_size": args.batch_size,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "pyg_native_sampling_available": _pyg_native_available(),
        "note": "shared machine: samplers interleaved per batch, medians reported, warm-up (incl. JIT) excluded",
        "graphs": graphs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Sampler alone: fanouts {args.fanouts}, batch {args.batch_size}, topology opened with np.memmap "
        f"(warm page cache), {os.cpu_count()} shared CPUs (load average at end "
        f"{os.getloadavg()[0]:.1f}); samplers interleaved per batch, median of {graphs[0]['timed_batches']} "
        "batches. Wall speed-up is against the faster reference configuration. "
        "CPU ms is the process's CPU time per batch (all its threads): robust to other "
        "tenants' load, and for the 1-thread rows what a quiet machine's wall time would be.",
    ]
    for g in graphs:
        gi = g["graph"]
        lines += [
            "",
            f"**{gi['nodes']:,} nodes, {gi['csc_entries']:,} CSC entries, skew {gi['skew']}** "
            f"(in-degree median {gi['median_in_degree']:.0f}, max {gi['max_in_degree']:,})",
            "",
            "| sampler | wall ms/batch (median) | IQR | batches/s | speed-up (wall) "
            "| CPU ms/batch (median) | speed-up (CPU) | nodes/batch | edges/batch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in g["results"].items():
            lines.append(
                f"| {name} | {r['ms_per_batch_median']:.1f} "
                f"| {r['ms_per_batch_q1']:.1f}–{r['ms_per_batch_q3']:.1f} "
                f"| {r['batches_per_s']:.1f} | {r['speedup_vs_best_reference']:.2f}x "
                f"| {r['cpu_ms_per_batch_median']:.1f} | {r['cpu_speedup_vs_reference_1_thread']:.2f}x "
                f"| {r['mean_nodes_per_batch']:,.0f} | {r['mean_edges_per_batch']:,.0f} |"
            )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
