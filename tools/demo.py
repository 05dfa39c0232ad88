"""End-to-end demo behind `make demo`: generate, convert, verify, train, summarise, plot.

It trains the same model twice at the same device budget, once with the
raw-feature tiers (``--cache raw``) and once with the historical embedding
cache on top (``--cache refresh``), and prints their memory access (raw-feature
bytes moved onto the device per epoch) side by side.

Each step runs the project's own command line, exactly as a user would type it,
so the demo also shows how the tools fit together. Everything is written under
``--workdir`` (``demo_data/`` from the Makefile, ignored by git).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(step: str, args: list[str]) -> float:
    """Run one command, echoing it first; stop the demo if it fails."""
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n=== {step}\n$ {shown}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    if result.returncode != 0:
        print(f"demo: step {step!r} failed with exit status {result.returncode}", file=sys.stderr)
        raise SystemExit(result.returncode)
    return time.perf_counter() - start


def _table(records: list[dict]) -> str:
    cols = [
        ("epoch", "epoch", "{:d}"),
        ("time s", "epoch_time_s", "{:.2f}"),
        ("loss", "train_loss", "{:.3f}"),
        ("train", "train_acc", "{:.3f}"),
        ("valid", "valid_acc", "{:.3f}"),
        ("test", "test_acc", "{:.3f}"),
        ("rows dev", "rows_device", "{:,d}"),
        ("rows host", "rows_host", "{:,d}"),
        ("rows disk", "rows_disk", "{:,d}"),
        ("disk MB", "disk_bytes_read", None),
    ]
    head = " ".join(f"{name:>10}" for name, _, _ in cols)
    lines = [head, "-" * len(head)]
    for r in records:
        cells = []
        for _, key, fmt in cols:
            value = r.get(key)
            if value is None:
                cells.append(f"{'-':>10}")
            elif fmt is None:
                cells.append(f"{value / 1e6:>10.1f}")
            else:
                cells.append(f"{fmt.format(value):>10}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_data", help="folder for the demo's files")
    parser.add_argument("--nodes", type=int, default=60_000, help="papers in the generated graph")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    work = (ROOT / args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    raw, store = work / "raw", work / "store"
    times = {}
    times["generate"] = _run(
        "generate a papers100M-layout dataset",
        ["tools/make_dataset.py", "--layout", "papers100m", "--nodes", str(args.nodes),
         "--out", str(raw), "--seed", "0", "--classes", "16",
         "--labelled-fraction", "0.05"],
    )  # fmt: skip
    dataset = next(p for p in raw.iterdir() if p.is_dir())
    times["convert"] = _run(
        "convert it into a degree-reordered Zarr store",
        ["tools/convert.py", str(dataset), str(store), "--memory-budget", "256MiB"],
    )
    times["verify"] = _run("verify the store", ["tools/convert.py", "verify", str(store)])
    common = ["-m", "refresh_train", "--store", str(store), "--model", "sage", "--layers", "3",
              "--hidden", "128", "--fanouts", "10,10,5", "--batch-size", "256",
              "--epochs", str(args.epochs), "--lr", "0.003", "--cache-budget", "3MiB",
              "--host-budget", "0", "--lookahead", "0", "--device", "cpu", "--seed", "0"]  # fmt: skip
    runs = {}
    for cache in ("raw", "refresh"):
        metrics = work / f"metrics_{cache}.jsonl"
        what = {
            "raw": "train a 3-layer GraphSAGE with the raw-feature tiers",
            "refresh": "train it again with the historical embedding cache, same device budget",
        }[cache]
        times[f"train {cache}"] = _run(
            what,
            [*common, "--cache", cache, "--metrics-out", str(metrics),
             "--checkpoint-dir", str(work / f"checkpoints_{cache}")],
        )  # fmt: skip
        runs[cache] = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]

    print("\n=== summary: --cache raw")
    print(_table(runs["raw"]))
    print("\n=== summary: --cache refresh")
    print(_table(runs["refresh"]))
    print("\n=== memory access per epoch (MB moved onto the device from host and disk)")
    print(
        f"{'epoch':>6} {'raw':>10} {'refresh':>10} {'refresh/raw':>12} {'hist hits':>10} {'test raw':>9} {'test refresh':>13}"
    )
    for a, b in zip(runs["raw"], runs["refresh"]):
        ratio = (
            b["memory_access_bytes"] / a["memory_access_bytes"] if a["memory_access_bytes"] else 0
        )
        print(
            f"{a['epoch']:>6d} {a['memory_access_bytes'] / 1e6:>10.2f} "
            f"{b['memory_access_bytes'] / 1e6:>10.2f} {ratio:>12.2f} {b['hist_hits']:>10,d} "
            f"{_acc(a['test_acc']):>9} {_acc(b['test_acc']):>13}"
        )  # fmt: skip
    times["report"] = _run(
        "draw both runs on one figure (accuracy, loss, memory access per tier, hit rates)",
        ["-m", "refresh_train", "report", *(str(work / f"metrics_{c}.jsonl") for c in runs),
         "--out", str(work / "report")],
    )  # fmt: skip
    print("\n" + "  ".join(f"{step}: {sec:.1f} s" for step, sec in times.items()))
    print(f"files are in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
