"""Peak memory and time of one training step at MAG240M's widths: edge-wise vs sparse models.

One command::

    python benchmarks/model_memory.py                 # SAGE 3x256, 2M-node graph, 3 runs
    python benchmarks/model_memory.py --models sage,gat --nodes 500000 --runs 1

builds a power-law graph in memory (undirected Chung-Lu, popularity
``(rank + 10) ** -skew``, ``--nodes`` nodes and ``--edges`` CSC entries),
draws one batch of 1024 random seeds with
:class:`refresh_train.sampler.NeighborSampler` (fanouts 15,10,5) and times one
forward + backward of the model (3 layers, hidden 256, 768 float16 input
columns, 153 classes as MAG240M, default dropout, train mode) on it, in a
fresh subprocess per case and run:

* ``before``: the models of ``--baseline-ref`` (default: the parent of the
  commit that added ``refresh_train/models/_sparse.py``, i.e. PyG's edge-wise
  message passing), extracted with ``git archive``; the step casts the float16
  features to float32 first, as the trainer's cache mode does for them;
* ``before, float32 input``: the same with features already float32 (a
  float32 store), the cast left out;
* ``after``: this checkout's models, float16 features passed as they are;
* ``after, project first`` / ``after, aggregate first``: the same with the
  order of neighbour projection and aggregation forced (``auto`` picks per
  block by operation count);
* ``after, float32 input``: features already float32 (a float32 store).

Each subprocess loads the batch and makes the features, runs one warm-up step
on a copy of the batch (MKL and allocator set-up), then resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), runs the measured step on a fresh
copy (so the sparse models build their adjacency inside it, as every new
batch does) and reports ``VmHWM - VmRSS before the step``: the step's working
set, features and batch excluded. Cases are interleaved per run; medians of
``--runs`` runs are reported, with the load average (the machine is shared).

Writes ``benchmarks/results/model_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IN_DIM, HIDDEN, CLASSES, LAYERS = 768, 256, 153, 3


def power_law_graph(nodes: int, edges: int, skew: float, seed: int):
    """CSC ``(indptr int64, indices int32)`` of an undirected Chung-Lu graph, ids by popularity."""
    rng = np.random.default_rng(seed)
    w = (np.arange(nodes, dtype=np.float64) + 10.0) ** -skew
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    half = edges // 2
    a = np.searchsorted(cdf, rng.random(half)).astype(np.int32)
    b = np.searchsorted(cdf, rng.random(half)).astype(np.int32)
    dst = np.concatenate([a, b])
    src = np.concatenate([b, a])
    del a, b
    indices = src[np.argsort(dst, kind="stable")]
    indptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=nodes), out=indptr[1:])
    return indptr, indices


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def baseline_tree(ref: str, dest: Path) -> str:
    """Extract ``refresh_train/`` at ``ref`` under ``dest``; return the commit hash."""
    if ref == "auto":
        added = _git(
            "log", "--format=%H", "--diff-filter=A", "-1", "--", "refresh_train/models/_sparse.py"
        )
        if not added:
            raise SystemExit("--baseline-ref auto: no commit adds refresh_train/models/_sparse.py")
        ref = f"{added}^"
    commit = _git("rev-parse", ref)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "refresh_train"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


# ---- child: one measured step ------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(spec: dict) -> None:
    sys.path.insert(0, spec["code_root"])
    import torch
    import torch.nn.functional as F

    import refresh_train.models as models

    if not Path(models.__file__).resolve().is_relative_to(Path(spec["code_root"]).resolve()):
        raise RuntimeError(f"imported {models.__file__}, not the code under {spec['code_root']}")
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    warm = torch.load(spec["batch"], weights_only=False)
    batch = torch.load(spec["batch"], weights_only=False)
    n = batch.blocks[0].num_src
    x = torch.empty((n, IN_DIM), dtype=torch.float16)
    for lo in range(0, n, 65536):  # float32 noise made in slices, stored as float16
        x[lo : lo + 65536] = torch.randn(min(65536, n - lo), IN_DIM)
    if spec["input"] == "fp32":
        x = x.float()
    y = torch.randint(0, CLASSES, (batch.num_seeds,))
    model = models.build_model(spec["model"], IN_DIM, HIDDEN, CLASSES, LAYERS, **spec["opts"])
    model.train()

    def step(mb) -> None:
        # "cast": what the trainer did before the sparse models (CacheMode.forward).
        xin = x.float() if spec["input"] == "cast" else x
        F.cross_entropy(model(mb, xin), y).backward()
        model.zero_grad(set_to_none=True)

    t = time.perf_counter()
    step(warm)
    warm_s = time.perf_counter() - t
    del warm
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss0 = _status_kib("VmRSS")
    t, cpu = time.perf_counter(), time.process_time()
    step(batch)
    step_s, step_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "step_s": step_s,
                "step_cpu_s": step_cpu_s,
                "warmup_step_s": warm_s,
                "peak_delta_mib": (peak - rss0) / 1024,
                "rss_before_mib": rss0 / 1024,
                "features_mib": x.numel() * x.element_size() / 2**20,
            }
        )
    )


# ---- parent ------------------------------------------------------------------------------


def cases(models: list[str]) -> list[dict]:
    out = []
    for m in models:
        out.append({"name": f"{m}: before (edge-wise, float32 cast)", "model": m, "code": "baseline", "input": "cast", "opts": {}})  # fmt: skip
        out.append({"name": f"{m}: before (edge-wise, float32 input)", "model": m, "code": "baseline", "input": "fp32", "opts": {}})  # fmt: skip
        out.append({"name": f"{m}: after (sparse, float16 input)", "model": m, "code": "head", "input": "fp16", "opts": {}})  # fmt: skip
        if m in ("sage", "gcn"):
            for first, label in ((True, "project first"), (False, "aggregate first")):
                out.append({"name": f"{m}: after, {label} (float16 input)", "model": m, "code": "head", "input": "fp16", "opts": {"project_first": first}})  # fmt: skip
        out.append({"name": f"{m}: after (sparse, float32 input)", "model": m, "code": "head", "input": "fp32", "opts": {}})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--models", default="sage", help="comma-separated: sage, gcn, gat")
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--edges", type=int, default=40_000_000, help="directed CSC entries")
    p.add_argument("--skew", type=float, default=0.5)
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-ref", default="auto", help="git ref of the 'before' models")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_memory")
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    sys.path.insert(0, str(ROOT))
    import torch

    from refresh_train.sampler import NeighborSampler

    load_start = os.getloadavg()
    t = time.perf_counter()
    indptr, indices = power_law_graph(args.nodes, args.edges, args.skew, args.seed)
    graph_s = time.perf_counter() - t
    fanouts = [int(f) for f in args.fanouts.split(",")]
    seeds = np.random.default_rng(args.seed + 1).choice(args.nodes, args.batch_size, replace=False)
    mb = NeighborSampler(indptr, indices, fanouts, seed=args.seed).sample(seeds, 0)
    del indptr, indices
    blocks = [
        {"num_src": b.num_src, "num_dst": b.num_dst, "num_edges": b.num_edges} for b in mb.blocks
    ]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="model-memory-") as tmp:
        batch_path = Path(tmp) / "batch.pt"
        torch.save(mb, batch_path)
        del mb
        base = Path(tmp) / "baseline"
        base.mkdir()
        baseline_commit = baseline_tree(args.baseline_ref, base)
        roots = {"baseline": str(base), "head": str(ROOT)}
        todo = cases(args.models.split(","))
        for run in range(args.runs):
            order = todo if run % 2 == 0 else todo[::-1]  # alternate to spread drift
            for case in order:
                spec = {
                    "code_root": roots[case["code"]],
                    "batch": str(batch_path),
                    "threads": args.threads,
                    "model": case["model"],
                    "input": case["input"],
                    "opts": case["opts"],
                }
                r = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    raise SystemExit(f"case {case['name']!r} failed:\n{r.stderr[-3000:]}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res["load_average"] = os.getloadavg()
                results.setdefault(case["name"], []).append(res)
                print(
                    f"run {run}: {case['name']}: {res['step_s']:.2f} s, "
                    f"peak +{res['peak_delta_mib']:.0f} MiB",
                    flush=True,
                )
    summary = {}
    for name, rs in results.items():
        summary[name] = {
            "step_s_median": statistics.median(r["step_s"] for r in rs),
            "step_s_min": min(r["step_s"] for r in rs),
            "step_s_max": max(r["step_s"] for r in rs),
            "step_cpu_s_median": statistics.median(r["step_cpu_s"] for r in rs),
            "peak_delta_mib_median": statistics.median(r["peak_delta_mib"] for r in rs),
            "peak_delta_mib_min": min(r["peak_delta_mib"] for r in rs),
            "peak_delta_mib_max": max(r["peak_delta_mib"] for r in rs),
            "features_mib": rs[0]["features_mib"],
            "runs": rs,
        }
    report = {
        "benchmark": "model_memory",
        "command": "python benchmarks/model_memory.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "graph": {
            "nodes": args.nodes,
            "csc_entries": args.edges,
            "skew": args.skew,
            "build_s": graph_s,
        },
        "fanouts": fanouts,
        "batch_size": args.batch_size,
        "blocks": blocks,
        "model": {"layers": LAYERS, "hidden": HIDDEN, "in_dim": IN_DIM, "classes": CLASSES},
        "baseline_commit": baseline_commit,
        "head_commit": _git("rev-parse", "HEAD"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
        },
        "results": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, args)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def markdown(report: dict, args) -> str:
    """The report as markdown: one table, a row per case."""
    m = report["machine"]
    la0, la1 = m["load_average_at_start"], m["load_average_at_end"]
    blocks = ", ".join(
        f"block {i}: {b['num_src']:,} src / {b['num_dst']:,} dst / {b['num_edges']:,} edges"
        for i, b in enumerate(report["blocks"])
    )
    g = report["graph"]
    lines = [
        f"One forward + backward, {LAYERS} layers x {HIDDEN} hidden, {IN_DIM} float16 input "
        f"columns, {CLASSES} classes, train mode; one batch of {report['batch_size']} seeds, "
        f"fanouts {args.fanouts}, drawn from a power-law graph of {g['nodes']:,} nodes and "
        f"{g['csc_entries']:,} CSC entries (skew {g['skew']}): {blocks}. "
        f"Before = models at {report['baseline_commit'][:10]} (PyG edge-wise message passing, "
        f"features cast to float32 in the step as the trainer did); after = "
        f"{report['head_commit'][:10]}. Peak = VmHWM minus RSS before the step in a fresh "
        f"process (features and batch excluded: the float16 features take "
        f"{next(iter(report['results'].values()))['features_mib']:.0f} MiB). CPU s = the "
        "process's CPU time over the step, all threads (other tenants' load moves it less "
        "than wall time). Median of "
        f"{args.runs} runs (min-max), cases interleaved; {m['cpus']} shared CPUs, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}; load average (1 min) "
        f"{la0[0]:.1f} at start, {la1[0]:.1f} at end.",
        "",
        "| case | peak MiB over the step | wall s | CPU s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['peak_delta_mib_median']:,.0f} "
            f"({r['peak_delta_mib_min']:,.0f}-{r['peak_delta_mib_max']:,.0f}) "
            f"| {r['step_s_median']:.2f} ({r['step_s_min']:.2f}-{r['step_s_max']:.2f}) "
            f"| {r['step_cpu_s_median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
