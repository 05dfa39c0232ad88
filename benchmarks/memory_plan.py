"""The memory plan against what a run holds: the library baseline, every structure, peak RSS.

One command::

    python benchmarks/memory_plan.py                   # baseline (3 runs) + none/raw/refresh
    python benchmarks/memory_plan.py --nodes 200000 --runs 1

Two parts, each case in a fresh subprocess:

* *Baseline* (what :data:`refresh_train.memory_plan.LIBRARIES_BYTES` and
  :data:`~refresh_train.memory_plan.RUNTIME_BYTES` record): RSS after
  ``import torch, numba, zarr, torch_geometric``, after importing this
  project's trainer modules too, and after a 2-epoch run on a 600-node store
  (Numba kernels loaded, library code touched, ogb's evaluator imported);
  medians of ``--runs`` runs.
* *Plan vs measured*: a planted store of ``--nodes`` nodes x 256 float32
  features (ten times the 8 MiB host tier), SAGE 2x64, fanouts 10,5, batch
  512, 2 epochs, O_DIRECT reads, for ``--cache none|raw|refresh``. After
  training, each structure the plan sizes is measured on the live trainer
  (tensor and array bytes, the pools' buffers, the loader's peak bytes in
  flight) and every epoch's peak RSS (``psutil``, sampled every 50 ms) is
  compared with the plan's total.

Writes ``benchmarks/results/memory_plan.json`` and ``.md``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "refresh_train"))

_BASELINE = """
import json, sys
import psutil
p = psutil.Process()
out = {"python": p.memory_info().rss}
import torch, numba, zarr, torch_geometric
out["libraries"] = p.memory_info().rss
import refresh_train.trainer, refresh_train.cli, refresh_train.evaluate, refresh_train.memory_plan
out["project"] = p.memory_info().rss
from refresh_train.config import TierConfig, TrainConfig
from refresh_train.trainer import train
cfg = TrainConfig(store=sys.argv[1], hidden=16, fanouts=(4, 4), layers=2, batch_size=64, epochs=2,
                  progress=False, max_rss_bytes=0,
                  tiers=TierConfig(cache="raw", cache_budget_bytes=8 << 10, host_budget_bytes=8 << 10))
train(cfg)
out["tiny_run"] = p.memory_info().rss
print(json.dumps(out))
"""

_MEASURE = """
import json, sys
import numpy as np
from refresh_train.config import EvalConfig, LoaderConfig, TierConfig, TrainConfig
from refresh_train.trainer import Trainer

store, cache = sys.argv[1], sys.argv[2]
cfg = TrainConfig(
    store=store, model="sage", layers=2, hidden=64, fanouts=(10, 5), batch_size=512, epochs=2,
    progress=False, max_rss_bytes=0, eval=EvalConfig(batch_size=2048),
    tiers=TierConfig(cache=cache, cache_budget_bytes=4 << 20, host_budget_bytes=8 << 20,
                     lookahead_budget_bytes=8 << 20, io_mode="direct"),
)
def pool(tier):
    return 0 if tier._pool is None else sum(b.nbytes for b in tier._pool._bufs)
def arrays(obj):
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))
with Trainer(cfg) as t:
    records = t.run()
    top = t.cache.tiers
    host = top.below
    got = {
        "topology (copied into RAM)": t.sampler.indptr.nbytes + t.sampler.indices.nbytes,
        "model parameters": sum(p.nbytes for p in t.model.parameters()),
        "gradients and Adam state": sum(p.grad.nbytes for p in t.model.parameters())
        + sum(v.nbytes for s in t.optimizer.state.values() for v in s.values() if v.dim()),
        "batch features": pool(top),
        "host/disk staging buffers": sum(pool(x) for x in top.chain()[1:]),
    }
    if cache != "none":
        got["device tier (raw rows)"] = top.cache.nbytes
        got["host tier"] = host.buffer.nbytes + arrays(host.policy)
        got["lookahead windows"] = sum(b.nbytes for b in host._windows._bufs)
    if cache == "refresh":
        got["device tier + history table"] = top.cache.nbytes + t.cache.table.nbytes
        got["history birth stamps"] = sum(b.nbytes for b in t.cache.table.birth.values())
    print(json.dumps({
        "plan": t.plan.to_dict(),
        "measured": got,
        "loader_peak_bytes": [r["loader_peak_bytes"] for r in records],
        "peak_rss_bytes": [r["peak_rss_bytes"] for r in records],
        "epoch_time_s": [r["epoch_time_s"] for r in records],
    }))
"""


def _child(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=80_000, help="nodes of the planted store")
    p.add_argument("--runs", type=int, default=3, help="runs of the baseline (median)")
    p.add_argument("--caches", default="none,raw,refresh")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_plan")
    args = p.parse_args(argv)

    import numpy as np
    from _planted import planted_store

    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        }
    }
    with tempfile.TemporaryDirectory(prefix="memory-plan-", dir=ROOT) as tmp:
        tiny = planted_store(Path(tmp) / "tiny", num_nodes=600, feature_dim=16)
        runs = [_child(_BASELINE, str(tiny.path)) for _ in range(args.runs)]
        base = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        base["first_use"] = base["tiny_run"] - base["project"]
        report["baseline"] = base
        print(
            f"baseline: libraries {_mib(base['libraries'])} MiB, with the project "
            f"{_mib(base['project'])} MiB, first use +{_mib(base['first_use'])} MiB",
            flush=True,
        )
        store = planted_store(
            Path(tmp) / "s", num_nodes=args.nodes, feature_dim=256, dtype=np.float32
        )
        report["store"] = {
            "nodes": args.nodes,
            "features_bytes": int(store.features.nbytes),
            "edges": int(store.num_edges),
        }
        report["cases"] = {}
        for cache in args.caches.split(","):
            res = _child(_MEASURE, str(store.path), cache)
            report["cases"][cache] = res
            total = res["plan"]["ram_total_bytes"]
            peaks = ", ".join(_mib(x) for x in res["peak_rss_bytes"])
            print(f"{cache}: plan {_mib(total)} MiB, peak RSS per epoch {peaks} MiB", flush=True)
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True))
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


def _markdown(report: dict) -> str:
    b, s, m = report["baseline"], report["store"], report["machine"]
    lines = [
        "## Memory plan against measured sizes (`benchmarks/memory_plan.py`)",
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, load average {m['load_average']:.1f} at start, "
        f"{m['load_average_end']:.1f} at end.",
        "",
        "Baseline (RSS, median of runs, fresh processes): "
        f"`import torch, numba, zarr, torch_geometric` {_mib(b['libraries'])} MiB; with the "
        f"project's trainer modules {_mib(b['project'])} MiB; after a 2-epoch run on a "
        f"600-node store +{_mib(b['first_use'])} MiB (loaded on first use).",
        "",
        f"Planted store: {s['nodes']:,} nodes, {s['edges']:,} edges, "
        f"{_mib(s['features_bytes'])} MiB of float32 features; SAGE 2x64, fanouts 10,5, "
        "batch 512, 2 epochs, `--cache-budget 4MiB --host-budget 8MiB --lookahead-budget "
        "8MiB --io-mode direct`. Measured = bytes held after the run (pools and windows at "
        "their largest), MiB.",
        "",
    ]
    caches = list(report["cases"])
    names: list[str] = []
    for c in caches:
        for item in report["cases"][c]["plan"]["items"]:
            if item["name"] not in names:
                names.append(item["name"])
    head = "| structure | basis | " + " | ".join(f"{c} plan | {c} measured" for c in caches) + " |"
    lines += [head, "|---|---|" + "---:|---:|" * len(caches)]
    for name in names:
        cells, basis = [], ""
        for c in caches:
            case = report["cases"][c]
            item = next((i for i in case["plan"]["items"] if i["name"] == name), None)
            if item is None:
                cells += ["", ""]
                continue
            basis = item["basis"]
            planned = item["ram_bytes"] + item["device_bytes"]
            got = case["measured"].get(name)
            cells += [_mib(planned), "" if got is None else _mib(got)]
        lines.append(f"| {name} | {basis} | " + " | ".join(cells) + " |")
    row = ["loader bytes in flight (peak / budget)", ""]
    for c in caches:
        case = report["cases"][c]
        row += [_mib(case["plan"]["loader_budget_bytes"]), _mib(max(case["loader_peak_bytes"]))]
    lines.append("| " + " | ".join(row) + " |")
    row = ["**total / peak RSS per epoch**", ""]
    for c in caches:
        case = report["cases"][c]
        peaks = " / ".join(_mib(x) for x in case["peak_rss_bytes"])
        row += [f"**{_mib(case['plan']['ram_total_bytes'])}**", f"**{peaks}**"]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
