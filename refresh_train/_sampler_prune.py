"""The sampler's pruning hook for the historical embedding cache.

``prune(l, ids)`` is called for blocks ``l = L-1 .. 1`` with the global ids
of block ``l``'s source nodes; the nodes it reports cached are not expanded
(see :mod:`refresh_train.sampler` for the hook's contract and
:class:`~refresh_train.batch.Block` for the fields filled here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_train.batch import Block

PruneFn = Callable[[int, NDArray[np.int64]], NDArray]
"""``prune(layer, ids) -> bool mask or int64 history rows (-1 = not cached)``."""


def apply_prune(prune: PruneFn, layer: int, src: np.ndarray, block: Block) -> np.ndarray:
    """Ask ``prune`` about ``src``, record its answer on ``block`` and return the ids to expand.

    Raises
    ------
    ValueError
        If the hook returns an array of the wrong shape or dtype.
    """
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
