"""Sampler-alone throughput: ReFresh's Numba sampler vs the plain-torch baseline.

One command::

    python benchmarks/sampler.py            # the epoch benchmark's 10M-node store + two 1M-node graphs

times ``sample()`` per batch (fanouts 15,10,5, batch 1024) on

* the store of ``benchmarks/epoch_time.py`` (10M nodes, ~200M CSC entries,
  ``--store``; used when it exists under ``bench_cache/epoch_time/``, which
  that benchmark creates), opened with ``open_store`` and its topology read
  once through the same memmaps beforehand (warm page cache), as the epoch
  benchmark does; seeds are its ``train_idx``;
* power-law graphs built once under ``bench_cache/`` (1M nodes, ~15M CSC
  entries, one per ``--skews`` value), opened with ``np.memmap``; seeds an
  epoch of a random 10% train split.

Samplers, interleaved per batch:

* ``reference``: :class:`_reference_sampler.ReferenceNeighborSampler` (``benchmarks/_reference_sampler.py``),
  the plain-torch re-implementation of PyG ``NeighborLoader``'s uniform
  sampling (1 and 2 torch threads). ``NeighborLoader`` itself samples through
  pyg-lib or torch-sparse, which do not install here; the report records
  whether either was importable, and this script always times the stand-in;
* ``numba``: :class:`refresh_train.sampler.NeighborSampler` with 1 and 2
  threads reading the topology in place, the same with ``in_memory=True``
  (topology copied into RAM, as the reference also holds it), and with the
  hash-table relabelling that graphs above ``DENSE_MAP_MAX_NODES`` use.

Reported: median and quartiles of ms per batch over the timed batches (after
warm-up batches that include JIT compilation), batches/s from the median, the
process CPU time per batch, and the mean sampled nodes/edges per batch (equal
work check). A second pass (not timed against the reference) splits the
Numba sampler's time per phase by wrapping its kernels with timers. The
machine is shared, so wall times are noisy: read the medians, and the CPU
times, which other tenants' load moves less.

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
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import preload  # noqa: E402
from _reference_sampler import ReferenceNeighborSampler  # noqa: E402

import refresh_train.sampler as sampler_mod  # noqa: E402

# profile_phases times each phase by wrapping the sampler's kernels where the
# sampler looks them up (K.<name>, a module attribute), so the wrap is seen.
import refresh_train.sampler_kernels as kernels  # noqa: E402
from refresh_store.store import open_store  # noqa: E402
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches  # noqa: E402

# The store benchmarks/epoch_time.py builds with its default arguments.
EPOCH_STORE = (
    ROOT / "bench_cache" / "epoch_time" / "papers_n10000000_deg10_c32_l0.0032_s0" / "store"
)

# Kernel -> phase, for the per-phase profile.
PHASES = {
    "count_kernel": "CSC lookups",
    "offsets_kernel": "CSC lookups",
    "sample_kernel": "neighbour draw",
    "map_dst_kernel": "dedupe/relabel",
    "relabel_kernel": "dedupe/relabel",
    "relabel_hash_kernel": "dedupe/relabel",
}


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
    """Time every sampler on every batch, in a fresh random order per batch so
    each sees the same background load (the machine is shared) and follows
    each other sampler equally often: a sampler that always ran right after
    the reference, which sweeps 1.6 GB of topology and large temporaries,
    found caches and TLB cold and was measured ~40% slower than in a random
    order."""
    order_rng = np.random.default_rng(12345)
    names = list(samplers)
    for name in names:
        for i in range(warmup):
            samplers[name](batches[i % len(batches)], batch_seed(99, i))
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    nodes: dict[str, list[int]] = {n: [] for n in names}
    edges: dict[str, list[int]] = {n: [] for n in names}
    for i, seeds in enumerate(batches):
        for k in order_rng.permutation(len(names)):
            name = names[k]
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


def profile_phases(sampler, batches: list[np.ndarray]) -> dict:
    """Median ms per batch of each phase, by wrapping the sampler's kernels.

    Phases are summed over threads; on 2 threads the draws of the worker run
    while the calling thread relabels, so their sum exceeds the wall time.
    ``other`` is the calling thread's wall time outside kernels: Python,
    allocation, block and tensor building (and, on 2 threads, waiting for a
    chunk).
    """
    acc: dict[str, float] = defaultdict(float)
    main_acc: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    main = threading.get_ident()
    saved = {name: getattr(kernels, name) for name in PHASES}

    def wrap(name, fn):
        def timed(*a):
            t0 = time.perf_counter()
            r = fn(*a)
            dt = time.perf_counter() - t0
            with lock:
                acc[PHASES[name]] += dt
                if threading.get_ident() == main:
                    main_acc["kernels"] += dt
            return r

        return timed

    per: dict[str, list[float]] = defaultdict(list)
    try:
        for name, fn in saved.items():
            setattr(kernels, name, wrap(name, fn))
        for i, seeds in enumerate(batches):
            acc.clear()
            main_acc.clear()
            t0 = time.perf_counter()
            sampler.sample(seeds, batch_seed(0, i))
            wall = time.perf_counter() - t0
            per["wall"].append(wall)
            for ph in set(PHASES.values()):
                per[ph].append(acc.get(ph, 0.0))
            per["other"].append(wall - main_acc.get("kernels", 0.0))
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)
    return {k: 1e3 * statistics.median(v) for k, v in per.items()}


def run_graph(args, fanouts: list[int], graph: dict) -> dict:
    """Time every sampler on one graph (``graph``: kind ``store`` or ``synthetic``)."""
    t0 = time.perf_counter()
    if graph["kind"] == "store":
        store = open_store(graph["path"])
        indptr, indices = store.indptr, store.indices
        preload((indptr, indices))
        train_idx = np.asarray(store.train_idx)
        info = {
            "name": "epoch benchmark store",
            "store": os.path.relpath(graph["path"], ROOT),
            "nodes": int(store.num_nodes),
            "opened_as": "open_store memmaps, topology pre-read (warm page cache)",
            "train_nodes": int(train_idx.shape[0]),
        }
    else:
        ip_path, ix_path = build_graph(
            args.cache_dir, args.nodes, args.edges, graph["skew"], args.seed
        )
        indptr = np.load(ip_path, mmap_mode="r", allow_pickle=False)
        indices = np.load(ix_path, mmap_mode="r", allow_pickle=False)
        preload((indptr, indices))
        rng = np.random.default_rng(args.seed)
        train_idx = np.sort(rng.choice(args.nodes, size=args.nodes // 10, replace=False))
        info = {
            "name": f"synthetic, skew {graph['skew']}",
            "nodes": args.nodes,
            "skew": graph["skew"],
            "opened_as": "np.memmap, pre-read (warm page cache)",
        }
    info["build_or_open_s"] = time.perf_counter() - t0
    deg = np.diff(indptr)
    batches = list(epoch_batches(train_idx, args.batch_size, args.seed, 0, drop_last=True))
    batches = batches[: args.batches]

    ref = ReferenceNeighborSampler(indptr, indices, fanouts, seed=args.seed)
    ours = {
        (t, mem): NeighborSampler(
            indptr, indices, fanouts, seed=args.seed, num_threads=t, in_memory=mem
        )
        for t in (1, 2)
        for mem in (False, True)
    }
    saved = sampler_mod.DENSE_MAP_MAX_NODES
    sampler_mod.DENSE_MAP_MAX_NODES = 0
    hashed = NeighborSampler(indptr, indices, fanouts, seed=args.seed)
    sampler_mod.DENSE_MAP_MAX_NODES = saved
    samplers = {
        REF1: _timed(ref.sample, 1),
        REF2: _timed(ref.sample, 2),
        "numba, 1 thread": ours[1, False].sample,
        "numba, 2 threads": ours[2, False].sample,
        "numba, 1 thread, topology in RAM": ours[1, True].sample,
        "numba, 2 threads, topology in RAM": ours[2, True].sample,
        "numba, 1 thread, hash-table relabel": hashed.sample,
    }
    results = time_interleaved(samplers, batches, args.warmup)
    phases = {
        "numba, 1 thread": profile_phases(ours[1, False], batches),
        "numba, 2 threads": profile_phases(ours[2, False], batches),
        "numba, 1 thread, topology in RAM": profile_phases(ours[1, True], batches),
    }
    for s in ours.values():
        s.close()
    base = min(results[REF1]["ms_per_batch_median"], results[REF2]["ms_per_batch_median"])
    base_cpu = results[REF1]["cpu_ms_per_batch_median"]
    for r in results.values():
        r["speedup_vs_best_reference"] = base / r["ms_per_batch_median"]
        r["cpu_speedup_vs_reference_1_thread"] = base_cpu / r["cpu_ms_per_batch_median"]
    info.update(
        {
            "csc_entries": int(indptr[-1]),
            "max_in_degree": int(deg.max()),
            "mean_in_degree": float(deg.mean()),
            "median_in_degree": float(np.median(deg)),
            "isolated_nodes": int((deg == 0).sum()),
            "indices_dtype": str(indices.dtype),
        }
    )
    return {
        "graph": info,
        "timed_batches": len(batches),
        "load_average_at_start": graph["load_at_start"],
        "load_average_at_end": os.getloadavg(),
        "results": results,
        "phases_ms_per_batch_median": phases,
    }


REF1 = "reference (plain torch, NeighborLoader stand-in), 1 torch thread"
REF2 = "reference (plain torch, NeighborLoader stand-in), 2 torch threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--store",
        default="auto",
        help="a ReFresh store to sample from; 'auto' (default) = the epoch benchmark's "
        "10M-node store under bench_cache/epoch_time/ when it exists, 'none' = skip",
    )
    p.add_argument("--nodes", type=int, default=1_000_000, help="synthetic graphs' nodes")
    p.add_argument("--edges", type=int, default=15_000_000, help="directed CSC entries")
    p.add_argument(
        "--skews",
        default="0.5,0.8",
        help="popularity exponents, one synthetic graph each (larger = more skewed); "
        "'' = no synthetic graph",
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
    skews = [float(s) for s in args.skews.split(",") if s.strip()]
    if args.store == "auto":
        store = EPOCH_STORE if (EPOCH_STORE / "zarr.json").exists() else None
    elif args.store == "none":
        store = None
    else:
        store = Path(args.store)
        if not (store / "zarr.json").exists():
            print(f"--store {args.store!r} is not a ReFresh store (no zarr.json)", file=sys.stderr)
            return 2

    specs = ([{"kind": "store", "path": store}] if store is not None else []) + [
        {"kind": "synthetic", "skew": skew} for skew in skews
    ]
    load_at_start = os.getloadavg()
    graphs = []
    for spec in specs:
        spec["load_at_start"] = os.getloadavg()
        graphs.append(run_graph(args, fanouts, spec))
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
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "pyg_native_sampling_available": _pyg_native_available(),
        "note": "shared machine: samplers interleaved per batch in random order, medians "
        "reported, warm-up (incl. JIT) excluded",
        "graphs": graphs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report, args))
    print(markdown(report, args))
    return 0


def markdown(report: dict, args) -> str:
    """The report as markdown: one timing table and one phase table per graph."""
    la0 = report["machine"]["load_average_at_start"]
    la1 = report["machine"]["load_average_at_end"]
    lines = [
        f"Sampler alone: fanouts {args.fanouts}, batch {args.batch_size}, topology read once "
        f"beforehand (warm page cache), {os.cpu_count()} shared CPUs, load average (1 min) "
        f"{la0[0]:.1f} at start, {la1[0]:.1f} at end; samplers interleaved per batch in random order, median of "
        f"{args.batches} batches (fewer where the train split has fewer). Wall speed-up is against "
        "the faster reference configuration. CPU ms is the process's CPU time per batch (all "
        "its threads). Reference = plain-torch stand-in for PyG NeighborLoader's sampling "
        f"(pyg-lib / torch-sparse importable: {report['pyg_native_sampling_available']}); "
        "like PyG it holds the topology in RAM (int64 tensors, which numpy's allocator backs "
        "with transparent huge pages), so the 'topology in RAM' rows compare like with like; "
        "the other Numba rows read the memmap in place (4 KiB pages: a TLB miss per random "
        "read).",
    ]
    for g in report["graphs"]:
        gi = g["graph"]
        where = f", {gi['store']}" if "store" in gi else ""
        lines += [
            "",
            f"**{gi['name']}: {gi['nodes']:,} nodes, {gi['csc_entries']:,} CSC entries{where}** "
            f"(in-degree median {gi['median_in_degree']:.0f}, max {gi['max_in_degree']:,}; "
            f"load average {g['load_average_at_start'][0]:.1f} -> {g['load_average_at_end'][0]:.1f})",
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
        cols = ["CSC lookups", "neighbour draw", "dedupe/relabel", "other", "wall"]
        lines += [
            "",
            "Numba sampler per phase, ms per batch (medians; kernels timed in a separate "
            "pass; phases summed over threads, so on 2 threads the draw overlaps the "
            "relabelling; other = Python, allocation, blocks and tensors, waiting):",
            "",
            "| sampler | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for name, ph in g["phases_ms_per_batch_median"].items():
            lines.append(f"| {name} | " + " | ".join(f"{ph.get(c, 0.0):.1f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
