"""The tiers' whole-row copy kernels against torch indexing, for any row width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refresh_train.tiers._base import row_words
from refresh_train.tiers._copy_kernels import put_rows, take_rows


@pytest.mark.parametrize(
    ("dtype", "width"),
    [(torch.float32, 128), (torch.float16, 3), (torch.float16, 4), (torch.bfloat16, 7)],
)
def test_take_and_put_match_torch_indexing(dtype: torch.dtype, width: int) -> None:
    rng = np.random.default_rng(width)
    src = torch.randn(50, width).to(dtype)
    src_rows = rng.integers(0, 50, 30)
    dst_rows = rng.permutation(40)[:30]
    dst = torch.zeros(40, width, dtype=dtype)
    take_rows(row_words(src), src_rows, row_words(dst), dst_rows)
    want = torch.zeros(40, width, dtype=dtype)
    want[torch.from_numpy(dst_rows)] = src[torch.from_numpy(src_rows)]
    assert torch.equal(dst, want)

    block = torch.randn(30, width).to(dtype)
    put_rows(row_words(block), row_words(dst), dst_rows)
    want[torch.from_numpy(dst_rows)] = block
    assert torch.equal(dst, want)


def test_row_words_shares_memory_and_picks_the_widest_word() -> None:
    t = torch.zeros(4, 6, dtype=torch.float32)  # 24 B rows: 3 words
    w = row_words(t)
    assert w.shape == (4, 3) and w.dtype == np.int64
    w[2, :] = -1
    assert torch.isnan(t[2]).all() and not torch.isnan(t[1]).any()
    assert row_words(torch.zeros(2, 3, dtype=torch.float16)).shape == (2, 6)  # 6 B: bytes


def test_buffer_pool_reuses_only_buffers_nothing_refers_to() -> None:
    from refresh_train.tiers._base import BufferPool

    pool = BufferPool(max_buffers=3)
    a = pool.rows(100, (4,), np.dtype(np.float32))
    a.fill_(1.0)
    b = pool.rows(100, (4,), np.dtype(np.float32))  # a is alive: a new buffer
    assert not np.shares_memory(a.numpy(), b.numpy())
    view = a[10:20]
    del a
    c = pool.rows(100, (4,), np.dtype(np.float32))  # a's view is alive: still not reused
    assert not np.shares_memory(view.numpy(), c.numpy()) and pool.reused == 0
    assert torch.equal(view, torch.ones(10, 4))  # and its rows were not overwritten
    del view
    d = pool.rows(90, (4,), np.dtype(np.float32))  # nothing refers to the first buffer now
    assert pool.reused == 1 and d.shape == (90, 4)
    arr = d.numpy()
    del d
    e = pool.rows(90, (4,), np.dtype(np.float32))  # a numpy view of d keeps it in use
    assert not np.shares_memory(arr, e.numpy())
    big = pool.rows(10_000, (4,), np.dtype(np.float16))  # larger than every idle buffer
    assert big.dtype == torch.float16 and big.shape == (10_000, 4)
    assert len(pool._bufs) <= 3
