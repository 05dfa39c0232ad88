"""Numba kernels of the synthetic dataset generator.

Every random draw here comes from a counter-based stream keyed by
``(key, entity id)``: a node's out-degree, its edges and its attributes are
pure functions of the seed and the node id. That is what makes the output
independent of the block size and of the number of threads.

Integers mixed with ``uint64`` must be cast explicitly: Numba turns
``int64 op uint64`` into float64, which silently ruins hashes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..splitmix import GOLDEN as _GOLDEN
from ..splitmix import mix64 as _mix64

_S11 = np.uint64(11)
_ONE = np.uint64(1)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53
_MASK16 = np.uint64(0xFFFF)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
# Sum of four uniform 16-bit integers: mean 4 * 32767.5, variance 4 * (2**32 - 1) / 12.
_IH_MEAN = 131070.0
_IH_INV_SD = 1.0 / math.sqrt(4.0 * (65536.0**2 - 1.0) / 12.0)

# Split codes written by node_attributes: -1 = not in any split.
SPLIT_NONE = -1
SPLIT_TRAIN = 0
SPLIT_VALID = 1
SPLIT_TEST = 2

# How a layout assigns labelled nodes to splits.
SPLIT_BY_TIME = 0  # random split with the given fractions, year drawn to match
SPLIT_BY_RANK = 1  # split by popularity rank (ogbn-products' sales ranking)


@njit(cache=True, nogil=True, inline="always")
def _stream(key, ident):
    return _mix64(key ^ _mix64(np.uint64(ident) + _GOLDEN))


@njit(cache=True, nogil=True, inline="always")
def _next_uniform(state):
    # Returns (new state, uniform in [0, 1)) of a splitmix64 sequence.
    state = state + _GOLDEN
    return state, float(_mix64(state) >> _S11) * _TWO_M53


@njit(cache=True, nogil=True, inline="always")
def _feistel(x, keys, bits_right, mask_left, mask_right, forward):
    # Unbalanced Feistel network: each half-round XORs one side with a hash of
    # the other, so every half-round (and the whole network) is a bijection on
    # [0, 2**(bits_left + bits_right)); the inverse runs the rounds backwards.
    left = x >> np.uint64(bits_right)
    right = x & mask_right
    n = keys.shape[0]
    for i in range(n):
        r = i if forward else n - 1 - i
        if r % 2 == 0:
            left = left ^ (_mix64(right ^ keys[r]) & mask_left)
        else:
            right = right ^ (_mix64(left ^ keys[r]) & mask_right)
    return (left << np.uint64(bits_right)) | right


@njit(cache=True, nogil=True, inline="always")
def _permute(x, n, keys, bits_right, mask_left, mask_right, forward):
    # Cycle walking restricts the power-of-two permutation to [0, n); the
    # domain is under 2n, so fewer than two steps are needed on average.
    y = np.uint64(x)
    un = np.uint64(n)
    while True:
        y = _feistel(y, keys, bits_right, mask_left, mask_right, forward)
        if y < un:
            return np.int64(y)


@njit(cache=True, nogil=True)
def permute_ids(ids, n, keys, bits_right, mask_left, mask_right, forward, out):
    """Apply the id permutation (forward: slot -> id) or its inverse to ``ids``."""
    for i in range(ids.shape[0]):
        out[i] = _permute(ids[i], n, keys, bits_right, mask_left, mask_right, forward)


@njit(cache=True, nogil=True, inline="always")
def _powerlaw_cdf(x, x0, a, c1, c2):
    # CDF on [0, m) of the density proportional to (x + x0)**-a; c1, c2 are
    # the constants of _powerlaw_consts for this (x0, a, m).
    if abs(1.0 - a) < 1e-9:
        return (math.log(x + x0) - c1) / c2
    return ((x + x0) ** (1.0 - a) - c1) / c2


@njit(cache=True, nogil=True, inline="always")
def _powerlaw_index(u, x0, a, c1, c2, m):
    # Inverse of _powerlaw_cdf, floored to an integer index in [0, m).
    if abs(1.0 - a) < 1e-9:
        x = math.exp(c1 + u * c2) - x0
    else:
        x = (c1 + u * c2) ** (1.0 / (1.0 - a)) - x0
    k = np.int64(x)
    if k < 0:
        return np.int64(0)
    if k >= m:
        return np.int64(m - 1)
    return k


@njit(cache=True, nogil=True, inline="always")
def _poisson(state, lam):
    # Knuth's product method for small means; the normal approximation above
    # 30 is within a fraction of a percent of the exact law there.
    if lam <= 0.0:
        return state, np.int64(0)
    if lam < 30.0:
        limit = math.exp(-lam)
        k = np.int64(0)
        state, u = _next_uniform(state)
        p = u
        while p > limit:
            k += 1
            state, u = _next_uniform(state)
            p *= u
        return state, k
    state, u1 = _next_uniform(state)
    state, u2 = _next_uniform(state)
    z = math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)
    k = math.floor(lam + math.sqrt(lam) * z + 0.5)
    if k < 0.0:
        return state, np.int64(0)
    return state, np.int64(k)


@njit(cache=True, nogil=True, parallel=True)
def out_degrees(
    lo,
    hi,
    n,
    perm_keys,
    bits_right,
    mask_left,
    mask_right,
    n_active,
    x0,
    a,
    c1,
    c2,
    num_edges,
    key,
    out,
):
    """Poisson out-degree of ids ``[lo, hi)``; slot s has mean ``num_edges`` x mass of [s, s+1)."""
    for i in prange(hi - lo):
        u = lo + i
        s = _permute(u, n, perm_keys, bits_right, mask_left, mask_right, False)
        if s >= n_active:
            out[i] = 0
            continue
        lam = num_edges * (
            _powerlaw_cdf(s + 1.0, x0, a, c1, c2) - _powerlaw_cdf(float(s), x0, a, c1, c2)
        )
        state = _stream(key, u)
        state, k = _poisson(state, lam)
        out[i] = k


@njit(cache=True, nogil=True, parallel=True)
def destinations(
    lo,
    hi,
    offsets,
    src_n,
    src_keys,
    src_bits_right,
    src_mask_left,
    src_mask_right,
    src_num_residues,
    src_res_class,
    dst_n,
    dst_keys,
    dst_bits_right,
    dst_mask_left,
    dst_mask_right,
    dst_n_active,
    x0,
    a,
    c1,
    c2,
    dst_num_residues,
    class_res_ptr,
    class_res_list,
    class_res_cumw,
    res_x0,
    res_c1,
    res_c2,
    res_count,
    homophily,
    p_self,
    p_dup,
    key,
    out,
):
    """Draw the destination of every out-edge of source ids ``[lo, hi)``.

    Edges of source ``lo + i`` go to ``out[offsets[i]:offsets[i + 1]]``. With
    probability ``homophily`` the destination is drawn from the source's own
    community (slots ``r + k * M`` of the community's residues r), otherwise
    from all active destination slots; both draws follow the same power law in
    the slot, so the expected in-degree of slot s is proportional to
    ``(s + x0) ** -a`` either way. ``p_self`` and ``p_dup`` plant self-loops
    and repeated edges as raw graphs have them (homogeneous relations only).
    """
    for i in prange(hi - lo):
        u = lo + i
        s = _permute(u, src_n, src_keys, src_bits_right, src_mask_left, src_mask_right, False)
        cls = src_res_class[s % src_num_residues]
        may_self = s < dst_n_active
        state = _stream(key, u)
        prev = np.int64(-1)
        for e in range(offsets[i], offsets[i + 1]):
            state, u0 = _next_uniform(state)
            if may_self and u0 < p_self:
                v = np.int64(u)
            elif prev >= 0 and u0 < p_self + p_dup:
                v = prev
            else:
                state, u1 = _next_uniform(state)
                state, u2 = _next_uniform(state)
                if u1 < homophily:
                    state, u3 = _next_uniform(state)
                    j0 = class_res_ptr[cls]
                    j1 = class_res_ptr[cls + 1]
                    j = j0
                    while j < j1 - 1 and class_res_cumw[j] <= u3:
                        j += 1
                    r = class_res_list[j]
                    k = _powerlaw_index(u2, res_x0[r], a, res_c1[r], res_c2[r], res_count[r])
                    slot = r + k * dst_num_residues
                else:
                    slot = _powerlaw_index(u2, x0, a, c1, c2, dst_n_active)
                v = _permute(
                    slot, dst_n, dst_keys, dst_bits_right, dst_mask_left, dst_mask_right, True
                )
            out[e] = v
            prev = v


@njit(cache=True, nogil=True)
def node_attributes(
    lo,
    hi,
    n,
    perm_keys,
    bits_right,
    mask_left,
    mask_right,
    num_residues,
    res_class,
    labelled_fraction,
    split_mode,
    split_cum,
    rank_cut_train,
    rank_cut_valid,
    year_lo,
    year_hi,
    key,
    out_class,
    out_split,
    out_year,
):
    """Community (= class), split code and year of ids ``[lo, hi)``.

    ``year_lo``/``year_hi`` hold inclusive year ranges for train, valid, test
    and unlabelled nodes (indices 0..3). ``split_cum`` holds the cumulative
    train and valid fractions for SPLIT_BY_TIME; SPLIT_BY_RANK uses the slot
    cut-offs instead, the most popular nodes going to train.
    """
    for i in range(hi - lo):
        u = lo + i
        s = _permute(u, n, perm_keys, bits_right, mask_left, mask_right, False)
        out_class[i] = res_class[s % num_residues]
        state = _stream(key, u)
        state, u0 = _next_uniform(state)
        state, u1 = _next_uniform(state)
        state, u2 = _next_uniform(state)
        sp = SPLIT_NONE
        if u0 < labelled_fraction:
            if split_mode == SPLIT_BY_RANK:
                if s < rank_cut_train:
                    sp = SPLIT_TRAIN
                elif s < rank_cut_valid:
                    sp = SPLIT_VALID
                else:
                    sp = SPLIT_TEST
            elif u1 < split_cum[0]:
                sp = SPLIT_TRAIN
            elif u1 < split_cum[1]:
                sp = SPLIT_VALID
            else:
                sp = SPLIT_TEST
        out_split[i] = sp
        t = 3 if sp == SPLIT_NONE else sp
        if split_mode == SPLIT_BY_RANK:
            t = 3
        span = year_hi[t] - year_lo[t] + 1
        # sqrt(u) makes recent years more frequent, as publication counts grow.
        out_year[i] = year_lo[t] + min(span - 1, np.int64(span * math.sqrt(u2)))


@njit(cache=True, nogil=True, parallel=True)
def features(lo, classes, centroids, key, out):
    """Rows ``lo, lo + 1, ...`` of the feature matrix: centroid of the class plus noise.

    The noise is standardised Irwin-Hall (sum of four uniforms, from one hash
    per value): close to a unit Gaussian (tails cut at 3.5 sd) at a fraction
    of the cost of exact normal draws, which dominate generation otherwise.
    Value (row, j) depends only on the key, row and j.
    """
    dim = out.shape[1]
    for i in prange(out.shape[0]):
        c = classes[i]
        state = _stream(key, lo + i)
        for j in range(dim):
            state = state + _GOLDEN
            h = _mix64(state)
            total = (h & _MASK16) + ((h >> _S16) & _MASK16) + ((h >> _S32) & _MASK16) + (h >> _S48)
            out[i, j] = centroids[c, j] + (float(total) - _IH_MEAN) * _IH_INV_SD


@njit(cache=True, nogil=True)
def _int_digits(v, buf, pos):
    # Writes the decimal digits of v >= 0 at buf[pos:], returns the new pos.
    if v == 0:
        buf[pos] = 48
        return pos + 1
    start = pos
    while v > 0:
        buf[pos] = 48 + v % 10
        v //= 10
        pos += 1
    end = pos - 1
    while start < end:
        t = buf[start]
        buf[start] = buf[end]
        buf[end] = t
        start += 1
        end -= 1
    return pos


@njit(cache=True, nogil=True)
def format_int_rows(values, buf):
    """Write the int64 matrix ``values`` [n, k] as CSV text into ``buf``; returns its length."""
    pos = 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if v < 0:
                buf[pos] = 45
                pos += 1
                v = -v
            pos = _int_digits(v, buf, pos)
            buf[pos] = 44 if j + 1 < values.shape[1] else 10
            pos += 1
    return pos


@njit(cache=True, nogil=True)
def format_float_rows(values, decimals, buf):
    """Write the float matrix ``values`` [n, k] as fixed-point CSV text; returns its length.

    Returns -1 when a value is not finite or too large for the fixed-point
    path (|x| >= 1e12); the caller reports it.
    """
    scale = 10**decimals
    pos = 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            x = float(values[i, j])
            if not (abs(x) < 1e12):
                return -1
            v = np.int64(math.floor(abs(x) * scale + 0.5))
            if x < 0.0 and v != 0:
                buf[pos] = 45
                pos += 1
            pos = _int_digits(v // scale, buf, pos)
            if decimals > 0:
                buf[pos] = 46
                pos += 1
                frac = v % scale
                div = scale // 10
                for _ in range(decimals):
                    buf[pos] = 48 + (frac // div) % 10
                    div //= 10
                    pos += 1
            buf[pos] = 44 if j + 1 < values.shape[1] else 10
            pos += 1
    return pos
