"""Uniform multi-layer neighbour sampling over a CSC topology.

Epoch batching and seed hashing live in :mod:`refresh_train.epoch`, the
topology checks and the RAM heuristic of ``in_memory="auto"`` in
:mod:`refresh_train.topology`; their public names are importable from here too.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.errors import InvalidIdsError, StoreFormatError
from refresh_store.store import drop_resident_pages
from refresh_train import _sampler_kernels as K
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

PruneFn = Callable[[int, NDArray[np.int64]], NDArray]
"""``prune(layer, ids) -> bool mask or int64 history rows (-1 = not cached)``."""

# Stamps (id map values) stay below this; reaching it clears the map once
# (about every 2**31 / ids-per-batch batches).
_STAMP_LIMIT = (1 << 31) - 1

DENSE_MAP_MAX_NODES = 1 << 25
"""Graphs up to this many nodes relabel through a dense int32 id map per
sampling thread (4 bytes per node, 128 MiB at the limit, allocated as zero
pages and written only where a batch's nodes fall), larger ones through a
hash table sized to the batch. Measured 1.3-1.6x faster per batch than the
hash table on 1M- and 10M-node graphs (``benchmarks/results/sampler.md``)."""


class _Scratch:
    """Per-thread buffers reused across batches: fresh allocations of tens of
    MB per layer cost page faults that showed up as ~30% of a batch."""

    def __init__(self) -> None:
        self.local_map: np.ndarray | None = None
        # The id map's current stamp and an upper bound of the local ids given
        # under it (see map_dst_kernel).
        self.base = 1
        self.used = 0
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype: type, keep: int = 0) -> np.ndarray:
        """A buffer of at least ``size`` items whose first ``keep`` items are
        those of the previous buffer of that name (copied when it grows)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < size:
            new = np.empty(max(size, 1024, int(1.25 * size)), dtype=dtype)
            if keep and buf is not None:
                new[:keep] = buf[:keep]
            buf = self._bufs[name] = new
        return buf


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


def _checked(result: int) -> int:
    """A kernel's count, or StoreFormatError when it found the topology leaving its bounds."""
    if result < 0:
        raise StoreFormatError(
            "the store's topology is damaged: indptr/indices point outside the graph; "
            "run `refresh-convert verify` on the store, or train with --verify-store"
        )
    return int(result)


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
    before (see ``_sampler_kernels.map_dst_kernel``).
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
        if s.size and s.dtype.kind == "u" and int(s.max()) >= self.num_nodes:
            raise InvalidIdsError(
                f"seeds must lie in [0, {self.num_nodes}); got max {int(s.max())!r}"
            )
        # A private copy: the batch's seed tensor must not alias the caller's
        # array (or a read-only memmap, which torch.from_numpy rejects).
        s = np.array(s, dtype=np.int64, copy=True)
        if s.size and (int(s.min()) < 0 or int(s.max()) >= self.num_nodes):
            raise InvalidIdsError(
                f"seeds must lie in [0, {self.num_nodes}); got min {int(s.min())!r}, max {int(s.max())!r}"
            )
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
                src, edge_index, etype = self._sample_layer_typed(
                    sc, dst, rel_fanouts, lkey, mapped
                )
            else:
                # The input block's sources are nobody's destinations: no CSC lookups.
                src, edge_index = self._sample_layer(sc, dst, fanout, lkey, mapped, layer >= 1)
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
                dst = self._apply_prune(prune, layer, src, block)
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

    def _scratch(self) -> _Scratch:
        sc = getattr(self._local, "scratch", None)
        if sc is None:
            sc = self._local.scratch = _Scratch()
        return sc

    def _chunks(self, offsets: np.ndarray, n: int, total: int, parts: int) -> list[int]:
        # Chunk bounds of about equal edge counts, so one hub-heavy chunk does
        # not hold the others up.
        cuts = np.searchsorted(offsets[: n + 1], np.linspace(0, total, parts + 1)[1:-1])
        return [0, *np.unique(cuts).tolist(), n]

    def _sample_layer(
        self,
        sc: _Scratch,
        dst: np.ndarray,
        fanout: int,
        lkey: np.uint64,
        mapped: bool,
        expand: bool,
    ):
        n = dst.shape[0]
        offsets = sc.get("offsets", n + 1, np.int64)
        if not self._dense_map:
            starts = sc.get("starts", n, np.int64)
            degs = sc.get("degs", n, np.int64)
            total = _checked(K.count_kernel(self.indptr, dst, fanout, offsets, starts, degs))
            edge_index = np.empty((2, total), dtype=np.int64)
            return self._relabel_hashed(sc, dst, offsets, starts, degs, lkey, total, edge_index)
        if mapped:
            # The previous block's relabelling left dst's CSC starts and
            # degrees in slots 0..n-1 (and the id map giving dst[i] id i).
            total = int(K.offsets_kernel(sc.get("degs", n, np.int64, keep=n), n, fanout, offsets))
        else:
            starts = sc.get("starts", n, np.int64)
            degs = sc.get("degs", n, np.int64)
            total = _checked(K.count_kernel(self.indptr, dst, fanout, offsets, starts, degs))
        # Slots n .. n+total-1 receive the new sources (and their CSC lookups).
        starts = sc.get("starts", n + total, np.int64, keep=n)
        degs = sc.get("degs", n + total, np.int64, keep=n)
        src_ids, num = self._map_destinations(sc, dst, n, total, mapped)
        if num < 0:
            return None, dst[-1 - num]
        # Row 0 receives the neighbours' global ids, relabelled in place below.
        edge_index = np.empty((2, total), dtype=np.int64)
        if self._pool is None or n < 256:
            K.sample_kernel(self.indices, dst, starts, degs, offsets, lkey, 0, n, edge_index[0])
            num = self._relabel(sc, 0, n, offsets, src_ids, edge_index, num, starts, degs, expand)
        else:
            num = self._parallel_sample_relabel(
                sc, dst, starts, degs, offsets, lkey, total, src_ids, edge_index, num, expand
            )
        return src_ids[:num].astype(np.int64), edge_index

    def _sample_layer_typed(
        self, sc: _Scratch, dst: np.ndarray, rel_fanouts: np.ndarray, lkey: np.uint64, mapped: bool
    ):
        """One layer of per-relation sampling: ``(src, edge_index, edge_type)``.

        Draws per (destination, relation) unit (``typed_sample_kernel``),
        then relabels exactly as the homogeneous path does, with the units'
        edges grouped per destination.
        """
        n = dst.shape[0]
        R = self.num_relations
        uoff = sc.get("t_offsets", n * R + 1, np.int64)
        starts = sc.get("t_starts", n, np.int64)
        degs = sc.get("t_degs", n, np.int64)
        counts = sc.get("t_counts", n * R, np.int64)
        total = _checked(
            K.typed_count_kernel(
                self.indptr, self.edge_type, dst, rel_fanouts, uoff, starts, degs, counts
            )
        )
        edge_index = np.empty((2, total), dtype=np.int64)
        etype = np.empty(total, dtype=np.int8)
        args = (self.indices, self.edge_type, dst, starts, degs, counts, uoff, R, lkey)
        if self._pool is None or n < 256:
            K.typed_sample_kernel(*args, 0, n, edge_index[0], etype)
        else:
            noff = uoff[: n * R + 1 : R]
            bounds = self._chunks(noff, n, total, self.num_threads * 8)
            futs = [
                self._pool.submit(K.typed_sample_kernel, *args, lo, hi, edge_index[0], etype)
                for lo, hi in zip(bounds[:-1], bounds[1:])
                if hi > lo
            ]
            for f in futs:
                f.result()
        # Edges per destination: the units of dst[i] are i*R .. i*R+R-1.
        offsets = np.ascontiguousarray(uoff[: n * R + 1 : R])
        if not self._dense_map:
            src = sc.get("src", n + total, np.int64)
            size = 1 << max(4, int(2 * (n + total)).bit_length())
            keys = sc.get("keys", size, np.int64)[:size]
            keys.fill(-1)
            vals = sc.get("vals", size, np.int64)[:size]
            shift = 64 - (size.bit_length() - 1)
            num = K.relabel_hash_kernel(dst, offsets, keys, vals, shift, src, edge_index)
            if num < 0:
                return None, dst[-1 - num], None
            return self._in_range(src[:num].copy(), n), edge_index, etype
        src_ids, num = self._map_destinations(sc, dst, n, total, mapped)
        if num < 0:
            return None, dst[-1 - num], None
        unused = sc.get("t_unused", 1, np.int64)
        num = self._relabel(sc, 0, n, offsets, src_ids, edge_index, num, unused, unused, False)
        return src_ids[:num].astype(np.int64), edge_index, etype

    def _map_destinations(
        self, sc: _Scratch, dst: np.ndarray, n: int, total: int, mapped: bool
    ) -> tuple[np.ndarray, int]:
        """The source-id buffer with ``dst`` in its first ``n`` slots, and their count.

        The id map stamps entries with ``sc.base + local id``; a block that
        does not continue the previous one (``mapped`` False) takes a new
        stamp above every value written so far, which drops all entries.
        A negative count ``-1 - i`` names ``dst[i]`` outside the topology.
        """
        src_ids = sc.get("src_ids", n + total, np.int32, keep=n if mapped else 0)
        if sc.local_map is None:
            # Zero pages cost no RAM until written, and 0 is below every stamp.
            sc.local_map = np.zeros(self.num_nodes, dtype=np.int32)
        if not mapped:
            sc.base += sc.used
            sc.used = 0
            if sc.base + n + total >= _STAMP_LIMIT:
                sc.local_map.fill(0)
                sc.base = 1
        # Retire this block's ids before the kernels run, so that a failed
        # call cannot leave valid-looking entries behind.
        sc.used = max(sc.used, n + total)
        if mapped:
            return src_ids, n
        return src_ids, int(K.map_dst_kernel(dst, sc.local_map, sc.base, src_ids))

    def _relabel(self, sc, lo, hi, offsets, src_ids, edge_index, num, starts, degs, expand) -> int:
        """Relabel destinations ``[lo, hi)``'s drawn neighbours (see ``relabel_kernel``)."""
        return _checked(
            K.relabel_kernel(
                offsets,
                lo,
                hi,
                sc.local_map,
                sc.base,
                src_ids,
                edge_index,
                num,
                self.indptr,
                starts,
                degs,
                expand,
            )
        )

    def _parallel_sample_relabel(
        self, sc, dst, starts, degs, offsets, lkey, total, src_ids, edge_index, num, expand
    ) -> int:
        # Workers draw chunks in order; this thread relabels chunk c as soon
        # as it is drawn (relabelling is sequential: ids follow first
        # appearance) and draws a chunk itself whenever the next one is not
        # ready, so the relabelling overlaps the other chunks' draws.
        n = dst.shape[0]
        bounds = self._chunks(offsets, n, total, self.num_threads * 16)
        P = len(bounds) - 1
        lock = threading.Lock()
        nxt = [0]
        done = [threading.Event() for _ in range(P)]
        failed: list[BaseException] = []
        out = edge_index[0]

        def take() -> int:
            with lock:
                c = nxt[0]
                if c >= P or failed:
                    return -1
                nxt[0] = c + 1
                return c

        def draw(c: int) -> None:
            try:
                K.sample_kernel(
                    self.indices, dst, starts, degs, offsets, lkey, bounds[c], bounds[c + 1], out
                )
            except BaseException as exc:  # re-raised below, after every chunk settled
                failed.append(exc)
                raise
            finally:
                done[c].set()

        def worker() -> None:
            while (c := take()) >= 0:
                draw(c)

        futs = [self._pool.submit(worker) for _ in range(self.num_threads - 1)]
        try:
            for c in range(P):
                while not done[c].is_set():
                    d = take()
                    if d < 0:
                        done[c].wait()
                        break
                    draw(d)
                if failed:
                    break
                num = self._relabel(
                    sc,
                    bounds[c],
                    bounds[c + 1],
                    offsets,
                    src_ids,
                    edge_index,
                    num,
                    starts,
                    degs,
                    expand,
                )
        finally:
            with lock:
                nxt[0] = P  # stop the workers
            for f in futs:
                f.result()
        return num

    def _relabel_hashed(self, sc, dst, offsets, starts, degs, lkey, total, edge_index):
        n = dst.shape[0]
        nbr = edge_index[0]
        if self._pool is None or n < 256:
            K.sample_kernel(self.indices, dst, starts, degs, offsets, lkey, 0, n, nbr)
        else:
            bounds = self._chunks(offsets, n, total, self.num_threads * 8)
            futs = [
                self._pool.submit(
                    K.sample_kernel, self.indices, dst, starts, degs, offsets, lkey, lo, hi, nbr
                )
                for lo, hi in zip(bounds[:-1], bounds[1:])
                if hi > lo
            ]
            for f in futs:
                f.result()
        src = sc.get("src", n + total, np.int64)
        size = 1 << max(4, int(2 * (n + total)).bit_length())
        keys = sc.get("keys", size, np.int64)[:size]
        keys.fill(-1)
        vals = sc.get("vals", size, np.int64)[:size]
        shift = 64 - (size.bit_length() - 1)
        num_src = K.relabel_hash_kernel(dst, offsets, keys, vals, shift, src, edge_index)
        if num_src < 0:
            return None, dst[-1 - num_src]
        return self._in_range(src[:num_src].copy(), dst.shape[0]), edge_index

    def _in_range(self, src: np.ndarray, n_dst: int) -> np.ndarray:
        # The hash relabelling reads no array at the sampled ids; a damaged
        # store's out-of-range neighbours are caught here instead.
        new = src[n_dst:]
        if new.size and (int(new.min()) < 0 or int(new.max()) >= self.num_nodes):
            _checked(-1)
        return src

    @staticmethod
    def _apply_prune(prune: PruneFn, layer: int, src: np.ndarray, block: Block) -> np.ndarray:
        # The hook gets a copy so it cannot corrupt the batch's id tensors.
        ans = np.asarray(prune(layer, src.copy()))
        if ans.shape != src.shape:
            raise ValueError(
                f"prune({layer}, ids) returned shape {ans.shape!r}; expected {src.shape!r} "
                "(one entry per id)"
            )
        if ans.dtype == np.bool_:
            cached = ans
            rows = None
        elif np.issubdtype(ans.dtype, np.integer):
            cached = ans >= 0
            rows = ans
        else:
            raise ValueError(
                f"prune({layer}, ids) returned dtype {ans.dtype!s}; expected bool (True = cached) "
                "or integer history rows (-1 = not cached)"
            )
        if not cached.any():
            return src
        cached_pos = np.flatnonzero(cached)
        computed_pos = np.flatnonzero(~cached)
        block.cached_pos = torch.from_numpy(cached_pos)
        block.computed_pos = torch.from_numpy(computed_pos)
        block.cached_ids = torch.from_numpy(src[cached_pos])
        if rows is not None:
            block.cached_rows = torch.from_numpy(rows[cached_pos].astype(np.int64))
        return np.ascontiguousarray(src[computed_pos])
