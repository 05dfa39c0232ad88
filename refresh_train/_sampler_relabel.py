"""Per-thread scratch buffers and the relabelling of sampled ids to local ids.

A batch's local ids follow first appearance: a block's destinations take ids
``0 .. n-1`` and each neighbour not seen before takes the next id. Graphs of
up to ``sampler.DENSE_MAP_MAX_NODES`` nodes relabel through a dense int32 id
map per sampling thread that is never cleared between batches (its entries
carry a stamp, see :func:`map_destinations`); larger graphs relabel through
a hash table sized to the batch (:func:`relabel_hashed`).
"""

from __future__ import annotations

import numpy as np

from refresh_store.errors import StoreFormatError
from refresh_train import sampler_kernels as K

# Stamps (id map values) stay below this; reaching it clears the map once
# (about every 2**31 / ids-per-batch batches).
STAMP_LIMIT = (1 << 31) - 1


class Scratch:
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


def checked(result: int) -> int:
    """A kernel's count, or StoreFormatError when it found the topology leaving its bounds."""
    if result < 0:
        raise StoreFormatError(
            "the store's topology is damaged: indptr/indices point outside the graph; "
            "run `refresh-convert verify` on the store, or train with --verify-store"
        )
    return int(result)


def map_destinations(
    sc: Scratch, dst: np.ndarray, n: int, total: int, mapped: bool, num_nodes: int
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
        sc.local_map = np.zeros(num_nodes, dtype=np.int32)
    if not mapped:
        sc.base += sc.used
        sc.used = 0
        if sc.base + n + total >= STAMP_LIMIT:
            sc.local_map.fill(0)
            sc.base = 1
    # Retire this block's ids before the kernels run, so that a failed
    # call cannot leave valid-looking entries behind.
    sc.used = max(sc.used, n + total)
    if mapped:
        return src_ids, n
    return src_ids, int(K.map_dst_kernel(dst, sc.local_map, sc.base, src_ids))


def relabel(sc, indptr, lo, hi, offsets, src_ids, edge_index, num, starts, degs, expand) -> int:
    """Relabel destinations ``[lo, hi)``'s drawn neighbours (see ``relabel_kernel``)."""
    return checked(
        K.relabel_kernel(
            offsets,
            lo,
            hi,
            sc.local_map,
            sc.base,
            src_ids,
            edge_index,
            num,
            indptr,
            starts,
            degs,
            expand,
        )
    )


def relabel_hashed(
    sc: Scratch,
    dst: np.ndarray,
    offsets: np.ndarray,
    total: int,
    edge_index: np.ndarray,
    num_nodes: int,
):
    """Relabel ``edge_index`` (row 0: drawn global ids) through a hash table sized to the batch.

    Returns ``(source ids, edge_index)``, the destinations first, or
    ``(None, id)`` with the first destination that appears twice.
    """
    n = dst.shape[0]
    src = sc.get("src", n + total, np.int64)
    size = 1 << max(4, int(2 * (n + total)).bit_length())
    keys = sc.get("keys", size, np.int64)[:size]
    keys.fill(-1)
    vals = sc.get("vals", size, np.int64)[:size]
    shift = 64 - (size.bit_length() - 1)
    num_src = K.relabel_hash_kernel(dst, offsets, keys, vals, shift, src, edge_index)
    if num_src < 0:
        return None, dst[-1 - num_src]
    return _in_range(src[:num_src].copy(), n, num_nodes), edge_index


def _in_range(src: np.ndarray, n_dst: int, num_nodes: int) -> np.ndarray:
    # The hash relabelling reads no array at the sampled ids; a damaged
    # store's out-of-range neighbours are caught here instead.
    new = src[n_dst:]
    if new.size and (int(new.min()) < 0 or int(new.max()) >= num_nodes):
        checked(-1)
    return src
