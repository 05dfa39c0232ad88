"""``refresh-train report``: runs plot themselves.

``refresh-train report RUN.jsonl [RUN2.jsonl ...] --out DIR`` reads the
per-epoch records the trainer appends to ``--metrics-out`` and draws, with one
line per run so that several runs compare on one figure:

* ``accuracy.png`` - validation (solid) and test (dashed) accuracy per epoch,
* ``loss.png`` - training loss per epoch,
* ``memory_access.png`` - raw-feature bytes served per epoch by each tier
  (device, host, disk) and their sum moved onto the device
  (``memory_access_bytes``),
* ``hit_rates.png`` - the share of rows each tier served, and the historical
  cache's hit rate for ``--cache refresh`` runs,
* ``report.png`` - the four panels on one page,

and writes ``report.md``, the markdown table it also prints. ``DIR`` must not
exist: the figures are drawn in ``DIR.partial/`` and renamed into place, so a
report is never half written and never overwrites anything. Bad input (a
missing or unreadable file, a file without epoch records, ``DIR`` already
there, matplotlib not installed) prints one line and exits with status 2.

Library: :func:`write_report` and :func:`markdown_table`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refresh_store.errors import RefreshError

__all__ = ["ReportError", "Run", "load_run", "markdown_table", "write_report", "main"]

PROG = "refresh-train report"
_TIERS = ("device", "host", "disk")
_FIGURES = ("accuracy", "loss", "memory_access", "hit_rates")


class ReportError(RefreshError, ValueError):
    """A report cannot be made from the given files or into the given folder."""


@dataclass(frozen=True)
class Run:
    """The epoch records of one run, under the label its lines carry."""

    label: str
    records: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Epochs and values of ``key`` where the records have a number for it."""
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                xs.append(int(r["epoch"]))
                ys.append(float(v))
        return xs, ys


def load_run(path: str | os.PathLike[str], label: str | None = None) -> Run:
    """Read the epoch records of a ``--metrics-out`` file.

    Raises
    ------
    ReportError
        The file is missing, is not JSON lines, or holds no epoch record.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ReportError(
                        f"{str(path)!r} line {n} is not JSON ({exc.msg}); give the "
                        "--metrics-out file of a refresh-train run"
                    ) from None
                if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
                    records.append(rec)
    except FileNotFoundError:
        raise ReportError(f"{str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ReportError(f"{str(path)!r} is a folder; give a .jsonl metrics file") from None
    except UnicodeDecodeError:
        raise ReportError(f"{str(path)!r} is not a text file of JSON lines") from None
    if not records:
        raise ReportError(
            f"{str(path)!r} holds no epoch records (lines with an integer 'epoch'); give the "
            "--metrics-out file of a refresh-train run"
        )
    records.sort(key=lambda r: r["epoch"])
    return Run(label or path.stem, records)


def _labels(paths: Sequence[Path]) -> list[str]:
    """File stems less a prefix they all share (``metrics_raw``, ``metrics_refresh`` ->
    ``raw``, ``refresh``), or parent/stem where two runs share a stem."""
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):
        return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(stems) > 1:
        common = os.path.commonprefix(stems)
        cut = max(common.rfind(c) for c in "_-.") + 1
        if cut and all(len(s) > cut for s in stems):
            stems = [s[cut:] for s in stems]
    return stems


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _summary(run: Run) -> dict[str, Any]:
    recs = run.records
    last = recs[-1]
    rows = {t: sum(float(r.get(f"rows_{t}", 0) or 0) for r in recs) for t in _TIERS}
    total = sum(rows.values())
    lookups = sum(float(r.get("hist_lookups", 0) or 0) for r in recs)
    hits = sum(float(r.get("hist_hits", 0) or 0) for r in recs)
    valid = [r for r in recs if isinstance(r.get("valid_acc"), (int, float))]
    best = max(valid, key=lambda r: r["valid_acc"]) if valid else None
    return {
        "run": run.label,
        "epochs": len(recs),
        "loss": last.get("train_loss"),
        "valid": best["valid_acc"] if best else None,
        "test": best.get("test_acc") if best else last.get("test_acc"),
        "epoch_s": _mean([float(r["epoch_time_s"]) for r in recs if "epoch_time_s" in r]),
        "access": _mean(
            [float(r["memory_access_bytes"]) for r in recs if "memory_access_bytes" in r]
        ),
        **{t: (rows[t] / total if total else None) for t in _TIERS},
        "hist": hits / lookups if lookups else None,
    }


def _cell(key: str, v: Any) -> str:
    from .metrics import format_bytes

    if v is None:
        return "-"
    if key in ("valid", "test", *_TIERS, "hist"):
        return f"{100 * v:.2f} %"
    if key == "loss":
        return f"{v:.4f}"
    if key == "epoch_s":
        return f"{v:.2f}"
    if key == "access":
        return format_bytes(v)
    return str(v)


_COLUMNS = (
    ("run", "run"),
    ("epochs", "epochs"),
    ("loss", "last train loss"),
    ("valid", "best valid acc"),
    ("test", "test acc at best valid"),
    ("epoch_s", "epoch s (mean)"),
    ("access", "memory access per epoch (mean)"),
    ("device", "device hit rate"),
    ("host", "host hit rate"),
    ("disk", "disk share"),
    ("hist", "history hit rate"),
)


def markdown_table(runs: Sequence[Run]) -> str:
    """One row per run: accuracy, loss, epoch time, memory access and hit rates over all epochs."""
    lines = [
        "| " + " | ".join(h for _, h in _COLUMNS) + " |",
        "|" + "|".join("---" if k == "run" else "---:" for k, _ in _COLUMNS) + "|",
    ]
    for run in runs:
        s = _summary(run)
        lines.append("| " + " | ".join(_cell(k, s[k]) for k, _ in _COLUMNS) + " |")
    return "\n".join(lines)


def _import_matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(
            "matplotlib is not installed; the report needs it: pip install 'refresh-gnn[bench]' "
            "(or pip install matplotlib)"
        ) from None
    return Figure


def _draw(ax: Any, runs: Sequence[Run], what: str) -> None:
    """Draw panel ``what`` into ``ax``: one colour per run, epochs on x."""
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles = {"device": ":", "host": "--", "disk": "-."}
    for run, c in zip(runs, colours):
        if what == "accuracy":
            for key, ls, name in (("valid_acc", "-", "valid"), ("test_acc", "--", "test")):
                xs, ys = run.series(key)
                if xs:
                    ax.plot(xs, [100 * y for y in ys], ls, color=c, marker="o", ms=3,
                            label=f"{run.label} {name}")  # fmt: skip
            ax.set_ylabel("accuracy (%)")
        elif what == "loss":
            xs, ys = run.series("train_loss")
            ax.plot(xs, ys, "-", color=c, marker="o", ms=3, label=run.label)
            ax.set_ylabel("training loss")
        elif what == "memory_access":
            xs, ys = run.series("memory_access_bytes")
            if xs:
                ax.plot(xs, [y / 2**20 for y in ys], "-", color=c, marker="o", ms=3, lw=2,
                        label=f"{run.label} moved onto device")  # fmt: skip
            for t in _TIERS:
                xs, ys = run.series(f"bytes_{t}")
                if xs:
                    ax.plot(xs, [y / 2**20 for y in ys], styles[t], color=c,
                            label=f"{run.label} {t} tier")  # fmt: skip
            ax.set_ylabel("raw-feature MiB per epoch")
        elif what == "hit_rates":
            tier_rows = {t: dict(zip(*run.series(f"rows_{t}"))) for t in _TIERS}
            epochs = sorted(set().union(*tier_rows.values()))
            for t in _TIERS:
                share = []
                for e in epochs:
                    tot = sum(tier_rows[u].get(e, 0.0) for u in _TIERS)
                    share.append(100 * tier_rows[t].get(e, 0.0) / tot if tot else 0.0)
                if epochs and t != "disk":
                    ax.plot(epochs, share, styles[t], color=c, marker="o", ms=3,
                            label=f"{run.label} {t}")  # fmt: skip
            hx, hits = run.series("hist_hits")
            _, looks = run.series("hist_lookups")
            if hx and len(looks) == len(hits):
                rate = [100 * h / n if n else 0.0 for h, n in zip(hits, looks)]
                ax.plot(hx, rate, "-", color=c, marker="s", ms=3, label=f"{run.label} history")
            ax.set_ylabel("hit rate (% of lookups)")
    ax.set_xlabel("epoch")
    ax.set_title(
        {
            "accuracy": "accuracy (solid valid, dashed test)",
            "loss": "training loss",
            "memory_access": "memory access per tier",
            "hit_rates": "hit rates",
        }[what]
    )
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="x-small")
    ax.xaxis.get_major_locator().set_params(integer=True)


def write_report(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, dpi: int = 100
) -> str:
    """Draw the figures of the runs in ``paths`` into the new folder ``out``.

    Parameters
    ----------
    paths
        ``--metrics-out`` files of one or more runs (JSON lines).
    out
        Folder to create; it must not exist.
    dpi
        Resolution of the PNG files.

    Returns
    -------
    str
        The markdown table (also written to ``out/report.md``).

    Raises
    ------
    ReportError
        A file is missing or holds no epoch records, ``out`` exists, or
        matplotlib is not installed. Nothing is written then.
    """
    if not paths:
        raise ReportError("give at least one RUN.jsonl file")
    out = Path(out)
    if out.exists():
        raise ReportError(
            f"output folder {str(out)!r} exists; give a new folder (nothing was overwritten)"
        )
    files = [Path(p) for p in paths]
    runs = [load_run(p, label) for p, label in zip(files, _labels(files))]
    Figure = _import_matplotlib()
    table = markdown_table(runs)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an earlier report that did not finish
    partial.mkdir(parents=True)
    try:
        for what in _FIGURES:
            fig = Figure(figsize=(6.4, 4.2), layout="constrained")
            _draw(fig.add_subplot(), runs, what)
            fig.savefig(partial / f"{what}.png", dpi=dpi)
        fig = Figure(figsize=(12, 8), layout="constrained")
        for i, what in enumerate(_FIGURES):
            _draw(fig.add_subplot(2, 2, i + 1), runs, what)
        fig.savefig(partial / "report.png", dpi=dpi)
        (partial / "report.md").write_text(table + "\n", encoding="utf-8")
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Plot per-epoch accuracy, loss, memory access per tier and hit rates of "
        "one or more runs (one line per run) and print a markdown table.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN.jsonl", help="--metrics-out files of runs")
    p.add_argument("--out", required=True, help="folder to create for the figures (must not exist)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG files (default 100)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``refresh-train report``; the exit status (0 done, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.dpi < 10:
            raise ReportError(f"--dpi must be at least 10; got {args.dpi!r}")
        table = write_report(args.runs, args.out, dpi=args.dpi)
    except (RefreshError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nfigures: {', '.join(f + '.png' for f in (*_FIGURES, 'report'))} in {args.out}")
    return 0
