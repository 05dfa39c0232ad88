"""Numba kernels of the host tier's replacement policies.

Every policy maps keys (reordered node ids) to slots of a fixed-size buffer.
The kernels share two arrays the caller allocated:

- ``slot_of[key]``: the slot holding ``key``, or -1;
- ``slot_key[slot]``: the key held in ``slot``, or -1.

Admission kernels receive unique keys that are not cached, at most as many
as there are slots. They evict as needed and update both maps, so after a
call ``slot_of[keys]`` says where each key ended up (-1 if a policy dropped
it again within the same call, which S3-FIFO may do on a scan).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Fibonacci hashing of keys into the S3-FIFO ghost table.
_GOLDEN = np.uint64(11400714819323198485)
# S3-FIFO caps an entry's access count at 3 (two bits in the paper).
_FREQ_MAX = 3


@njit(cache=True, nogil=True)
def _evict_key(slot_key, slot_of, s):
    old = slot_key[s]
    if old >= 0:
        slot_of[old] = -1
    slot_key[s] = -1


# --------------------------------------------------------------------- CLOCK


@njit(cache=True, nogil=True)
def clock_hit(slots, ref):
    for i in range(slots.shape[0]):
        ref[slots[i]] = 1


@njit(cache=True, nogil=True)
def clock_admit(keys, slot_of, slot_key, ref, stamp, state):
    """state = [hand, used, call]; slots filled in this call are never victims."""
    cap = slot_key.shape[0]
    state[2] += 1
    call = state[2]
    for i in range(keys.shape[0]):
        if state[1] < cap:
            s = state[1]
            state[1] += 1
        else:
            # Terminates: at most len(keys) <= cap slots carry this call's stamp,
            # and a second pass finds every reference bit cleared.
            while True:
                h = state[0]
                state[0] = (h + 1) % cap
                if stamp[h] == call:
                    continue
                if ref[h] != 0:
                    ref[h] = 0
                    continue
                s = h
                break
            _evict_key(slot_key, slot_of, s)
        slot_key[s] = keys[i]
        slot_of[keys[i]] = s
        ref[s] = 0
        stamp[s] = call


# ----------------------------------------------------------------------- LRU


@njit(cache=True, nogil=True)
def _lru_unlink(s, prev, nxt, ends):
    p = prev[s]
    n = nxt[s]
    if p >= 0:
        nxt[p] = n
    else:
        ends[0] = n
    if n >= 0:
        prev[n] = p
    else:
        ends[1] = p


@njit(cache=True, nogil=True)
def _lru_push_front(s, prev, nxt, ends):
    prev[s] = -1
    nxt[s] = ends[0]
    if ends[0] >= 0:
        prev[ends[0]] = s
    ends[0] = s
    if ends[1] < 0:
        ends[1] = s


@njit(cache=True, nogil=True)
def lru_hit(slots, prev, nxt, ends):
    """ends = [head (most recent), tail (least recent), used]."""
    for i in range(slots.shape[0]):
        s = slots[i]
        if ends[0] != s:
            _lru_unlink(s, prev, nxt, ends)
            _lru_push_front(s, prev, nxt, ends)


@njit(cache=True, nogil=True)
def lru_admit(keys, slot_of, slot_key, prev, nxt, ends):
    cap = slot_key.shape[0]
    for i in range(keys.shape[0]):
        if ends[2] < cap:
            s = ends[2]
            ends[2] += 1
        else:
            # With len(keys) <= cap the tail is never a slot filled in this call.
            s = ends[1]
            _lru_unlink(s, prev, nxt, ends)
            _evict_key(slot_key, slot_of, s)
        slot_key[s] = keys[i]
        slot_of[keys[i]] = s
        _lru_push_front(s, prev, nxt, ends)


# ------------------------------------------------------------------- S3-FIFO


@njit(cache=True, nogil=True)
def s3fifo_hit(slots, freq):
    for i in range(slots.shape[0]):
        s = slots[i]
        if freq[s] < _FREQ_MAX:
            freq[s] += 1


@njit(cache=True, nogil=True)
def _ghost_slot(key, ghost_bits):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - ghost_bits))


@njit(cache=True, nogil=True)
def _ring_push(ring, st, which, s):
    # st = [small_head, small_len, main_head, main_len, used]; which 0 = small, 1 = main
    cap = ring.shape[1]
    head = st[2 * which]
    length = st[2 * which + 1]
    ring[which, (head + length) % cap] = s
    st[2 * which + 1] = length + 1


@njit(cache=True, nogil=True)
def _ring_pop(ring, st, which):
    cap = ring.shape[1]
    head = st[2 * which]
    s = ring[which, head]
    st[2 * which] = (head + 1) % cap
    st[2 * which + 1] -= 1
    return s


@njit(cache=True, nogil=True)
def _s3fifo_evict(slot_of, slot_key, freq, ring, st, ghost, ghost_bits, small_cap):
    while True:
        if st[1] >= small_cap or st[3] == 0:
            s = _ring_pop(ring, st, 0)
            if freq[s] > 0:
                # Re-accessed while in the small queue: promote to main.
                freq[s] = 0
                _ring_push(ring, st, 1, s)
                continue
            key = slot_key[s]
            ghost[_ghost_slot(key, ghost_bits)] = key
            _evict_key(slot_key, slot_of, s)
            return s
        s = _ring_pop(ring, st, 1)
        if freq[s] > 0:
            freq[s] -= 1
            _ring_push(ring, st, 1, s)
            continue
        _evict_key(slot_key, slot_of, s)
        return s


@njit(cache=True, nogil=True)
def s3fifo_admit(keys, slot_of, slot_key, freq, ring, st, ghost, ghost_bits, small_cap):
    cap = slot_key.shape[0]
    for i in range(keys.shape[0]):
        key = keys[i]
        if st[4] < cap:
            s = st[4]
            st[4] += 1
        else:
            s = _s3fifo_evict(slot_of, slot_key, freq, ring, st, ghost, ghost_bits, small_cap)
        g = _ghost_slot(key, ghost_bits)
        # A key seen recently (evicted from the small queue unused) goes straight to main.
        which = 0
        if ghost[g] == key:
            ghost[g] = -1
            which = 1
        _ring_push(ring, st, which, s)
        freq[s] = 0
        slot_key[s] = key
        slot_of[key] = s
