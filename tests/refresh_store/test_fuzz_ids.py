"""Fuzz tests of the I/O scheduler and the sampler with hostile id sets.

Any id set (empty, duplicated, out of range, negative, huge, wrong dtype or
shape) ends with numpy's rows or an InvalidIdsError (a RefreshError).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from refresh_store.errors import InvalidIdsError
from refresh_store.io import IOConfig, IOScheduler
from refresh_store.store import open_store
from refresh_store.writer import write_store
from refresh_train.sampler import NeighborSampler

_N = 300
_VALUES = st.sampled_from([0, 1, 7, _N - 1, _N, _N + 1, -1, -(2**63), 2**31, 2**63 - 1, 2**64 - 1])
_DTYPES = st.sampled_from(
    ["int64", "int32", "uint64", "uint8", "int8", "float64", "bool", "object"]
)


def _ids(values: list[int], dtype: str, shape: str):
    if dtype == "list":
        return values
    try:
        a = np.array(values, dtype=dtype)
    except (OverflowError, ValueError):
        a = np.array(values, dtype=object)
    if shape == "2d" and a.size:
        a = a.reshape(1, -1)
    if shape == "scalar" and a.size:
        a = a[0]
    return a


def _valid(values: list[int], dtype: str, shape: str, n: int) -> bool:
    """Whether the id set is a 1-D integer array inside [0, n) after its dtype's cast."""
    if shape != "1d" and values and dtype != "list":
        return False
    if dtype in ("float64", "bool", "object") and values:
        return False
    try:
        cast = np.array(values, dtype=dtype) if dtype != "list" else np.array(values)
    except (OverflowError, ValueError):
        return False
    if cast.size and cast.dtype.kind not in "iu":
        return False
    return all(0 <= int(v) < n for v in cast.tolist())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "store"
    rng = np.random.default_rng(1)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 6, _N))]).astype(np.int64)
    indices = rng.integers(0, _N, int(indptr[-1])).astype(np.int64)
    feats = rng.standard_normal((_N, 5)).astype(np.float32)
    write_store(
        path,
        features=feats,
        indptr=indptr,
        indices=indices,
        labels=np.zeros(_N, dtype=np.int64),
        train_idx=np.arange(10),
        valid_idx=np.arange(10, 20),
        test_idx=np.arange(20, 30),
        chunk_rows=32,
    )
    return open_store(path), feats


@given(
    values=st.lists(_VALUES, max_size=20),
    dtype=st.one_of(_DTYPES, st.just("list")),
    shape=st.sampled_from(["1d", "1d", "2d", "scalar"]),
    mode=st.sampled_from(["buffered", "mmap"]),
)
@example(values=[2**64 - 1], dtype="uint64", shape="1d", mode="buffered")
@example(values=[0, 0, 0], dtype="int64", shape="1d", mode="mmap")
@example(values=[], dtype="float64", shape="1d", mode="buffered")
def test_io_scheduler_hostile_ids(store, values, dtype, shape, mode):
    st_, feats = store
    ids = _ids(values, dtype, shape)
    with IOScheduler(st_.region("features"), IOConfig(mode=mode)) as io:
        try:
            rows = io.gather(ids)
        except InvalidIdsError:
            assert not _valid(values, dtype, shape, _N)
            return
    assert _valid(values, dtype, shape, _N), (values, dtype, shape)
    want = feats[np.asarray(np.array(values, dtype=dtype if dtype != "list" else None), np.int64)]
    np.testing.assert_array_equal(rows, want.reshape(rows.shape))


def test_io_scheduler_ragged_ids_are_refused(store):
    with IOScheduler(store[0].region("features")) as io, pytest.raises(InvalidIdsError):
        io.gather([[1, 2], [3]])


@given(
    values=st.lists(_VALUES, max_size=20),
    dtype=st.one_of(_DTYPES, st.just("list")),
    shape=st.sampled_from(["1d", "1d", "2d"]),
)
@example(values=[2**64 - 1], dtype="uint64", shape="1d")
@example(values=[3, 3], dtype="int64", shape="1d")
def test_sampler_hostile_seeds(store, values, dtype, shape):
    st_, _ = store
    sampler = NeighborSampler(st_.indptr, st_.indices, [3, 2], seed=0)
    ids = _ids(values, dtype, shape)
    distinct = len(set(values)) == len(values)
    try:
        batch = sampler.sample(ids, 0)
    except InvalidIdsError:
        assert not (_valid(values, dtype, shape, _N) and distinct)
        return
    assert _valid(values, dtype, shape, _N) and distinct, (values, dtype, shape)
    assert batch.seeds.tolist() == [int(v) for v in np.array(values, dtype=np.int64).tolist()]
    src = batch.input_nodes.numpy()
    assert src.size == 0 or (src.min() >= 0 and src.max() < _N)
    assert len(np.unique(src)) == len(src)
