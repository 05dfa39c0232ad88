"""Numba kernels of :mod:`refresh_train.history.slots`."""

from __future__ import annotations

import numba as nb
import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the golden ratio in 64 bits


@nb.njit(cache=True, nogil=True)
def spread(indptr, indices, weight, fanout, out) -> None:
    """``out[x] += weight[u] * min(1, fanout / deg(u))`` for every in-neighbour ``x`` of every ``u``.

    The expected number of times a uniform draw of ``fanout`` in-neighbours
    (without replacement) of each node ``u``, made ``weight[u]`` times, picks
    ``x``; ``fanout < 0`` takes all of them.
    """
    for u in range(weight.shape[0]):
        w = weight[u]
        if w == 0:
            continue
        lo, hi = indptr[u], indptr[u + 1]
        deg = hi - lo
        if deg == 0:
            continue
        p = w if fanout < 0 or deg <= fanout else w * fanout / deg
        for e in range(lo, hi):
            out[indices[e]] += p


@nb.njit(cache=True, nogil=True)
def _home(key, bits):
    return np.int64((np.uint64(key) * _MIX) >> np.uint64(64 - bits))


@nb.njit(cache=True, nogil=True)
def build_map(nodes, bits):
    """Open-addressing map ``nodes[i] -> i`` with ``2**bits`` buckets (keys -1 = empty)."""
    size = 1 << bits
    keys = np.full(size, -1, dtype=np.int64)
    vals = np.zeros(size, dtype=np.int64)
    mask = size - 1
    for i in range(nodes.shape[0]):
        h = _home(nodes[i], bits)
        while keys[h] != -1:
            h = (h + 1) & mask
        keys[h] = nodes[i]
        vals[h] = i
    return keys, vals


@nb.njit(cache=True, nogil=True)
def find(keys, vals, bits, ids, missing, out) -> None:
    """``out[i]`` = the value of ``ids[i]`` in the map, ``missing`` where it has none."""
    mask = (1 << bits) - 1
    for i in range(ids.shape[0]):
        key = ids[i]
        h = _home(key, bits)
        res = missing
        while True:
            k = keys[h]
            if k == key:
                res = vals[h]
                break
            if k == -1:
                break
            h = (h + 1) & mask
        out[i] = res
