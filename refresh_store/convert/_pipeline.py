"""Convert a downloaded dataset into a ReFresh store, streaming, in bounded memory.

:func:`convert` runs a fixed list of steps inside ``DST.partial/`` (see
:class:`~refresh_store.writer.StoreWriter`); each step records itself when its
output is on disk, so ``resume=True`` skips finished steps after a crash, and
the store appears at ``DST`` only by the atomic rename that follows the
manifest. Steps:

``plan``            options and source fingerprints (a resume must match them)
``stage``           compressed or csv sources that a step reads out of order become raw files
``derive``          MAG240M full graph: author and institution features (means)
``edges_bucketed``  edge keys into destination buckets        (:mod:`refresh_store.convert._topology`)
``edges_deduped``   sort, deduplicate, in-degrees
``reordered``       ``new_id``/``old_id``                      (:mod:`refresh_store.convert.reorder`)
``edges_relabelled``  keys in new ids (degree reordering only)
``topology``        ``indptr``/``indices``
``features``        rows in the new order, dtype conversion, NaN/inf check
``labels``          checked, reordered labels
``splits``          splits in new ids

Memory: one integer per node (the id table, int32 below 2^31 nodes) plus the
blocks of the current pass, sized from ``memory_budget_bytes``. Mapped source
pages are dropped after each block, so the resident set stays under the budget
plus the interpreter's own footprint.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..byte_sizes import parse_size as _parse_size
from ..errors import ConvertError, InputDataError, SourceFormatError
from ..format import MAX_RELATIONS
from ..readers import ArrayEdges, Source, open_source
from ..writer import StoreWriter, check_destination
from ._pass_log import PassLog, PassRecord, format_bytes, peak_rss_bytes
from ._steps import (
    CRASH_ENV,
    STEPS,
    Conversion,
    Plan,
    check_splits,
    crash_point,
    fingerprint_files,
)
from .permute import choose_strategy

__all__ = ["ConvertOptions", "ConvertSummary", "convert", "parse_size", "CRASH_ENV", "STEPS"]

# Outside the blocks of a pass: the mapped span of a gathered source (64 MiB),
# per-row id arrays, small tables and allocator slack.
_SLACK_BYTES = 160 << 20  # 160 MiB
_MIN_WORK_BYTES = 64 << 20  # 64 MiB
_DTYPES = {"keep": None, "float16": np.dtype(np.float16), "float32": np.dtype(np.float32)}


def parse_size(text: str | int) -> int:
    """``'2GiB'``, ``'512M'``, ``'1.5g'`` or ``2147483648`` -> bytes (at least 1).

    Raises
    ------
    ValueError
        Not a positive size.
    """
    return _parse_size(text, name="--memory-budget", minimum=1)


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert (the CLI fills this; see ``tools/convert.py --help``).

    Attributes
    ----------
    format
        ``'auto'``, ``'ogbn'``, ``'papers100m'``, ``'mag240m'`` or ``'npy'``.
    reorder
        ``'degree'`` (new id 0 = highest in-degree of the sampling graph) or ``'none'``.
    memory_budget_bytes
        Bound on the converter's working memory.
    chunk_rows
        Rows per inner chunk of the features array (default: about 1 MiB).
    dtype
        ``'keep'``, ``'float16'`` or ``'float32'`` for the stored features.
    undirected
        Symmetrise the sampling graph; ``None`` = the format's default (True for
        ogbn, papers100m and mag240m, whose graphs are citation/co-purchase
        graphs; False for npy, whose edges are taken as given).
    self_loops
        ``'drop'`` (default: a sampler gains nothing from a node sampling
        itself), ``'keep'`` (as in the source, deduplicated) or ``'add'``
        (exactly one per node).
    allow_nan
        Keep NaN/inf feature values instead of refusing the input.
    resume, overwrite
        Continue an interrupted conversion; replace an existing store.
    mag240m_graph
        ``'papers'`` or ``'full'``.
    split
        Split folder (ogbn, papers100m) or test key of ``split_dict.pt`` (mag240m).
    feature_strategy
        ``'auto'``, ``'gather'`` or ``'shuffle'`` (see :mod:`refresh_store.convert.permute`).
    progress
        Show tqdm bars on stderr.
    """

    format: str = "auto"
    reorder: str = "degree"
    memory_budget_bytes: int = 2 << 30  # 2 GiB
    chunk_rows: int | None = None
    dtype: str = "keep"
    undirected: bool | None = None
    self_loops: str = "drop"
    allow_nan: bool = False
    resume: bool = False
    overwrite: bool = False
    mag240m_graph: str = "papers"
    split: str | None = None
    feature_strategy: str = "auto"
    progress: bool = True


@dataclass
class ConvertSummary:
    """What a conversion did: sizes, bytes, time per pass and peak memory."""

    dst: str
    num_nodes: int
    num_edges: int
    feature_dim: int
    dtype: str
    num_classes: int
    bytes_written: int
    seconds: float
    peak_rss_bytes: int
    memory_budget_bytes: int
    feature_strategy: str
    resumed_steps: list[str] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["passes"] = [p.as_dict() for p in self.passes]
        return d

    def table(self) -> str:
        """The summary as a plain-text table."""
        lines = [
            f"store        {self.dst}",
            f"nodes (N)    {self.num_nodes:,}",
            f"edges (E)    {self.num_edges:,}",
            f"features (D) {self.feature_dim} x {self.dtype}",
            f"classes      {self.num_classes}",
            f"written      {format_bytes(self.bytes_written)}",
            f"time         {self.seconds:.1f} s",
            f"peak RSS     {format_bytes(self.peak_rss_bytes)} "
            f"(budget {format_bytes(self.memory_budget_bytes)})",
            "",
            f"{'pass':<30} {'seconds':>9} {'rows':>14} {'MB/s':>9} {'RSS after':>11}",
        ]
        for p in self.passes:
            lines.append(
                f"{p.name:<30} {p.seconds:>9.2f} {p.rows:>14,} {p.mb_per_s:>9.1f} "
                f"{format_bytes(p.rss_after):>11}"
            )
        if self.resumed_steps:
            lines.append(f"resumed: skipped {', '.join(self.resumed_steps)}")
        return "\n".join(lines)


def _check_options(o: ConvertOptions) -> None:
    choices = {
        "reorder": ("degree", "none"),
        "dtype": tuple(_DTYPES),
        "self_loops": ("drop", "keep", "add"),
        "mag240m_graph": ("papers", "full"),
        "feature_strategy": ("auto", "gather", "shuffle"),
    }
    for name, allowed in choices.items():
        if getattr(o, name) not in allowed:
            raise ValueError(f"{name}={getattr(o, name)!r}; use one of {', '.join(allowed)}")
    if o.memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes={o.memory_budget_bytes!r} must be positive")
    if o.chunk_rows is not None and o.chunk_rows < 1:
        raise ValueError(f"chunk_rows={o.chunk_rows!r} must be >= 1")


def _plan(source: Source, o: ConvertOptions) -> Plan:
    n, d = source.num_nodes, source.feature_dim
    out_dtype = _DTYPES[o.dtype] or np.dtype(source.features.dtype)
    if out_dtype not in (np.float16, np.float32):
        out_dtype = np.dtype(np.float32)
    idx_dtype = np.dtype(np.int32 if n < 2**31 else np.int64)
    table_bytes = n * idx_dtype.itemsize
    work = o.memory_budget_bytes - table_bytes - _SLACK_BYTES
    if work < _MIN_WORK_BYTES:
        need = table_bytes + _SLACK_BYTES + _MIN_WORK_BYTES
        raise ConvertError(
            f"--memory-budget {format_bytes(o.memory_budget_bytes)} is too small for "
            f"{n:,} nodes (the node id table alone takes {format_bytes(table_bytes)}); "
            f"use at least {format_bytes(need)}"
        )
    undirected = source.default_undirected if o.undirected is None else o.undirected
    e_max = source.edges.num_edges * (2 if undirected else 1) + (n if o.self_loops == "add" else 0)
    out_feat = n * d * out_dtype.itemsize
    output = out_feat + (n + 1) * 8 + e_max * idx_dtype.itemsize + 3 * n * 8
    staged = 0
    if not source.features.random_access and o.feature_strategy == "gather":
        staged += n * d * source.features.dtype.itemsize
    if isinstance(source.edges, ArrayEdges) and not source.edges.random_access:
        staged += source.edges.num_edges * 16
    strategy = choose_strategy(n * source.features.row_bytes, work, o.feature_strategy)
    if not source.features.random_access and o.feature_strategy == "auto":
        strategy = "shuffle"  # one front-to-back read; no staged copy needed
    derived = (n - len(source.features)) * d * out_dtype.itemsize
    temp = staged + derived + max(2 * e_max * 8, out_feat if strategy == "shuffle" else 0) + n * 8
    relations, reverse = _relations(source, o)
    if relations is not None:
        output += e_max  # edge_type, one byte per edge
        if n * n * len(relations) >= 1 << 63:
            raise ConvertError(
                f"{n:,} nodes with {len(relations)} edge types do not fit the converter's "
                "64-bit edge keys (nodes^2 x types must stay below 2^63)"
            )
    return Plan(
        num_nodes=n,
        feature_dim=d,
        out_dtype=np.dtype(out_dtype),
        idx_dtype=idx_dtype,
        undirected=undirected,
        work_bytes=work,
        capacity=max(1 << 16, work // 16),
        block_edges=int(min(1 << 24, max(1 << 16, work // 64))),
        disk_bytes=output + temp,
        strategy=strategy,
        relations=relations,
        reverse=reverse,
    )


def _relations(source: Source, o: ConvertOptions) -> tuple[list[str] | None, list[int] | None]:
    """Relation names and reverses of a typed source's store (``"self"`` added last with
    ``self_loops='add'``), or ``(None, None)``."""
    names = source.edges.relations
    if names is None:
        return None, None
    relations = list(names)
    reverse = list(source.edges.reverse or range(len(relations)))
    if o.self_loops == "add":
        relations.append("self")
        reverse.append(len(relations) - 1)
    if len(relations) > MAX_RELATIONS:
        raise ConvertError(
            f"the source has {len(relations)} edge types; a store holds at most {MAX_RELATIONS}"
        )
    return relations, reverse


def _check_disk(dst: Path, need: int) -> None:
    parent = dst.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise ConvertError(
            f"not enough free space for {str(dst)!r}: the conversion needs about "
            f"{format_bytes(need)} (store and temporary files), {format_bytes(free)} is free "
            f"on {str(parent)!r}"
        )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    **overrides: Any,
) -> ConvertSummary:
    """Convert the dataset at ``src`` into a store at ``dst``.

    Parameters
    ----------
    src
        Dataset folder (ogbn csv, papers100M npz, MAG240M ogb.lsc or npy layout).
    dst
        Store folder to create. Work happens in ``dst.partial/``.
    options
        :class:`ConvertOptions`; keyword ``overrides`` replace its fields.

    Returns
    -------
    ConvertSummary

    Raises
    ------
    SourceFormatError
        Missing, truncated or malformed source files (nothing is left at ``dst``).
    InputDataError
        Invalid values: edge ids out of range, NaN/inf features, bad labels or
        splits (nothing is left at ``dst``).
    ConvertError
        ``dst`` exists (without ``overwrite``) or is a non-empty folder that is
        not a store, the memory budget is too small, or the disk is full (the
        partial output is removed and the message says how much space is needed).

    Examples
    --------
    >>> convert("dataset/ogbn_products", "stores/products", memory_budget_bytes=1 << 30)  # doctest: +SKIP
    """
    opts = replace(options or ConvertOptions(), **overrides)
    _check_options(opts)
    dst = Path(dst)
    start = time.perf_counter()
    check_destination(dst, overwrite=opts.overwrite)
    source = open_source(src, opts.format, split=opts.split, mag240m_graph=opts.mag240m_graph)
    try:
        if source.num_nodes < 1:
            raise SourceFormatError(
                f"source {str(src)!r} has {source.num_nodes} nodes; a store needs at least one"
            )
        plan = _plan(source, opts)
        check_splits(source.splits, plan.num_nodes)
        partial = dst.with_name(dst.name + ".partial")
        if not (opts.resume and partial.exists()):
            _check_disk(dst, plan.disk_bytes)
        fingerprints = fingerprint_files(source.path, source.files)
        writer = StoreWriter(dst, overwrite=opts.overwrite, resume=opts.resume)
        log = PassLog(opts.progress)
        run = Conversion(source, writer, plan, opts, log, fingerprints)
        try:
            manifest = run.run()
            crash_point("before_commit")
            with log.run("commit: checksums, manifest", None):
                writer.commit(manifest)
        except (InputDataError, SourceFormatError, ConvertError):
            writer.abort()
            raise
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            writer.abort()
            raise ConvertError(
                f"disk full while writing {str(writer.partial_path)!r}; removed the partial "
                f"output — the conversion needs about {format_bytes(plan.disk_bytes)} free "
                f"next to {str(dst)!r}"
            ) from None
    finally:
        source.close()
    return ConvertSummary(
        dst=str(dst),
        num_nodes=plan.num_nodes,
        num_edges=int(manifest["num_edges"]),
        feature_dim=plan.feature_dim,
        dtype=plan.out_dtype.name,
        num_classes=int(manifest["num_classes"]),
        bytes_written=run.bytes_written,
        seconds=time.perf_counter() - start,
        peak_rss_bytes=peak_rss_bytes(),
        memory_budget_bytes=opts.memory_budget_bytes,
        feature_strategy=run.strategy,
        resumed_steps=run.skipped,
        passes=log.records,
    )
