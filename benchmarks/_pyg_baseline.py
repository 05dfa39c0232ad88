"""The strongest PyG-style training loop the benchmarks compare against.

A PyG user who trains out of core today writes ``NeighborLoader`` over a
``Data`` whose ``x`` is a ``numpy.memmap`` of the feature file, a DataLoader
worker pool, and PyG's own model with hierarchical trimming. This module is
that loop, so the benchmarks measure this project against what users actually
run, and where in doubt it errs in the baseline's favour:

* **Sampler** (:class:`HierarchicalSampler`): ``NeighborLoader``'s semantics in
  plain torch (``NeighborLoader`` itself needs pyg-lib or torch-sparse, which
  do not install here). Uniform sampling without replacement (Floyd's
  algorithm, vectorised over the frontier), fanouts from the seeds outward,
  and every node expanded once, at the hop where it is first reached. One
  subgraph per batch as a ``torch_geometric.data.Data``: ``n_id`` ordered by
  hop (the seeds first, in their order), ``num_sampled_nodes`` (``L + 1``
  counts) and ``num_sampled_edges`` (``L`` counts); the edges of hop ``k``
  point from their sources into hop ``k - 1``'s nodes and come after those of
  hop ``k - 1``. Within a hop the new nodes are in ascending id order (pyg-lib
  keeps first appearance; any order is a valid sample, and this one costs one
  ``torch.unique``). A dense id map, allocated once per process and reset
  only where a batch wrote it, does what pyg-lib's hash map does.
* **Model** (:func:`pyg_model`): PyG's own ``torch_geometric.nn.models``
  ``GraphSAGE`` / ``GCN`` / ``GAT`` (``BasicGNN``), run one of three ways
  (``trim``, :data:`TRIM_MODES`):

  - ``"layer"``: ``BasicGNN.forward`` with ``num_sampled_nodes_per_hop`` and
    ``num_sampled_edges_per_hop``, so PyG's ``trim_to_layer`` drops, before
    layer ``l``, the nodes and edges of the outermost ``l`` hops. That trims
    each layer's input, but the layer still computes every node left, the
    outermost remaining hop included, although no later layer reads it: at
    fanouts 15,10,5 that hop is about 70 % of the subgraph's nodes in the
    first (widest) layer.
  - ``"dst"`` (default for SAGE and GAT): the same modules and parameters, each layer given
    the same trimmed hops and called bipartitely, ``conv((x, x[:n_dst]),
    edge_index)``, so it computes only the nodes the next layer reads, as
    PyG's examples for its older per-layer ``NeighborSampler`` did and this
    project's block models do. SAGE and GAT only: ``GCNConv`` has no
    bipartite call.
  - ``"none"``: every layer over the whole subgraph.
  - ``"dst-capped"`` (an experiment, not a baseline): as ``"dst"``, but in
    layer ``i`` each destination aggregates at most ``fanouts[L-1-i]`` of its
    sampled neighbours (a random subset), the neighbour counts of this
    project's blocks. In ``NeighborLoader``'s subgraph a node aggregates the
    neighbours of the hop where it was reached in every layer: a seed its 15
    in all three layers at fanouts 15,10,5, where a block model gives it 15,
    10 and 5. Whether that explains the loop's higher accuracy is what this
    mode measures (``benchmarks/pyg_structure.py``).

  Forward + backward of one batch (1M-node store, batch 1024, fanouts
  15,10,5, GraphSAGE 3x256, 365K nodes and 597K edges per subgraph; median of
  4 batches, interleaved, load average 5.2-7.4 on 2 cores): ``"none"`` 25.0 s,
  ``"layer"`` 16.9 s, ``"dst"`` 5.0 s, this project's block model on its own
  (larger) MFG sample 4.8 s. ``"dst"`` is the strongest, so the benchmarks
  use it. All three give the same SAGE and GAT logits (tested). GCN's
  symmetric normalisation reads source degrees inside the trimmed subgraph,
  so ``"layer"`` changes GCN's logits, as it does in PyG.
* **Loader**: ``torch.utils.data.DataLoader`` over seed batches
  (``batch_size=None``; one task = one batch), each of ``num_workers``
  workers sampling and gathering features from its own ``numpy.memmap``,
  persistent workers, the default ``prefetch_factor``. The gather is
  ``torch.index_select`` on the memmap-backed tensor, what ``NeighborLoader``'s
  ``filter_data`` does with ``data.x``: on a warm 1M x 128 file, 300K rows took
  65-80 ms with 2 torch threads and 100-115 ms with one against 65-390 ms for
  numpy fancy indexing; cold, 0.32-0.33 s (2 threads) against 0.39-0.42 s.
* **Features**: ``"warm"`` reads the feature file once before timing and
  never evicts it (a user whose features fit RAM), each worker keeping one
  memmap open; ``"cold"`` emulates features larger than the RAM the run may
  use, as ``benchmarks/epoch_time.py`` always did: the file is evicted from
  the page cache (``_common.drop_cache``) before every batch's gather and
  again after it, the memmap is opened per batch and closed before the
  second eviction (pages mapped by a live memmap cannot be evicted), and the
  evictions' time is left out of the figures. With workers the evictions
  run in the worker, next to its gather; an epoch then excludes the time
  during which the main process waited for a batch while some worker was
  evicting (the intersection of the two sets of intervals). That is an upper
  bound of what the evictions cost the epoch, so it flatters the baseline. So
  does a side effect of two workers: one worker's eviction skips pages the
  other has mapped right then.

Defaults and measurements
-------------------------
``DEFAULT_NUM_WORKERS`` is the fastest of 0, 1 and 2 workers measured on this
project's 2-vCPU development machine, **shared with other people's jobs while
measuring** (1-minute load average 5.0-18.9 on 2 cores during the runs), so
single figures moved by up to 2x. Generated papers100M-layout store of 200K
nodes (4.0M CSC entries, 128 x float32 features: 100 MB), GraphSAGE 3x256,
fanouts 15,10,5, batch 512, 6 batches per epoch (about 80K nodes per batch),
one epoch per run, warm features, the configurations interleaved in each of
3 repeats; seconds per epoch, median (and the 3 runs):

=========  =======================  =======================  =======================
trim       0 workers                1 worker                 2 workers
=========  =======================  =======================  =======================
``dst``    25.9 (30.8, 25.9, 22.0)  19.6 (22.9, 14.5, 19.6)  16.2 (21.5, 13.5, 16.2)
``layer``  34.8 (34.1, 34.8, 35.0)  32.7 (32.7, 37.2, 24.3)  40.7 (44.8, 40.7, 26.1)
=========  =======================  =======================  =======================

An earlier run of the same kind (load 4.7-17.0; its memory sampler then read
``smaps_rollup`` four times a second, which cost up to a fifth of a core)
had ``layer`` at 43.5 / 38.0 / 36.5 s and ``none`` at 71.3 / 72.3 / 72.8 s
with 0 / 1 / 2 workers: PyG's ``trim_to_layer`` cut the epoch by 39-50 %
(FINDINGS.md: 82 -> 39 s); ``dst`` took 26-60 % less than ``layer`` at equal
workers in the run above.

Loader only (sampling + gather, no model), 6 batches of 512, batches/s,
median of 3 passes with 0 / 1 / 2 workers: warm 1.90 / 3.08 / 4.40, cold
0.94 / 2.28 / 2.92. Workers take the sampling off the training loop (5.8-10.6
s of waiting per epoch with 0 workers, under 1.1 s with 1 or 2), and 2 were
the fastest in every ``dst`` repeat and for loading: the default is 2.

Usage
-----
>>> from refresh_store.store import open_store
>>> recs = train_pyg_baseline(open_store("store/"), fanouts=(15, 10, 5), batch_size=1024,
...                           hidden=256, epochs=2, lr=0.003, seed=0, features="warm")
>>> recs[-1]["epoch_time_s"], recs[-1]["test_acc"]
>>> loader_only_pyg_baseline(open_store("store/"), fanouts=(15, 10, 5), batch_size=1024,
...                          features="cold", batches=12, passes=3)["batches_per_s"]

``benchmarks/`` is not a package: scripts there import this module as
``_pyg_baseline`` (their own folder is on ``sys.path``); anything else puts
``benchmarks/`` on ``sys.path`` first.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE), str(_HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _common import drop_cache  # noqa: E402

from refresh_store.store import Store  # noqa: E402
from refresh_train.sampler import (  # noqa: E402
    batch_seed,
    check_fanouts,
    derive_seed,
    epoch_batches,
)

__all__ = [
    "DEFAULT_NUM_WORKERS",
    "FEATURE_MODES",
    "MODELS",
    "TRIM_MODES",
    "HierarchicalSampler",
    "describe",
    "loader_only_pyg_baseline",
    "pyg_model",
    "train_pyg_baseline",
]

#: Fastest worker count measured on the 2-vCPU machine (see the module docstring).
DEFAULT_NUM_WORKERS = 2
FEATURE_MODES = ("warm", "cold")
#: How the model skips work: "dst" = trimmed inputs and outputs cut to the
#: nodes the next layer reads, "layer" = PyG's trim_to_layer through
#: ``BasicGNN.forward``, "none" = every layer over the whole subgraph;
#: "dst-capped" = "dst" with block-style neighbour counts (an experiment).
TRIM_MODES = ("dst", "layer", "none", "dst-capped")
MODELS = ("sage", "gcn", "gat")
_EVAL_STREAM = 0x5EED_E7A1  # batch seeds of evaluation, apart from training's (epoch, i)


# ------------------------------------------------------------------ sampler
class HierarchicalSampler:
    """``NeighborLoader``'s uniform neighbour sampling in plain torch.

    Parameters
    ----------
    indptr, indices : array-like of int
        CSC topology (``indices[indptr[v]:indptr[v+1]]`` are the in-neighbours
        of ``v``); copied into RAM as int64 torch tensors, as ``NeighborLoader``
        holds its CSC. Forked DataLoader workers share the copy.
    fanouts : sequence of int
        Neighbours per node for hop 1, 2, ... (from the seeds outward); ``-1``
        takes all.
    seed : int
        Base seed, combined with each call's ``batch_seed``.
    """

    def __init__(self, indptr, indices, fanouts: Sequence[int], seed: int = 0) -> None:
        self.indptr = torch.from_numpy(np.array(indptr, dtype=np.int64))
        self.indices = torch.from_numpy(np.array(indices, dtype=np.int64))
        self.fanouts = check_fanouts(fanouts)
        self.seed = int(seed)
        self.num_nodes = self.indptr.numel() - 1
        self._local: torch.Tensor | None = None  # global id -> local id, -1 = not sampled
        self._local_pid = -1

    def __getstate__(self) -> dict[str, Any]:  # the id map is per process
        state = self.__dict__.copy()
        state["_local"], state["_local_pid"] = None, -1
        return state

    def _id_map(self) -> torch.Tensor:
        # Allocated in the process that samples (each worker its own: a map
        # inherited from the parent would be copied page by page on write).
        if self._local is None or self._local_pid != os.getpid():
            dtype = torch.int32 if self.num_nodes < 2**31 else torch.int64
            self._local = torch.full((self.num_nodes,), -1, dtype=dtype)
            self._local_pid = os.getpid()
        return self._local

    def sample(self, seeds, batch_seed: int = 0) -> Data:
        """Sample the ``len(fanouts)``-hop neighbourhood of distinct ``seeds``.

        Returns
        -------
        torch_geometric.data.Data
            ``n_id`` [N] global ids ordered by hop (seeds first);
            ``edge_index`` [2, E] local ids (row 0 the sampled neighbour, row 1
            the node it was sampled for); ``num_sampled_nodes`` (``L + 1``
            ints), ``num_sampled_edges`` (``L`` ints), ``batch_size`` and
            ``num_nodes``.
        """
        # A copy: torch cannot wrap a read-only memmap slice without a warning.
        seeds = torch.from_numpy(np.array(seeds, dtype=np.int64).reshape(-1))
        n = seeds.numel()
        if n and (int(seeds.min()) < 0 or int(seeds.max()) >= self.num_nodes):
            raise ValueError(f"seeds must lie in [0, {self.num_nodes})")
        if torch.unique(seeds).numel() != n:
            raise ValueError("seeds must be distinct")
        gen = torch.Generator().manual_seed(derive_seed(self.seed, int(batch_seed)))
        local = self._id_map()
        local[seeds] = torch.arange(n, dtype=local.dtype)
        hops, rows, cols = [seeds], [], []
        num_nodes, num_edges = [n], []
        frontier, frontier_start, total = seeds, 0, n
        try:
            for fanout in self.fanouts:
                owner, nbr = self._draw(frontier, fanout, gen)
                src = local[nbr].long()
                unseen = src < 0
                new = torch.empty(0, dtype=torch.int64)
                if bool(unseen.any()):
                    new, inv = torch.unique(nbr[unseen], return_inverse=True)
                    src[unseen] = inv + total
                    local[new] = torch.arange(total, total + new.numel(), dtype=local.dtype)
                rows.append(src)
                cols.append(owner + frontier_start)
                num_edges.append(int(nbr.numel()))
                num_nodes.append(int(new.numel()))
                hops.append(new)
                frontier, frontier_start, total = new, total, total + new.numel()
        finally:
            n_id = torch.cat(hops)
            local[n_id] = -1  # only what this batch wrote: the map stays all -1
        return Data(
            edge_index=torch.stack([torch.cat(rows), torch.cat(cols)]),
            n_id=n_id,
            num_sampled_nodes=num_nodes,
            num_sampled_edges=num_edges,
            batch_size=n,
            num_nodes=total,
        )

    def _draw(
        self, frontier: torch.Tensor, fanout: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(position in ``frontier``, global neighbour id) of every sampled edge, grouped by owner."""
        start = self.indptr[frontier]
        deg = self.indptr[frontier + 1] - start
        k = deg if fanout < 0 else deg.clamp(max=fanout)
        owner = torch.repeat_interleave(torch.arange(frontier.numel()), k)
        first = torch.cumsum(k, 0) - k
        pos = torch.arange(owner.numel()) - first[owner]  # take-all rows: 0 .. deg-1
        if fanout > 0:
            over = deg > fanout
            if bool(over.any()):
                d = deg[over]
                picks = torch.empty((d.numel(), fanout), dtype=torch.int64)
                # Floyd: for j = d-f .. d-1 draw t in [0, j]; if t was already
                # drawn take j itself. f distinct positions, every f-subset
                # equally likely, f draws per row whatever its degree.
                for m in range(fanout):
                    j = d - fanout + m
                    u = torch.rand(d.numel(), generator=gen, dtype=torch.float64)
                    t = torch.minimum((u * (j + 1)).long(), j)
                    if m:
                        t = torch.where((picks[:, :m] == t[:, None]).any(1), j, t)
                    picks[:, m] = t
                # Rows are contiguous in owner order, so a mask keeps them aligned.
                pos[over[owner]] = picks.flatten()
        return owner, self.indices[start[owner] + pos]


# -------------------------------------------------------------------- model
def pyg_model(
    name: str,
    in_dim: int,
    hidden: int,
    out_dim: int,
    layers: int,
    *,
    dropout: float = 0.5,
    heads: int = 4,
) -> torch.nn.Module:
    """PyG's own ``BasicGNN`` for ``name`` in {"sage", "gcn", "gat"}.

    ReLU and dropout after every layer but the last, as this project's block
    models; GAT concatenates ``heads`` heads in hidden layers, averages them
    in the last, and adds a residual term (this project's GAT default).
    """
    from torch_geometric.nn.models import GAT, GCN, GraphSAGE

    common = dict(
        in_channels=in_dim,
        hidden_channels=hidden,
        num_layers=layers,
        out_channels=out_dim,
        dropout=dropout,
    )
    if name == "sage":
        return GraphSAGE(**common)
    if name == "gcn":
        return GCN(**common)
    if name == "gat":
        return GAT(**common, heads=heads, residual=True)
    raise ValueError(f"model must be one of {MODELS!r}; got {name!r}")


def _forward(
    net: torch.nn.Module,
    data: Data,
    x: torch.Tensor,
    trim: str,
    fanouts: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits of the batch's seeds (the first ``batch_size`` nodes); ``trim`` in :data:`TRIM_MODES`.

    ``fanouts`` (the sampler's) are needed by ``"dst-capped"`` only.
    """
    if trim == "dst":
        return _forward_dst(net, data, x)
    if trim == "dst-capped":
        if fanouts is None:
            raise ValueError("trim='dst-capped' needs the sampler's fanouts")
        return _forward_dst(net, data, x, caps=list(fanouts)[::-1])
    if trim == "layer":
        out = net(
            x,
            data.edge_index,
            num_sampled_nodes_per_hop=list(data.num_sampled_nodes),
            num_sampled_edges_per_hop=list(data.num_sampled_edges),
        )
    elif trim == "none":
        out = net(x, data.edge_index)
    else:
        raise ValueError(f"trim must be one of {TRIM_MODES!r}; got {trim!r}")
    return out[: data.batch_size]


def _forward_dst(
    net: torch.nn.Module, data: Data, x: torch.Tensor, caps: Sequence[int] | None = None
) -> torch.Tensor:
    """``BasicGNN``'s layers with each layer's output cut to the nodes the next one reads.

    Layer ``i`` of ``L`` reads hops ``0 .. L-i`` and the edges of hops
    ``1 .. L-i`` (all prefixes, as ``trim_to_layer`` cuts them) and computes
    hops ``0 .. L-i-1`` only, through the convs' bipartite call
    ``conv((x_src, x_src[:n_dst]), edge_index)``; ``BasicGNN.forward`` would
    compute hop ``L-i`` too, whose output no later layer reads. Norm,
    activation and dropout as ``BasicGNN.forward`` (no jumping knowledge).
    ``caps[i]``: at most that many in-edges per destination in layer ``i``
    (a random subset, drawn from torch's global generator; ``"dst-capped"``).
    """
    if getattr(net, "jk_mode", None) is not None:
        raise ValueError("trim='dst' supports BasicGNN models without jumping knowledge")
    nodes, edges = list(data.num_sampled_nodes), list(data.num_sampled_edges)
    L = len(net.convs)
    if len(edges) != L:
        raise ValueError(f"the batch has {len(edges)} hops; the model has {L} layers")
    rank = None if caps is None else _edge_rank(data.edge_index[1])
    n_src = x.size(0)
    for i, conv in enumerate(net.convs):
        n_dst = n_src - nodes[L - i]  # drop the outermost hop still present
        edge_index = data.edge_index[:, : sum(edges[: L - i])]
        if rank is not None and caps[i] >= 0:
            edge_index = edge_index[:, rank[: edge_index.size(1)] < caps[i]]
        x = conv((x, x[:n_dst]), edge_index)
        if i < L - 1:
            if net.act is not None and net.act_first:
                x = net.act(x)
            x = net.norms[i](x)
            if net.act is not None and not net.act_first:
                x = net.act(x)
            x = net.dropout(x)
        n_src = n_dst
    return x


def _edge_rank(dst: torch.Tensor) -> torch.Tensor:
    """Each edge's rank among the edges into the same node, in a random order."""
    key = dst.double() + torch.rand(dst.numel(), dtype=torch.float64, device=dst.device)
    order = torch.argsort(key)
    grouped = dst[order]
    first = torch.searchsorted(grouped, grouped)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=dst.device) - first
    return rank


# ------------------------------------------------------------ loader tasks
def _identity(x):
    return x


class _Features:
    """Row gathers from the store's feature file through ``numpy.memmap``.

    ``cold``: evict before and after each gather, the map opened per gather
    and closed before the second eviction. ``warm``: one map per process,
    kept.
    """

    def __init__(self, store: Store, cold: bool) -> None:
        region = store.region("features")
        if not region.contiguous:
            raise ValueError(f"features of {str(store.path)!r} are not one C-order array")
        self.path = region.path
        self.offset = int(region.chunk_offsets[0])
        self.shape = (store.num_nodes, store.feature_dim)
        self.dtype = np.dtype(store.dtype)
        self.row_bytes = region.row_bytes
        self.cold = cold
        self._mm: torch.Tensor | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"], state["_pid"] = None, -1
        return state

    def _open(self) -> torch.Tensor:
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        import warnings

        with warnings.catch_warnings():  # read-only memmap: torch warns it is not writable
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(mm)

    def gather(self, ids: torch.Tensor, spans: list[tuple[float, float]]) -> torch.Tensor:
        """Rows ``ids``; eviction intervals (``time.monotonic``) are appended to ``spans``."""
        if not self.cold:
            if self._mm is None or self._pid != os.getpid():
                self._mm, self._pid = self._open(), os.getpid()
            return self._mm.index_select(0, ids)
        self._evict(spans)
        mm = self._open()
        rows = mm.index_select(0, ids)
        del mm  # unmapped, so the next eviction can drop its pages
        self._evict(spans)
        return rows

    def _evict(self, spans: list[tuple[float, float]]) -> None:
        t0 = time.monotonic()
        drop_cache(self.path)
        spans.append((t0, time.monotonic()))

    def close(self) -> None:
        self._mm = None


class _BatchTasks(Dataset):
    """One item per seed batch: sample, gather, labels; run in a DataLoader worker.

    Indices are ``(batch_seed, seeds)`` tasks handed out by :class:`_TaskList`.
    """

    def __init__(self, sampler: HierarchicalSampler, feats: _Features, labels: torch.Tensor):
        self.sampler = sampler
        self.feats = feats
        self.labels = labels

    def __getitem__(self, task: tuple[int, np.ndarray]) -> tuple[Data, dict[str, Any]]:
        bseed, seeds = task
        t0 = time.monotonic()
        data = self.sampler.sample(seeds, bseed)
        t1 = time.monotonic()
        spans: list[tuple[float, float]] = []
        data.x = self.feats.gather(data.n_id, spans)
        t2 = time.monotonic()
        data.y = self.labels[data.n_id[: data.batch_size]]
        evict = sum(b - a for a, b in spans)
        return data, {
            "sample_s": t1 - t0,
            "fetch_s": t2 - t1 - evict,
            "evict_s": evict,
            "evict_spans": spans,
        }


class _TaskList(torch.utils.data.Sampler):
    """The loader's index sampler: the tasks of the current epoch or pass, in order."""

    def __init__(self) -> None:
        self.tasks: list[tuple[int, np.ndarray]] = []

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


def _make_loader(
    store: Store,
    *,
    fanouts: Sequence[int],
    seed: int,
    features: str,
    num_workers: int,
    device: torch.device,
) -> tuple[DataLoader, _TaskList, _Features]:
    if features not in FEATURE_MODES:
        raise ValueError(f"features must be one of {FEATURE_MODES!r}; got {features!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0; got {num_workers!r}")
    sampler = HierarchicalSampler(store.indptr, store.indices, fanouts, seed=seed)
    feats = _Features(store, cold=features == "cold")
    labels = torch.from_numpy(np.array(store.labels, dtype=np.int64))
    tasks = _TaskList()
    loader = DataLoader(
        _BatchTasks(sampler, feats, labels),
        batch_size=None,
        sampler=tasks,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=_identity,
        pin_memory=device.type == "cuda",
    )
    return loader, tasks, feats


def _read_once(path: str) -> None:
    """Bring ``path`` into the page cache with plain reads (nothing stays mapped)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)  # 16 MiB
        while f.readinto(buf):
            pass


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap_s(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Seconds covered both by some interval of ``xs`` and by some interval of ``ys``."""
    a, b = _union(xs), _union(ys)
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


class _MemoryMonitor:
    """Peak resident memory of this process and its DataLoader workers.

    Every ``interval_s`` it reads the RSS of this process and of each child
    (``/proc/PID/statm``, cheap) and keeps the peaks of this process's RSS
    and of the sum. The sum is an upper bound: pages a forked worker shares
    with this process (the sampler's topology copy, which every worker
    reads) count once per process. :meth:`pss` gives the proportional set
    size summed over the processes right now (``/proc/PID/smaps_rollup``: a
    page shared by k processes counts 1/k), exact but costly to read (tens of
    ms per GB mapped), so it is read once per epoch, not sampled.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reset()
        self._thread = threading.Thread(target=self._run, name="pyg-baseline-mem", daemon=True)
        self._thread.start()

    def _procs(self) -> list[psutil.Process]:
        return [self._proc, *self._proc.children(recursive=True)]

    def _sample(self) -> None:
        main = total = 0
        for proc in self._procs():
            try:
                rss = int(proc.memory_info().rss)
            except psutil.Error:  # a worker that just exited
                continue
            total += rss
            if proc.pid == self._proc.pid:
                main = rss
        with self._lock:
            self._peak_total = max(self._peak_total, total)
            self._peak_main = max(self._peak_main, main)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def reset(self) -> None:
        with self._lock:
            self._peak_total = 0
            self._peak_main = 0
        self._sample()

    def peaks(self) -> tuple[int, int]:
        """(summed RSS of this process and its workers, this process's RSS), peaks in bytes."""
        self._sample()
        with self._lock:
            return self._peak_total, self._peak_main

    def pss(self) -> int | None:
        """Summed proportional set size now, in bytes (None where Linux does not report it)."""
        total = 0
        for proc in self._procs():
            try:
                with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                    total += next(
                        int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")
                    )
            except (OSError, StopIteration):
                return None
        return total

    def close(self) -> None:
        self._stop.set()


def describe(
    *, model: str | None = None, trim: str | None = None, num_workers: int, features: str
) -> dict[str, Any]:
    """The variant a record ran, as record fields (``model=None``: loader only)."""
    what = "PyG-style: NeighborLoader-semantics hierarchical sampler (plain torch)"
    if model is not None:
        cls = {"sage": "GraphSAGE", "gcn": "GCN", "gat": "GAT"}.get(model, model)
        how = {
            "dst": "trimmed per hop, each layer computing only the nodes the next reads",
            "layer": "with trim_to_layer (BasicGNN.forward)",
            "none": "without trimming",
            "dst-capped": "trimmed per hop (dst), in-edges capped at each layer's block fanout",
        }[trim or "none"]
        what += f", torch_geometric.nn.models.{cls} {how}"
    what += (
        f", DataLoader with {num_workers} worker(s), "
        f"{features} features via numpy.memmap + index_select"
    )
    return {
        "baseline": what,
        "model": model,
        "trim": trim,
        "num_workers": int(num_workers),
        "features": features,
    }


def _to(data: Data, device: torch.device) -> Data:
    return data if device.type == "cpu" else data.to(device, non_blocking=True)


# ----------------------------------------------------------------- training
def train_pyg_baseline(
    store: Store,
    *,
    fanouts: Sequence[int] = (15, 10, 5),
    batch_size: int = 1024,
    hidden: int = 256,
    layers: int | None = None,
    epochs: int = 1,
    lr: float = 0.003,
    seed: int = 0,
    model: str = "sage",
    num_workers: int = DEFAULT_NUM_WORKERS,
    features: str = "warm",
    max_batches: int = 0,
    device: str = "cpu",
    trim: str | None = None,
    dropout: float = 0.5,
    heads: int = 4,
    eval_batch_size: int = 2048,
    evaluate: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train PyG's model the way a PyG user does, timing each epoch.

    Parameters
    ----------
    store
        An opened store; its features are read through ``numpy.memmap``.
    fanouts
        From the seeds outward; ``len(fanouts)`` hops.
    batch_size, hidden, epochs, lr, seed
        As this project's trainer: batches are ``train_idx`` shuffled per
        ``(seed, epoch)`` (:func:`refresh_train.sampler.epoch_batches`), and
        ``torch.manual_seed(seed)`` precedes the model's initialisation.
    layers
        Model layers; default and only allowed value ``len(fanouts)``.
    model
        ``"sage"``, ``"gcn"`` or ``"gat"`` (:func:`pyg_model`).
    num_workers
        DataLoader workers (0 = sample and gather in this process).
    features
        ``"warm"`` or ``"cold"`` (see the module docstring).
    max_batches
        Cap on batches per epoch (0 = all).
    device
        Where the model runs; batches are moved there (pinned by the loader
        when it is CUDA).
    trim
        ``None`` (default): the strongest the model supports, ``"dst"``
        (``"layer"`` for GCN). ``"dst"``: each layer takes the trimmed hops and computes
        only the nodes the next layer reads (``_forward_dst``; SAGE and GAT:
        GCNConv has no bipartite call); ``"layer"``: ``BasicGNN.forward``
        with the per-hop counts, so PyG's ``trim_to_layer`` trims each
        layer's input but the layer still computes its outermost hop;
        ``"none"``: the whole subgraph at every layer.
    dropout, heads
        Model options (heads: GAT only).
    eval_batch_size, evaluate
        After the last epoch, sampled evaluation (same fanouts, warm reads,
        not timed) on ``valid_idx`` and ``test_idx``.
    log
        Called with one line per epoch (e.g. ``print``).

    Returns
    -------
    list of dict
        One record per epoch: ``epoch, epoch_time_s`` (wall time less the
        excluded eviction time), ``batches, batches_per_s, train_loss,
        train_acc, valid_acc, test_acc`` (accuracies None before the last
        epoch), ``sample_s, fetch_s`` (busy seconds in the loader, summed
        over workers; overlapped with compute when ``num_workers > 0``),
        ``data_wait_s`` (the main process waiting for batches),
        ``compute_s``, ``evict_s`` (all eviction time) and
        ``evict_excluded_s`` (the part left out of ``epoch_time_s``),
        ``rows_gathered, bytes_gathered, sampled_edges``, the tier-style
        counters ``rows_device/host/disk`` and ``bytes_device/host/disk``
        (cold: every gathered row counts as disk, warm: as host RAM, the
        page cache), ``feature_bytes_cached`` (warm: the whole file held in
        the page cache), ``peak_rss_bytes`` (this process and its workers,
        RSS summed: an upper bound, the topology the workers share counts
        once per process), ``peak_rss_main_bytes`` (this process alone),
        ``pss_end_bytes`` (all processes' proportional set size at the
        epoch's end, shared pages counted once), and the fields of
        :func:`describe`.
    """
    fanouts = check_fanouts(fanouts)
    layers = len(fanouts) if layers is None else layers
    if layers != len(fanouts):
        raise ValueError(
            f"layers must equal len(fanouts) = {len(fanouts)} (one hop per layer); got {layers!r}"
        )
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS!r}; got {model!r}")
    if trim is None:
        trim = "layer" if model == "gcn" else "dst"
    if trim not in TRIM_MODES:
        raise ValueError(f"trim must be one of {TRIM_MODES!r}; got {trim!r}")
    if trim.startswith("dst") and model == "gcn":
        raise ValueError(
            f"trim={trim!r} needs a bipartite conv; GCNConv has none: use trim='layer'"
        )
    dev = torch.device(device)
    torch.manual_seed(seed)
    net = pyg_model(
        model, store.feature_dim, hidden, store.num_classes, layers, dropout=dropout, heads=heads
    ).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loader, tasks, feats = _make_loader(
        store, fanouts=fanouts, seed=seed, features=features, num_workers=num_workers, device=dev
    )
    if features == "warm":
        _read_once(feats.path)
    variant = describe(model=model, trim=trim, num_workers=num_workers, features=features)
    mem = _MemoryMonitor()
    records: list[dict[str, Any]] = []
    try:
        for epoch in range(epochs):
            parts = list(epoch_batches(store.train_idx, batch_size, seed, epoch))
            if max_batches:
                parts = parts[:max_batches]
            tasks.tasks = [(batch_seed(epoch, i), p) for i, p in enumerate(parts)]
            if features == "cold":
                drop_cache(feats.path)
            mem.reset()
            stats = dict.fromkeys(("sample_s", "fetch_s", "evict_s", "compute_s"), 0.0)
            evict_spans: list[tuple[float, float]] = []
            wait_spans: list[tuple[float, float]] = []
            rows = edges = 0
            loss_sum, correct, seen = 0.0, 0, 0
            net.train()
            t_epoch = time.monotonic()
            it = iter(loader)
            while True:
                t0 = time.monotonic()
                try:
                    data, st = next(it)
                except StopIteration:
                    break
                t1 = time.monotonic()
                wait_spans.append((t0, t1))
                for k in ("sample_s", "fetch_s", "evict_s"):
                    stats[k] += st[k]
                evict_spans += st["evict_spans"]
                rows += int(data.n_id.numel())
                edges += int(data.edge_index.shape[1])
                data = _to(data, dev)
                logits = _forward(net, data, data.x.float(), trim, fanouts)
                loss = F.cross_entropy(logits, data.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats["compute_s"] += time.monotonic() - t1
                loss_sum += float(loss.detach()) * data.batch_size
                correct += int((logits.argmax(1) == data.y).sum())
                seen += data.batch_size
            wall = time.monotonic() - t_epoch
            excluded = _overlap_s(evict_spans, wait_spans)
            epoch_time = wall - excluded
            peak_total, peak_main = mem.peaks()
            row_bytes = rows * feats.row_bytes
            cold = features == "cold"
            rec: dict[str, Any] = {
                "epoch": epoch + 1,
                "epoch_time_s": epoch_time,
                "wall_s": wall,
                "batches": len(parts),
                "batches_per_s": len(parts) / epoch_time if epoch_time > 0 else float("nan"),
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "valid_acc": None,
                "test_acc": None,
                **stats,
                "data_wait_s": sum(b - a for a, b in wait_spans),
                "evict_excluded_s": excluded,
                "rows_gathered": rows,
                "bytes_gathered": row_bytes,
                "sampled_edges": edges,
                "rows_device": 0,
                "rows_host": 0 if cold else rows,
                "rows_disk": rows if cold else 0,
                "bytes_device": 0,
                "bytes_host": 0 if cold else row_bytes,
                "bytes_disk": row_bytes if cold else 0,
                "feature_bytes_cached": 0 if cold else store.num_nodes * feats.row_bytes,
                "peak_rss_bytes": peak_total,
                "peak_rss_main_bytes": peak_main,
                "pss_end_bytes": mem.pss(),
                **variant,
            }
            if evaluate and epoch + 1 == epochs:
                t0 = time.monotonic()
                rec["valid_acc"] = _accuracy(
                    net, store, store.valid_idx, fanouts, seed, eval_batch_size, trim, dev, 1
                )
                rec["test_acc"] = _accuracy(
                    net, store, store.test_idx, fanouts, seed, eval_batch_size, trim, dev, 2
                )
                rec["eval_s"] = time.monotonic() - t0
            records.append(rec)
            if log is not None:
                log(
                    f"  PyG baseline ({features}, {num_workers} workers, trim {trim}) epoch "
                    f"{epoch + 1}: {epoch_time:.1f} s, loss {rec['train_loss']:.3f}"
                )
    finally:
        mem.close()
        del loader  # shuts persistent workers down
    return records


@torch.no_grad()
def _accuracy(
    net: torch.nn.Module,
    store: Store,
    idx,
    fanouts: Sequence[int],
    seed: int,
    batch_size: int,
    trim: str,
    device: torch.device,
    split: int,
) -> float | None:
    """Sampled accuracy on ``idx`` (same fanouts; warm reads; its own random streams)."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return None
    sampler = HierarchicalSampler(store.indptr, store.indices, fanouts, seed=seed)
    feats = _Features(store, cold=False)
    labels = np.asarray(store.labels)
    net.eval()
    correct = 0
    try:
        for i, lo in enumerate(range(0, idx.size, batch_size)):
            seeds = idx[lo : lo + batch_size]
            data = sampler.sample(seeds, derive_seed(_EVAL_STREAM, split, i))
            data.x = feats.gather(data.n_id, [])
            data = _to(data, device)
            pred = _forward(net, data, data.x.float(), trim, fanouts).argmax(1).cpu().numpy()
            correct += int((pred == labels[seeds]).sum())
    finally:
        feats.close()
        net.train()
    return correct / idx.size


# -------------------------------------------------------------- loader only
def loader_only_pyg_baseline(
    store: Store,
    *,
    fanouts: Sequence[int] = (15, 10, 5),
    batch_size: int = 1024,
    seed: int = 0,
    num_workers: int = DEFAULT_NUM_WORKERS,
    features: str = "warm",
    batches: int = 12,
    passes: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Batches/s of the baseline's sampling + feature gather, no model.

    Pass ``p`` loads the first ``batches`` batches of epoch ``p`` (as
    ``benchmarks/epoch_time.py``'s loader passes do). Warm features are read
    once before the first pass; cold ones are evicted before every pass and
    around every gather, the evictions left out as in
    :func:`train_pyg_baseline`. One loader (persistent workers) serves all
    passes, so only the first pays the workers' start. With a CUDA
    ``device`` a batch counts once it is there.

    Returns
    -------
    dict
        ``batches`` (per pass), ``batches_per_s`` (median over passes),
        ``runs`` (each pass's rate), ``sample_s_per_batch``,
        ``fetch_s_per_batch`` (loader busy times, medians over passes),
        ``evict_excluded_s`` (per pass), ``rows_gathered`` and
        ``bytes_gathered`` (last pass), ``peak_rss_bytes`` (as in
        :func:`train_pyg_baseline`), and the fields of
        :func:`describe`.
    """
    fanouts = check_fanouts(fanouts)
    dev = torch.device(device)
    loader, tasks, feats = _make_loader(
        store, fanouts=fanouts, seed=seed, features=features, num_workers=num_workers, device=dev
    )
    if features == "warm":
        _read_once(feats.path)
    mem = _MemoryMonitor()
    rates, sample_s, fetch_s, excluded_s = [], [], [], []
    rows = 0
    try:
        for rep in range(passes):
            parts = list(epoch_batches(store.train_idx, batch_size, seed, rep))[:batches]
            tasks.tasks = [(batch_seed(rep, i), p) for i, p in enumerate(parts)]
            if features == "cold":
                drop_cache(feats.path)
            evict_spans: list[tuple[float, float]] = []
            wait_spans: list[tuple[float, float]] = []
            s_total = f_total = 0.0
            rows = 0
            t_pass = time.monotonic()
            it = iter(loader)
            while True:
                t0 = time.monotonic()
                try:
                    data, st = next(it)
                except StopIteration:
                    break
                wait_spans.append((t0, time.monotonic()))
                evict_spans += st["evict_spans"]
                s_total += st["sample_s"]
                f_total += st["fetch_s"]
                rows += int(data.n_id.numel())
                _to(data, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            excluded = _overlap_s(evict_spans, wait_spans)
            rates.append(len(parts) / (time.monotonic() - t_pass - excluded))
            excluded_s.append(excluded)
            sample_s.append(s_total / max(len(parts), 1))
            fetch_s.append(f_total / max(len(parts), 1))
        peak_total, _ = mem.peaks()
    finally:
        mem.close()
        del loader
    return {
        "batches": len(parts),
        "batches_per_s": statistics.median(rates),
        "runs": rates,
        "sample_s_per_batch": statistics.median(sample_s),
        "fetch_s_per_batch": statistics.median(fetch_s),
        "evict_excluded_s": excluded_s,
        "rows_gathered": rows,
        "bytes_gathered": rows * feats.row_bytes,
        "peak_rss_bytes": peak_total,
        **describe(num_workers=num_workers, features=features),
    }
