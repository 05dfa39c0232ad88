"""Command line of the converter: ``tools/convert.py`` and the ``refresh-convert`` script.

``refresh-convert SRC DST [options]`` converts a dataset; ``refresh-convert
verify DST`` checks a store; ``refresh-convert export STORE OUT`` writes a
store's arrays back as ``.npy`` files (:mod:`refresh_store.export`). Errors print one line on stderr and exit with
status 2 (bad input, refused destination, disk full); ``verify`` exits 1 on a
damaged store and 0 on a good one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import RefreshError

__all__ = ["main", "build_parser"]

_EPILOG = """\
examples:
  %(prog)s dataset/ogbn_products stores/products
  %(prog)s dataset/ogbn_papers100M stores/papers --memory-budget 8GiB
  %(prog)s dataset/mag240m_kddcup2021 stores/mag --mag240m-graph full --dtype float16
  %(prog)s verify stores/products
  %(prog)s export stores/products exported/ [--arrays features,labels] [--ids original|store]
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``convert`` argument parser (``verify`` has its own, see :func:`main`)."""
    p = argparse.ArgumentParser(
        prog="refresh-convert",
        description="Convert a downloaded graph dataset into a ReFresh store "
        "(Zarr v3, degree-reordered, streaming with bounded memory, crash-safe).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="dataset folder (ogbn csv, ogbn-papers100M npz, MAG240M, npy)")
    p.add_argument("dst", help="store folder to create (work happens in DST.partial/)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "ogbn", "papers100m", "mag240m", "npy"]
    )
    p.add_argument(
        "--reorder",
        default="degree",
        choices=["degree", "none"],
        help="degree: node 0 = highest in-degree of the sampling graph (default)",
    )
    p.add_argument(
        "--memory-budget",
        default="2GiB",
        type=_byte_size,
        help="working memory bound, e.g. 2GiB, 512MiB (default 2GiB)",
    )
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per inner chunk of features")
    p.add_argument("--dtype", default="keep", choices=["keep", "float16", "float32"])
    direction = p.add_mutually_exclusive_group()
    direction.add_argument(
        "--undirected",
        dest="undirected",
        action="store_const",
        const=True,
        default=None,
        help="symmetrise the sampling graph (default for ogbn, papers100m, mag240m)",
    )
    direction.add_argument(
        "--directed",
        dest="undirected",
        action="store_const",
        const=False,
        help="keep edges as given: node v samples its in-neighbours (default for npy)",
    )
    p.add_argument(
        "--self-loops",
        default="drop",
        choices=["drop", "keep", "add"],
        help="drop (default), keep those in the source, or add one per node",
    )
    p.add_argument("--allow-nan", action="store_true", help="keep NaN/inf feature values")
    p.add_argument("--resume", action="store_true", help="continue an interrupted conversion")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at DST")
    p.add_argument(
        "--mag240m-graph",
        default="papers",
        choices=["papers", "full"],
        help="papers: citation graph; full: papers + authors + institutions",
    )
    p.add_argument(
        "--split",
        default=None,
        help="split folder (ogbn) or split_dict.pt key used as test (mag240m)",
    )
    p.add_argument(
        "--feature-strategy",
        default="auto",
        choices=["auto", "gather", "shuffle"],
        help="how feature rows are reordered (auto: gather if the source fits in "
        "the page cache, else shuffle)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--summary-json", default=None, help="also write the summary as JSON here")
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refresh-convert verify",
        description="Recompute the checksums of a store and check its invariants.",
    )
    p.add_argument("dst", help="store folder")
    return p


def _export_parser() -> argparse.ArgumentParser:
    from .export import DEFAULT_ARRAYS, EXPORT_ARRAYS

    p = argparse.ArgumentParser(
        prog="refresh-convert export",
        description="Write a store's arrays as plain .npy files (the npy layout this converter "
        "reads), streaming with bounded memory, into a new folder.",
    )
    p.add_argument("store", help="store folder")
    p.add_argument("out", help="folder to create (must not exist; work happens in OUT.partial/)")
    p.add_argument(
        "--arrays",
        default=",".join(DEFAULT_ARRAYS),
        help=f"comma-separated, from {','.join(EXPORT_ARRAYS)} (default: %(default)s)",
    )
    p.add_argument(
        "--ids",
        default="original",
        choices=["original", "store"],
        help="original: the source's node order and ids (default); store: the store's reordered ids",
    )
    p.add_argument(
        "--memory-budget",
        default="256MiB",
        type=_byte_size,
        help="bound on blocks held (default 256MiB)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _run_export(argv: Sequence[str]) -> int:
    from .export import export_store

    args = _export_parser().parse_args(argv)
    arrays = [a.strip() for a in args.arrays.split(",") if a.strip()]
    summary = export_store(
        args.store,
        args.out,
        arrays=arrays,
        ids=args.ids,
        memory_budget_bytes=args.memory_budget,
        progress=not args.no_progress,
    )
    print(summary.table())
    return 0


def _byte_size(text: str) -> int:
    """``--memory-budget``'s argparse type: bytes, or a usage error naming the flag (exit 2)."""
    from .convert import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        # argparse names the flag itself: "argument --memory-budget: must be a size like ..."
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--memory-budget ")) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run_verify(argv: Sequence[str]) -> int:
    from .verify import verify_store

    args = _verify_parser().parse_args(argv)
    report = verify_store(args.dst)
    for failure in report.failures:
        print(f"FAIL: {failure}")
    for note in report.notes:
        print(f"NOTE: {note}")
    if report.ok:
        print(f"OK: {args.dst} ({', '.join(report.checked)})")
        return 0
    print(f"{args.dst}: {len(report.failures)} check(s) failed", file=sys.stderr)
    return 1


def _run_convert(argv: Sequence[str]) -> int:
    from .convert import ConvertOptions, convert

    args = build_parser().parse_args(argv)
    opts = ConvertOptions(
        format=args.format,
        reorder=args.reorder,
        memory_budget_bytes=args.memory_budget,
        chunk_rows=args.chunk_rows,
        dtype=args.dtype,
        undirected=args.undirected,
        self_loops=args.self_loops,
        allow_nan=args.allow_nan,
        resume=args.resume,
        overwrite=args.overwrite,
        mag240m_graph=args.mag240m_graph,
        split=args.split,
        feature_strategy=args.feature_strategy,
        progress=not args.no_progress,
    )
    summary = convert(args.src, args.dst, opts)
    print(summary.table())
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.as_dict(), f, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter's command line; return the exit status.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["verify"]:
            return _run_verify(argv[1:])
        if argv[:1] == ["export"]:
            return _run_export(argv[1:])
        if argv[:1] == ["convert"]:
            argv = argv[1:]
        return _run_convert(argv)
    except RefreshError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or _one_line(exc)}{where}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an option out of range that argparse cannot see
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; lower --memory-budget below the free RAM", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
