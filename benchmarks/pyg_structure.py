"""Why the PyG-style loop reaches higher accuracy than this trainer in the same epochs.

At fanouts 15,10,5 both sample about the same number of nodes per seed, but
they aggregate differently. In ``NeighborLoader``'s subgraph a node reached at
hop ``k`` aggregates the ``fanouts[k]`` neighbours drawn for it at every
layer, so a seed sees its 15 first-hop neighbours in all three layers. This
trainer's blocks draw each layer's fanout afresh for every destination, so a
seed aggregates 15 neighbours in the output layer, 10 in the middle one and 5
in the first (the MFG semantics of DGL's samplers).

Three runs on the memory-access benchmark's ``papers`` graph, with its
settings (SAGE 3x128, batch 128, lr 0.003, dropout 0.5, 4 epochs, seed 0,
features warm in the page cache for the PyG-style runs):

* ``pyg``: the PyG-style loop as the benchmarks use it (trim ``dst``);
* ``pyg-capped``: the same loop, with each layer's destinations capped at
  that layer's block fanout (a random subset of their sampled neighbours;
  trim ``dst-capped`` in ``benchmarks/_pyg_baseline.py``);
* ``blocks``: this trainer, ``--cache none``.

If the aggregation explains the gap, ``pyg-capped`` lands near ``blocks``.
Evaluation samples the same way each run trains.

    python benchmarks/pyg_structure.py            # about 15 min on 2 cores
    python benchmarks/pyg_structure.py --quick    # 200K-node graph, 2 epochs

Writes ``benchmarks/results/pyg_structure.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import memory_access as ma  # noqa: E402
from _common import ensure_store, save_results  # noqa: E402
from _pyg_baseline import train_pyg_baseline  # noqa: E402

from refresh_store.store import open_store  # noqa: E402

RUNS = ("pyg", "pyg-capped", "blocks")


def run_one(store_path: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run's per-epoch losses and final accuracies."""
    if name == "blocks":
        rec = ma.train_run(
            ma.run_config(
                store_path, mode="none", budget_frac=0.0, seed=args.seed, model="sage", args=args
            )  # fmt: skip
        )
        return {"train_loss": rec["train_loss"], "valid_acc": rec["valid_acc"],
                "test_acc": rec["test_acc"], "epoch_time_s": rec["epoch_time_s"]}  # fmt: skip
    recs = train_pyg_baseline(
        open_store(store_path),
        fanouts=(15, 10, 5),
        batch_size=args.batch_size,
        hidden=args.hidden,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        model="sage",
        features="warm",
        trim="dst-capped" if name == "pyg-capped" else "dst",
        log=print,
    )
    return {
        "train_loss": [r["train_loss"] for r in recs],
        "valid_acc": recs[-1]["valid_acc"],
        "test_acc": recs[-1]["test_acc"],
        "epoch_time_s": sorted(r["epoch_time_s"] for r in recs)[len(recs) // 2],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Aggregation structure: PyG-style subgraph against blocks",
        "",
        f"Machine: {result['machine']}. Settings: {result['settings']}.",
        "",
        "| run | neighbours a seed aggregates per layer (input to output) | train loss per epoch "
        "| valid acc % | test acc % |",
        "|---|---|---|---:|---:|",
    ]
    what = {"pyg": "15, 15, 15 (the same draws)", "pyg-capped": "5, 10, 15 (nested draws)",
            "blocks": "5, 10, 15 (independent draws)"}  # fmt: skip
    for name in RUNS:
        r = result["runs"].get(name)
        if r is None:
            continue
        loss = " / ".join(f"{x:.3f}" for x in r["train_loss"])
        lines.append(
            f"| {name} | {what[name]} | {loss} | {100 * r['valid_acc']:.2f} | "
            f"{100 * r['test_acc']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--papers-nodes", type=int, default=2_000_000)
    p.add_argument("--quick", action="store_true", help="200K-node graph, 2 epochs, hidden 64")
    p.add_argument("--data-dir", default=str(ma.CACHE_DIR))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pyg_structure.json"))
    args = p.parse_args(argv)
    runs = args.runs.split(",")
    if bad := [r for r in runs if r not in RUNS]:
        print(f"error: --runs: unknown run {bad[0]!r}; use {', '.join(RUNS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.epochs, args.hidden = 2, 64
    args.device = "cpu"
    spec = ma.dataset_specs(
        argparse.Namespace(quick=args.quick, papers_nodes=args.papers_nodes, products_nodes=0)
    )["papers"]
    store = ensure_store("papers", spec, Path(args.data_dir))
    result: dict[str, Any] = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "settings": (
            f"SAGE 3x{args.hidden}, fanouts 15,10,5, batch {args.batch_size}, lr "
            f"{args.lr}, dropout 0.5, {args.epochs} epochs, seed {args.seed}; papers "
            f"graph {spec['nodes']:,} nodes"
        ),  # fmt: skip
        "runs": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in runs:
        print(f"[{name}]", flush=True)
        result["runs"][name] = run_one(store, name, args)
        out.write_text(json.dumps(result, indent=1))
    save_results(out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
