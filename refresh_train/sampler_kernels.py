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

from refresh_store.splitmix import GOLDEN as _GOLDEN
from refresh_store.splitmix import mix64
from refresh_train.cpu_prefetch import prefetch

_S32 = np.uint64(32)
_ONE = np.uint64(1)
_U32 = np.uint64(1 << 32)
# Floyd's algorithm checks membership by a linear scan of the picks so far,
# which beats hashing while the picks fit in a few cache lines.
_LINEAR_SCAN_MAX = 64
# How far ahead (in destinations or edges) the gather and relabelling loops
# prefetch their random reads, so that many cache misses are in flight at once
# instead of one (measured best between 16 and 64 on the 10M-node graph).
_AHEAD = 32
# The gather's reads of a memmapped ``indices`` miss the TLB as well and take
# longer, so they are requested further ahead.
_GATHER_AHEAD = 64


@njit(cache=True, nogil=True, inline="always")
def _num_sampled(d, fanout):
    # Neighbours drawn for a node of degree d: all of them when the fanout is
    # -1 or at least d, else fanout.
    return d if fanout < 0 or d <= fanout else fanout


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
def count_kernel(indptr, dst, fanout, offsets, starts, degs):
    """Per destination ``dst[i]``: its CSC start and degree, and the prefix sums
    of how many neighbours each takes (``offsets``, length ``len(dst) + 1``).

    Returns the total number of sampled edges, or -1 when ``dst`` or the
    CSC ranges leave the topology (a damaged store: nothing is read out of
    bounds).
    """
    n = dst.shape[0]
    n_nodes = indptr.shape[0] - 1
    e_end = indptr[n_nodes]
    offsets[0] = 0
    total = 0
    for i in range(n):
        if i + _AHEAD < n:
            prefetch(indptr, dst[i + _AHEAD])
        v = dst[i]
        if v < 0 or v >= n_nodes:
            return -1
        s = indptr[v]
        d = indptr[v + 1] - s
        if s < 0 or d < 0 or s + d > e_end:
            return -1
        starts[i] = s
        degs[i] = d
        total += _num_sampled(d, fanout)
        offsets[i + 1] = total
    return total


@njit(cache=True, nogil=True)
def _positions(v, d, o, k, lkey, out):
    """Write into ``out[o:o+k]`` the CSC positions node ``v`` (degree ``d``)
    takes: all of them in order when ``k == d``, else a uniform subset without
    replacement drawn with Floyd's algorithm from ``v``'s own stream."""
    if k == d:
        for m in range(k):
            out[o + m] = m
        return
    state = mix64(lkey ^ mix64(np.uint64(v) ^ _GOLDEN))
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
        return
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
            # t was drawn before; Floyd's rule takes j, which cannot have been
            # drawn (earlier rounds draw from [0, j)).
            t = j
            h = np.int64((np.uint64(t) * _GOLDEN) >> _S32) & mask
            while table[h] != -1:
                h = (h + 1) & mask
        table[h] = t
        out[o + m] = t
        m += 1


@njit(cache=True, nogil=True)
def sample_kernel(indices, dst, starts, degs, offsets, lkey, lo, hi, out):
    """Draw the neighbours of ``dst[lo:hi]`` into ``out`` (global ids).

    ``out[offsets[i]:offsets[i+1]]`` receives the neighbours of ``dst[i]``: all
    of them in CSC order when the count equals the degree, otherwise a uniform
    subset without replacement drawn with Floyd's algorithm.

    Two passes: first every CSC position (pure arithmetic), then one flat
    gather from ``indices`` that prefetches the chosen entries of the
    destination ``_GATHER_AHEAD`` places ahead. Interleaving draw and read
    per node kept one node's cache misses in flight at a time; the flat
    gather let the CPU overlap some (2x on a 1M-node graph), the prefetch
    more (the gather 2x faster on warm caches on the 10M-node benchmark
    graph, ~1.2x on cold ones, where TLB misses on a memmapped ``indices``
    dominate). Drawing node ``i + D``'s positions while gathering node ``i``
    in one loop measured slower than both passes.
    """
    for i in range(lo, hi):
        o = offsets[i]
        _positions(dst[i], degs[i], o, offsets[i + 1] - o, lkey, out)
    for i in range(lo, hi):
        j = i + _GATHER_AHEAD
        if j < hi:
            sj = starts[j]
            for e in range(offsets[j], offsets[j + 1]):
                prefetch(indices, sj + out[e])
        s = starts[i]
        for e in range(offsets[i], offsets[i + 1]):
            out[e] = indices[s + out[e]]


@njit(cache=True, nogil=True)
def map_dst_kernel(dst, local_map, base, src_ids):
    """Give ``dst[i]`` the local id ``i`` in a generation-stamped id map.

    ``local_map`` (int32, one entry per node) holds ``base + l`` for a node
    with local id ``l`` in the current mapping; any value outside
    ``[base, base + num)`` (``num`` = ids handed out so far) means "no id
    yet". Starting a mapping at a ``base`` above every value written before
    therefore invalidates all old entries at once: the map is never cleared
    per batch, and a batch touches only the entries of its own nodes.
    ``src_ids`` (int32) receives the destinations' global ids and, filled
    further by :func:`relabel_kernel`, is the list of source nodes (int32
    because the dense map is only used far below 2**31 nodes, and half the
    bytes stay in cache).

    Returns ``len(dst)``, or ``-1 - i`` if ``dst[i]`` repeats an earlier
    destination.
    """
    n = dst.shape[0]
    for i in range(n):
        if i + _AHEAD < n:
            prefetch(local_map, dst[i + _AHEAD])
        u = dst[i]
        lc = np.int64(local_map[u]) - base
        if lc >= 0 and lc < i:
            return -1 - i
        local_map[u] = base + i
        src_ids[i] = u
    return n


@njit(cache=True, nogil=True)
def offsets_kernel(degs, n, fanout, offsets):
    """:func:`count_kernel` for destinations whose degrees ``degs[:n]`` are
    already known (looked up by :func:`relabel_kernel`): prefix sums only.
    Returns the total number of sampled edges."""
    offsets[0] = 0
    total = 0
    for i in range(n):
        total += _num_sampled(degs[i], fanout)
        offsets[i + 1] = total
    return total


@njit(cache=True, nogil=True)
def relabel_kernel(
    offsets, lo, hi, local_map, base, src_ids, edge_out, num, indptr, starts, degs, expand
):
    """Local ids for the sampled neighbours of destinations ``lo .. hi-1``.

    ``edge_out[0, offsets[lo]:offsets[hi]]`` holds global ids on entry and
    local ids on return; ``edge_out[1]`` receives the destination of each
    edge. A neighbour not seen before gets the next id (``num``, then
    ``num + 1`` ...) in order of first appearance, so with
    :func:`map_dst_kernel` run first the destinations are a prefix of the
    sources and ``src_ids[:num]`` are the sources' global ids. Stamped map
    as in :func:`map_dst_kernel`.

    With ``expand`` set, a new source at local id ``l`` also gets its CSC
    start and degree in ``starts[l]`` / ``degs[l]``: the sources are the next
    block's destinations, and looking them up here, with the map entries'
    prefetches, replaces a separate pass of random ``indptr`` reads.

    Returns the new ``num``, or -1 when a neighbour id or its CSC range
    leaves the topology (a damaged store: nothing is read out of bounds).
    """
    n_map = local_map.shape[0]
    e_end = offsets[hi]
    csc_end = indptr[indptr.shape[0] - 1]
    for e in range(offsets[lo], min(offsets[lo] + _AHEAD, e_end)):
        if edge_out[0, e] < n_map:
            prefetch(local_map, edge_out[0, e])
            if expand:
                prefetch(indptr, edge_out[0, e])
    for i in range(lo, hi):
        for e in range(offsets[i], offsets[i + 1]):
            if e + _AHEAD < e_end:
                ahead = edge_out[0, e + _AHEAD]
                if ahead < n_map:
                    prefetch(local_map, ahead)
                    if expand:
                        prefetch(indptr, ahead)
            u = edge_out[0, e]
            if u < 0 or u >= n_map:
                return -1
            lc = np.int64(local_map[u]) - base
            if lc >= 0 and lc < num:
                local = lc
            else:
                local = num
                local_map[u] = base + num
                src_ids[num] = u
                if expand:
                    st = indptr[u]
                    dg = indptr[u + 1] - st
                    if st < 0 or dg < 0 or st + dg > csc_end:
                        return -1
                    starts[num] = st
                    degs[num] = dg
                num += 1
            edge_out[0, e] = local
            edge_out[1, e] = i
    return num


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


# ----------------------------------------------------------------------------- per-relation sampling
#
# A typed store keeps each node's in-edges in source order with an aligned
# ``edge_type`` (see refresh_store.format), so the edges of one relation are
# not a contiguous run: each destination's types are scanned (int8, one
# sequential read of its in-edges) to count them and, when a relation is
# subsampled, to turn the drawn ordinals into CSC positions. A (destination,
# relation) pair is a sampling *unit* ``i * R + r`` with its own stream.


@njit(cache=True, nogil=True)
def typed_count_kernel(indptr, edge_type, dst, rel_fanouts, offsets, starts, degs, counts):
    """Per destination ``dst[i]``: CSC start and degree, in-edges per relation
    (``counts[i * R + r]``) and the prefix sums of how many neighbours each
    unit takes (``offsets``, length ``len(dst) * R + 1``; relation ``r`` takes
    up to ``rel_fanouts[r]``). Types outside ``[0, R)`` are never sampled.

    Returns the total number of sampled edges, or -1 when ``dst`` or the
    CSC ranges leave the topology (a damaged store).
    """
    n = dst.shape[0]
    R = rel_fanouts.shape[0]
    n_nodes = indptr.shape[0] - 1
    e_end = min(indptr[n_nodes], edge_type.shape[0])
    offsets[0] = 0
    total = 0
    for i in range(n):
        if i + _AHEAD < n:
            prefetch(indptr, dst[i + _AHEAD])
        v = dst[i]
        if v < 0 or v >= n_nodes:
            return -1
        s = indptr[v]
        d = indptr[v + 1] - s
        if s < 0 or d < 0 or s + d > e_end:
            return -1
        starts[i] = s
        degs[i] = d
        base = i * R
        for r in range(R):
            counts[base + r] = 0
        for e in range(s, s + d):
            t = np.int64(edge_type[e])
            if t >= 0 and t < R:
                counts[base + t] += 1
        for r in range(R):
            total += _num_sampled(counts[base + r], rel_fanouts[r])
            offsets[base + r + 1] = total
    return total


@njit(cache=True, nogil=True)
def typed_sample_kernel(
    indices, edge_type, dst, starts, degs, counts, offsets, num_relations, lkey, lo, hi, out, types
):
    """Draw the neighbours of ``dst[lo:hi]`` per relation into ``out`` (global ids)
    and their relation into ``types``.

    ``out[offsets[u]:offsets[u+1]]`` (unit ``u = i * R + r``) receives the
    neighbours of ``dst[i]`` through relation ``r``: all of them in CSC order
    when the count equals the relation's in-degree, otherwise a uniform subset
    without replacement (Floyd's algorithm on the relation's ordinals, from
    the stream of ``dst[i] * R + r``), in CSC order.
    """
    R = num_relations
    nxt = np.empty(R, dtype=np.int64)
    end = np.empty(R, dtype=np.int64)
    seen = np.empty(R, dtype=np.int64)
    for i in range(lo, hi):
        v = dst[i]
        base = i * R
        full = True
        for r in range(R):
            o = offsets[base + r]
            k = offsets[base + r + 1] - o
            c = counts[base + r]
            if k > 0:
                _positions(np.int64(v) * R + r, c, o, k, lkey, out)
                if k < c:
                    out[o : o + k].sort()
                    full = False
            nxt[r] = o
            end[r] = o + k
            seen[r] = 0
        # One scan of the types: the j-th edge of relation t is taken when j
        # is the next drawn ordinal of t (ordinals are sorted).
        s = starts[i]
        left = offsets[base + R] - offsets[base]
        for e in range(s, s + degs[i]):
            if left == 0:
                break
            t = np.int64(edge_type[e])
            if t < 0 or t >= R:
                continue
            p = nxt[t]
            if p < end[t] and (full or out[p] == seen[t]):
                out[p] = e
                types[p] = t
                nxt[t] = p + 1
                left -= 1
            seen[t] += 1
    for i in range(lo, hi):
        for e in range(offsets[i * R], offsets[(i + 1) * R]):
            out[e] = indices[out[e]]
