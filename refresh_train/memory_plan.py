"""The memory plan: every structure's host RAM and device memory, known before anything starts.

:func:`plan_memory` sizes what a training run will hold from the store's
manifest, the model and the flags, and from a few batches sampled at start
(cheap: the sampler alone, no features), so that a run that cannot fit is
refused before it allocates anything big or writes anything
(:meth:`MemoryPlan.check`, ``--max-rss`` / ``--device-memory``), and the
trainer prints the plan as one table.

What it counts (one :class:`PlanItem` each):

* the interpreter and libraries (this process's RSS when planned, at least
  :data:`LIBRARIES_BYTES`) and what is loaded on first use
  (:data:`RUNTIME_BYTES`);
* the topology (copied into RAM by ``NeighborSampler(in_memory="auto")``
  or read in place through its memory map), labels and the epoch's order;
* the device tier, the history table and its host-side birth stamps, the
  host tier and its replacement policy's index, the lookahead windows;
* the batches: the top tier's batch buffers (the features of every batch
  that holds them), the lower tiers' staging buffers, the blocks and ids of
  every batch in flight (what the loader's byte budget bounds), refresh's
  unpruned second sample, the sampler's scratch, the I/O scheduler's buffers;
* the model's parameters, gradients and Adam state, and the activations and
  gradients of one step, estimated from the measured block sizes and the
  sparse models' chunked casting (:mod:`refresh_train.models._sparse`);
* evaluation's batches, activations and logits; the split's resize and the
  checkpoint's copies between epochs.

Each item says when it is held (``always``, or only ``train``, ``eval`` or
``epoch end``) and how its figure is known: ``exact`` (a size the code
allocates), ``measured`` (from this machine or the probe batches), ``bound``
(at most this) or ``estimate`` (a model of what torch keeps). The total is
what is always held plus the largest phase.

Figures for CUDA (device memory, pinned staging, the CUDA context) follow
the same code paths but have not been measured on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from ._memory_sizes import (
    layerwise_block,
    policy_bytes,
    probe_sampled_eval,
    probe_training,
    sampler_scratch_bytes,
    scheduler_bytes,
    step_bytes,
    widest_layer,
    worst_case,
)
from .config import ConfigError, TrainConfig
from .epoch import num_batches
from .loader import batches_in_flight
from .metrics import format_bytes
from .tiers import LOWER_BATCH_BUFFERS

if TYPE_CHECKING:
    from refresh_store.store import Store

    from .models import BlockGNN

__all__ = [
    "MemoryPlan",
    "MemoryPlanError",
    "PlanItem",
    "BatchShape",
    "plan_memory",
    "LIBRARIES_BYTES",
    "RUNTIME_BYTES",
    "PROBE_BATCHES",
    "PROBE_MARGIN",
    "policy_bytes",
    "step_bytes",
]

#: RSS of a fresh ``python -c "import torch, numba, zarr, torch_geometric"``
#: that also imports this project's trainer modules: 413 MiB (403 MiB for the
#: four libraries alone), median of 3 fresh processes of
#: ``benchmarks/memory_plan.py`` on the 2-core benchmark machine (Python
#: 3.11.7, torch 2.13.0+cpu, numba 0.68.1, zarr 3.1.6, torch_geometric 2.8.1;
#: ``benchmarks/results/memory_plan.md``). The plan takes the larger of this
#: and the planning process's own RSS.
LIBRARIES_BYTES = 413 << 20  # 413 MiB

#: What a process grows by on first use beyond its imports: Numba kernels
#: loaded from their cache, library code pages the first step and the first
#: evaluation touch (ogb's evaluator imports pandas), torch's thread pools.
#: Measured by the same script as RSS after a 2-epoch run on a 600-node store
#: minus RSS after the imports: 138 MiB (median of 3), rounded up to 160 MiB.
RUNTIME_BYTES = 160 << 20  # 160 MiB

#: Device memory of a CUDA context and torch's kernels (not measured here:
#: a commonly seen figure, an estimate).
CUDA_CONTEXT_BYTES = 512 << 20  # 512 MiB

#: Training batches sampled at start to measure per-batch node and edge counts.
PROBE_BATCHES = 4
#: The measured per-batch figures are the largest probe's times this (capped
#: at the fanouts' worst case): full batches of an epoch differ by a few per
#: cent from one another.
PROBE_MARGIN = 1.10

#: ``BufferPool`` allocates 1/8 more than asked, so that a slightly larger
#: batch reuses the buffer.
POOL_HEADROOM = 1.125

_F32 = 4

PHASES = ("always", "train", "eval", "epoch end")
BASES = ("exact", "measured", "bound", "estimate")


class MemoryPlanError(ConfigError):
    """A run's memory plan does not fit ``--max-rss``, ``--device-memory`` or the machine."""


@dataclass(frozen=True)
class PlanItem:
    """One structure of the plan.

    Attributes
    ----------
    name
        What it is, as the table shows it.
    ram_bytes, device_bytes
        Host RAM (resident, as RSS counts it) and device memory. With
        ``--device cpu`` the device's structures are in RAM and count there.
    phase
        When it is held: ``"always"`` (from start to end), ``"train"``
        (during an epoch's training pass), ``"eval"`` or ``"epoch end"``
        (the split's resize and the checkpoint).
    basis
        ``"exact"``, ``"measured"``, ``"bound"`` or ``"estimate"``.
    note
        How the figure is made up.
    flags
        Flags that shrink it (named by a refusal).
    """

    name: str
    ram_bytes: int
    device_bytes: int
    phase: str
    basis: str
    note: str = ""
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchShape:
    """Per-batch figures: measured on probe batches, with the margin applied.

    Attributes
    ----------
    blocks
        ``(num_src, num_dst, num_edges)`` per block, block 0 (the input side) first.
    input_rows
        Raw feature rows a batch reads (``num_src`` of block 0).
    rows_beyond_device
        Of those, rows at or above the device tier's smallest ``K`` (what the
        host tier, windows and disk serve).
    features_bytes
        ``input_rows * row_bytes``.
    blocks_bytes
        Edge indices, node ids, seeds and labels (and refresh's pruning
        arrays and cached embeddings): a batch's bytes besides its features.
    probed
        Batches sampled to measure these.
    """

    blocks: tuple[tuple[int, int, int], ...]
    input_rows: int
    rows_beyond_device: int
    features_bytes: int
    blocks_bytes: int
    probed: int

    @property
    def nbytes(self) -> int:
        """Bytes of one batch once fetched (the loader's unit)."""
        return self.features_bytes + self.blocks_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Every structure's memory, and the totals a run is checked against.

    Attributes
    ----------
    items
        The structures.
    device
        ``"cpu"`` or a CUDA device name.
    batch, eval_batch
        Per-batch figures of training and (sampled or layer-wise) evaluation.
    topology_in_ram
        Whether the sampler copies the topology into RAM (the trainer passes
        this decision on, so the plan and the run agree).
    loader_budget_bytes
        The loader's byte budget (``--prefetch-budget``, or derived: the
        batches its queues may hold times :attr:`batch`'s bytes).
    batch_buffers, eval_batch_buffers
        Batch buffers the top tier keeps for training and evaluation.
    lower_batch_buffers
        Batch buffers each training tier below the top keeps.
    max_rss_bytes, device_memory_bytes
        What :meth:`check` compares the totals with (0 = no check) and where
        the figure comes from (:attr:`limits_from`).
    """

    items: tuple[PlanItem, ...]
    device: str
    batch: BatchShape
    eval_batch: BatchShape | None
    topology_in_ram: bool
    loader_budget_bytes: int
    batch_buffers: int
    eval_batch_buffers: int
    lower_batch_buffers: int = LOWER_BATCH_BUFFERS
    max_rss_bytes: int = 0
    device_memory_bytes: int = 0
    limits_from: dict[str, str] = field(default_factory=dict)

    @property
    def on_cpu(self) -> bool:
        """Whether the device is the CPU (device structures live in RAM)."""
        return self.device == "cpu"

    def _column(self, item: PlanItem, where: str) -> int:
        if where == "ram":
            return item.ram_bytes + (item.device_bytes if self.on_cpu else 0)
        return 0 if self.on_cpu else item.device_bytes

    def phase_bytes(self, where: str = "ram") -> dict[str, int]:
        """Bytes per phase in RAM (``where="ram"``) or on the device."""
        out = dict.fromkeys(PHASES, 0)
        for item in self.items:
            out[item.phase] += self._column(item, where)
        return out

    def total(self, where: str = "ram") -> int:
        """What the run holds at most: always-held structures plus the largest phase."""
        p = self.phase_bytes(where)
        return p["always"] + max(p["train"], p["eval"], p["epoch end"])

    def _largest(self, where: str, n: int = 4) -> list[PlanItem]:
        phases = self.phase_bytes(where)
        worst = max(("train", "eval", "epoch end"), key=lambda k: phases[k])
        counted = [i for i in self.items if i.phase in ("always", worst)]
        counted = [i for i in counted if self._column(i, where) > 0]
        return sorted(counted, key=lambda i: -self._column(i, where))[:n]

    def check(self) -> None:
        """Raise :class:`MemoryPlanError` when a total exceeds its limit.

        The message is one line: the figure needed, the largest structures,
        the limit and the flag that sets it, and the flags that shrink the
        largest structures.
        """
        for where, limit, flag, what in (
            ("ram", self.max_rss_bytes, "--max-rss", "RAM"),
            ("device", self.device_memory_bytes, "--device-memory", "device memory"),
        ):
            need = self.total(where)
            if limit <= 0 or need <= limit:
                continue
            top = self._largest(where)
            parts = ", ".join(f"{i.name} {format_bytes(self._column(i, where))}" for i in top)
            flags: list[str] = []
            for i in top:
                flags += [f for f in i.flags if f not in flags]
            lower = f" or lower {'/'.join(flags)}" if flags else ""
            if self.limits_from.get(where) == "machine":
                have = (
                    f"the machine has {format_bytes(limit)} available ({flag} not given): "
                    f"free memory, give {flag}{lower}"
                )
            else:
                have = f"{flag} is {format_bytes(limit)}: raise it{lower}"
            raise MemoryPlanError(
                f"the plan needs {format_bytes(need)} of {what} ({parts}); {have}"
            )

    def format_table(self) -> str:
        """The plan as a plain-text table (the trainer prints it at start)."""
        cpu = self.on_cpu
        head = ["structure", "RAM"] + ([] if cpu else ["device"]) + ["when", "basis", "note"]
        rows = []
        for i in self.items:
            ram = format_bytes(self._column(i, "ram"))
            row = [i.name, ram] + ([] if cpu else [format_bytes(i.device_bytes)])
            rows.append(row + [i.phase, i.basis, i.note])
        total = ["total", format_bytes(self.total("ram"))]
        total += [] if cpu else [format_bytes(self.total("device"))]
        phases = self.phase_bytes("ram")
        worst = max(("train", "eval", "epoch end"), key=lambda k: phases[k])
        rows.append(total + ["", "", f"always + {worst} (the largest phase)"])
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head) - 1)]

        def line(r: list[str]) -> str:
            cells = [
                r[c].ljust(widths[c]) if c == 0 or c >= len(head) - 3 else r[c].rjust(widths[c])
                for c in range(len(head) - 1)
            ]
            return "  ".join(cells + [r[-1]]).rstrip()

        where = "device = cpu: the device tier, table, model and step are in RAM" if cpu else ""
        limits = []
        for key, flag, value in (
            ("ram", "--max-rss", self.max_rss_bytes),
            ("device", "--device-memory", self.device_memory_bytes),
        ):
            if key == "device" and cpu:
                continue
            if value <= 0:
                limits.append(f"{flag}: no check")
            elif self.limits_from.get(key) == "machine":
                limits.append(f"{flag}: {format_bytes(value)} (available now)")
            else:
                limits.append(f"{flag} {format_bytes(value)}")
        title = "memory plan (" + "; ".join([s for s in [where, *limits] if s]) + ")"
        sep = "  ".join("-" * w for w in widths) + "  " + "-" * 4
        return "\n".join([title, line(head), sep, *map(line, rows[:-1]), sep, line(rows[-1])])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and checkpoint-safe): totals, limits, items, per-batch figures."""
        return {
            "device": self.device,
            "ram_total_bytes": self.total("ram"),
            "device_total_bytes": self.total("device"),
            "ram_phase_bytes": self.phase_bytes("ram"),
            "max_rss_bytes": self.max_rss_bytes,
            "device_memory_bytes": self.device_memory_bytes,
            "limits_from": dict(self.limits_from),
            "topology_in_ram": self.topology_in_ram,
            "loader_budget_bytes": self.loader_budget_bytes,
            "batch_buffers": self.batch_buffers,
            "eval_batch_buffers": self.eval_batch_buffers,
            "batch": _shape_dict(self.batch),
            "eval_batch": None if self.eval_batch is None else _shape_dict(self.eval_batch),
            "items": [dataclasses.asdict(i) | {"flags": list(i.flags)} for i in self.items],
        }


def _shape_dict(s: BatchShape) -> dict[str, Any]:
    return dataclasses.asdict(s) | {"blocks": [list(b) for b in s.blocks]}


# ------------------------------------------------------------- per-batch figures
def _shape(
    probes: Sequence[list[tuple[int, int, int]]],
    input_rows_beyond: Sequence[int],
    worst: list[tuple[int, int, int]],
    num_seeds: int,
    row_bytes: int,
    margin: float,
    extra_blocks_bytes: int = 0,
) -> BatchShape:
    blocks = []
    for layer, cap in enumerate(worst):
        got = [p[layer] for p in probes]
        blocks.append(
            tuple(min(c, math.ceil(max(g[k] for g in got) * margin)) for k, c in enumerate(cap))
        )
    # The seeds are exactly the batch size.
    s, d, e = blocks[-1]
    blocks[-1] = (max(s, num_seeds), num_seeds, e)
    rows = blocks[0][0]
    beyond = min(rows, math.ceil(max(input_rows_beyond) * margin))
    # edge_index int64 [2, E], layer nodes int64, seeds and labels int64.
    ids = sum(16 * e + 8 * s for s, _, e in blocks) + 16 * num_seeds
    return BatchShape(
        blocks=tuple(blocks),  # type: ignore[arg-type]
        input_rows=rows,
        rows_beyond_device=beyond,
        features_bytes=rows * row_bytes,
        blocks_bytes=ids + extra_blocks_bytes,
        probed=len(probes),
    )


def _current_rss() -> int:
    return int(psutil.Process().memory_info().rss)


# ------------------------------------------------------------------- the plan
def plan_memory(
    config: TrainConfig,
    store: Store | None = None,
    *,
    model: BlockGNN | None = None,
    available_bytes: int | None = None,
) -> MemoryPlan:
    """The memory plan of the run ``config`` describes; allocates nothing big.

    Opens the store (unless given), builds the model on the CPU (unless
    given) to count its parameters, and samples :data:`PROBE_BATCHES`
    training batches (and one batch each of the validation and test nodes)
    through the store's memory-mapped topology to measure their sizes.

    Parameters
    ----------
    config
        The run's settings; ``max_rss_bytes`` and ``device_memory_bytes``
        set the limits :meth:`MemoryPlan.check` uses (``None``: the memory
        available now; 0: no check).
    store
        The open store (opened from ``config.store`` when ``None``).
    model
        The run's model (built from ``config`` when ``None``).
    available_bytes
        RAM available now (default ``psutil.virtual_memory().available``);
        decides whether the topology is copied into RAM and the default limit.

    Returns
    -------
    MemoryPlan
    """
    from refresh_store.store import open_store

    from .history import BudgetSplit
    from .models import RELATIONAL_MODELS, build_model, model_options
    from .topology import IN_MEMORY_AUTO_FRACTION

    if store is None:
        store = open_store(config.store)
    if model is None:
        model = build_model(
            config.model,
            in_dim=store.feature_dim,
            hidden=config.hidden,
            out_dim=max(1, store.num_classes),
            num_layers=config.layers,
            dropout=config.dropout,
            norm=config.norm,
            **model_options(config.model, store),
        )
    if available_bytes is None:
        available_bytes = int(psutil.virtual_memory().available)
    tiers = config.tiers
    cache = tiers.cache
    n, m = store.num_nodes, store.num_edges
    region = store.region("features")
    row = region.row_bytes
    itemsize = np.dtype(region.dtype).itemsize
    dims = list(model.dims)
    layers = config.layers
    fanouts = (0,) * layers if config.model == "mlp" else config.fanouts
    eval_fanouts = config.eval.fanouts or fanouts
    hist = config.history
    items: list[PlanItem] = []

    def add(name, ram, dev, phase, basis, note="", flags=()):
        items.append(PlanItem(name, int(ram), int(dev), phase, basis, note, tuple(flags)))

    # --- sizes the cache mode will choose (modes/raw.py, modes/refresh.py)
    hist_layers: tuple[int, ...] = ()
    table_row = 0
    k_start = k_min = 0
    h_max = h_start = 0
    device_max = 0
    split_resize = 0
    if cache == "raw":
        k_start = k_min = min(n, tiers.cache_budget_bytes // row)
        device_max = k_start * row
    elif cache == "refresh":
        hist_layers = hist.resolved_layers(layers)
        table_row = dims[hist_layers[0]] * (2 if hist.dtype == "float16" else 4)
        split = BudgetSplit(tiers.cache_budget_bytes, hist.fraction)
        fractions = [split.hist_fraction] + (list(split.candidates()) if split.automatic else [])
        sizes = []
        for f in fractions:
            h_bytes = split.hist_bytes_at(f)
            k = min(n, (split.budget_bytes - h_bytes) // row)
            h = min(n, h_bytes // (table_row * len(hist_layers)))
            sizes.append((k, h))
        k_start, h_start = sizes[0]
        k_min = min(k for k, _ in sizes)
        h_max = max(h for _, h in sizes)
        device_max = max(k * row + h * table_row * len(hist_layers) for k, h in sizes)
        if split.automatic:
            split_resize = max(max(k * row for k, _ in sizes), max(h * table_row for _, h in sizes))
    fits = tiers.lookahead_budget_bytes >= row and tiers.lookahead_batches > 1
    lookahead = tiers.lookahead_batches if cache != "none" and fits else 0
    lag = hist.resolved_lag(lookahead) if cache == "refresh" else None
    count_saved = cache == "refresh" and (hist.count_saved or hist.fraction is None)
    prefetch = config.loader.prefetch_batches
    admitted, fetched = batches_in_flight(prefetch, lookahead, lag)
    # A loader lives for one epoch: it never holds more batches than the epoch has.
    epoch_len = max(1, num_batches(len(store.train_idx), config.batch_size))
    admitted, fetched = min(admitted, epoch_len), min(fetched, epoch_len)
    lookahead = min(lookahead, epoch_len) if lookahead > 1 and epoch_len > 1 else 0

    # --- probe batches (the sampler alone: ids and edges, no features)
    probes, beyond = probe_training(store, config, fanouts, k_min, PROBE_BATCHES)
    # Per-relation sampling takes up to the fanout from every relation.
    per_node = store.num_relations if config.model in RELATIONAL_MODELS else 1
    worst = worst_case(config.batch_size, [f * per_node for f in fanouts], n, m)
    if not probes:  # no training nodes: nothing to measure
        probes, beyond = [worst], [worst[0][0]]
    # Block.edge_type: one byte per sampled edge.
    extra = sum(max(p[v][2] for p in probes) for v in range(layers)) if per_node > 1 else 0
    if cache == "refresh":
        # Pruning arrays (positions, ids: 24 B per source of a cached layer) and the
        # cached embeddings copied into the batch, at most one per table node.
        srcs = [max(p[v][0] for p in probes) for v in hist_layers]
        extra += sum(24 * s + min(s, h_max) * table_row for s in srcs)
    shape = _shape(probes, beyond, worst, config.batch_size, row, PROBE_MARGIN, extra)
    probed = f"largest of {shape.probed} batches +{PROBE_MARGIN - 1:.0%}"

    if config.eval.mode == "layerwise":
        eblocks = layerwise_block(store, config.eval.batch_size)
        # Layers >= 1 read float32 hidden rows from the per-layer file.
        e_row = max(row, _F32 * max(dims[1:-1], default=0))
        eval_shape = _shape([eblocks], [eblocks[0][0]], eblocks, eblocks[0][1], e_row, 1.0)
        eval_nodes = len(store.valid_idx) + len(store.test_idx)
        eval_note = "one-hop blocks of the largest in-degrees (layer-wise)"
        eval_basis = "bound"
    else:
        eprobes, eval_nodes = probe_sampled_eval(store, config, eval_fanouts)
        eseeds = min(config.eval.batch_size, max(1, eval_nodes))
        eworst = worst_case(eseeds, [f * per_node for f in eval_fanouts], n, m)
        if not eprobes:
            eprobes = [eworst]
        eval_shape = _shape(eprobes, [p[0][0] for p in eprobes], eworst, eseeds, row, PROBE_MARGIN)
        eval_note = f"largest of {len(eprobes)} batches +{PROBE_MARGIN - 1:.0%}"
        eval_basis = "measured"

    # --- the process itself
    rss_now = _current_rss()
    add(
        "interpreter and libraries",
        max(rss_now, LIBRARIES_BYTES) + RUNTIME_BYTES,
        CUDA_CONTEXT_BYTES if config.device.startswith("cuda") else 0,
        "always",
        "measured",
        f"RSS at planning {format_bytes(rss_now)} (at least {format_bytes(LIBRARIES_BYTES)}) "
        f"+ {format_bytes(RUNTIME_BYTES)} loaded on first use",
    )

    # --- topology, labels, order
    topo = store.indptr.nbytes + store.indices.nbytes
    # Relational models sample per relation: the sampler holds edge_type too.
    typed_bytes = store.edge_type.nbytes if config.model in RELATIONAL_MODELS else 0
    topo += typed_bytes
    in_ram = topo <= IN_MEMORY_AUTO_FRACTION * available_bytes
    if in_ram:
        add(
            "topology (copied into RAM)",
            topo,
            0,
            "always",
            "exact",
            f"indptr {format_bytes(store.indptr.nbytes)} + indices "
            f"{format_bytes(store.indices.nbytes)}"
            + (f" + edge_type {format_bytes(typed_bytes)}" if typed_bytes else ""),
        )
    else:
        add(
            "topology (memory-mapped)",
            0,
            0,
            "always",
            "bound",
            f"{format_bytes(topo)} read in place: its pages show in RSS while cached and "
            "the kernel reclaims them under pressure; not in the total",
        )
    labels_mapped = np.dtype(store.labels.dtype) == np.int64
    add(
        "labels",
        8 * n,
        0,
        "always",
        "bound",
        "memory-mapped, pages of training seeds touched" if labels_mapped else "int64 copy",
    )
    n_train = len(store.train_idx)
    add(
        "epoch order",
        3 * 8 * n_train,
        0,
        "train",
        "exact",
        f"{n_train:,} training ids: mapped, permutation, shuffled copy",
    )

    # --- device tier, history table, host tier, windows
    on_cuda = config.device.startswith("cuda")
    auto = cache == "refresh" and hist.fraction is None
    if auto:
        # The split moves after every epoch: only the two sides together are fixed.
        add(
            "device tier + history table",
            0,
            device_max,
            "always",
            "bound",
            f"{k_start:,} rows x {row} B + {h_start:,} nodes x {len(hist_layers)} layer(s) x "
            f"{table_row} B at the start; the automatic split moves the line between them",
            ("--cache-budget",),
        )
    elif cache != "none":
        add(
            "device tier (raw rows)",
            0,
            k_start * row,
            "always",
            "exact",
            f"{k_start:,} hottest rows x {row} B",
            ("--cache-budget",),
        )
    if cache == "refresh":
        if not auto:
            add(
                "history table",
                0,
                h_start * table_row * len(hist_layers),
                "always",
                "exact",
                f"{h_start:,} nodes x {len(hist_layers)} layer(s) x {table_row} B",
                ("--cache-budget", "--hist-fraction"),
            )
        add(
            "history birth stamps",
            8 * h_max * len(hist_layers),
            0,
            "always",
            "bound" if auto else "exact",
            f"8 B per table node per cached layer, up to {h_max:,} nodes",
            ("--cache-budget",),
        )
    host_rows = min(n, tiers.host_budget_bytes // row) if cache != "none" else 0
    if host_rows:
        pol = policy_bytes(tiers.host_policy, host_rows, n)
        add(
            "host tier",
            host_rows * row + pol,
            0,
            "always",
            "exact",
            f"{host_rows:,} rows x {row} B + {tiers.host_policy} index {format_bytes(pol)} "
            f"(8 B per node)",
            ("--host-budget",),
        )
    window_rows = 0
    if lookahead:
        window_rows = min(
            tiers.lookahead_budget_bytes // row,
            lookahead * shape.rows_beyond_device,
            max(0, n - k_min),
        )
        needs = 8 * shape.rows_beyond_device * lookahead + 9 * window_rows
        add(
            "lookahead windows",
            2 * POOL_HEADROOM * window_rows * row + 2 * needs,
            0,
            "train",
            "bound",
            f"2 windows of up to {window_rows:,} rows (+1/8 buffer headroom)",
            ("--lookahead-budget", "--lookahead"),
        )

    # --- batches
    # A tier below the top fills a buffer per read, alive until the top copied it: serial
    # loading reads one batch at a time; a pipelined one may stage a window meanwhile.
    lower_buffers = 1 if prefetch == 0 else LOWER_BATCH_BUFFERS
    budget = config.loader.prefetch_budget_bytes
    derived = budget is None
    if derived:
        budget = admitted * shape.nbytes
    fits_in_budget = max(1, budget // max(1, shape.nbytes))
    admitted_eff = min(admitted, fits_in_budget + 1)
    fetched_eff = min(fetched, fits_in_budget + 1)
    feat = fetched_eff * shape.features_bytes
    if on_cuda:
        add(
            "batch features",
            fetched_eff * shape.rows_beyond_device * row,
            feat,
            "always",
            "bound",
            f"{fetched_eff} batches x {shape.input_rows:,} rows ({probed}); pinned staging "
            "of their host rows",
            ("--batch-size", "--prefetch", "--fanouts"),
        )
    else:
        add(
            "batch features",
            POOL_HEADROOM * feat,
            0,
            "always",
            "bound",
            f"{fetched_eff} buffer(s) x {shape.input_rows:,} rows ({probed}), kept for reuse",
            ("--batch-size", "--prefetch", "--fanouts"),
        )
        if cache != "none" and shape.rows_beyond_device:
            lower = 2 * lower_buffers * POOL_HEADROOM * shape.rows_beyond_device * row
            add(
                "host/disk staging buffers",
                lower,
                0,
                "always",
                "bound",
                f"2 tiers x {lower_buffers} buffer(s) x {shape.rows_beyond_device:,} rows "
                "beyond the device tier",
                ("--batch-size", "--fanouts"),
            )
    add(
        "batches in flight (ids, blocks)",
        min(admitted_eff * shape.blocks_bytes, budget),
        0,
        "train",
        "bound",
        f"{admitted_eff} batches x {format_bytes(shape.blocks_bytes)}; loader budget "
        f"{format_bytes(budget)}" + (" (derived)" if derived else ""),
        ("--prefetch", "--prefetch-budget", "--batch-size"),
    )
    if count_saved:
        add(
            "unpruned second sample",
            shape.blocks_bytes + 11 * shape.input_rows + 8 * sum(s for s, _, _ in shape.blocks),
            0,
            "train",
            "measured",
            "one batch sampled again without pruning, and its cover ranks",
            ("--no-hist-count-saved",),
        )
    add(
        "sampler scratch",
        sampler_scratch_bytes(n, shape.blocks),
        0,
        "train",
        "bound",
        "per-thread id map (4 B per node) and buffers",
    )
    gather = max(window_rows, shape.rows_beyond_device if cache != "none" else shape.input_rows)
    depth = tiers.io_queue_depth
    add(
        "I/O scheduler",
        scheduler_bytes(depth, row, gather),
        0,
        "always",
        "bound",
        f"{depth} reads in flight x its read buffer, a plan of {gather:,} rows",
        ("--io-queue-depth",),
    )

    # --- model and step
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    add(
        "model parameters",
        0,
        params,
        "always",
        "exact",
        f"{sum(p.numel() for p in model.parameters()):,} float32",
        ("--hidden", "--layers"),
    )
    add("gradients and Adam state", 0, 3 * params, "always", "exact", "3 x parameters")
    heads = int(getattr(model, "heads", 1))
    x_item = itemsize if np.dtype(region.dtype).kind == "f" else _F32
    step = step_bytes(
        config.model,
        dims,
        shape.blocks,
        x_item,
        dropout=config.dropout,
        norm=config.norm,
        heads=heads,
        training=True,
    )
    add(
        "activations and gradients of a step",
        0,
        step,
        "train",
        "estimate",
        f"{config.model} on blocks " + ", ".join(f"{s:,}/{d:,}/{e:,}" for s, d, e in shape.blocks),
        ("--batch-size", "--fanouts", "--hidden"),
    )

    # --- evaluation
    e_prefetch = max(1, prefetch)
    e_admitted, e_fetched = batches_in_flight(e_prefetch)
    if config.eval.mode == "layerwise":
        e_admitted = e_fetched = e_prefetch + 3
    else:
        e_len = max(1, num_batches(eval_nodes, config.eval.batch_size))
        e_admitted, e_fetched = min(e_admitted, e_len), min(e_fetched, e_len)
    e_feat = e_fetched * eval_shape.features_bytes
    add(
        "evaluation batches",
        e_admitted * eval_shape.blocks_bytes + (0 if on_cuda else POOL_HEADROOM * e_feat),
        e_feat if on_cuda else 0,
        "eval",
        eval_basis,
        f"{e_fetched} x {eval_shape.input_rows:,} rows; {eval_note}",
        ("--eval-batch-size", "--eval-fanouts"),
    )
    e_step = step_bytes(
        config.model,
        dims if config.eval.mode != "layerwise" else widest_layer(dims),
        eval_shape.blocks,
        x_item,
        dropout=0.0,
        norm=config.norm,
        heads=heads,
        training=False,
    )
    add(
        "evaluation forward",
        4 * eval_nodes * dims[-1] + 16 * eval_nodes,
        e_step,
        "eval",
        "estimate",
        f"no autograd; logits of {eval_nodes:,} nodes",
        ("--eval-batch-size",),
    )
    e_io = scheduler_bytes(depth, row, eval_shape.input_rows)
    if config.eval.mode == "layerwise":
        e_io += 8 * (1 << 20)  # the per-layer file's reader: 8 reads in flight
    add(
        "evaluation I/O and sampler",
        e_io + sampler_scratch_bytes(n, eval_shape.blocks),
        0,
        "eval",
        "bound",
        "its own exact tier chain, dropped after evaluation",
    )

    # --- between epochs
    if split_resize:
        add(
            "split resize",
            0,
            split_resize,
            "epoch end",
            "bound",
            "a new copy of the side being resized (automatic split)",
            ("--hist-fraction",),
        )
    if config.checkpoint_dir is not None:
        state = (4 * params if on_cuda else 0) + (
            h_max * table_row * len(hist_layers) if cache == "refresh" else 0
        )
        add(
            "checkpoint copies",
            state,
            0,
            "epoch end",
            "bound",
            "the history table's rows" + (" and the model's state" if on_cuda else ""),
        )

    limits_from: dict[str, str] = {}
    max_rss = config.max_rss_bytes
    if max_rss is None:
        max_rss = available_bytes + rss_now
        limits_from["ram"] = "machine"
    dev_limit = config.device_memory_bytes
    if on_cuda and dev_limit is None:
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(config.device))
        dev_limit = int(free) + int(torch.cuda.memory_reserved(torch.device(config.device)))
        limits_from["device"] = "machine"
    if not on_cuda:
        dev_limit = 0
    return MemoryPlan(
        items=tuple(items),
        device="cpu" if not on_cuda else config.device,
        batch=shape,
        eval_batch=eval_shape,
        topology_in_ram=in_ram,
        loader_budget_bytes=int(budget),
        batch_buffers=fetched_eff,
        eval_batch_buffers=e_fetched,
        lower_batch_buffers=lower_buffers,
        max_rss_bytes=int(max_rss),
        device_memory_bytes=int(dev_limit or 0),
        limits_from=limits_from,
    )
