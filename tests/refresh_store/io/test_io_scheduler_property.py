"""Property test of the I/O scheduler: any request returns numpy's rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refresh_store.io import IOConfig, IOScheduler
from refresh_store.store import open_store
from refresh_store.writer import write_store

_N = 3000


def _store(path, d: int, dtype):
    rng = np.random.default_rng(d)
    feats = rng.standard_normal((_N, d)).astype(dtype)
    write_store(
        path,
        features=feats,
        indptr=np.zeros(_N + 1, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int64),
        labels=np.zeros(_N, dtype=np.int64),
        train_idx=np.arange(10),
        valid_idx=np.arange(10, 20),
        test_idx=np.arange(20, 30),
        chunk_rows=64,
    )
    return feats


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    # Row sizes of 3 x fp16 = 6 B and 700 x fp32 = 2800 B: rows that never
    # divide a 4 KiB block, and rows that span two blocks.
    out = []
    for d, dtype in ((3, np.float16), (700, np.float32)):
        path = tmp_path_factory.mktemp("s") / "store"
        out.append((path, _store(path, d, dtype)))
    return [(open_store(path), feats) for path, feats in out]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ids=st.lists(st.integers(0, _N - 1), max_size=400),
    mode=st.sampled_from(["buffered", "mmap", "auto"]),
    gap_kib=st.sampled_from([0, 4, 64]),
    depth=st.sampled_from([1, 3, 32]),
)
def test_gather_equals_numpy(stores, ids, mode, gap_kib, depth):
    for store, feats in stores:
        config = IOConfig(mode=mode, queue_depth=depth, max_gap_bytes=gap_kib << 10)
        with IOScheduler(store.region("features"), config) as io:
            rows = io.gather(np.asarray(ids, dtype=np.int64))
            stats = io.stats()
        np.testing.assert_array_equal(rows, feats[np.asarray(ids, dtype=np.int64)])
        assert stats["rows_requested"] == len(ids)
        assert stats["rows_unique"] == len(set(ids))
