"""The pipelined loader yields exactly the serial path's batches, and cleans up."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from _planted import planted_store

from refresh_train.config import TierConfig
from refresh_train.loader import BatchLoader
from refresh_train.modes import CACHE_MODES
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("loader") / "s", num_nodes=1200)


def _loader(store, mode: str, prefetch: int) -> tuple[BatchLoader, object]:
    row = store.region("features").row_bytes
    cache = CACHE_MODES[mode](
        store,
        TierConfig(cache=mode, cache_budget_bytes=100 * row, host_budget_bytes=200 * row),
        torch.device("cpu"),
    )
    sampler = NeighborSampler(store.indptr, store.indices, [6, 4], seed=5)
    parts = list(epoch_batches(store.train_idx, 64, seed=5, epoch=1))
    seeds = [batch_seed(1, i) for i in range(len(parts))]
    return BatchLoader(parts, seeds, sampler.sample, cache.fetch, prefetch), cache


@pytest.mark.parametrize("mode", ["none", "raw"])
@pytest.mark.parametrize("prefetch", [1, 3])
def test_pipelined_batches_equal_serial_ones(store, mode, prefetch):
    serial, c1 = _loader(store, mode, 0)
    piped, c2 = _loader(store, mode, prefetch)
    a, b = list(serial), list(piped)
    assert len(a) == len(b) == len(serial) > 5
    for x, y in zip(a, b):
        assert torch.equal(x.seeds, y.seeds)
        assert torch.equal(x.input_nodes, y.input_nodes)
        for bx, by in zip(x.blocks, y.blocks):
            assert torch.equal(bx.edge_index, by.edge_index)
        assert torch.equal(x.features, y.features)
        want = torch.from_numpy(np.asarray(store.features[x.input_nodes.numpy()]))
        assert torch.equal(x.features, want)
    # Both paths read the same rows through the same tiers: the same counters.
    s1, s2 = c1.stats(), c2.stats()
    for key in ("rows_device", "rows_host", "rows_disk"):
        assert s1[key] == s2[key]
    assert piped.times.batches == serial.times.batches == len(a)
    assert [x.extra["index"] for x in b] == list(range(len(b)))
    c1.close()
    c2.close()


def test_stages_run_ahead_of_the_consumer():
    """While the consumer holds batch 0, later batches are already sampled and fetched."""
    fetched: list[int] = []

    def sample(seeds, bseed):
        from refresh_train.batch import MiniBatch

        t = torch.from_numpy(seeds)
        return MiniBatch(seeds=t, blocks=[], input_nodes=t, layer_nodes=[t], batch_seed=bseed)

    def fetch(batch):
        fetched.append(batch.batch_seed)
        return batch

    parts = [np.array([i]) for i in range(10)]
    loader = BatchLoader(parts, list(range(10)), sample, fetch, prefetch_batches=3)
    it = iter(loader)
    next(it)
    deadline = time.time() + 5
    while len(fetched) < 4 and time.time() < deadline:
        time.sleep(0.01)
    # Batch 0 taken, 3 waiting in the ready queue: fetching ran ahead but is bounded.
    assert 4 <= len(fetched) <= 5
    rest = list(it)
    assert [b.batch_seed for b in rest] == list(range(1, 10))


def test_stage_errors_reach_the_consumer_and_threads_stop():
    def sample(seeds, bseed):
        if bseed == 3:
            raise ValueError("broken batch 3")
        from refresh_train.batch import MiniBatch

        t = torch.from_numpy(seeds)
        return MiniBatch(seeds=t, blocks=[], input_nodes=t, layer_nodes=[t], batch_seed=bseed)

    before = threading.active_count()
    loader = BatchLoader([np.array([i]) for i in range(8)], range(8), sample, lambda b: b, 2)
    got = []
    with pytest.raises(ValueError, match="broken batch 3"):
        for b in loader:
            got.append(b.batch_seed)
    assert got == [0, 1, 2]
    assert threading.active_count() == before


def test_breaking_out_early_stops_the_threads():
    def sample(seeds, bseed):
        from refresh_train.batch import MiniBatch

        t = torch.from_numpy(seeds)
        return MiniBatch(seeds=t, blocks=[], input_nodes=t, layer_nodes=[t], batch_seed=bseed)

    before = threading.active_count()
    loader = BatchLoader([np.array([i]) for i in range(100)], range(100), sample, lambda b: b, 2)
    gen = iter(loader)
    for b in gen:
        if b.batch_seed == 2:
            break
    gen.close()
    assert threading.active_count() == before


def test_a_loader_is_iterated_once_and_checks_its_arguments():
    loader = BatchLoader([], [], lambda s, b: None, lambda b: b, 0)
    assert list(loader) == []
    with pytest.raises(RuntimeError, match="once"):
        iter(loader)
    with pytest.raises(ValueError, match="batch_seeds"):
        BatchLoader([np.array([1])], [], lambda s, b: None, lambda b: b)
    with pytest.raises(ValueError, match="prefetch_batches"):
        BatchLoader([], [], lambda s, b: None, lambda b: b, -1)
