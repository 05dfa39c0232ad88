"""Which input rows a table of the hottest nodes would spare a batch.

For an unpruned batch and a set of cached layers, :func:`uncovered_rank`
gives each input row one number ``u`` such that, with a history table
holding every node of slot ``< H`` at the cached layers (seeds excepted;
:mod:`.slots`; below, "id" is a node's slot), the row is still needed
exactly when ``u >= H``. A row is needed while some path
from a seed down to it meets no cached node; along one path the table
covers the row from ``H > (the smallest id of a non-seed node at a cached
layer on the path)``, and the row is spared once every path is covered, so
``u`` is the largest, over the paths, of that smallest id (``NOT_COVERED``
when a path has no such node). One pass over the blocks answers every
``H`` at once, which is what the automatic budget split
(:mod:`.split`) and the benchmark's bound need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from ..batch import MiniBatch
from ._cover_kernels import push_max

__all__ = ["uncovered_rank", "NOT_COVERED"]

#: ``uncovered_rank`` of a row no table can spare (a path of seeds only).
NOT_COVERED = np.iinfo(np.int64).max


def uncovered_rank(
    batch: MiniBatch,
    num_seeds: int,
    cached_layers: Iterable[int],
    slots: Callable[[int, NDArray[np.int64]], NDArray[np.int64]] | None = None,
) -> NDArray[np.int64]:
    """``int64 [len(batch.input_nodes)]``: see the module docstring.

    Parameters
    ----------
    batch
        A batch sampled without pruning (seeds first in every layer).
    num_seeds
        Its number of seeds (never served from a table).
    cached_layers
        Layers ``l >= 1`` whose nodes the table holds (``h^(l)``).
    slots
        ``slots(layer, ids)``: each node's slot in the table (a table of
        ``H`` slots holds slots ``< H``; :meth:`.slots.SlotOrder.slots`);
        ``None``: slot ``v`` is node ``v``.
    """
    cached = set(cached_layers)
    value = np.full(num_seeds, NOT_COVERED, dtype=np.int64)  # the seeds' outputs
    for layer in range(batch.num_layers - 1, -1, -1):
        block = batch.blocks[layer]
        out = np.full(block.num_src, -1, dtype=np.int64)
        out[: block.num_dst] = value  # a destination is its own (root) source
        edges = block.edge_index.numpy()
        push_max(edges[0], edges[1], value, out)
        if layer in cached:
            ids = batch.layer_nodes[layer].numpy()
            own = ids.copy() if slots is None else slots(layer, ids).copy()
            own[:num_seeds] = NOT_COVERED
            np.minimum(out, own, out=out)
        value = out
    return value
