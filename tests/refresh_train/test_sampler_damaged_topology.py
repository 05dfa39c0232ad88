"""The sampler on a damaged topology (a store whose checksums were recomputed
over bad ``indptr``/``indices``): a StoreFormatError, never an out-of-bounds read."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import refresh_train.sampler as sampler_mod
from refresh_store.errors import RefreshError
from refresh_train.sampler import NeighborSampler

_HOSTILE = st.sampled_from([-1, -(2**40), 2**31, 2**40, 2**62, 3, 0])


def _topology(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 5, n))]).astype(np.int64)
    indices = rng.integers(0, n, int(indptr[-1])).astype(np.int64)
    return indptr, indices


@given(
    n=st.sampled_from([3, 40, 400]),
    seed=st.integers(0, 3),
    ptr_bad=st.lists(st.tuples(st.integers(1, 10**6), _HOSTILE), max_size=3),
    idx_bad=st.lists(st.tuples(st.integers(0, 10**6), _HOSTILE), max_size=3),
    threads=st.sampled_from([1, 2]),
    hashed=st.booleans(),
    typed=st.booleans(),
)
@example(n=40, seed=0, ptr_bad=[], idx_bad=[(0, 2**40)], threads=1, hashed=False, typed=False)
@example(n=40, seed=0, ptr_bad=[(5, 2**40)], idx_bad=[], threads=1, hashed=False, typed=False)
@example(n=40, seed=0, ptr_bad=[(5, -1)], idx_bad=[], threads=1, hashed=False, typed=True)
@example(n=400, seed=1, ptr_bad=[], idx_bad=[(7, -1)], threads=2, hashed=True, typed=False)
def test_damaged_topology_is_an_error_not_a_wild_read(
    monkeypatch, n, seed, ptr_bad, idx_bad, threads, hashed, typed
):
    indptr, indices = _topology(n, seed)
    for pos, value in ptr_bad:
        if len(indptr) > 2:
            indptr[1 + pos % (len(indptr) - 2)] = value  # interior entries
    for pos, value in idx_bad:
        if len(indices):
            indices[pos % len(indices)] = value
    if hashed:
        monkeypatch.setattr(sampler_mod, "DENSE_MAP_MAX_NODES", 0)
    kwargs = {}
    if typed:
        kwargs = dict(
            edge_type=(np.arange(len(indices)) % 2).astype(np.int8),
            num_relations=2,
            relation_fanouts=[[2, 2], [1, 1], [2, 1]],
        )
    sampler = NeighborSampler(indptr, indices, [3, 2, 2], seed=0, num_threads=threads, **kwargs)
    seeds = np.random.default_rng(seed).permutation(n)[: min(n, 300)]
    try:
        batch = sampler.sample(seeds, 0)
    except RefreshError:
        return
    finally:
        sampler.close()
    for nodes in batch.layer_nodes:
        nodes = nodes.numpy()
        assert nodes.size == 0 or (nodes.min() >= 0 and nodes.max() < n)


@pytest.mark.parametrize("bad", [2**40, -5])
def test_damaged_indices_raise_store_format_error(bad):
    from refresh_store.errors import StoreFormatError

    indptr, indices = _topology(40, 0)
    indices[:] = bad
    sampler = NeighborSampler(indptr, indices, [3, 2], seed=0)
    with pytest.raises(StoreFormatError, match="topology is damaged"):
        sampler.sample(np.arange(10), 0)
