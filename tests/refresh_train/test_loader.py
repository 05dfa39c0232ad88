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


# ------------------------------------------------------------ the byte budget
def _sized_sample(seeds, bseed):
    from refresh_train.batch import MiniBatch

    t = torch.from_numpy(seeds)
    return MiniBatch(seeds=t, blocks=[], input_nodes=t, layer_nodes=[t], batch_seed=bseed)


# Bytes of batch i: mostly small, some several times larger, one alone above the budget.
SIZES = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 30, 3, 3, 8]
BUDGET = 17


@pytest.mark.parametrize("stage_batches", [0, 4], ids=["no-stage", "stage4"])
@pytest.mark.parametrize("prefetch", [0, 1, 3], ids=["serial", "prefetch1", "prefetch3"])
def test_bytes_in_flight_never_exceed_the_budget(prefetch, stage_batches):
    """Checked from outside the loader: when batch i is fetched, batches from the
    first the consumer has not finished up to i are all in flight."""
    from refresh_train.loader import batches_in_flight

    n = len(SIZES)
    done = [0]  # batches the consumer has finished (updated before it asks for more)
    lock = threading.Lock()
    seen: list[tuple[int, int]] = []  # (bytes, batches) in flight at each fetch

    def fetch(batch):
        i = batch.batch_seed
        with lock:
            first = done[0]
        seen.append((sum(SIZES[first : i + 1]), i + 1 - first))
        time.sleep(0.001)
        return batch

    loader = BatchLoader(
        [np.array([i]) for i in range(n)],
        range(n),
        _sized_sample,
        fetch,
        prefetch,
        stage=(lambda batches: len(batches)) if stage_batches else None,
        stage_batches=stage_batches,
        budget_bytes=BUDGET,
        batch_bytes=lambda b: SIZES[b.batch_seed],
    )
    out = []
    for batch in loader:
        time.sleep(0.003)  # a slow consumer: the stages run as far ahead as they may
        assert loader.bytes_in_flight <= max(BUDGET, SIZES[batch.batch_seed])
        out.append(batch.batch_seed)
        with lock:
            done[0] += 1
    assert out == list(range(n))
    admitted, _ = batches_in_flight(prefetch, stage_batches)
    for nbytes, batches in seen:
        assert nbytes <= BUDGET or batches == 1  # a batch above the budget goes alone
        assert batches <= admitted
    # The batch of 30 bytes went alone; everything else stayed within the budget.
    assert loader.peak_bytes_in_flight == 30


@pytest.mark.parametrize("prefetch", [1, 3], ids=["prefetch1", "prefetch3"])
def test_without_a_budget_the_counts_alone_bound_the_batches(prefetch):
    n = len(SIZES)
    loader = BatchLoader(
        [np.array([i]) for i in range(n)],
        range(n),
        _sized_sample,
        lambda b: b,
        prefetch,
        batch_bytes=lambda b: SIZES[b.batch_seed],
    )
    for _ in loader:
        time.sleep(0.003)
    # Counted but not bounded: the queues held more than BUDGET bytes at some point.
    assert loader.peak_bytes_in_flight > BUDGET


def test_windows_close_where_the_next_batch_would_not_fit_whatever_the_timing():
    """With a budget, windows depend on the batches only: the same serially and pipelined."""
    n = len(SIZES)
    runs = {}
    for prefetch in (0, 1, 3):
        windows: list[list[int]] = []

        def stage(batches, windows=windows):
            windows.append([b.batch_seed for b in batches])

        loader = BatchLoader(
            [np.array([i]) for i in range(n)],
            range(n),
            _sized_sample,
            lambda b: (time.sleep(0.001), b)[1],
            prefetch,
            stage=stage,
            stage_batches=5,
            budget_bytes=BUDGET,
            batch_bytes=lambda b: SIZES[b.batch_seed],
        )
        assert [b.batch_seed for b in loader] == list(range(n))
        runs[prefetch] = windows
    assert runs[0] == runs[1] == runs[3]
    windows = runs[0]
    assert sum(windows, []) == list(range(n))
    for w, nxt in zip(windows, windows[1:]):
        assert sum(SIZES[i] for i in w) <= BUDGET or len(w) == 1
        # Closed by count (5 batches) or because the next batch would not fit.
        assert len(w) == 5 or sum(SIZES[i] for i in w) + SIZES[nxt[0]] > BUDGET
    assert any(len(w) < 5 for w in windows[:-1])  # the budget did close some early


@pytest.mark.parametrize("prefetch", [0, 2], ids=["serial", "prefetch2"])
def test_a_byte_budget_changes_no_batch(store, prefetch):
    """Real batches through the raw tiers with lookahead windows: identical with a
    budget that holds back almost every batch and without one."""

    def run(budget):
        row = store.region("features").row_bytes
        cache = CACHE_MODES["raw"](
            store,
            TierConfig(
                cache="raw",
                cache_budget_bytes=100 * row,
                host_budget_bytes=200 * row,
                lookahead_batches=4,
                lookahead_budget_bytes=2000 * row,
            ),
            torch.device("cpu"),
        )
        sampler = NeighborSampler(store.indptr, store.indices, [6, 4], seed=5)
        parts = list(epoch_batches(store.train_idx, 64, seed=5, epoch=1))
        loader = BatchLoader(
            parts,
            [batch_seed(1, i) for i in range(len(parts))],
            sampler.sample,
            cache.fetch,
            prefetch,
            stage=cache.stage,
            stage_batches=cache.lookahead_batches(),
            budget_bytes=budget,
            batch_bytes=lambda b: b.nbytes(row),
        )
        try:
            return list(loader), loader
        finally:
            cache.close()

    free, _ = run(None)
    one = max(b.nbytes(store.region("features").row_bytes) for b in free)
    tight, loader = run(one + 1)
    assert loader.peak_bytes_in_flight <= one + 1
    assert len(free) == len(tight) > 5
    for x, y in zip(free, tight):
        assert torch.equal(x.seeds, y.seeds)
        assert torch.equal(x.input_nodes, y.input_nodes)
        for bx, by in zip(x.blocks, y.blocks):
            assert torch.equal(bx.edge_index, by.edge_index)
        assert torch.equal(x.features, y.features)


def test_a_batch_counts_its_features_and_blocks_once(store):
    sampler = NeighborSampler(store.indptr, store.indices, [6, 4], seed=5)
    batch = sampler.sample(np.arange(50, dtype=np.int64), 3)
    row = store.region("features").row_bytes
    ids = 8 * (batch.num_seeds + sum(len(t) for t in batch.layer_nodes))
    edges = sum(b.edge_index.numel() * 8 for b in batch.blocks)
    before = batch.nbytes(row)
    assert before == ids + edges + len(batch.input_nodes) * row
    batch.features = torch.from_numpy(np.asarray(store.features[batch.input_nodes.numpy()]))
    assert batch.nbytes(row) == before  # fetching fills what was counted
    # Tensors stages attach in extra (nested too) count; other annotations do not.
    probe = torch.zeros(3, 16)
    pos = torch.arange(3)
    batch.extra.update(step=7, probe={1: (pos, probe, 5)}, again=probe)
    assert batch.nbytes(row) == before + probe.numel() * 4 + pos.numel() * 8


def test_a_budget_needs_batch_bytes():
    with pytest.raises(ValueError, match="batch_bytes"):
        BatchLoader([], [], lambda s, b: None, lambda b: b, 1, budget_bytes=10)
    with pytest.raises(ValueError, match="budget_bytes"):
        BatchLoader([], [], lambda s, b: None, lambda b: b, 1, budget_bytes=0, batch_bytes=len)
