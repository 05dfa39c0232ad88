"""Uniform multi-layer neighbour sampling over a CSC topology.

Epoch batching and seed hashing live in :mod:`refresh_train.epoch`, the
topology checks and the RAM heuristic of ``in_memory="auto"`` in
:mod:`refresh_train.topology`; their public names are importable from here too.
This module holds the sampler's checks and its loop over layers; drawing and
relabelling one layer live in ``_sampler_layers.py`` over the per-thread id
map of ``_sampler_relabel.py``, the pruning hook's handling in
``_sampler_prune.py``.

The sampler reads the store's CSC arrays (``indices[indptr[v]:indptr[v+1]]``
are the in-neighbours of ``v``) in place — ``np.memmap`` views work and are
never copied, so a topology larger than RAM only costs the pages a batch
touches — and returns one :class:`~refresh_train.batch.MiniBatch`.

Semantics
---------
* ``fanouts`` are listed from the seeds outward (PyG's convention): with
  ``[15, 10, 5]`` each seed draws up to 15 in-neighbours, each node of the next
  hop up to 10, then 5. ``-1`` takes all neighbours, ``0`` none (an MLP needs
  only the seeds). Block ``l`` of the batch uses ``fanouts[L-1-l]``.
* Uniform without replacement over a node's CSC positions: a node with fewer
  neighbours than the fanout takes all of them; duplicate edges of a multigraph
  are distinct positions, so a neighbour may appear twice.
* Deterministic: the neighbours node ``v`` draws at block ``l`` are a pure
  function of ``(seed, batch_seed, l, v)`` — independent of ``num_threads``, of
  the order of the seeds and of the other nodes in the batch. Use a different
  ``batch_seed`` per batch (:func:`batch_seed` derives one from epoch and
  batch index).
* Per-relation sampling (typed stores, relational models): given the
  store's ``edge_type``, each relation is sampled separately, as the OGB-LSC
  R-GNN baselines do: a node draws up to the layer's fanout in-neighbours
  *per relation* (or ``relation_fanouts[hop][r]``), uniformly without
  replacement among its in-edges of that relation, and every
  :class:`~refresh_train.batch.Block` carries ``edge_type`` (the relation of
  each sampled edge). Streams are keyed by ``(seed, batch_seed, layer, v, r)``.
  Without ``edge_type`` nothing changes (a typed store sampled homogeneously
  gives the untyped store's blocks: its CSC order is the same).
* Pruning for the historical embedding cache: ``prune(l, ids)`` is called for
  blocks ``l = L-1 .. 1`` with the global ids of block ``l``'s source nodes
  (``int64`` numpy array). It returns either a boolean mask (``True`` = the
  node's ``h^(l)`` is cached: do not expand it) or an integer array of history
  table rows (``>= 0`` = cached at that row, ``-1`` = not cached). Cached nodes
  are not destinations of block ``l-1``; see :class:`~refresh_train.batch.Block`
  for the ``computed_pos`` / ``cached_pos`` / ``cached_ids`` / ``cached_rows``
  fields this fills.

Example
-------
>>> sampler = NeighborSampler(store.indptr, store.indices, [15, 10, 5], seed=0)
>>> for i, seeds in enumerate(epoch_batches(store.train_idx, 1024, seed=0, epoch=0)):
...     mb = sampler.sample(seeds, batch_seed(0, i))
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.errors import InvalidIdsError
from refresh_store.store import drop_resident_pages
from refresh_train import sampler_kernels as K
from refresh_train._sampler_layers import sample_layer, sample_layer_typed
from refresh_train._sampler_prune import PruneFn, apply_prune
from refresh_train._sampler_relabel import Scratch
from refresh_train.batch import Block, MiniBatch
from refresh_train.epoch import batch_seed, derive_seed, epoch_batches, num_batches
from refresh_train.topology import (
    IN_MEMORY_AUTO_FRACTION,
    as_edge_type,
    as_topology,
    copy_to_ram,
    topology_fits_in_ram,
)

__all__ = [
    "NeighborSampler",
    "PruneFn",
    "batch_seed",
    "epoch_batches",
    "num_batches",
    "derive_seed",
    "check_fanouts",
    "IN_MEMORY_AUTO_FRACTION",
    "topology_fits_in_ram",
]

DENSE_MAP_MAX_NODES = 1 << 25
"""Graphs up to this many nodes relabel through a dense int32 id map per
sampling thread (4 bytes per node, 128 MiB at the limit, allocated as zero
pages and written only where a batch's nodes fall), larger ones through a
hash table sized to the batch. Measured 1.3-1.6x faster per batch than the
hash table on 1M- and 10M-node graphs (``benchmarks/results/sampler.md``)."""


def check_fanouts(fanouts: Sequence[int]) -> list[int]:
    """Validate a fanout list (from the seeds outward) and return it as ints.

    Raises
    ------
    ValueError
        If it is empty or holds anything but integers >= -1.
    """
    if isinstance(fanouts, (str, bytes)):
        raise ValueError(
            f"fanouts must be a sequence of integers like [15, 10, 5]; got {fanouts!r}"
        )
    out = list(fanouts)
    if not out or any(
        isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < -1 for f in out
    ):
        raise ValueError(
            f"fanouts must be a non-empty sequence of integers >= -1 "
            f"(-1 = all neighbours); got {fanouts!r}"
        )
    return [int(f) for f in out]


def _check_seeds(seeds, num_nodes: int) -> np.ndarray:
    """``seeds`` as a private int64 copy, or InvalidIdsError saying what is wrong with them."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.cpu().numpy()
    try:
        s = np.asarray(seeds)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged or odd sequences
        raise InvalidIdsError(f"seeds must be a 1-D integer array ({exc})") from None
    if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
        raise InvalidIdsError(
            f"seeds must be a 1-D integer array; got dtype {s.dtype!s} shape {s.shape!r}"
        )
    # uint64 seeds past int64 would wrap to negatives below: refuse them as such.
    if s.size and s.dtype.kind == "u" and int(s.max()) >= num_nodes:
        raise InvalidIdsError(f"seeds must lie in [0, {num_nodes}); got max {int(s.max())!r}")
    # A private copy: the batch's seed tensor must not alias the caller's
    # array (or a read-only memmap, which torch.from_numpy rejects).
    s = np.array(s, dtype=np.int64, copy=True)
    if s.size and (int(s.min()) < 0 or int(s.max()) >= num_nodes):
        raise InvalidIdsError(
            f"seeds must lie in [0, {num_nodes}); got min {int(s.min())!r}, max {int(s.max())!r}"
        )
    return s


class NeighborSampler:
    """Uniform multi-layer neighbour sampler producing :class:`MiniBatch` objects.

    Parameters
    ----------
    indptr : numpy.ndarray of int64, shape [N+1]
        CSC pointers (a read-only ``np.memmap`` of the store is fine).
    indices : numpy.ndarray of int32 or int64, shape [E]
        CSC in-neighbour ids.
    fanouts : sequence of int
        Per hop from the seeds outward; ``-1`` = all, ``0`` = none.
    seed : int
        Base seed; combined with each call's ``batch_seed``.
    num_threads : int
        Threads that draw neighbours in parallel; the calling thread
        relabels each chunk as soon as it is drawn (relabelling follows
        first appearance, so it is sequential) and draws when it has nothing
        to relabel. Results do not depend on it. See
        ``benchmarks/results/sampler.md`` for the speed-up on 2 cores; in a
        trainer whose loader samples in a background thread while torch
        computes, 1 leaves the other core to the model.
    prune : PruneFn, optional
        Default pruning hook for :meth:`sample` (see the module docstring).
    edge_type : numpy.ndarray of int8, shape [E], optional
        The store's ``edge_type``: sample each relation separately (see the
        module docstring); the blocks then carry ``edge_type``.
    num_relations : int, optional
        Number of relations (``len(store.relations)``); required with
        ``edge_type``. Edges whose type lies outside ``[0, R)`` are never drawn.
    relation_fanouts : list of lists of int, optional
        ``relation_fanouts[hop][r]``: fanout of relation ``r`` at each hop
        from the seeds outward. Default: every relation takes the hop's
        ``fanouts`` entry.
    in_memory : bool or "auto"
        Copy the topology into RAM (``4 * E + 8 * N`` bytes for int32
        indices) instead of reading it in place. For topologies that fit:
        each sampled node costs a random read of ``indices``, and on a
        memmap every such read also misses the TLB (4 KiB page-cache pages),
        while numpy backs large arrays with transparent huge pages where the
        kernel allows; on the 10M-node benchmark graph a random read took
        ~3x longer from the memmap. ``"auto"`` copies when the topology
        takes at most a quarter of the RAM available now
        (:data:`IN_MEMORY_AUTO_FRACTION`); a larger one is read in place and
        costs only the pages a batch touches. Default False.

    Notes
    -----
    The topology is trusted beyond cheap checks (dtype, ``indptr[0] == 0``,
    ``indptr[-1] <= len(indices)``): scanning a larger-than-RAM ``indices`` to
    range-check every id would read it all. Scratch buffers are per calling
    thread, so one instance may serve several threads at once; each thread
    keeps a dense id map of ``4 * num_nodes`` bytes while
    ``num_nodes <= DENSE_MAP_MAX_NODES`` (else a hash table sized to its
    largest batch). The map is never cleared between batches: its entries
    carry a stamp, and each new mapping starts above every stamp written
    before (see ``sampler_kernels.map_dst_kernel``).
    """

    def __init__(
        self,
        indptr: NDArray[np.int64],
        indices: NDArray[np.integer],
        fanouts: Sequence[int],
        seed: int = 0,
        *,
        num_threads: int = 1,
        prune: PruneFn | None = None,
        in_memory: bool | str = False,
        edge_type: NDArray[np.integer] | None = None,
        num_relations: int | None = None,
        relation_fanouts: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.indptr, self.indices = as_topology(indptr, indices)
        self.edge_type = as_edge_type(edge_type, self.indices)
        if in_memory == "auto":
            in_memory = topology_fits_in_ram(self.indptr, self.indices, self.edge_type)
        elif not isinstance(in_memory, (bool, np.bool_)):
            raise ValueError(f"in_memory must be True, False or 'auto'; got {in_memory!r}")
        self.in_memory = bool(in_memory)
        if in_memory:
            self.indptr, self.indices = copy_to_ram(self.indptr), copy_to_ram(self.indices)
            # The copy read every page of the store's memory maps: give them
            # back, or RSS counts the topology twice until they are reclaimed.
            drop_resident_pages(indptr)
            drop_resident_pages(indices)
            if self.edge_type is not None:
                self.edge_type = copy_to_ram(self.edge_type)
                drop_resident_pages(edge_type)
        self.fanouts = check_fanouts(fanouts)
        self.num_relations, self._rel_fanouts = self._relations(num_relations, relation_fanouts)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        self.seed = int(seed)
        if not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer; got {num_threads!r}")
        self.num_threads = int(num_threads)
        self.prune = prune
        self.num_nodes = self.indptr.shape[0] - 1
        self._pool = ThreadPoolExecutor(self.num_threads) if self.num_threads > 1 else None
        self._dense_map = self.num_nodes <= DENSE_MAP_MAX_NODES
        self._local = threading.local()

    @property
    def num_layers(self) -> int:
        """Number of blocks per batch (``len(fanouts)``)."""
        return len(self.fanouts)

    @property
    def typed(self) -> bool:
        """Whether each relation is sampled separately (``edge_type`` given)."""
        return self.edge_type is not None

    def _relations(
        self, num_relations: int | None, relation_fanouts: Sequence[Sequence[int]] | None
    ) -> tuple[int, list[np.ndarray]]:
        if self.edge_type is None:
            if num_relations is not None or relation_fanouts is not None:
                raise ValueError("num_relations and relation_fanouts need edge_type")
            return 0, []
        if (
            isinstance(num_relations, bool)
            or not isinstance(num_relations, (int, np.integer))
            or not 1 <= num_relations <= 127
        ):
            raise ValueError(
                f"num_relations must be an integer in [1, 127] with edge_type; got {num_relations!r}"
            )
        R = int(num_relations)
        if relation_fanouts is None:
            return R, [np.full(R, f, dtype=np.int64) for f in self.fanouts]
        rows = [check_fanouts(f) for f in relation_fanouts]
        if len(rows) != len(self.fanouts) or any(len(f) != R for f in rows):
            raise ValueError(
                f"relation_fanouts must hold {len(self.fanouts)} lists (one per hop) of "
                f"{R} fanouts (one per relation); got {relation_fanouts!r}"
            )
        return R, [np.asarray(f, dtype=np.int64) for f in rows]

    def close(self) -> None:
        """Stop the worker threads (only used when ``num_threads > 1``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def sample(
        self,
        seeds: NDArray[np.integer] | torch.Tensor | Sequence[int],
        batch_seed: int = 0,
        *,
        prune: PruneFn | None = None,
    ) -> MiniBatch:
        """Sample the multi-layer neighbourhood of ``seeds``.

        Parameters
        ----------
        seeds : array of int, shape [B]
            Distinct global ids in ``[0, N)``.
        batch_seed : int
            Non-negative; see the module docstring on determinism.
        prune : PruneFn, optional
            Overrides the constructor's hook for this call.

        Returns
        -------
        MiniBatch
            With ``features`` and ``labels`` unset.

        Raises
        ------
        InvalidIdsError
            (a ``ValueError``) If seeds are not 1-D integers, out of range or repeated.
        ValueError
            If ``batch_seed`` is negative,
            or ``prune`` returns an array of the wrong shape or dtype.
        """
        s = _check_seeds(seeds, self.num_nodes)
        if (
            isinstance(batch_seed, bool)
            or not isinstance(batch_seed, (int, np.integer))
            or batch_seed < 0
        ):
            raise ValueError(f"batch_seed must be a non-negative integer; got {batch_seed!r}")
        return self._sample(s, int(batch_seed), prune if prune is not None else self.prune)

    def _sample(self, seeds: np.ndarray, bseed: int, prune: PruneFn | None) -> MiniBatch:
        key = np.uint64(derive_seed(self.seed, bseed))
        L = len(self.fanouts)
        blocks: list[Block | None] = [None] * L
        layer_nodes: list[torch.Tensor | None] = [None] * L
        sc = self._scratch()
        dst = seeds
        # Whether the thread's id map already gives dst[i] the local id i: true
        # from the second block on, since a block's sources (in local-id order)
        # are the next block's destinations, unless pruning removed some.
        mapped = False
        for layer in range(L - 1, -1, -1):
            fanout = self.fanouts[L - 1 - layer]
            lkey = np.uint64(K.layer_key(key, np.uint64(layer)))
            etype = None
            if self.edge_type is not None:
                rel_fanouts = self._rel_fanouts[L - 1 - layer]
                src, edge_index, etype = sample_layer_typed(
                    self, sc, dst, rel_fanouts, lkey, mapped
                )
            else:
                # The input block's sources are nobody's destinations: no CSC lookups.
                src, edge_index = sample_layer(self, sc, dst, fanout, lkey, mapped, layer >= 1)
            if src is None:
                raise InvalidIdsError(
                    f"seeds must be distinct; {int(edge_index)!r} appears more than once"
                )
            block = Block(
                num_src=src.shape[0],
                num_dst=dst.shape[0],
                edge_index=torch.from_numpy(edge_index),
                edge_type=None if etype is None else torch.from_numpy(etype),
            )
            dst = src
            mapped = True
            if prune is not None and layer >= 1:
                dst = apply_prune(prune, layer, src, block)
                mapped = dst is src
            blocks[layer] = block
            layer_nodes[layer] = torch.from_numpy(src)
        return MiniBatch(
            seeds=torch.from_numpy(seeds),
            blocks=blocks,
            input_nodes=layer_nodes[0],
            layer_nodes=layer_nodes,
            batch_seed=bseed,
        )

    def _scratch(self) -> Scratch:
        sc = getattr(self._local, "scratch", None)
        if sc is None:
            sc = self._local.scratch = Scratch()
        return sc
