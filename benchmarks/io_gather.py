"""Cold random-row gather from an SSD: the I/O scheduler against its peers.

One command measures, on the same feature store and the same random unique
row ids, with the page cache emptied before every round:

* ``scheduler`` - :class:`refresh_store.io.IOScheduler` (``O_DIRECT``,
  coalescing, ``queue_depth`` threads of nogil ``pread``);
* ``memmap`` - ``numpy.memmap`` fancy indexing of the shard's data region;
* ``zarr`` - zarr-python orthogonal indexing (``oindex``) of the same store;
* ``tensorstore`` - tensorstore's ``zarr3`` driver on the same store;
* ``fio`` - ``fio`` 4 KiB random ``O_DIRECT`` reads (libaio) of the same file at
  the same queue depth: the device's ceiling for one-row-per-read gathers;
  variant ``row_bs``: reads of one row's bytes at the scheduler's alignment
  (512-byte sectors here), the ceiling of a gather that reads rows exactly.

Each point is the median of ``repeats`` rounds (the machine is shared: other
people's jobs move single rounds). Records go to ``--out`` (JSON list), with a
markdown table (``.md``) and a plot of rows/s against queue depth (``.png``)
next to it.

Usage::

    python benchmarks/io_gather.py --quick --out benchmarks/results/io_gather_quick.json
    python benchmarks/io_gather.py            # full: >= 8 GB files, batches 1K..1M, depths 1..64

Feature stores are built once with the store writer under
``bench_cache/io_gather/`` and reused (a larger cached store serves a smaller
need). Rows hold random bytes stamped with their row id, so every method's
result is checked after it is timed.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import drop_cache  # noqa: E402

from refresh_store.io import (  # noqa: E402
    AUTO_AIO_MAX_DEPTH,  # noqa: E402
    IOConfig,
    IOScheduler,
)
from refresh_store.store import open_store  # noqa: E402
from refresh_store.writer import StoreWriter  # noqa: E402

GIB = 1 << 30
# (row bytes, dtype, feature dim): papers100M rows and MAG240M rows.
ROW_KINDS = {512: (np.float32, 128), 1536: (np.float16, 768)}


@dataclass
class Plan:
    """What one run measures."""

    store_bytes: int
    repeats: int
    # scheduler and fio sweep queue depth at this batch size
    depth_batch: int
    depths: list[int]
    # every method sweeps batch size at the scheduler's default depth
    batches: list[int]
    default_depth: int
    fio_seconds: float
    # a peer skips larger batches once a round of the next would take longer
    round_budget_s: float
    # rounds of one point stop (after the first) once they add up to this
    point_budget_s: float
    variants: bool = True
    notes: list[str] = field(default_factory=list)


def make_plan(quick: bool, store_gib: float | None) -> Plan:
    if quick:
        plan = Plan(
            store_bytes=4 * GIB,
            repeats=3,
            depth_batch=8192,
            depths=[1, 32],
            batches=[1024, 8192, 65536],
            default_depth=32,
            fio_seconds=1.0,
            round_budget_s=3.0,
            point_budget_s=2.0,
        )
    else:
        plan = Plan(
            store_bytes=8 * GIB,
            repeats=3,
            depth_batch=65536,
            depths=[1, 2, 4, 8, 16, 32, 64],
            batches=[1024, 4096, 16384, 65536, 262144, 1048576],
            default_depth=32,
            fio_seconds=2.0,
            round_budget_s=20.0,
            point_budget_s=40.0,
        )
    if store_gib is not None:
        plan.store_bytes = int(store_gib * GIB)
    return plan


# --------------------------------------------------------------------------- stores


def store_path(cache: Path, row_bytes: int) -> Path:
    return cache / f"rows{row_bytes}.refresh"


def ensure_store(cache: Path, row_bytes: int, min_bytes: int) -> Path:
    """A cached store of ``row_bytes`` rows with at least ``min_bytes`` of features."""
    dtype, dim = ROW_KINDS[row_bytes]
    path = store_path(cache, row_bytes)
    nrows = -(-min_bytes // row_bytes)
    if path.exists():
        try:
            have = open_store(path).num_nodes
        except Exception:  # a damaged cache entry is rebuilt
            have = -1
        if have >= nrows:
            return path
        shutil.rmtree(path)  # keep one store per row size: the disk is shared
    need = nrows * row_bytes * 1.1 + 2 * GIB
    free = shutil.disk_usage(cache).free
    if free < need:
        sys.exit(
            f"io_gather: {free / GIB:.1f} GiB free under {str(cache)!r}, {need / GIB:.1f} needed"
        )
    print(
        f"building {path.name}: {nrows:,} rows x {row_bytes} B ({nrows * row_bytes / 1e9:.1f} GB)"
    )
    t0 = time.perf_counter()
    writer = StoreWriter(path, overwrite=True)
    try:
        feats = writer.create_array("features", (nrows, dim), dtype)
        rng = np.random.default_rng(0)
        block_rows = (64 << 20) // row_bytes
        noise = rng.integers(0, 256, (block_rows, row_bytes), dtype=np.uint8)
        for start in range(0, nrows, block_rows):
            k = min(block_rows, nrows - start)
            block = noise[:k].copy()
            # Every row (so every 4 KiB block) is distinct, and checkable.
            block[:, :8] = np.arange(start, start + k, dtype="<i8").view(np.uint8).reshape(k, 8)
            feats.write(start, block.view(dtype).reshape(k, dim))
        # A valid store needs its other arrays; an edgeless graph is enough here.
        writer.create_array("indptr", (nrows + 1,), np.int64)
        writer.create_array("indices", (0,), np.int64)
        writer.create_array("labels", (nrows,), np.int64)
        for name, lo in (("train_idx", 0), ("valid_idx", 10), ("test_idx", 20)):
            writer.create_array(name, (10,), np.int64).write(0, np.arange(lo, lo + 10))
        for name in ("new_id", "old_id"):
            arr = writer.create_array(name, (nrows,), np.int64)
            for start in range(0, nrows, 1 << 23):
                arr.write(start, np.arange(start, min(nrows, start + (1 << 23)), dtype=np.int64))
        writer.commit(
            {
                "num_nodes": nrows,
                "num_edges": 0,
                "feature_dim": dim,
                "dtype": np.dtype(dtype).name,
                "num_classes": 1,
                "reorder": "none",
                "source": {"format": "benchmark", "path": "io_gather"},
            }
        )
    except BaseException:
        writer.abort()
        raise
    print(f"  built in {time.perf_counter() - t0:.0f} s")
    return path


def check_rows(rows: np.ndarray, ids: np.ndarray, method: str) -> None:
    stamps = np.ascontiguousarray(rows).reshape(len(ids), -1).view(np.uint8)[:, :8]
    got = stamps.copy().view("<i8").ravel()
    if not np.array_equal(got, ids):
        raise SystemExit(f"io_gather: {method} returned wrong rows")


# --------------------------------------------------------------------------- methods


class Methods:
    """Readers of one store; each ``read_*`` returns the rows of ``ids``."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.region = open_store(store).region("features")
        self.path = self.region.path
        self.schedulers: dict[tuple[int, str], IOScheduler] = {}
        self._outs: dict[int, np.ndarray] = {}
        self.last_stats: dict[str, Any] = {}

    def close(self) -> None:
        for io in self.schedulers.values():
            io.close()

    def scheduler(self, ids: np.ndarray, depth: int, engine: str = "auto") -> np.ndarray:
        io = self.schedulers.get((depth, engine))
        if io is None:
            io = self.schedulers[depth, engine] = IOScheduler(
                self.region, IOConfig(mode="direct", engine=engine, queue_depth=depth)
            )
        io.reset_stats()
        rows = io.gather(ids, out=self.out_buffer(len(ids)))
        self.last_stats = io.stats()
        return rows

    def out_buffer(self, n: int) -> np.ndarray:
        """The scheduler's output for batches of ``n`` rows, reused from round to round.

        As the trainer's disk tier does with its pooled buffers: a fresh
        ~100 MB array per round would put first-touch page faults (slow on
        this VM, and worse right after a pause) into the gather's time.
        """
        buf = self._outs.get(n)
        if buf is None:
            buf = self._outs[n] = np.ones((n, *self.region.row_shape), self.region.dtype)
        return buf

    def memmap(self, ids: np.ndarray, madvise_random: bool = False) -> np.ndarray:
        r = self.region
        mm = np.memmap(r.path, dtype=r.dtype, mode="r", shape=(r.nrows, *r.row_shape))
        if madvise_random:
            mm._mmap.madvise(mmap.MADV_RANDOM)  # numpy keeps its mmap object there
        rows = mm[ids]
        del mm  # drop_cache cannot evict pages of a live mapping
        return rows

    def zarr(self, ids: np.ndarray) -> np.ndarray:
        arr = zarr.open_array(str(self.store / "features"), mode="r")
        return arr.oindex[ids, :]

    def tensorstore(self, ids: np.ndarray, depth: int) -> np.ndarray:
        import tensorstore as ts

        arr = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(self.store / "features")},
            },
            read=True,
            context=ts.Context(
                {"cache_pool": {"total_bytes_limit": 0}, "file_io_concurrency": {"limit": depth}}
            ),
        ).result()
        return arr[ids].read().result()


def fio_iops(
    path: str, size: int, depth: int, seconds: float, bs: int = 4096, align: int = 4096
) -> float:
    cmd = [
        "fio",
        "--name=randread",
        f"--filename={path}",
        "--readonly",
        "--rw=randread",
        f"--bs={bs}",
        f"--blockalign={align}",
        "--direct=1",
        "--ioengine=libaio",
        f"--iodepth={depth}",
        f"--size={size // 4096 * 4096}",
        f"--runtime={seconds}",
        "--ramp_time=0.3",
        "--time_based",
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out[out.index("{") :])["jobs"][0]["read"]["iops"])


# --------------------------------------------------------------------------- running


def record(method: str, row_bytes: int, batch: int, depth: int, times: list[float], **extra: Any):
    t = statistics.median(times)
    rec = {
        "method": method,
        "row_bytes": row_bytes,
        "batch_rows": batch,
        "queue_depth": depth,
        "rows_per_s": batch / t,
        "mb_per_s": batch * row_bytes / t / 1e6,
        "seconds_median": t,
        "repeats": len(times),
        "variant": "default",
    }
    rec.update(extra)
    return rec


def run_rounds(
    fn, ids_for_round, path: str, plan: Plan, method: str, after_round=None
) -> list[float]:
    """Times of up to ``plan.repeats`` cold rounds, each result checked.

    Rounds stop early (after at least one) once they add up to
    ``plan.point_budget_s``, so that slow peers do not eat the run.
    ``after_round`` runs after each round, untimed (the paired fio run).
    """
    times: list[float] = []
    for rnd in range(plan.repeats):
        ids = ids_for_round(rnd)
        drop_cache(path)
        t0 = time.perf_counter()
        rows = fn(ids)
        times.append(time.perf_counter() - t0)
        check_rows(rows, ids, method)
        del rows
        if after_round is not None:
            after_round()
        if sum(times) > plan.point_budget_s:
            break
    return times


def measure_row_kind(row_bytes: int, store: Path, plan: Plan, have_fio: bool) -> list[dict]:
    m = Methods(store)
    nrows = m.region.nrows
    data_bytes = nrows * row_bytes
    zarr_depth = int(zarr.config.get("async.concurrency"))
    out: list[dict] = []

    def ids_fn(batch: int, salt: int):
        def make(rnd: int) -> np.ndarray:
            rng = np.random.default_rng([row_bytes, batch, salt, rnd])
            return rng.choice(nrows, size=batch, replace=False).astype(np.int64)

        return make

    def say(rec: dict) -> None:
        extra = f" {rec['iops']:,.0f} IOPS" if "iops" in rec else ""
        print(
            f"  {rec['method']:<11} {rec.get('variant', ''):<12} rows={row_bytes:>4} B "
            f"batch={rec['batch_rows']:>8,} qd={rec['queue_depth']:>2}: "
            f"{rec['rows_per_s']:>10,.0f} rows/s {rec['mb_per_s']:>8.1f} MB/s{extra}",
            flush=True,
        )
        out.append(rec)

    def sched_point(batch: int, depth: int, with_fio: bool = False, engine: str = "auto") -> None:
        reads, nbytes, fio, fio_row = [], [], [], []

        def fn(ids):
            rows = m.scheduler(ids, depth, engine)
            reads.append(m.last_stats["read_calls"])
            nbytes.append(m.last_stats["bytes_read"])
            return rows

        def fio_round():
            fio.append(fio_iops(m.path, data_bytes, depth, plan.fio_seconds))
            block = m.schedulers[depth, engine].block_bytes
            if plan.variants and not fio_row and row_bytes % block == 0 and block < 4096:
                # Once per point: reads of exactly one row, as the scheduler
                # issues them when rows are far apart.
                fio_row.append(
                    fio_iops(m.path, data_bytes, depth, plan.fio_seconds, row_bytes, block)
                )

        # fio runs right after each scheduler round, so that both see the same
        # load from other jobs on the shared disk: the ratio is paired.
        after = fio_round if with_fio else None
        m.out_buffer(batch)  # allocated and touched outside the timed rounds
        times = run_rounds(fn, ids_fn(batch, 0), m.path, plan, "scheduler", after)
        t = statistics.median(times)
        say(
            record(
                "scheduler",
                row_bytes,
                batch,
                depth,
                times,
                iops=statistics.median(reads) / t,
                device_mb_per_s=statistics.median(nbytes) / t / 1e6,
                read_calls=int(statistics.median(reads)),
                bytes_read=int(statistics.median(nbytes)),
                engine=m.schedulers[depth, engine].engine,
                block_bytes=m.schedulers[depth, engine].block_bytes,
                variant="default" if engine == "auto" else engine,
            )
        )
        for runs, bs, variant in ((fio, 4096, "default"), (fio_row, row_bytes, "row_bs")):
            if not runs:
                continue
            iops = statistics.median(runs)
            rec = record("fio", row_bytes, batch, depth, [plan.fio_seconds], variant=variant)
            # One read serves one random row: IOPS is the ceiling of rows/s
            # for a gather without coalescing.
            rec.update(
                rows_per_s=iops,
                mb_per_s=iops * row_bytes / 1e6,
                iops=iops,
                device_mb_per_s=iops * bs / 1e6,
                read_bytes=bs,
                repeats=len(runs),
            )
            say(rec)

    # Warm the scheduler's kernels and threads outside the timed rounds.
    m.scheduler(np.arange(10, dtype=np.int64), plan.default_depth, "threads")
    m.scheduler(np.arange(10, dtype=np.int64), plan.default_depth, "aio")
    try:
        for depth in plan.depths:
            # The default engine (``auto``: AIO at shallow depths, threads
            # deeper), then the other one for the record.
            sched_point(plan.depth_batch, depth, with_fio=have_fio)
            if plan.variants:
                chosen = m.schedulers[depth, "auto"].engine
                sched_point(
                    plan.depth_batch, depth, engine="aio" if chosen == "threads" else "threads"
                )
        for batch in plan.batches:
            if batch != plan.depth_batch or plan.default_depth not in plan.depths:
                sched_point(batch, plan.default_depth)

        baselines: list[tuple[str, Any, int, str]] = [
            ("memmap", m.memmap, 1, "default"),
            ("zarr", m.zarr, zarr_depth, "default"),
            (
                "tensorstore",
                lambda ids: m.tensorstore(ids, plan.default_depth),
                plan.default_depth,
                "default",
            ),
        ]
        if plan.variants:
            baselines.append(
                ("memmap", lambda ids: m.memmap(ids, madvise_random=True), 1, "madv_random")
            )
        for name, fn, depth, variant in baselines:
            for i, batch in enumerate(plan.batches):
                times = run_rounds(fn, ids_fn(batch, 0), m.path, plan, name)
                say(record(name, row_bytes, batch, depth, times, variant=variant))
                later = plan.batches[i + 1 :]
                # A cold random gather's time grows about linearly with the batch.
                if later and statistics.median(times) * later[0] / batch > plan.round_budget_s:
                    plan.notes.append(
                        f"{name} ({variant}), {row_bytes} B rows: batches above {batch:,} "
                        f"skipped (a round would take about "
                        f"{statistics.median(times) * later[0] / batch:.0f} s, budget "
                        f"{plan.round_budget_s:g} s)"
                    )
                    break
    finally:
        m.close()
    return out


# --------------------------------------------------------------------------- reporting


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}"


def disk_info(path: Path) -> str:
    try:
        dev = os.stat(path).st_dev
        name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        q = Path(f"/sys/block/{name}/queue")
        ra = (q / "read_ahead_kb").read_text().strip()
        rot = (q / "rotational").read_text().strip()
        return f"block device {name} (rotational={rot}, read_ahead_kb={ra})"
    except OSError:
        return "unknown device"


def busy() -> str:
    """Load average and I/O pressure: how much other jobs were competing."""
    text = "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        some = Path("/proc/pressure/io").read_text().split()
        text += f", I/O pressure (some) {some[1].split('=')[1]}% over 10 s"
    except (OSError, IndexError):
        pass
    return text


def best(records: list[dict], **match: Any) -> dict | None:
    hits = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return max(hits, key=lambda r: r["rows_per_s"]) if hits else None


def markdown(records: list[dict], plan: Plan, header: str) -> str:
    lines = [header, ""]
    lines += [
        "| method | variant | row B | batch rows | queue depth | rows/s | MB/s (rows) | IOPS | device MB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        iops = f"{r['iops']:,.0f}" if "iops" in r else ""
        dev = f"{r['device_mb_per_s']:,.0f}" if "device_mb_per_s" in r else ""
        variant = r["variant"]
        if r["method"] == "scheduler" and variant == "default":
            variant = f"default ({r['engine']})"
        lines.append(
            f"| {r['method']} | {variant} | {r['row_bytes']} | {r['batch_rows']:,} | "
            f"{r['queue_depth']} | {r['rows_per_s']:,.0f} | {r['mb_per_s']:,.1f} | {iops} | {dev} |"
        )
    lines += ["", "### Against the targets", ""]
    lines += [
        "| row B | comparison | scheduler | peer | ratio | target |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for rb in ROW_KINDS:
        for depth in sorted({r["queue_depth"] for r in records if r["method"] == "fio"}):
            s = best(
                records,
                method="scheduler",
                row_bytes=rb,
                queue_depth=depth,
                batch_rows=plan.depth_batch,
                variant="default",
            )
            f = best(records, method="fio", row_bytes=rb, queue_depth=depth, variant="default")
            if s and f:
                lines.append(
                    f"| {rb} | rows/s vs fio IOPS, depth {depth}, batch {plan.depth_batch:,} | "
                    f"{s['rows_per_s']:,.0f} | {f['iops']:,.0f} | {s['rows_per_s'] / f['iops']:.2f} | >= 0.80 |"
                )
                lines.append(
                    f"| {rb} | IOPS vs fio IOPS, depth {depth}, batch {plan.depth_batch:,} | "
                    f"{s['iops']:,.0f} | {f['iops']:,.0f} | {s['iops'] / f['iops']:.2f} | >= 0.80 |"
                )
            f = best(records, method="fio", row_bytes=rb, queue_depth=depth, variant="row_bs")
            if s and f:
                lines.append(
                    f"| {rb} | rows/s vs fio one-row ({rb} B) IOPS, depth {depth} | "
                    f"{s['rows_per_s']:,.0f} | {f['iops']:,.0f} | "
                    f"{s['rows_per_s'] / f['iops']:.2f} | (context) |"
                )
        peers = [("memmap", "default", 5), ("memmap", "madv_random", 5), ("zarr", "default", 10)]
        peers.append(("tensorstore", "default", None))
        for peer, variant, target in peers:
            for batch in plan.batches:
                s = best(
                    records,
                    method="scheduler",
                    row_bytes=rb,
                    batch_rows=batch,
                    queue_depth=plan.default_depth,
                    variant="default",
                )
                p = best(records, method=peer, row_bytes=rb, batch_rows=batch, variant=variant)
                if s and p:
                    t = f">= {target}" if target else ""
                    name = peer if variant == "default" else f"{peer} + {variant}"
                    lines.append(
                        f"| {rb} | rows/s vs {name}, batch {batch:,} | {s['rows_per_s']:,.0f} | "
                        f"{p['rows_per_s']:,.0f} | {s['rows_per_s'] / p['rows_per_s']:.1f} | {t} |"
                    )
    if plan.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ROW_KINDS), figsize=(6 * len(ROW_KINDS), 4.5), squeeze=False)
    colours = {"scheduler": "C0", "fio": "C1", "memmap": "C2", "zarr": "C3", "tensorstore": "C4"}
    for ax, rb in zip(axes[0], ROW_KINDS):
        lines = [
            (
                "scheduler",
                ("default",),
                "-",
                f"scheduler, default engine (auto), batch {plan.depth_batch:,}",
            ),
            ("scheduler", ("threads",), ":", "scheduler, engine threads"),
            ("scheduler", ("aio",), "--", "scheduler, engine aio"),
            ("fio", ("default",), "-", "fio 4 KiB randread, libaio (IOPS)"),
            ("fio", ("row_bs",), ":", "fio one-row randread, libaio (IOPS)"),
        ]
        for method, variants, style, label in lines:
            variant = variants[0]
            # An engine's line holds its points whether auto chose it or not.
            pts = sorted(
                (r["queue_depth"], r["rows_per_s"])
                for r in records
                if r["method"] == method
                and (
                    r["variant"] == variant
                    or (variant in ("threads", "aio") and r.get("engine") == variant)
                )
                and r["row_bytes"] == rb
                and r["batch_rows"] == plan.depth_batch
            )
            if pts:
                colour = colours[method] if variant == "default" else "C7"
                colour = "C9" if variant == "aio" else colour
                colour = "C8" if method == "fio" and variant != "default" else colour
                ax.plot(*zip(*pts), marker="o", ls=style, color=colour, label=label)
        peers = [("memmap", "default"), ("memmap", "madv_random"), ("zarr", "default")]
        peers.append(("tensorstore", "default"))
        for method, variant in peers:
            rs = [
                r
                for r in records
                if r["method"] == method
                and r["row_bytes"] == rb
                and r["variant"] == variant
                and r["batch_rows"] <= plan.depth_batch
            ]
            if not rs:
                continue
            r = max(rs, key=lambda r: r["batch_rows"])
            colour = "C5" if variant != "default" else colours[method]
            name = method if variant == "default" else f"{method} + {variant}"
            ax.scatter([r["queue_depth"]], [r["rows_per_s"]], color=colour, marker="s", zorder=3)
            ax.axhline(
                r["rows_per_s"],
                color=colour,
                ls="--" if variant == "default" else ":",
                lw=1,
                label=f"{name} (batch {r['batch_rows']:,}; square = its concurrency)",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("queue depth (reads in flight)")
        ax.set_ylabel("random rows per second (cold)")
        ax.set_title(f"{rb}-byte rows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="about a minute: >= 4 GB files, two depths"
    )
    ap.add_argument(
        "--out", type=Path, help="JSON output (a .md and a .png are written next to it)"
    )
    ap.add_argument("--cache", type=Path, default=ROOT / "bench_cache" / "io_gather")
    ap.add_argument(
        "--store-gib",
        type=float,
        help="feature bytes per store (default 4 quick, 8 full); small files flatter memmap",
    )
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROW_KINDS), choices=list(ROW_KINDS))
    args = ap.parse_args(argv)
    plan = make_plan(args.quick, args.store_gib)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "io_gather_quick.json" if args.quick else "io_gather.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    have_fio = shutil.which("fio") is not None
    if not have_fio:
        msg = "fio is not installed: no fio ceiling in this run (apt-get install -y fio)"
        print(f"WARNING: {msg}", file=sys.stderr)
        plan.notes.append(msg)

    t0 = time.perf_counter()
    load_start = busy()
    records: list[dict] = []
    stores = {rb: ensure_store(args.cache, rb, plan.store_bytes) for rb in args.rows}
    t_measure = time.perf_counter()
    for rb, store in stores.items():
        size = open_store(store).num_nodes * rb
        print(f"{rb}-byte rows: {store.name}, {size / 1e9:.1f} GB of features")
        records += measure_row_kind(rb, store, plan, have_fio)
    for r in records:
        r["file_bytes"] = int(open_store(stores[r["row_bytes"]]).num_nodes * r["row_bytes"])

    wall = time.perf_counter() - t0
    files = ", ".join(
        f"{rb} B rows {open_store(st).num_nodes * rb / 1e9:.1f} GB" for rb, st in stores.items()
    )
    load = f"{load_start}; at the end {busy()}"
    blocks = "/".join(
        str(b) for b in sorted({r["block_bytes"] for r in records if "block_bytes" in r})
    )
    header = (
        f"## io_gather ({'quick' if args.quick else 'full'}) - cold random-row gather\n\n"
        f"Machine: {machine()}; store on {disk_info(args.cache)}. Machine load at the start: "
        f"{load} (the machine is shared with other jobs, so figures are noisy). "
        f"Feature files: {files}. Unique random row ids, unsorted, the same ids for every "
        f"method; the file's page cache dropped (fsync + POSIX_FADV_DONTNEED) before every "
        f"round; median of up to {plan.repeats} rounds, fewer once a point's rounds pass "
        f"{plan.point_budget_s:g} s (`repeats` in the JSON); fio: median of as many runs of "
        f"{plan.fio_seconds:g} s, each right after a scheduler round at the same depth. Measured in {time.perf_counter() - t_measure:.0f} s "
        f"({wall:.0f} s with store building).\n\n"
        f"The scheduler writes into one caller-provided output per batch size, reused "
        f"from round to round, as the trainer's disk tier does with its pooled buffers. "
        f"Queue depth: `scheduler` reads in flight (default engine `auto`: `aio` at depths "
        f"up to {AUTO_AIO_MAX_DEPTH}, `threads` above; `threads`: threads of blocking pread, "
        f"each on its own segment of the sorted reads; `aio`: Linux AIO requests queued by "
        f"one thread; the engine auto did not choose is measured too, as a variant); "
        f"`fio` libaio iodepth; `memmap` 1 (one "
        f"thread of page faults); `zarr` its async.concurrency; `tensorstore` its "
        f"file_io_concurrency. `fio` rows/s is its IOPS (one 4 KiB read per row: the ceiling of "
        f"a gather without coalescing); its batch column is the scheduler batch it is compared "
        f"with. Scheduler IOPS = pread calls/s (coalesced reads of up to 1 MiB, so fewer than "
        f"rows; aligned to {blocks} bytes, the device's logical block size as detected); device "
        f"MB/s counts alignment and gaps. `fio` variant `row_bs`: reads of one row's bytes "
        f"(blockalign {blocks}). `memmap + madv_random` is memmap with "
        f"read-around turned off, the tuned form of the baseline."
    )
    out.write_text(json.dumps(records, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(records, plan, header))
    plot(records, plan, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
