"""Numba kernels of the converter (see :mod:`refresh_store.convert`).

Plain kernels: contiguous arrays in, caller-allocated arrays out, no checks;
the callers in ``_topology.py``, :mod:`~refresh_store.convert.reorder` and
:mod:`~refresh_store.convert.permute` validate inputs first. Kernels the
readers use too are in :mod:`refresh_store.kernels`.

An edge ``s -> d`` travels between passes as one int64 *key*
``(d - lo) * num_nodes + s``, relative to the first node ``lo`` of its bucket,
so that sorting keys sorts edges by destination, then source, and equal keys
are duplicate edges.

A typed conversion (``num_types = R > 1``, the edge type ``t`` in ``[0, R)``)
uses the key ``(d - lo) * M + s * R + t`` with ``M = R * num_nodes``:
sorting sorts by destination, then source, then type, so the CSC order of the
sources is the same as without types; equal keys are the same edge with the
same type (an edge present with two types stays twice, once per type, side
by side); ``key // M`` is the local destination, ``(key % M) // R`` the
source and ``key % R`` the type. With ``R = 1`` both keys are the same
number, so untyped conversions are unchanged.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels import bucket_index as _bucket

__all__ = [
    "edge_keys_by_bucket",
    "dedupe_sorted",
    "local_degrees",
    "keys_to_sources",
    "keys_to_sources_types",
    "relabel_keys",
    "degree_histogram",
    "collect_at_least",
    "assign_degree_ids",
    "invert_window",
    "select_window",
    "stable_bucket_order",
]


@njit(cache=True, nogil=True)
def edge_keys_by_bucket(
    src, dst, num_nodes, bounds, undirected, drop_self_loops, counts, keys, etype, rev_type
):
    """Keys of a block of edges grouped by destination bucket.

    Returns the index of the first edge with an id outside [0, num_nodes)
    (nothing written then), else -1. ``counts`` (zeroed, [K]) receives the
    number of keys per bucket; ``keys`` (at least 2 * len(src) when
    undirected) receives them, bucket after bucket. Typed (``len(rev_type) =
    R > 1``): ``etype[i]`` is edge i's type and the reverse edge of a
    symmetrised graph gets type ``rev_type[etype[i]]``; untyped callers pass
    ``rev_type`` of length 1 and ``etype`` of any length.
    """
    n = len(src)
    num_types = len(rev_type)
    m_key = num_nodes * num_types
    for i in range(n):
        s = src[i]
        d = dst[i]
        if s < 0 or s >= num_nodes or d < 0 or d >= num_nodes:
            return i
    for i in range(n):
        s = src[i]
        d = dst[i]
        if s == d and drop_self_loops:
            continue
        counts[_bucket(d, bounds)] += 1
        if undirected and s != d:
            counts[_bucket(s, bounds)] += 1
    k = len(counts)
    pos = np.empty(k, dtype=np.int64)
    acc = 0
    for b in range(k):
        pos[b] = acc
        acc += counts[b]
    for i in range(n):
        s = src[i]
        d = dst[i]
        if s == d and drop_self_loops:
            continue
        t = np.int64(etype[i]) if num_types > 1 else np.int64(0)
        b = _bucket(d, bounds)
        keys[pos[b]] = (d - bounds[b]) * m_key + s * num_types + t
        pos[b] += 1
        if undirected and s != d:
            r = np.int64(rev_type[t]) if num_types > 1 else np.int64(0)
            b = _bucket(s, bounds)
            keys[pos[b]] = (s - bounds[b]) * m_key + d * num_types + r
            pos[b] += 1
    return -1


@njit(cache=True, nogil=True)
def dedupe_sorted(keys, n):
    """Remove repeats from sorted keys[:n] in place; return the new length."""
    if n == 0:
        return 0
    m = 1
    for i in range(1, n):
        if keys[i] != keys[m - 1]:
            keys[m] = keys[i]
            m += 1
    return m


@njit(cache=True, nogil=True)
def local_degrees(keys, m, num_nodes, deg):
    """deg[key // num_nodes] += 1 for keys[:m] (deg zeroed by the caller).

    Typed keys pass ``num_types * num_nodes`` as ``num_nodes``.
    """
    for i in range(m):
        deg[keys[i] // num_nodes] += 1


@njit(cache=True, nogil=True)
def keys_to_sources(keys, m, num_nodes, out):
    """out[i] = keys[i] % num_nodes (the source node of each edge)."""
    for i in range(m):
        out[i] = keys[i] % num_nodes


@njit(cache=True, nogil=True)
def keys_to_sources_types(keys, m, num_nodes, num_types, src, types):
    """src[i], types[i] = the source and the type of typed keys[i]."""
    m_key = num_nodes * num_types
    for i in range(m):
        k = keys[i] % m_key
        src[i] = k // num_types
        types[i] = k % num_types


@njit(cache=True, nogil=True)
def relabel_keys(keys, m, num_nodes, lo, new_id, bounds, counts, out, num_types):
    """Map keys of a bucket starting at ``lo`` to new ids, grouped by new-id bucket.

    ``counts`` (zeroed, [K]) receives keys per bucket of ``bounds``; ``out``
    ([m]) receives the keys relative to their new bucket. Typed keys
    (``num_types > 1``) keep their type.
    """
    k = len(counts)
    m_key = num_nodes * num_types
    for i in range(m):
        d = new_id[lo + keys[i] // m_key]
        counts[_bucket(d, bounds)] += 1
    pos = np.empty(k, dtype=np.int64)
    acc = 0
    for b in range(k):
        pos[b] = acc
        acc += counts[b]
    for i in range(m):
        key = keys[i]
        d = new_id[lo + key // m_key]
        k = key % m_key
        s = new_id[k // num_types]
        t = k % num_types
        b = _bucket(d, bounds)
        out[pos[b]] = (d - bounds[b]) * m_key + s * num_types + t
        pos[b] += 1


@njit(cache=True, nogil=True)
def degree_histogram(deg, cap, hist):
    """hist[min(deg[v], cap)] += 1 (hist zeroed, [cap + 1])."""
    for v in range(len(deg)):
        d = deg[v]
        hist[d if d < cap else cap] += 1


@njit(cache=True, nogil=True)
def collect_at_least(deg, cap, ids, degs):
    """Nodes with deg >= cap, ascending, into ids/degs; return how many."""
    c = 0
    for v in range(len(deg)):
        if deg[v] >= cap:
            ids[c] = v
            degs[c] = deg[v]
            c += 1
    return c


@njit(cache=True, nogil=True)
def assign_degree_ids(table, cap, start, big_new):
    """Turn degrees into new ids in place (a stable counting sort by degree, descending).

    ``start[d]`` (d < cap) is the first new id of degree ``d``; nodes of degree
    >= cap take ``big_new`` in ascending node order.
    """
    j = 0
    for v in range(len(table)):
        d = table[v]
        if d >= cap:
            table[v] = big_new[j]
            j += 1
        else:
            table[v] = start[d]
            start[d] += 1


@njit(cache=True, nogil=True)
def invert_window(new_id, lo, hi, out):
    """out[new_id[v] - lo] = v for every v with lo <= new_id[v] < hi."""
    for v in range(len(new_id)):
        j = new_id[v]
        if j >= lo and j < hi:
            out[j - lo] = v


@njit(cache=True, nogil=True)
def select_window(new_id, lo, hi, ids, positions, seen):
    """The v with lo <= new_id[v] < hi, ascending, into ids; new_id[v] - lo into positions.

    ``seen`` ([hi - lo] uint8) must be zero on entry. Returns how many were
    found, or -1 when two of them share a new id; ``hi - lo`` means the
    window is a bijection.
    """
    c = 0
    cap = len(ids)
    for v in range(len(new_id)):
        j = new_id[v]
        if j >= lo and j < hi:
            p = j - lo
            if seen[p] or c == cap:
                return -1
            seen[p] = 1
            ids[c] = v
            positions[c] = p
            c += 1
    return c


@njit(cache=True, nogil=True)
def stable_bucket_order(bucket, counts, order):
    """order = positions sorted by bucket, stable; counts (zeroed, [K]) = size of each bucket."""
    for i in range(len(bucket)):
        counts[bucket[i]] += 1
    pos = np.empty(len(counts), dtype=np.int64)
    acc = 0
    for b in range(len(counts)):
        pos[b] = acc
        acc += counts[b]
    for i in range(len(bucket)):
        b = bucket[i]
        order[pos[b]] = i
        pos[b] += 1
