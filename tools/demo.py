"""End-to-end demo behind `make demo`: generate, convert, verify, train, summarise.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_data", help="folder for the demo's files")
    parser.add_argument("--nodes", type=int, default=30_000, help="papers in the generated graph")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)

    work = (ROOT / args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    raw, store, metrics = work / "raw", work / "store", work / "metrics.jsonl"
    times = {}
    times["generate"] = _run(
        "generate a papers100M-layout dataset",
        ["tools/make_dataset.py", "--layout", "papers100m", "--nodes", str(args.nodes),
         "--out", str(raw), "--seed", "0", "--classes", "16",
         "--labelled-fraction", "0.3"],
    )  # fmt: skip
    dataset = next(p for p in raw.iterdir() if p.is_dir())
    times["convert"] = _run(
        "convert it into a degree-reordered Zarr store",
        ["tools/convert.py", str(dataset), str(store), "--memory-budget", "256MiB"],
    )
    times["verify"] = _run("verify the store", ["tools/convert.py", "verify", str(store)])
    times["train"] = _run(
        "train a 3-layer GraphSAGE with the raw-feature tiers",
        ["-m", "refresh_train", "--store", str(store), "--model", "sage", "--layers", "3",
         "--hidden", "128", "--fanouts", "10,10,5", "--batch-size", "512",
         "--epochs", str(args.epochs), "--lr", "0.003", "--cache", "raw",
         "--cache-budget", "2MiB", "--host-budget", "4MiB", "--device", "cpu", "--seed", "0",
         "--metrics-out", str(metrics), "--checkpoint-dir", str(work / "checkpoints")],
    )  # fmt: skip

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    print("\n=== summary")
    print(_table(records))
    print("\n" + "  ".join(f"{step}: {sec:.1f} s" for step, sec in times.items()))
    print(f"files are in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
