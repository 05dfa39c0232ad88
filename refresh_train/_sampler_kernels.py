"""Numba kernels of the neighbour sampler (see :mod:`refresh_train.sampler`).

Kernels take contiguous arrays, write into arrays the caller allocated and
trust their inputs; the wrapper in ``sampler.py`` checks them.

Randomness is counter-based: the draws for destination node ``v`` at one layer
come from a SplitMix64 stream keyed by ``(layer key, v)``. A node's sample
therefore depends only on the batch's key, the layer and the node id — never on
its position in the frontier, on which thread handles it, or on how the
frontier is split into chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ONE = np.uint64(1)
_U32 = np.uint64(1 << 32)
# Floyd's algorithm checks membership by a linear scan of the picks so far,
# which beats hashing while the picks fit in a few cache lines.
_LINEAR_SCAN_MAX = 64


@njit(cache=True, nogil=True, inline="always")
def mix64(z):
    """SplitMix64 finaliser: a bijective, well-mixing hash of a uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def layer_key(key, layer):
    """Key of one layer's streams, from the batch key (both uint64)."""
    return mix64(key ^ mix64(np.uint64(layer) + _GOLDEN))


@njit(cache=True, nogil=True, inline="always")
def _bounded(r, n):
    # Lemire's multiply-shift maps 32 random bits onto [0, n); its bias is at
    # most n / 2**32, far below what any test or training run can see.
    if n < _U32:
        return np.int64(((r >> _S32) * n) >> _S32)
    return np.int64(r % n)


@njit(cache=True, nogil=True)
def count_kernel(indptr, dst, fanout, counts, starts, degs):
    """Per destination ``dst[i]``: its CSC start and degree, and how many
    neighbours it takes (``counts[i]``)."""
    for i in range(dst.shape[0]):
        v = dst[i]
        s = indptr[v]
        d = indptr[v + 1] - s
        starts[i] = s
        degs[i] = d
        if fanout < 0 or d <= fanout:
            counts[i] = d
        else:
            counts[i] = fanout


@njit(cache=True, nogil=True)
def sample_kernel(indices, dst, starts, degs, offsets, lkey, lo, hi, out):
    """Draw the neighbours of ``dst[lo:hi]`` into ``out`` (global ids).

    ``out[offsets[i]:offsets[i+1]]`` receives the neighbours of ``dst[i]``: all
    of them in CSC order when the count equals the degree, otherwise a uniform
    subset without replacement drawn with Floyd's algorithm.

    Two passes: first every CSC position (pure arithmetic), then one flat
    gather from ``indices``. Interleaving them per node kept only one node's
    cache misses in flight; the flat gather lets the CPU overlap many (measured
    2x on a 1M-node power-law graph).
    """
    for i in range(lo, hi):
        d = degs[i]
        o = offsets[i]
        k = offsets[i + 1] - o
        if k == d:
            for m in range(k):
                out[o + m] = m
            continue
        state = mix64(lkey ^ mix64(np.uint64(dst[i]) ^ _GOLDEN))
        if k <= _LINEAR_SCAN_MAX:
            # Positions drawn so far live in out[o:o+m].
            m = 0
            for j in range(d - k, d):
                state += _GOLDEN
                t = _bounded(mix64(state), np.uint64(j + 1))
                for q in range(m):
                    if out[o + q] == t:
                        t = j
                        break
                out[o + m] = t
                m += 1
        else:
            size = 1
            while size < 2 * k:
                size *= 2
            table = np.full(size, -1, dtype=np.int64)
            mask = size - 1
            m = 0
            for j in range(d - k, d):
                state += _GOLDEN
                t = _bounded(mix64(state), np.uint64(j + 1))
                h = np.int64((np.uint64(t) * _GOLDEN) >> _S32) & mask
                while table[h] != -1 and table[h] != t:
                    h = (h + 1) & mask
                if table[h] == t:
                    # t was drawn before; Floyd's rule takes j, which cannot
                    # have been drawn (earlier rounds draw from [0, j)).
                    t = j
                    h = np.int64((np.uint64(t) * _GOLDEN) >> _S32) & mask
                    while table[h] != -1:
                        h = (h + 1) & mask
                table[h] = t
                out[o + m] = t
                m += 1
    for i in range(lo, hi):
        s = starts[i]
        for e in range(offsets[i], offsets[i + 1]):
            out[e] = indices[s + out[e]]


@njit(cache=True, nogil=True)
def relabel_hash_kernel(dst, offsets, table_keys, table_vals, shift, src_out, edge_out):
    """Give local ids to the destinations and their sampled neighbours.

    ``edge_out[0]`` holds the sampled neighbours' global ids on entry (grouped
    by destination as ``offsets`` says) and their local ids on return;
    ``edge_out[1]`` receives the local destination ids. Destinations get
    ``0 .. len(dst)-1``; each neighbour not seen before gets the next id in order
    of first appearance, so the destinations are a prefix of the sources.
    ``src_out[:num_src]`` receives the sources' global ids.

    ``table_keys`` (filled with -1) / ``table_vals`` are an open-addressing
    hash table whose size is a power of two at least twice ``len(src_out)``;
    ``shift`` is 64 minus its log2.

    Returns ``num_src``, or ``-1 - i`` if ``dst[i]`` repeats an earlier
    destination.
    """
    mask = table_keys.shape[0] - 1
    shift = np.uint64(shift)
    n_dst = dst.shape[0]
    for i in range(n_dst):
        u = np.int64(dst[i])
        h = np.int64((np.uint64(u) * _GOLDEN) >> shift) & mask
        while table_keys[h] != -1:
            if table_keys[h] == u:
                return -1 - i
            h = (h + 1) & mask
        table_keys[h] = u
        table_vals[h] = i
        src_out[i] = u
    num = n_dst
    for i in range(n_dst):
        for e in range(offsets[i], offsets[i + 1]):
            u = edge_out[0, e]
            h = np.int64((np.uint64(u) * _GOLDEN) >> shift) & mask
            while True:
                key = table_keys[h]
                if key == u:
                    local = table_vals[h]
                    break
                if key == -1:
                    table_keys[h] = u
                    table_vals[h] = num
                    src_out[num] = u
                    local = num
                    num += 1
                    break
                h = (h + 1) & mask
            edge_out[0, e] = local
            edge_out[1, e] = i
    return num


@njit(cache=True, nogil=True)
def relabel_dense_kernel(dst, offsets, local_map, src_out, edge_out):
    """:func:`relabel_hash_kernel` with a dense ``global id -> local id`` map.

    ``local_map`` (int32, one entry per node) must be all -1 on entry and is
    all -1 again on return (only the touched entries are reset), so one map
    serves every batch of a thread. A direct index beats hashing while the
    map is small enough to sit in the last-level cache.
    """
    n_dst = dst.shape[0]
    for i in range(n_dst):
        u = dst[i]
        if local_map[u] != -1:
            for q in range(i):
                local_map[src_out[q]] = -1
            return -1 - i
        local_map[u] = i
        src_out[i] = u
    num = n_dst
    for i in range(n_dst):
        for e in range(offsets[i], offsets[i + 1]):
            u = edge_out[0, e]
            local = np.int64(local_map[u])
            # Branch-free: whether u is new is a coin flip the branch predictor
            # loses; the unconditional stores are harmless (src_out[num] is
            # overwritten until num advances, and it has room for every edge).
            new = np.int64(local < 0)
            local += new * (num - local)
            local_map[u] = local
            src_out[num] = u
            num += new
            edge_out[0, e] = local
            edge_out[1, e] = i
    for q in range(num):
        local_map[src_out[q]] = -1
    return num
