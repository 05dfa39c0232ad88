#!/usr/bin/env python
"""Write a synthetic dataset in a real dataset's on-disk layout.

    python tools/make_dataset.py --layout papers100m --nodes 1000000 --out data

prints the dataset folder (``data/ogbn_papers100M``); ogb's loaders take
``data`` as their root. The code is :func:`refresh_store.synthetic.make_dataset`.
Bad arguments print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

try:
    from refresh_store.errors import RefreshError
    from refresh_store.synthetic import LAYOUTS, make_dataset
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from refresh_store.errors import RefreshError
    from refresh_store.synthetic import LAYOUTS, make_dataset


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: scripts and CI logs stay readable.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; its defaults are those of ``make_dataset``."""
    default = {k: v.default for k, v in inspect.signature(make_dataset).parameters.items()}
    p = _Parser(
        prog="make_dataset.py",
        description="Write a synthetic graph dataset in the ogbn-*, ogbn-papers100M or "
        "MAG240M on-disk layout (power-law degrees, planted communities).",
    )
    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--nodes", required=True, type=int, help="number of nodes (papers)")
    p.add_argument("--out", required=True, help="parent folder of the dataset folder")
    p.add_argument("--seed", type=int, default=default["seed"], help="(default %(default)s)")
    p.add_argument("--feature-dim", type=int, help="default: as the real dataset")
    p.add_argument("--classes", type=int, help="number of classes; default: as the real dataset")
    p.add_argument("--labelled-fraction", type=float, help="fraction of nodes in a split")
    p.add_argument("--name", help="ogbn-products (default) or ogbn-arxiv for --layout ogbn")
    for flag, help_text in (
        ("--avg-degree", "raw edges per node"),
        ("--skew", "in-degree power-law skew in [0, 2]"),
        ("--homophily", "fraction of edges inside a community"),
        ("--feature-signal", "norm of the class centroids against unit noise"),
    ):
        key = flag[2:].replace("-", "_")
        p.add_argument(
            flag, type=float, default=default[key], help=f"{help_text} (default %(default)s)"
        )
    p.add_argument("--block-rows", type=int, help="nodes per streaming block (memory bound)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset made earlier")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        path = make_dataset(
            args.layout,
            args.nodes,
            args.out,
            seed=args.seed,
            feature_dim=args.feature_dim,
            num_classes=args.classes,
            avg_degree=args.avg_degree,
            skew=args.skew,
            labelled_fraction=args.labelled_fraction,
            name=args.name,
            homophily=args.homophily,
            feature_signal=args.feature_signal,
            block_rows=args.block_rows,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (RefreshError, ValueError, TypeError, OSError) as exc:
        print(f"make_dataset.py: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
