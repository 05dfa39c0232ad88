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
what is always held plus the largest phase. What a plan is and does (its
items, totals, check and table) is :mod:`refresh_train.plan_table`.

Figures for CUDA (device memory, pinned staging, the CUDA context) follow
the same code paths but have not been measured on a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import psutil

from ._memory_sizes import (
    CUDA_CONTEXT_BYTES,
    LIBRARIES_BYTES,
    POOL_HEADROOM,
    PROBE_BATCHES,
    PROBE_MARGIN,
    RUNTIME_BYTES,
    batch_shape,
    cache_sizes,
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
from .config import TrainConfig
from .epoch import num_batches
from .loader import batches_in_flight
from .metrics import format_bytes
from .plan_table import BASES, PHASES, BatchShape, MemoryPlan, MemoryPlanError, PlanItem
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
    "PHASES",
    "BASES",
]

_F32 = 4


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

    from .models import build_model, model_options

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
    return _Planner(config, store, model, available_bytes).plan()


class _Planner:
    """One plan being made: the run's figures, and one method per group of structures."""

    def __init__(self, config: TrainConfig, store: Store, model: BlockGNN, available: int) -> None:
        from .models import RELATIONAL_MODELS

        self.config, self.store, self.model, self.available = config, store, model, available
        self.items: list[PlanItem] = []
        self.n, self.m = store.num_nodes, store.num_edges
        region = store.region("features")
        self.row = region.row_bytes
        self.dims = list(model.dims)
        kind = np.dtype(region.dtype)
        self.x_item = kind.itemsize if kind.kind == "f" else _F32
        self.fanouts = (0,) * config.layers if config.model == "mlp" else config.fanouts
        self.on_cuda = config.device.startswith("cuda")
        self.relational = config.model in RELATIONAL_MODELS
        self.cache = config.tiers.cache
        self.sizes = cache_sizes(config, self.n, self.row, self.dims)
        self._depths()

    def add(self, name, ram, dev, phase, basis, note="", flags=()) -> None:
        self.items.append(PlanItem(name, int(ram), int(dev), phase, basis, note, tuple(flags)))

    def plan(self) -> MemoryPlan:
        self._probe()
        self._process()
        self._caches()
        self._batches()
        self._model_and_step()
        self._evaluation()
        self._epoch_end()
        return self._limits()

    # ------------------------------------------------------------- depths and probes
    def _depths(self) -> None:
        """Lookahead, lag and the batches a loader holds, capped by the epoch's length."""
        cfg, tiers = self.config, self.config.tiers
        fits = tiers.lookahead_budget_bytes >= self.row and tiers.lookahead_batches > 1
        lookahead = tiers.lookahead_batches if self.cache != "none" and fits else 0
        lag = cfg.history.resolved_lag(lookahead) if self.cache == "refresh" else None
        self.prefetch = cfg.loader.prefetch_batches
        admitted, fetched = batches_in_flight(self.prefetch, lookahead, lag)
        # A loader lives for one epoch: it never holds more batches than the epoch has.
        epoch_len = max(1, num_batches(len(self.store.train_idx), cfg.batch_size))
        self.admitted, self.fetched = min(admitted, epoch_len), min(fetched, epoch_len)
        self.lookahead = min(lookahead, epoch_len) if lookahead > 1 and epoch_len > 1 else 0

    def _probe(self) -> None:
        """Per-batch figures of training and evaluation from batches sampled now."""
        cfg, store, sizes = self.config, self.store, self.sizes
        probes, beyond = probe_training(store, cfg, self.fanouts, sizes.k_min, PROBE_BATCHES)
        # Per-relation sampling takes up to the fanout from every relation.
        self.per_node = store.num_relations if self.relational else 1
        worst = worst_case(
            cfg.batch_size, [f * self.per_node for f in self.fanouts], self.n, self.m
        )
        if not probes:  # no training nodes: nothing to measure
            probes, beyond = [worst], [worst[0][0]]
        # Block.edge_type: one byte per sampled edge.
        layers = range(cfg.layers)
        extra = sum(max(p[v][2] for p in probes) for v in layers) if self.per_node > 1 else 0
        if self.cache == "refresh":
            # Pruning arrays (positions, ids: 24 B per source of a cached layer) and the
            # cached embeddings copied into the batch, at most one per table node.
            srcs = [max(p[v][0] for p in probes) for v in sizes.hist_layers]
            extra += sum(24 * s + min(s, sizes.h_max) * sizes.table_row for s in srcs)
        self.shape = batch_shape(
            probes, beyond, worst, cfg.batch_size, self.row, PROBE_MARGIN, extra
        )
        self.probed = f"largest of {self.shape.probed} batches +{PROBE_MARGIN - 1:.0%}"
        self._probe_eval()

    def _probe_eval(self) -> None:
        cfg, store, row = self.config, self.store, self.row
        if cfg.eval.mode == "layerwise":
            eblocks = layerwise_block(store, cfg.eval.batch_size)
            # Layers >= 1 read float32 hidden rows from the per-layer file.
            e_row = max(row, _F32 * max(self.dims[1:-1], default=0))
            self.eval_shape = batch_shape(
                [eblocks], [eblocks[0][0]], eblocks, eblocks[0][1], e_row, 1.0
            )
            self.eval_nodes = len(store.valid_idx) + len(store.test_idx)
            self.eval_note = "one-hop blocks of the largest in-degrees (layer-wise)"
            self.eval_basis = "bound"
            return
        eval_fanouts = cfg.eval.fanouts or self.fanouts
        eprobes, self.eval_nodes = probe_sampled_eval(store, cfg, eval_fanouts)
        eseeds = min(cfg.eval.batch_size, max(1, self.eval_nodes))
        eworst = worst_case(eseeds, [f * self.per_node for f in eval_fanouts], self.n, self.m)
        if not eprobes:
            eprobes = [eworst]
        beyond = [p[0][0] for p in eprobes]
        self.eval_shape = batch_shape(eprobes, beyond, eworst, eseeds, row, PROBE_MARGIN)
        self.eval_note = f"largest of {len(eprobes)} batches +{PROBE_MARGIN - 1:.0%}"
        self.eval_basis = "measured"

    # ------------------------------------------------------------- the process, topology
    def _process(self) -> None:
        """The interpreter, the topology, labels and the epoch's order."""
        store = self.store
        self.rss_now = _current_rss()
        self.add(
            "interpreter and libraries",
            max(self.rss_now, LIBRARIES_BYTES) + RUNTIME_BYTES,
            CUDA_CONTEXT_BYTES if self.on_cuda else 0,
            "always",
            "measured",
            f"RSS at planning {format_bytes(self.rss_now)} (at least "
            f"{format_bytes(LIBRARIES_BYTES)}) + {format_bytes(RUNTIME_BYTES)} loaded on first use",
        )
        from .topology import IN_MEMORY_AUTO_FRACTION

        # Relational models sample per relation: the sampler holds edge_type too.
        typed = store.edge_type.nbytes if self.relational else 0
        topo = store.indptr.nbytes + store.indices.nbytes + typed
        self.in_ram = topo <= IN_MEMORY_AUTO_FRACTION * self.available
        if self.in_ram:
            self.add(
                "topology (copied into RAM)",
                topo,
                0,
                "always",
                "exact",
                f"indptr {format_bytes(store.indptr.nbytes)} + indices "
                f"{format_bytes(store.indices.nbytes)}"
                + (f" + edge_type {format_bytes(typed)}" if typed else ""),
            )
        else:
            self.add(
                "topology (memory-mapped)",
                0,
                0,
                "always",
                "bound",
                f"{format_bytes(topo)} read in place: its pages show in RSS while cached and "
                "the kernel reclaims them under pressure; not in the total",
            )
        labels_mapped = np.dtype(store.labels.dtype) == np.int64
        self.add(
            "labels",
            8 * self.n,
            0,
            "always",
            "bound",
            "memory-mapped, pages of training seeds touched" if labels_mapped else "int64 copy",
        )
        n_train = len(store.train_idx)
        self.add(
            "epoch order",
            3 * 8 * n_train,
            0,
            "train",
            "exact",
            f"{n_train:,} training ids: mapped, permutation, shuffled copy",
        )

    # ------------------------------------------------------------- tiers, table, windows
    def _caches(self) -> None:
        """The device tier, the history table, the host tier and the lookahead windows."""
        s, row, n, tiers = self.sizes, self.row, self.n, self.config.tiers
        layers = len(s.hist_layers)
        if s.auto:
            # The split moves after every epoch: only the two sides together are fixed.
            self.add(
                "device tier + history table",
                0,
                s.device_max,
                "always",
                "bound",
                f"{s.k_start:,} rows x {row} B + {s.h_start:,} nodes x {layers} layer(s) x "
                f"{s.table_row} B at the start; the automatic split moves the line between them",
                ("--cache-budget",),
            )
        elif self.cache != "none":
            self.add(
                "device tier (raw rows)",
                0,
                s.k_start * row,
                "always",
                "exact",
                f"{s.k_start:,} hottest rows x {row} B",
                ("--cache-budget",),
            )
        if self.cache == "refresh":
            if not s.auto:
                self.add(
                    "history table",
                    0,
                    s.h_start * s.table_row * layers,
                    "always",
                    "exact",
                    f"{s.h_start:,} nodes x {layers} layer(s) x {s.table_row} B",
                    ("--cache-budget", "--hist-fraction"),
                )
            if s.slot_map_bytes:
                self.add(
                    "history slot order",
                    s.slot_map_bytes + s.score_bytes,
                    0,
                    "always",
                    "bound",
                    f"node lists and hash maps of up to {s.slot_map_bytes // 2**20:,} MiB, and "
                    f"{s.score_bytes // 2**20:,} MiB of scores while the order is computed "
                    "(at start)",
                    ("--hist-order",),
                )
            self.add(
                "history birth stamps",
                8 * s.h_max * layers,
                0,
                "always",
                "bound" if s.auto else "exact",
                f"8 B per table node per cached layer, up to {s.h_max:,} nodes",
                ("--cache-budget",),
            )
        host_rows = min(n, tiers.host_budget_bytes // row) if self.cache != "none" else 0
        if host_rows:
            pol = policy_bytes(tiers.host_policy, host_rows, n)
            self.add(
                "host tier",
                host_rows * row + pol,
                0,
                "always",
                "exact",
                f"{host_rows:,} rows x {row} B + {tiers.host_policy} index {format_bytes(pol)} "
                f"(8 B per node)",
                ("--host-budget",),
            )
        self.window_rows = 0
        if self.lookahead:
            beyond = self.shape.rows_beyond_device
            self.window_rows = min(
                tiers.lookahead_budget_bytes // row,
                self.lookahead * beyond,
                max(0, n - s.k_min),
            )
            needs = 8 * beyond * self.lookahead + 9 * self.window_rows
            self.add(
                "lookahead windows",
                2 * POOL_HEADROOM * self.window_rows * row + 2 * needs,
                0,
                "train",
                "bound",
                f"2 windows of up to {self.window_rows:,} rows (+1/8 buffer headroom)",
                ("--lookahead-budget", "--lookahead"),
            )

    # ------------------------------------------------------------- batches
    def _batches(self) -> None:
        """Feature buffers, staging, blocks in flight, the sampler's and the scheduler's."""
        cfg, shape, row = self.config, self.shape, self.row
        # A tier below the top fills a buffer per read, alive until the top copied it: serial
        # loading reads one batch at a time; a pipelined one may stage a window meanwhile.
        self.lower_buffers = 1 if self.prefetch == 0 else LOWER_BATCH_BUFFERS
        budget = cfg.loader.prefetch_budget_bytes
        derived = budget is None
        if budget is None:
            budget = self.admitted * shape.nbytes
        self.budget = budget
        fits_in_budget = max(1, budget // max(1, shape.nbytes))
        admitted = min(self.admitted, fits_in_budget + 1)
        self.fetched_eff = fetched = min(self.fetched, fits_in_budget + 1)
        feat = fetched * shape.features_bytes
        shrink = ("--batch-size", "--prefetch", "--fanouts")
        if self.on_cuda:
            self.add(
                "batch features",
                fetched * shape.rows_beyond_device * row,
                feat,
                "always",
                "bound",
                f"{fetched} batches x {shape.input_rows:,} rows ({self.probed}); pinned staging "
                "of their host rows",
                shrink,
            )
        else:
            self.add(
                "batch features",
                POOL_HEADROOM * feat,
                0,
                "always",
                "bound",
                f"{fetched} buffer(s) x {shape.input_rows:,} rows ({self.probed}), kept for reuse",
                shrink,
            )
            if self.cache != "none" and shape.rows_beyond_device:
                lower = 2 * self.lower_buffers * POOL_HEADROOM * shape.rows_beyond_device * row
                self.add(
                    "host/disk staging buffers",
                    lower,
                    0,
                    "always",
                    "bound",
                    f"2 tiers x {self.lower_buffers} buffer(s) x {shape.rows_beyond_device:,} "
                    "rows beyond the device tier",
                    ("--batch-size", "--fanouts"),
                )
        self.add(
            "batches in flight (ids, blocks)",
            min(admitted * shape.blocks_bytes, budget),
            0,
            "train",
            "bound",
            f"{admitted} batches x {format_bytes(shape.blocks_bytes)}; loader budget "
            f"{format_bytes(budget)}" + (" (derived)" if derived else ""),
            ("--prefetch", "--prefetch-budget", "--batch-size"),
        )
        hist = cfg.history
        if self.cache == "refresh" and (hist.count_saved or hist.fraction is None):
            self.add(
                "unpruned second sample",
                shape.blocks_bytes + 11 * shape.input_rows + 8 * sum(s for s, _, _ in shape.blocks),
                0,
                "train",
                "measured",
                "one batch sampled again without pruning, and its cover ranks",
                ("--no-hist-count-saved",),
            )
        self.add(
            "sampler scratch",
            sampler_scratch_bytes(self.n, shape.blocks),
            0,
            "train",
            "bound",
            "per-thread id map (4 B per node) and buffers",
        )
        rows = shape.rows_beyond_device if self.cache != "none" else shape.input_rows
        gather = max(self.window_rows, rows)
        depth = cfg.tiers.io_queue_depth
        self.add(
            "I/O scheduler",
            scheduler_bytes(depth, row, gather),
            0,
            "always",
            "bound",
            f"{depth} reads in flight x its read buffer, a plan of {gather:,} rows",
            ("--io-queue-depth",),
        )

    # ------------------------------------------------------------- model and step
    def _model_and_step(self) -> None:
        cfg, model = self.config, self.model
        self.params = sum(p.numel() * p.element_size() for p in model.parameters())
        self.add(
            "model parameters",
            0,
            self.params,
            "always",
            "exact",
            f"{sum(p.numel() for p in model.parameters()):,} float32",
            ("--hidden", "--layers"),
        )
        self.add(
            "gradients and Adam state", 0, 3 * self.params, "always", "exact", "3 x parameters"
        )
        self.heads = int(getattr(model, "heads", 1))
        blocks = self.shape.blocks
        step = step_bytes(cfg.model, self.dims, blocks, self.x_item, dropout=cfg.dropout,
                          norm=cfg.norm, heads=self.heads, training=True)  # fmt: skip
        self.add(
            "activations and gradients of a step",
            0,
            step,
            "train",
            "estimate",
            f"{cfg.model} on blocks " + ", ".join(f"{s:,}/{d:,}/{e:,}" for s, d, e in blocks),
            ("--batch-size", "--fanouts", "--hidden"),
        )

    # ------------------------------------------------------------- evaluation
    def _evaluation(self) -> None:
        cfg, es, nodes = self.config, self.eval_shape, self.eval_nodes
        layerwise = cfg.eval.mode == "layerwise"
        e_prefetch = max(1, self.prefetch)
        e_admitted, self.e_fetched = batches_in_flight(e_prefetch)
        if layerwise:
            e_admitted = self.e_fetched = e_prefetch + 3
        else:
            e_len = max(1, num_batches(nodes, cfg.eval.batch_size))
            e_admitted, self.e_fetched = min(e_admitted, e_len), min(self.e_fetched, e_len)
        e_feat = self.e_fetched * es.features_bytes
        self.add(
            "evaluation batches",
            e_admitted * es.blocks_bytes + (0 if self.on_cuda else POOL_HEADROOM * e_feat),
            e_feat if self.on_cuda else 0,
            "eval",
            self.eval_basis,
            f"{self.e_fetched} x {es.input_rows:,} rows; {self.eval_note}",
            ("--eval-batch-size", "--eval-fanouts"),
        )
        dims = widest_layer(self.dims) if layerwise else self.dims
        e_step = step_bytes(cfg.model, dims, es.blocks, self.x_item, dropout=0.0,
                            norm=cfg.norm, heads=self.heads, training=False)  # fmt: skip
        self.add(
            "evaluation forward",
            4 * nodes * self.dims[-1] + 16 * nodes,
            e_step,
            "eval",
            "estimate",
            f"no autograd; logits of {nodes:,} nodes",
            ("--eval-batch-size",),
        )
        e_io = scheduler_bytes(cfg.tiers.io_queue_depth, self.row, es.input_rows)
        if layerwise:
            e_io += 8 * (1 << 20)  # the per-layer file's reader: 8 reads in flight
        self.add(
            "evaluation I/O and sampler",
            e_io + sampler_scratch_bytes(self.n, es.blocks),
            0,
            "eval",
            "bound",
            "its own exact tier chain, dropped after evaluation",
        )

    # ------------------------------------------------------------- between epochs
    def _epoch_end(self) -> None:
        s = self.sizes
        if s.split_resize:
            self.add(
                "split resize",
                0,
                s.split_resize,
                "epoch end",
                "bound",
                "a new copy of the side being resized (automatic split)",
                ("--hist-fraction",),
            )
        if self.config.checkpoint_dir is not None:
            table = s.h_max * s.table_row * len(s.hist_layers) if self.cache == "refresh" else 0
            self.add(
                "checkpoint copies",
                (4 * self.params if self.on_cuda else 0) + table,
                0,
                "epoch end",
                "bound",
                "the history table's rows" + (" and the model's state" if self.on_cuda else ""),
            )

    # ------------------------------------------------------------- limits
    def _limits(self) -> MemoryPlan:
        cfg = self.config
        limits_from: dict[str, str] = {}
        max_rss = cfg.max_rss_bytes
        if max_rss is None:
            max_rss = self.available + self.rss_now
            limits_from["ram"] = "machine"
        dev_limit = cfg.device_memory_bytes
        if self.on_cuda and dev_limit is None:
            import torch

            device = torch.device(cfg.device)
            free, _total = torch.cuda.mem_get_info(device)
            dev_limit = int(free) + int(torch.cuda.memory_reserved(device))
            limits_from["device"] = "machine"
        if not self.on_cuda:
            dev_limit = 0
        return MemoryPlan(
            items=tuple(self.items),
            device="cpu" if not self.on_cuda else cfg.device,
            batch=self.shape,
            eval_batch=self.eval_shape,
            topology_in_ram=self.in_ram,
            loader_budget_bytes=int(self.budget),
            batch_buffers=self.fetched_eff,
            eval_batch_buffers=self.e_fetched,
            lower_batch_buffers=self.lower_buffers,
            max_rss_bytes=int(max_rss),
            device_memory_bytes=int(dev_limit or 0),
            limits_from=limits_from,
        )
