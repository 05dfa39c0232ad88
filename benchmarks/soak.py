"""Soak: does a long run with every tier on hold its memory, files and threads flat?

A leak that costs a few MiB, one file descriptor or one thread per epoch is
invisible in a 4-epoch benchmark and fatal in a week-long MAG240M run. This
benchmark trains one store for many epochs (20 by default) with every part
of the pipeline active and records, after every epoch, from inside the
training process:

* RSS now (psutil) and the epoch's peak (the trainer's ``peak_rss_bytes``);
* open file descriptors (psutil ``num_fds``, and their kinds from
  ``/proc/self/fd``), OS threads (psutil ``num_threads``, and their names from
  ``/proc/self/task``), Python threads, memory mappings (``/proc/self/maps``),
  objects tracked by the garbage collector, and Numba's and torch's thread
  settings.

Every tier is exercised: a device tier (5 % of the feature bytes), a host
tier smaller than the features (20 %), lookahead windows (``--lookahead 4``
with a 16 MiB window budget) over O_DIRECT disk reads, the historical
embedding cache (``--cache refresh``), then the same with ``--cache raw``;
sampled evaluation and an atomic checkpoint (to a temporary folder) after
every epoch. Each mode runs in its own child process, so neither inherits
the other's allocator state, threads or files.

The probe is the trainer's metrics writer: :meth:`Trainer.run` calls
``trainer.metrics.write(record)`` once per epoch, after evaluation and the
checkpoint, so a wrapper around it samples the process at the end of every
epoch without re-implementing the epoch loop. One more sample is taken
before the first epoch (``epoch 0``) and one after :meth:`Trainer.close`.

Analysis, per series, over epochs 2..N (epoch 1 is warm-up: lazily built
pools, first-touch pages, the allocator's arenas): the least-squares slope
per epoch, the range (max - min), and a verdict:

* RSS, peak RSS, GC objects and glibc's heap (bytes in use, and bytes freed
  but kept in its arenas, from ``mallinfo2``: a leak grows the first,
  fragmentation the second): ``flat`` when ``|slope| * N`` (the drift a run
  of N epochs would show) is below 2 % of the series' mean, else ``grows`` or
  ``shrinks``, with ``then flat from epoch k`` when the same test passes on
  the last half of epochs 2..N (growth that levels off);
* file descriptors, threads, memory mappings: ``flat`` only when every value
  at epochs 2..N equals epoch 1's (no growth at all after warm-up); ``grows``
  when the last is above epoch 1's; ``varies`` otherwise (bounded, e.g. a
  short-lived thread caught alive). Either gets ``then steady from epoch k``
  when the series held its last value over at least the last half of epochs
  2..N and at least 3 epochs (a pool that filled up to its size, rather than one that keeps
  growing); the thread and descriptor names that changed are listed.

Usage::

    python benchmarks/soak.py                    # 200K nodes, 20 epochs, refresh then raw
    python benchmarks/soak.py --quick            # 30K nodes, 6 epochs, a few minutes
    python benchmarks/soak.py --modes refresh --epochs 40
    python benchmarks/soak.py --report           # redraw .md/.png from the .json

Results: ``--out`` (JSON) and the same name with ``.md`` and ``.png``. The
generated dataset and its store are cached under ``bench_cache/soak/``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import ensure_store, report_saved  # noqa: E402

CACHE_DIR = ROOT / "bench_cache" / "soak"
OUT = ROOT / "benchmarks" / "results" / "soak.json"

#: Series analysed, with their unit divisor, label and kind of verdict.
#: ``drift``: flat when |slope| x epochs < DRIFT_TOLERANCE x mean; ``exact``:
#: flat only when no value after epoch 1 differs from epoch 1's.
SERIES: dict[str, tuple[float, str, str]] = {
    "rss_bytes": (2**20, "RSS after the epoch (MiB)", "drift"),
    "peak_rss_bytes": (2**20, "peak RSS of the epoch (MiB)", "drift"),
    "num_fds": (1, "open file descriptors", "exact"),
    "num_threads": (1, "OS threads", "exact"),
    "python_threads": (1, "Python threads", "exact"),
    "memory_maps": (1, "memory mappings", "exact"),
    "gc_objects": (1, "objects tracked by the GC", "drift"),
    "malloc_in_use_bytes": (2**20, "malloc: in use (MiB)", "drift"),
    "malloc_free_bytes": (2**20, "malloc: free, kept in arenas (MiB)", "drift"),
}
DRIFT_TOLERANCE = 0.02  # 2 % of the mean over a run of N epochs


# ------------------------------------------------------------------ dataset
def dataset_spec(args: argparse.Namespace) -> dict[str, Any]:
    """What the dataset is generated with (papers100M layout, 128 float32 features)."""
    return dict(
        layout="papers100m", nodes=args.nodes, labelled=args.labelled, classes=32, avg_degree=10.0
    )


# ------------------------------------------------------------------ probing
def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _fd_kinds() -> dict[str, int]:
    """Open descriptors by what they point at: file, socket, pipe, anon_inode:[x], ..."""
    kinds: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, closed meanwhile
            continue
        if target.startswith("/"):
            kinds["file"] += 1
        else:  # "socket:[123]", "pipe:[456]", "anon_inode:[eventfd]"
            kinds[target.split(":[")[0] if ":[" in target else target] += 1
    return dict(sorted(kinds.items()))


def _thread_names() -> dict[str, int]:
    """OS threads by name (``/proc/self/task/*/comm``; digits dropped so pools group)."""
    names: Counter[str] = Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names[f.read().strip().rstrip("0123456789") or "?"] += 1
        except OSError:  # the thread ended between listdir and open
            continue
    return dict(sorted(names.items()))


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33 (malloc.h); every field is a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
        "keepcost".split()
    ]


def _mallinfo() -> tuple[int | None, int | None]:
    """glibc's heap: (bytes in use, bytes free but kept in its arenas); Nones elsewhere.

    It tells a leak (in use grows) from fragmentation (free grows: freed
    chunks the allocator cannot hand back because live ones share their pages).
    It only reads counters: sampling does not change what the process holds.
    """
    try:
        libc = ctypes.CDLL(None)
        f = libc.mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None, None
    f.restype = _MallInfo2
    m = f()
    return int(m.uordblks + m.hblkhd), int(m.fordblks)


def sample_process(proc: psutil.Process) -> dict[str, Any]:
    """One sample of this process's resources (after a full garbage collection)."""
    import numba
    import torch

    gc.collect()  # objects that only wait for the cycle collector are not a leak
    out: dict[str, Any] = {
        "rss_bytes": int(proc.memory_info().rss),
        "num_fds": proc.num_fds(),
        "num_threads": proc.num_threads(),
        "python_threads": threading.active_count(),
        "gc_objects": len(gc.get_objects()),
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "fd_kinds": _fd_kinds(),
        "thread_names": _thread_names(),
        "python_thread_names": dict(
            sorted(Counter(t.name.rstrip("0123456789_-") for t in threading.enumerate()).items())
        ),
    }
    out["malloc_in_use_bytes"], out["malloc_free_bytes"] = _mallinfo()
    try:
        out["memory_maps"] = _count_lines("/proc/self/maps")
    except OSError:  # not Linux
        out["memory_maps"] = 0
    return out


class _EpochProbe:
    """Stands in for the trainer's metrics writer: writes through, then samples."""

    def __init__(self, inner: Any, samples: list[dict[str, Any]], t0: float) -> None:
        self.inner = inner
        self.samples = samples
        self.proc = psutil.Process(os.getpid())
        self.t_last = t0

    def write(self, record: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.write(record)
        now = time.perf_counter()
        s = sample_process(self.proc)
        s.update(
            epoch=record["epoch"],
            wall_s=now - self.t_last,  # training + evaluation + checkpoint
            epoch_time_s=record["epoch_time_s"],
            peak_rss_bytes=record["peak_rss_bytes"],
            loader_peak_bytes=record.get("loader_peak_bytes"),
            train_loss=record["train_loss"],
            valid_acc=record["valid_acc"],
            test_acc=record["test_acc"],
            rows_device=record.get("rows_device", 0),
            rows_host=record.get("rows_host", 0),
            rows_disk=record.get("rows_disk", 0),
            disk_reads=record.get("disk_reads", 0),
            hist_hits=record.get("hist_hits"),
            hist_entries=record.get("hist_entries"),
        )
        self.samples.append(s)
        self.t_last = time.perf_counter()  # the sample's own time is not the next epoch's


# ------------------------------------------------------------------ one run
def train_config(store: Path, mode: str, args: argparse.Namespace, tmp: Path):
    """Every tier on: device tier, a host tier smaller than the features, lookahead, O_DIRECT."""
    from refresh_store.store import open_store
    from refresh_train.config import EvalConfig, LoaderConfig, TierConfig, TrainConfig

    s = open_store(store)
    feature_bytes = s.num_nodes * s.region("features").row_bytes
    return TrainConfig(
        store=str(store),
        model="sage",
        layers=2,
        hidden=args.hidden,
        fanouts=(10, 5),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=0.003,
        seed=0,
        tiers=TierConfig(
            cache=mode,
            cache_budget_bytes=int(0.05 * feature_bytes),
            host_budget_bytes=int(0.20 * feature_bytes),
            io_mode="direct",
            lookahead_batches=4,
            lookahead_budget_bytes=16 << 20,  # 16 MiB
        ),
        loader=LoaderConfig(prefetch_batches=2),
        eval=EvalConfig(mode="sampled", batch_size=2048, every_epochs=1),
        metrics_out=str(tmp / "metrics.jsonl"),
        checkpoint_dir=str(tmp / "ckpt"),
        progress=False,
    )


def soak_run(store: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.epochs`` epochs in this process; one sample per epoch and around them."""
    from refresh_train.trainer import Trainer

    proc = psutil.Process(os.getpid())
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="refresh-soak-") as tmp:
        cfg = train_config(store, mode, args, Path(tmp))
        before = sample_process(proc)
        t0 = time.perf_counter()
        with Trainer(cfg) as trainer:
            setup_s = time.perf_counter() - t0
            describe = trainer.cache.describe()
            plan_total = trainer.plan.to_dict()["ram_total_bytes"]
            start = sample_process(proc)
            trainer.metrics = _EpochProbe(trainer.metrics, samples, time.perf_counter())
            trainer.run()
            fit = list(trainer.fit_changes)
        closed = sample_process(proc)
        del trainer  # what the run leaves behind once nothing refers to it
        released = sample_process(proc)
        ckpt_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    return {
        "mode": mode,
        "settings": _settings(cfg),
        "describe": describe,
        "memory_fit": fit,
        "plan_total_bytes": plan_total,
        "setup_s": setup_s,
        "wall_s": time.perf_counter() - t0,
        "checkpoint_and_metrics_bytes": ckpt_bytes,
        "before_trainer": before,
        "after_setup": start,
        "after_close": closed,
        "after_release": released,
        "epochs": samples,
    }


def _settings(cfg: Any) -> dict[str, Any]:
    t = cfg.tiers
    return {
        "model": f"{cfg.model} {cfg.layers}x{cfg.hidden}, fanouts {cfg.fanouts}",
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "cache": t.cache,
        "cache_budget_bytes": t.cache_budget_bytes,
        "host_budget_bytes": t.host_budget_bytes,
        "io_mode": t.io_mode,
        "lookahead_batches": t.lookahead_batches,
        "lookahead_budget_bytes": t.lookahead_budget_bytes,
        "prefetch_batches": cfg.loader.prefetch_batches,
        "eval": f"{cfg.eval.mode}, every epoch",
        "checkpoint": "every epoch, temporary folder",
    }


# ------------------------------------------------------------------ analysis
def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs`` (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def analyse(epochs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Slope, range and verdict of one series over epochs 2..N (epoch 1 is warm-up)."""
    scale, _, kind = SERIES[key]
    pts = [(e["epoch"], e[key] / scale) for e in epochs if e.get(key) is not None]
    first = pts[0][1] if pts else None
    rest = [p for p in pts if p[0] >= 2]
    n = len(pts)
    out: dict[str, Any] = {"kind": kind, "epoch1": first, "epochs": n}
    if len(rest) < 2:
        return {**out, "slope_per_epoch": None, "range": None, "verdict": "too few epochs"}
    xs, ys = [p[0] for p in rest], [p[1] for p in rest]
    b = slope(xs, ys)
    mean = statistics.fmean(ys)
    out.update(
        slope_per_epoch=b,
        mean=mean,
        min=min(ys),
        max=max(ys),
        range=max(ys) - min(ys),
        last=ys[-1],
        drift_over_run=b * n,
    )
    if kind == "drift":
        limit = DRIFT_TOLERANCE * abs(mean)
        out["limit"] = limit
        # The same test on the last half of epochs 2..N: an allocator that
        # fragments for a while and then reuses what it holds levels off.
        half = rest[len(rest) // 2 :]
        out["slope_last_half"] = b2 = slope([p[0] for p in half], [p[1] for p in half])
        if abs(b * n) < limit:
            out["verdict"] = "flat"
        else:
            out["verdict"] = "grows" if b > 0 else "shrinks"
            if len(half) >= 3 and abs(b2 * n) < limit:
                out["verdict"] += f", then flat from epoch {half[0][0]}"
    else:
        # The epoch from which the series holds its last value: a pool that fills
        # up to its size and stops is told apart from one that keeps growing.
        settled = rest[-1][0]
        for x, y in reversed(rest):
            if y != ys[-1]:
                break
            settled = x
        out["settled_from_epoch"] = settled
        if all(y == first for y in ys):
            out["verdict"] = "flat"
        elif ys[-1] > first:
            out["verdict"] = "grows"
        else:
            out["verdict"] = "varies"
        held = rest[-1][0] - settled + 1  # epochs at the last value
        if out["verdict"] != "flat" and held >= 3 and 2 * held >= len(rest):
            out["verdict"] += f", then steady from epoch {settled}"
    return out


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    return {key: analyse(run["epochs"], key) for key in SERIES}


# ------------------------------------------------------------------ report
def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if float(v).is_integer() and digits <= 1:
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def _diff(a: dict[str, int], b: dict[str, int]) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k} {a.get(k, 0)}->{b.get(k, 0)}" for k in keys if a.get(k, 0) != b.get(k, 0)]
    return ", ".join(parts) or "none"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Soak: resources per epoch with every tier on (`benchmarks/soak.py`)",
        "",
        f"Machine: {result['machine']}; load average {result['load_start']} at the start, "
        f"{result['load_end']} at the end (1 / 5 / 15 min). Dataset: {result['dataset']}.",
        "",
        "Slopes are least squares over epochs 2..N (epoch 1 is warm-up), per epoch. "
        f"`drift` series are flat when |slope| x N < {DRIFT_TOLERANCE:.0%} of their mean; "
        "`exact` series only when no value after epoch 1 differs from epoch 1's.",
        "",
    ]
    for run in result["runs"]:
        s = run["settings"]
        summ = summarize(run)
        walls = [e["wall_s"] for e in run["epochs"]]
        lines += [
            f"## `--cache {run['mode']}`",
            "",
            f"{s['model']}, batch {s['batch_size']}, {len(run['epochs'])} epochs; device budget "
            f"{s['cache_budget_bytes'] / 2**20:.1f} MiB, host {s['host_budget_bytes'] / 2**20:.1f}"
            f" MiB, `--io-mode {s['io_mode']}`, `--lookahead {s['lookahead_batches']}` with "
            f"{s['lookahead_budget_bytes'] / 2**20:.0f} MiB windows, prefetch "
            f"{s['prefetch_batches']}; evaluation ({s['eval']}) and a checkpoint every epoch. "
            f"Epoch wall time (train + eval + checkpoint) median {statistics.median(walls):.1f} s "
            f"(min {min(walls):.1f}, max {max(walls):.1f}); setup {run['setup_s']:.1f} s; "
            f"memory plan {(run['plan_total_bytes'] or 0) / 2**20:,.0f} MiB"
            + (f"; memory fit lowered {run['memory_fit']}" if run["memory_fit"] else "")
            + ".",
            "",
            "| series | epoch 1 | mean 2..N | slope / epoch | last half | range 2..N | slope x N "
            "| verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key, (_, label, _kind) in SERIES.items():
            a = summ[key]
            if a["epoch1"] is None:
                continue  # not recorded (an older result, or not glibc)
            if a["slope_per_epoch"] is None:
                lines.append(f"| {label} | {_fmt(a['epoch1'])} | | | | | | {a['verdict']} |")
                continue
            half = a.get("slope_last_half")
            lines.append(
                f"| {label} | {_fmt(a['epoch1'])} | {_fmt(a['mean'])} | "
                f"{a['slope_per_epoch']:+,.3f} | {'' if half is None else f'{half:+,.3f}'} | "
                f"{_fmt(a['range'])} | {a['drift_over_run']:+,.2f} | **{a['verdict']}** |"
            )
        e1, last = run["epochs"][0], run["epochs"][-1]
        b, c = run["before_trainer"], run["after_release"]
        lines += [
            "",
            f"Numba threads {last['numba_threads']}, torch threads {last['torch_threads']} "
            f"(interop {last['torch_interop_threads']}) at the last epoch. "
            f"Python thread names that changed, epoch 1 -> {last['epoch']}: "
            f"{_diff(e1['python_thread_names'], last['python_thread_names'])}; OS thread "
            f"names: {_diff(e1['thread_names'], last['thread_names'])}; descriptor kinds: "
            f"{_diff(e1['fd_kinds'], last['fd_kinds'])}.",
            "",
            f"Before the trainer -> after `close()` and dropping it: fds {b['num_fds']} -> {c['num_fds']} "
            f"({_diff(b['fd_kinds'], c['fd_kinds'])}), OS threads {b['num_threads']} -> "
            f"{c['num_threads']} (Python threads: "
            f"{_diff(b['python_thread_names'], c['python_thread_names'])}), RSS "
            f"{b['rss_bytes'] / 2**20:,.0f} -> {c['rss_bytes'] / 2**20:,.0f} MiB, memory maps "
            f"{b['memory_maps']} -> {c['memory_maps']}.",
            "",
            "| epoch | wall s | RSS MiB | peak MiB | fds | threads | py threads | maps "
            "| GC objects | valid acc | rows device / host / disk |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in run["epochs"]:
            acc = "-" if e["valid_acc"] is None else f"{e['valid_acc']:.4f}"
            lines.append(
                f"| {e['epoch']} | {e['wall_s']:.1f} | {e['rss_bytes'] / 2**20:,.1f} | "
                f"{e['peak_rss_bytes'] / 2**20:,.1f} | {e['num_fds']} | {e['num_threads']} | "
                f"{e['python_threads']} | {e['memory_maps']} | {e['gc_objects']:,} | {acc} | "
                f"{e['rows_device']:,} / {e['rows_host']:,} / {e['rows_disk']:,} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """One panel per series, one line per cache mode; epoch 1 marked as warm-up."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install -e .[bench]); no plot", file=sys.stderr)
        return None
    # Series no run recorded (an older result, or not glibc) get no panel.
    keys = [
        k for k in SERIES if any(e.get(k) is not None for r in result["runs"] for e in r["epochs"])
    ]
    cols = 4
    rows = (len(keys) + cols) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys + ["wall_s"]):
        scale, label = (1, "epoch wall time (s)") if key == "wall_s" else SERIES[key][:2]
        for i, run in enumerate(result["runs"]):
            if any(e.get(key) is None for e in run["epochs"]):
                continue  # not recorded by this run
            xs = [e["epoch"] for e in run["epochs"]]
            ys = [e[key] / scale for e in run["epochs"]]
            ax.plot(xs, ys, "o-", ms=3, color=f"C{i}", label=f"--cache {run['mode']}")
            if key != "wall_s":
                a = analyse(run["epochs"], key)
                if a["slope_per_epoch"] is not None:
                    x2 = [x for x in xs if x >= 2]
                    m = statistics.fmean(x2)
                    ax.plot(
                        [x2[0], x2[-1]],
                        [a["mean"] + a["slope_per_epoch"] * (x - m) for x in (x2[0], x2[-1])],
                        "--",
                        color=f"C{i}",
                        lw=0.8,
                    )
        ax.axvspan(0.5, 1.5, color="0.9", zorder=0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    for ax in list(axes.flat)[len(keys) + 1 :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("soak: per-epoch resources (grey: warm-up epoch; dashed: fit over 2..N)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(result: dict[str, Any], out: Path) -> int:
    """Write the markdown table and the plot next to ``out`` and print the table."""
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    png = plot(result, out.with_suffix(".png"))
    print(md)
    if png:
        print("plot:", png)
    return 0


# ------------------------------------------------------------------ main
def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _child(argv: list[str]) -> dict[str, Any]:
    """Run one mode in a fresh interpreter (its own allocator, threads and files)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    try:
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--child-out", str(result_path)],
            check=True,
        )
        return json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--nodes", type=int, default=200_000)
    p.add_argument("--labelled", type=float, default=0.4, help="share of nodes in a split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--modes", default="refresh,raw", help="cache modes, each its own process")
    p.add_argument("--quick", action="store_true", help="30K nodes, 6 epochs: a few minutes")
    p.add_argument("--in-process", action="store_true",
                   help="run the modes in this process, one after the other (tests)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="only redraw .md and .png from --out")
    p.add_argument("--data-dir", default=str(CACHE_DIR))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report:
        return report_saved(out, report)
    if args.quick:
        args.nodes, args.epochs = 30_000, 6
    modes = args.modes.split(",")
    if bad := [m for m in modes if m not in ("none", "raw", "refresh")]:
        print(f"error: --modes: unknown cache mode {bad[0]!r}; use raw, refresh or none",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.epochs < 3:
        print(f"error: --epochs {args.epochs}: a slope over epochs 2..N needs N >= 3",
              file=sys.stderr)  # fmt: skip
        return 2
    spec = dataset_spec(args)
    store = ensure_store("soak", spec, Path(args.data_dir))
    if args.child_out:  # one mode, inside the child process
        Path(args.child_out).write_text(json.dumps(soak_run(store, modes[0], args), default=str))
        return 0
    result: dict[str, Any] = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM)",
        "load_start": _load(),
        "dataset": f"papers100M layout, {spec['nodes']:,} nodes, {spec['labelled']:.0%} "
        f"labelled, {spec['classes']} classes, average degree {spec['avg_degree']:g}, "
        "128 float32 features",
        "dataset_spec": spec,
        "runs": [],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        print(f"--cache {mode}: {args.epochs} epochs ...", flush=True)
        if args.in_process:
            run = soak_run(store, mode, args)
        else:
            run = _child([a for a in (argv if argv is not None else sys.argv[1:])
                          if a != "--in-process"] + ["--modes", mode])  # fmt: skip
        result["runs"].append(run)
        result["load_end"] = _load()
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)  # a run cut short keeps the modes it finished
    result["summary"] = {run["mode"]: summarize(run) for run in result["runs"]}
    out.write_text(json.dumps(result, indent=1, default=str))
    return report(result, out)


if __name__ == "__main__":
    raise SystemExit(main())
