"""The steps of a conversion (see :mod:`refresh_store.convert` for the list and the why)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from ..errors import ConvertError, InputDataError
from ..readers import ArrayEdges, MappedRows, RowSource, Source
from ..writer import ArrayWriter, StoreWriter
from . import _topology
from ._pass_log import PassLog
from ._row_writers import DirectWriter, read_rows, stage_rows
from .permute import choose_strategy, permute_rows
from .reorder import degree_runs, degrees_to_new_ids, write_inverse

__all__ = [
    "CRASH_ENV",
    "STEPS",
    "Plan",
    "Conversion",
    "check_splits",
    "crash_point",
    "fingerprint_files",
]

#: Environment variable naming a step after which the converter kills itself
#: (exit status 137, as after SIGKILL) once the step is recorded: crash tests.
CRASH_ENV = "REFRESH_CONVERT_CRASH_AFTER"
STEPS = (
    "plan",
    "stage",
    "derive",
    "edges_bucketed",
    "edges_deduped",
    "reordered",
    "edges_relabelled",
    "topology",
    "features",
    "labels",
    "splits",
)
_CHECK_ELEMENTS = 1 << 22  # NaN checks look at this many values at a time
_FINGERPRINT_BYTES = 1 << 20  # 1 MiB from each end of a source file
_SPLITS = ("train", "valid", "test")


@dataclass
class Plan:
    """Sizes and memory split of one conversion (computed by ``convert._plan``)."""

    num_nodes: int
    feature_dim: int
    out_dtype: np.dtype
    idx_dtype: np.dtype
    undirected: bool
    work_bytes: int
    capacity: int  # edge keys per bucket
    block_edges: int
    disk_bytes: int
    strategy: str
    #: Relation names by type id when the source's edges are typed (else None).
    relations: list[str] | None = None
    #: Type id of the reverse of each relation (symmetrising).
    reverse: list[int] | None = None

    @property
    def num_types(self) -> int:
        """Edge types the keys carry (1 = untyped)."""
        return len(self.relations) if self.relations else 1


def crash_point(step: str) -> None:
    """Die like SIGKILL when :data:`CRASH_ENV` names ``step`` (crash tests)."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def fingerprint_files(root: Path, files: list[Path]) -> dict[str, dict[str, int]]:
    """Size and crc32c of the first and last MiB of each source file.

    Cheap (reading a 57 GB source in full only to checksum it would double
    the conversion's reads) and enough to notice a replaced or truncated file
    between a crash and ``--resume``.
    """
    out: dict[str, dict[str, int]] = {}
    for path in files:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            crc = crc32c.crc32c(f.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                crc = crc32c.crc32c(f.read(), crc)
        try:
            name = str(Path(path).relative_to(root))
        except ValueError:
            name = Path(path).name
        out[name] = {"size": size, "crc32c_head_tail": crc}
    return out


def first_nonfinite(block: np.ndarray) -> int:
    """Index of the first row of a float ``block`` holding NaN or inf, else -1."""
    if len(block) == 0:
        return -1
    width = max(1, int(np.prod(block.shape[1:], dtype=np.int64)))
    step = max(1, _CHECK_ELEMENTS // width)
    for a in range(0, len(block), step):
        part = block[a : a + step]
        ok = np.isfinite(part).reshape(len(part), -1).all(axis=1)
        if not ok.all():
            return a + int(np.argmin(ok))
    return -1


def labels_to_int(raw: np.ndarray, first: int, name: str, num_classes: int | None) -> np.ndarray:
    """Source labels (ints, or floats with NaN = unlabelled) as int64 with -1 = unlabelled.

    Raises
    ------
    InputDataError
        A label that is not an integer, below -1, or not below ``num_classes``.
    """
    raw = raw.reshape(len(raw))
    if raw.dtype.kind == "f":
        missing = np.isnan(raw)
        vals = np.where(missing, -1, raw)
        bad = np.flatnonzero((vals != np.floor(vals)) | np.isinf(vals))
        if len(bad):
            i = int(bad[0])
            raise InputDataError(
                f"label of node {first + i} in {name!r} is {raw[i].item()!r}; labels must be "
                "whole numbers (NaN or -1 = unlabelled)"
            )
        out = vals.astype(np.int64)
    elif raw.dtype.kind in "iu":
        out = raw.astype(np.int64)
    else:
        raise InputDataError(f"labels in {name!r} have dtype {raw.dtype}; expected numbers")
    limit = np.iinfo(np.int64).max if num_classes is None else num_classes
    bad = np.flatnonzero((out < -1) | (out >= limit))
    if len(bad):
        i = int(bad[0])
        allowed = "[0, ...)" if num_classes is None else f"[0, {num_classes})"
        raise InputDataError(
            f"label of node {first + i} in {name!r} is {int(out[i])}; labels must lie in "
            f"{allowed}, or be -1/NaN for unlabelled"
        )
    return out


def check_splits(splits: dict[str, np.ndarray], n: int) -> None:
    """Refuse splits with ids outside ``[0, n)``, repeated ids, or shared nodes.

    Raises
    ------
    InputDataError
        With the split and an offending node.
    """
    seen: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        ids = np.asarray(splits.get(split, np.empty(0)), dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise InputDataError(f"split {split!r} holds node {bad}; node ids must lie in [0, {n})")
        uniq = np.unique(ids)
        if len(uniq) != len(ids):
            dup = int(np.sort(ids)[np.flatnonzero(np.diff(np.sort(ids)) == 0)[0]])
            raise InputDataError(f"split {split!r} lists node {dup} twice")
        for other, prev in seen.items():
            both = np.intersect1d(uniq, prev, assume_unique=True)
            if len(both):
                raise InputDataError(
                    f"splits {other!r} and {split!r} share {len(both)} nodes "
                    f"(e.g. node {int(both[0])}); splits must be disjoint"
                )
        seen[split] = uniq


class Conversion:
    """Runs the steps of one conversion in ``writer.partial_path``, skipping finished ones."""

    def __init__(
        self,
        source: Source,
        writer: StoreWriter,
        plan: Plan,
        opts: Any,
        log: PassLog,
        fingerprints: dict[str, dict[str, int]],
    ) -> None:
        self.source, self.writer, self.plan, self.opts, self.log = source, writer, plan, opts, log
        self.fingerprints = fingerprints
        self.tmp = writer.partial_path / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.features: RowSource = source.features
        self.edges = source.edges
        self.table: np.ndarray | None = None
        self.skipped: list[str] = []
        self.bytes_written = 0
        self._count_lock = threading.Lock()
        self.strategy = plan.strategy

    # -- bookkeeping
    def _todo(self, step: str) -> bool:
        if self.writer.step_done(step):
            self.skipped.append(step)
            return False
        return True

    def _done(self, step: str, info: dict[str, Any] | None = None) -> None:
        start = time.perf_counter()
        self.writer.mark_step(step, info)  # fsyncs what the step wrote
        if self.log.records:  # durability is part of the pass that wrote the data
            self.log.records[-1].seconds += time.perf_counter() - start
        crash_point(step)

    def _count(self, nbytes: int) -> None:
        with self._count_lock:  # writes also run on helper threads
            self.bytes_written += nbytes

    def _writer_fn(self, aw: ArrayWriter) -> Callable[[int, np.ndarray], None]:
        def write(start: int, block: np.ndarray) -> None:
            aw.write(start, block)
            self._count(block.nbytes)

        return write

    def _array(
        self, name: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int | None = None
    ) -> ArrayWriter:
        return self.writer.create_array(name, shape, dtype, chunk_rows)

    def _buckets(self, step: str) -> list[_topology.Bucket]:
        return [_topology.Bucket(**b) for b in self.writer.step_info(step)["buckets"]]

    def _new_id_table(self) -> np.ndarray:
        """The new id of every source node, in memory (loaded from the store on resume)."""
        if self.table is None:
            aw = self.writer.open_array("new_id")
            n = self.plan.num_nodes
            table = np.empty(n, dtype=self.plan.idx_dtype)
            step = max(1, self.plan.work_bytes // 16)
            for a in range(0, n, step):
                b = min(n, a + step)
                table[a:b] = read_rows(aw, a, b)
            self.table = table
        return self.table

    # -- steps
    def run(self) -> dict[str, Any]:
        """Run every step; return the manifest for ``StoreWriter.commit``."""
        self._plan_step()
        self._stage_step()
        self._derive_step()
        self._bucket_step()
        num_edges = self._dedupe_step()
        self._reorder_step()
        self._relabel_step()
        self._topology_step(num_edges)
        self._features_step()
        num_classes = self._labels_step()
        self._splits_step()
        shutil.rmtree(self.tmp, ignore_errors=True)
        o, s = self.opts, self.source
        extra: dict[str, Any] = {}
        if self.plan.relations is not None:
            extra["relations"] = list(self.plan.relations)
        return {
            **extra,
            "num_nodes": self.plan.num_nodes,
            "num_edges": num_edges,
            "feature_dim": self.plan.feature_dim,
            "dtype": self.plan.out_dtype.name,
            "num_classes": num_classes,
            "reorder": o.reorder,
            "undirected": self.plan.undirected,
            "self_loops": o.self_loops,
            "source": {
                "format": s.format,
                "path": s.path.name,
                "checksums": self.fingerprints,
                **s.info,
            },
            "convert": {
                "allow_nan": o.allow_nan,
                "feature_strategy": self.strategy,
                "memory_budget_bytes": o.memory_budget_bytes,
            },
        }

    def _identity(self) -> dict[str, Any]:
        o = self.opts
        return {
            "format": self.source.format,
            "num_nodes": self.plan.num_nodes,
            "reorder": o.reorder,
            "dtype": self.plan.out_dtype.name,
            "undirected": self.plan.undirected,
            "self_loops": o.self_loops,
            "allow_nan": o.allow_nan,
            "mag240m_graph": o.mag240m_graph,
            "split": o.split,
            "chunk_rows": o.chunk_rows,
            "fingerprints": self.fingerprints,
        }

    def _plan_step(self) -> None:
        ident = self._identity()
        if not self._todo("plan"):
            if self.writer.step_info("plan") != ident:
                raise ConvertError(
                    f"the unfinished conversion at {str(self.writer.partial_path)!r} was started "
                    "with other options or another source; rerun without --resume (or with "
                    "--overwrite) to start over"
                )
            return
        self._done("plan", ident)

    def _stage_step(self) -> None:
        feat_path, edge_path = self.tmp / "features.raw", self.tmp / "edge_index.raw"
        stage_feat = not self.features.random_access and self.strategy == "gather"
        stage_edges = isinstance(self.edges, ArrayEdges) and not self.edges.random_access
        if not self._todo("stage"):
            if stage_feat:
                f = self.features
                self.features = MappedRows(feat_path, 0, f.shape, f.dtype, name=f.name)
            if stage_edges:
                ei = self.edges.edge_index  # type: ignore[attr-defined]
                self.edges = ArrayEdges(MappedRows(edge_path, 0, ei.shape, ei.dtype, name=ei.name))
            return
        if stage_feat:
            with self.log.run("stage features", len(self.features)) as tick:
                self.features = stage_rows(self.features, feat_path, self.plan.work_bytes, tick)
        if stage_edges:
            ei = self.edges.edge_index  # type: ignore[attr-defined]
            with self.log.run("stage edge_index", 2) as tick:
                staged = stage_rows(ei, edge_path, self.plan.work_bytes, tick)
            self.edges = ArrayEdges(staged)
        self._done("stage")

    def _derive_step(self) -> None:
        prepare = self.source.prepare
        if prepare is None:
            return
        done = not self._todo("derive")
        factory = self.log.sub("derive")
        rb = self.features.row_bytes

        def progress(name: str, total: int) -> Callable[[int], None]:
            tick = factory(name, total)
            return lambda n: tick(n, n * rb)

        try:
            self.features = prepare(
                self.tmp, self.plan.work_bytes, self.plan.out_dtype, done, progress
            )
        finally:
            self.log.close_sub()
        if not done:
            self._done("derive")

    def _bucket_step(self) -> None:
        if not self._todo("edges_bucketed"):
            return
        with self.log.run("edges: bucket", self.edges.num_edges) as tick:
            buckets = _topology.bucket_edges(
                self.edges,
                self.plan.num_nodes,
                undirected=self.plan.undirected,
                drop_self_loops=self.opts.self_loops != "keep",
                tmp_dir=self.tmp,
                capacity=self.plan.capacity,
                block_edges=self.plan.block_edges,
                tick=tick,
                num_types=self.plan.num_types,
                rev_type=self.plan.reverse,
            )
        self._done("edges_bucketed", {"buckets": [b.as_dict() for b in buckets]})

    def _dedupe_step(self) -> int:
        deg_path = self.tmp / "degrees.raw"
        if not self._todo("edges_deduped"):
            if not self.writer.step_done("reordered"):
                self.table = np.fromfile(deg_path, dtype=self.plan.idx_dtype)
            return int(self.writer.step_info("edges_deduped")["num_edges"])
        self.table = np.zeros(self.plan.num_nodes, dtype=self.plan.idx_dtype)
        with self.log.run("edges: sort + dedupe", self.plan.num_nodes) as tick:
            buckets, num_edges = _topology.dedupe_buckets(
                self._buckets("edges_bucketed"),
                self.plan.num_nodes,
                add_self_loops=self.opts.self_loops == "add",
                degrees=self.table,
                tmp_dir=self.tmp,
                tick=tick,
                num_types=self.plan.num_types,
                self_type=self.plan.num_types - 1,  # "self", last when self-loops are added
            )
        self.table.tofile(deg_path)
        info = {"buckets": [b.as_dict() for b in buckets], "num_edges": num_edges}
        self._done("edges_deduped", info)
        return num_edges

    def _reorder_step(self) -> None:
        if not self._todo("reordered"):
            return
        n = self.plan.num_nodes
        assert self.table is not None  # filled by the dedupe step
        with self.log.run("reorder", n) as tick:
            if self.opts.reorder == "degree":
                hist, big = degrees_to_new_ids(self.table)
                degs, counts = degree_runs(hist, big)
                np.save(self.tmp / "degree_runs.npy", np.stack([degs, counts]).astype(np.int64))
            else:
                self.table[:] = np.arange(n, dtype=self.plan.idx_dtype)
            step = max(1, self.plan.work_bytes // 16)
            new_aw = self._array("new_id", (n,), np.int64)
            write = self._writer_fn(new_aw)
            for a in range(0, n, step):
                b = min(n, a + step)
                write(a, self.table[a:b].astype(np.int64))
            write_inverse(self.table, self._writer_fn(self._array("old_id", (n,), np.int64)), step)
            tick(n, 16 * n)
        self._done("reordered")

    def _relabel_step(self) -> None:
        if self.opts.reorder != "degree" or not self._todo("edges_relabelled"):
            return
        runs = np.load(self.tmp / "degree_runs.npy", allow_pickle=False)
        bounds = _topology.new_id_bounds(runs[0], runs[1], self.plan.capacity)
        old = self._buckets("edges_deduped")
        with self.log.run("edges: relabel", self.plan.num_nodes) as tick:
            buckets = _topology.relabel_buckets(
                old,
                self.plan.num_nodes,
                self._new_id_table(),
                bounds,
                tmp_dir=self.tmp,
                block_edges=self.plan.block_edges,
                tick=tick,
                num_types=self.plan.num_types,
            )
        self._done("edges_relabelled", {"buckets": [b.as_dict() for b in buckets]})
        for b in old:
            (self.tmp / b.name).unlink(missing_ok=True)

    def _topology_step(self, num_edges: int) -> None:
        if not self._todo("topology"):
            return
        n = self.plan.num_nodes
        relabelled = self.opts.reorder == "degree"
        buckets = self._buckets("edges_relabelled" if relabelled else "edges_deduped")
        indptr = self._array("indptr", (n + 1,), np.int64)
        indices = self._array("indices", (num_edges,), self.plan.idx_dtype)
        types = None
        if self.plan.relations is not None:
            types = self._writer_fn(self._array("edge_type", (num_edges,), np.int8))
        with self.log.run("topology: write CSC", n) as tick:
            written = _topology.write_csc(
                buckets,
                n,
                write_indptr=self._writer_fn(indptr),
                write_indices=self._writer_fn(indices),
                indices_dtype=self.plan.idx_dtype,
                sort=relabelled,
                tmp_dir=self.tmp,
                tick=tick,
                num_types=self.plan.num_types,
                write_types=types,
            )
        if written != num_edges:
            raise ConvertError(f"internal error: wrote {written} edges, expected {num_edges}")
        self._done("topology")
        for b in buckets:
            (self.tmp / b.name).unlink(missing_ok=True)

    def _old_id_reader(self) -> Callable[[int, int], np.ndarray]:
        aw = self.writer.open_array("old_id")
        return lambda a, b: np.array(read_rows(aw, a, b), dtype=np.int64)

    def _features_step(self) -> None:
        if not self._todo("features"):
            return
        n, d = self.plan.num_nodes, self.plan.feature_dim
        out_dtype, name = self.plan.out_dtype, self.features.name
        allow_nan = self.opts.allow_nan

        source = self.features

        def refuse(old: int) -> None:
            why = "NaN or inf"
            if source.random_access and source.dtype != out_dtype:
                row = np.asarray(source.take(np.array([old], dtype=np.int64)))
                if first_nonfinite(row) < 0:
                    why = f"a value that overflows {out_dtype.name}"
            elif source.dtype != out_dtype:
                why = f"NaN, inf or a value that overflows {out_dtype.name}"
            raise InputDataError(
                f"features of node {old} in {name!r} hold {why}; pass --allow-nan to keep such values"
            )

        aw = self._array("features", (n, d), out_dtype, self.opts.chunk_rows)
        factory = self.log.sub("features")
        direct = DirectWriter(aw, self._count)
        try:
            info = permute_rows(
                self.features,
                direct,
                out_dtype,
                self._new_id_table(),  # in the budget (see convert._plan); both plans use it
                self._old_id_reader(),
                self.plan.work_bytes,
                self.tmp,
                self.strategy,
                factory,
                check_finite=not allow_nan,
                on_nonfinite=refuse,
            )
        finally:
            direct.close()
            self.log.close_sub()
        # Timed as part of the feature pass: until the data is on disk the
        # pass has only filled the page cache.
        with self.log.run("features: fsync", None):
            aw.flush()
        self._done("features", info)

    def _labels_step(self) -> int:
        if not self._todo("labels"):
            return int(self.writer.step_info("labels")["num_classes"])
        n = self.plan.num_nodes
        aw = self._array("labels", (n,), np.int64)
        raw, known = self.source.labels, self.source.num_classes
        if raw is None:
            step = max(1, self.plan.work_bytes // 16)
            for a in range(0, n, step):
                self._writer_fn(aw)(a, np.full(min(n, a + step) - a, -1, dtype=np.int64))
            num_classes = known or 0
        else:
            path = self.tmp / "labels.raw"
            top = -1
            step = max(1, self.plan.work_bytes // 4 // max(8, raw.row_bytes))
            with self.log.run("labels: check", n) as tick, open(path, "wb") as f:
                for a in range(0, n, step):
                    b = min(n, a + step)
                    lab = labels_to_int(raw.read(a, b), a, raw.name, known)
                    top = max(top, int(lab.max()) if len(lab) else -1)
                    f.write(memoryview(lab).cast("B"))
                    tick(b - a, lab.nbytes)
            num_classes = known if known is not None else top + 1
            src = MappedRows(path, 0, (n,), np.dtype(np.int64), name=raw.name)
            strategy = choose_strategy(8 * n, self.plan.work_bytes)
            factory = self.log.sub("labels")
            try:
                permute_rows(
                    src,
                    self._writer_fn(aw),
                    np.dtype(np.int64),
                    self._new_id_table(),
                    self._old_id_reader(),
                    self.plan.work_bytes,
                    self.tmp,
                    strategy,
                    factory,
                )
            finally:
                self.log.close_sub()
                src.close()
        aw.flush()
        self._done("labels", {"num_classes": int(num_classes)})
        return int(num_classes)

    def _splits_step(self) -> None:
        if not self._todo("splits"):
            return
        table = self._new_id_table()
        total = sum(len(v) for v in self.source.splits.values())
        with self.log.run("splits", total) as tick:
            for split in _SPLITS:
                ids = np.asarray(self.source.splits.get(split, np.empty(0)), dtype=np.int64)
                aw = self._array(f"{split}_idx", (len(ids),), np.int64)
                if len(ids):
                    self._writer_fn(aw)(0, table[ids].astype(np.int64))
                tick(len(ids), 8 * len(ids))
        self._done("splits")
