"""One contract every raw-feature tier and replacement policy keeps.

:class:`TestTierContract` runs against each tier alone and in the chains the
trainer builds (device -> host -> disk), for every host replacement policy,
float32 and float16 rows, on CPU and (when present) CUDA.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from _params import DEVICES
from _planted import planted_arrays

from refresh_store.store import Store
from refresh_store.writer import write_store
from refresh_train.tiers import (
    POLICIES,
    DeviceTier,
    DiskTier,
    FeatureTier,
    HostTier,
    build_raw_tiers,
)

N = 1500
D = 12


@dataclass
class Chain:
    top: FeatureTier
    host_budget: int  # bytes; 0 when the chain has no host cache
    device_rows: int  # K of the device tier (0 when none)


def _disk(store: Store, device: str) -> Chain:
    return Chain(DiskTier(store.region("features"), pin=device == "cuda"), 0, 0)


def _host(policy: str, rows: int) -> Callable[[Store, str], Chain]:
    def make(store: Store, device: str) -> Chain:
        disk = DiskTier(store.region("features"), pin=device == "cuda")
        budget = rows * disk.row_bytes + disk.row_bytes // 2  # a partial row buys nothing
        return Chain(HostTier(disk, budget, policy, pin=device == "cuda"), budget, 0)

    return make


def _device(k: int) -> Callable[[Store, str], Chain]:
    def make(store: Store, device: str) -> Chain:
        disk = DiskTier(store.region("features"), pin=device == "cuda")
        return Chain(DeviceTier(disk, store.features, k, device), 0, k)

    return make


def _raw(policy: str) -> Callable[[Store, str], Chain]:
    def make(store: Store, device: str) -> Chain:
        row = store.region("features").row_bytes
        top = build_raw_tiers(
            store,
            device=torch.device(device),
            cache_budget_bytes=150 * row,
            host_budget_bytes=300 * row,
            host_policy=policy,
        )
        return Chain(top, 300 * row, 150)

    return make


CHAINS = [
    pytest.param(_disk, id="disk"),
    pytest.param(_host("clock", 0), id="host-staging-only"),
    *[pytest.param(_host(p, 200), id=f"host-{p}") for p in sorted(POLICIES)],
    pytest.param(_host("clock", N), id="host-holds-all"),
    pytest.param(_device(0), id="device-empty"),
    pytest.param(_device(200), id="device-prefix"),
    pytest.param(_device(N), id="device-holds-all"),
    *[pytest.param(_raw(p), id=f"device+host-{p}+disk") for p in sorted(POLICIES)],
]
DTYPES = [pytest.param(np.float32, id="fp32"), pytest.param(np.float16, id="fp16")]


@pytest.fixture(scope="module", params=DTYPES)
def store(request, tmp_path_factory) -> Store:
    arrays = planted_arrays(num_nodes=N, feature_dim=D, dtype=request.param, seed=3)
    return write_store(tmp_path_factory.mktemp("tiers") / "s", **arrays)


@pytest.fixture(params=CHAINS)
def chain(request, store, device):
    c = request.param(store, device)
    yield c
    c.top.close()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def _expected(store: Store, ids) -> torch.Tensor:
    return torch.from_numpy(np.asarray(store.features[np.asarray(ids, dtype=np.int64)]))


def _rows_total(stats: dict) -> int:
    return sum(v for k, v in stats.items() if k in ("rows_device", "rows_host", "rows_disk"))


class TestTierContract:
    """What every tier or chain of tiers guarantees."""

    def _check(self, chain: Chain, store: Store, ids) -> torch.Tensor:
        rows = chain.top.read(ids)
        assert rows.device.type == chain.top.device.type
        assert rows.shape == (len(ids), D)
        assert torch.equal(rows.cpu(), _expected(store, ids))
        return rows

    def test_random_batches_return_the_stores_rows(self, chain, store):
        rng = np.random.default_rng(0)
        total = 0
        for size in (1, 7, 300, 900, 1200):
            ids = rng.choice(N, size=size, replace=False)
            self._check(chain, store, ids)
            total += size
        assert _rows_total(chain.top.stats()) == total

    def test_duplicates_and_order(self, chain, store):
        ids = np.array([5, N - 1, 5, 0, 0, 0, 777, N - 1, 3])
        self._check(chain, store, ids)
        self._check(chain, store, ids[::-1].copy())
        assert _rows_total(chain.top.stats()) == 2 * len(ids)

    def test_empty_request(self, chain, store):
        rows = chain.top.read(np.array([], dtype=np.int64))
        assert rows.shape == (0, D)
        assert _rows_total(chain.top.stats()) == 0

    def test_accepts_tensors_lists_and_out(self, chain, store):
        ids = [4, 1000, 4, 17]
        self._check(chain, store, torch.tensor(ids))
        self._check(chain, store, ids)
        out = torch.full((4, D), -1, dtype=chain.top.torch_dtype, device=chain.top.device)
        got = chain.top.read(np.array(ids), out=out)
        assert got.data_ptr() == out.data_ptr()
        assert torch.equal(out.cpu(), _expected(store, ids))

    def test_bytes_are_rows_times_row_size(self, chain, store):
        rng = np.random.default_rng(1)
        for _ in range(4):
            chain.top.read(rng.integers(0, N, 500))
        stats = chain.top.stats()
        row_bytes = store.region("features").row_bytes
        assert chain.top.row_bytes == row_bytes
        for tier in chain.top.chain():
            assert stats[f"bytes_{tier.name}"] == stats[f"rows_{tier.name}"] * row_bytes
        assert _rows_total(stats) == 2000

    def test_each_tier_passes_only_its_misses_down(self, chain, store):
        rng = np.random.default_rng(2)
        ids = rng.integers(0, N, 800)
        chain.top.read(ids)
        stats = chain.top.stats()
        served_above = 0
        for tier in chain.top.chain():
            # What reached this tier is what the tiers above did not serve.
            reached = len(ids) - served_above
            own = stats[f"rows_{tier.name}"]
            assert 0 <= own <= reached
            if isinstance(tier, DeviceTier):
                assert own == int(np.count_nonzero(ids < tier.num_cached))
            if isinstance(tier, DiskTier):
                assert own == reached
            served_above += own

    def test_rereading_a_working_set_hits_the_caches(self, chain, store):
        # The second read of a set that fits the host buffer needs no disk.
        host = next((t for t in chain.top.chain() if isinstance(t, HostTier)), None)
        capacity = host.capacity if host is not None else 0
        ids = np.arange(N - 100, N)  # the cold end of the reordered ids
        chain.top.read(ids)
        chain.top.reset_stats()
        chain.top.read(ids)
        stats = chain.top.stats()
        on_device = int(np.count_nonzero(ids < chain.device_rows))
        rest = len(ids) - on_device
        assert stats.get("rows_device", 0) == on_device
        assert stats.get("rows_host", 0) == (rest if capacity >= 100 else 0)
        assert stats["rows_disk"] == (0 if capacity >= 100 else rest)

    def test_budgets_are_respected(self, chain, store):
        rng = np.random.default_rng(3)
        for _ in range(6):
            chain.top.read(rng.integers(0, N, 700))
        for tier in chain.top.chain():
            if isinstance(tier, HostTier):
                assert tier.budget_used_bytes <= chain.host_budget
                assert tier.buffer.numel() * tier.buffer.element_size() <= chain.host_budget
                assert len(tier.policy) <= tier.capacity
            if isinstance(tier, DeviceTier):
                assert tier.num_cached == chain.device_rows
                assert tier.cache.shape[0] == chain.device_rows

    def test_reset_stats_zeroes_every_counter(self, chain, store):
        chain.top.read(np.arange(50))
        chain.top.reset_stats()
        stats = chain.top.stats()
        for key in ("rows_device", "rows_host", "rows_disk", "disk_bytes_read", "disk_reads"):
            assert stats.get(key, 0) == 0

    def test_bad_ids_raise_with_a_clear_message(self, chain, store):
        with pytest.raises(IndexError, match=str(N)):
            chain.top.read(np.array([0, N]))
        with pytest.raises(IndexError, match="-1"):
            chain.top.read(np.array([-1]))
        with pytest.raises(TypeError, match="1-D"):
            chain.top.read(np.zeros((2, 2), dtype=np.int64))
        with pytest.raises(TypeError, match="integer"):
            chain.top.read(np.array([0.5]))

    def test_concurrent_readers_get_their_own_rows(self, chain, store):
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(5):
                    self._check(chain, store, rng.integers(0, N, 400))
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_keeps_a_consistent_index(name):
    """slot_of and slot_key stay inverse maps and capacity holds, under random traffic."""
    policy = POLICIES[name](capacity=64, num_keys=1000)
    rng = np.random.default_rng(0)
    for _ in range(200):
        keys = np.unique(rng.zipf(1.3, size=rng.integers(1, 120)) % 1000)
        slots = policy.lookup(keys)
        missing = keys[slots < 0]
        got = policy.admit(missing)
        assert len(got) == len(missing)
        held = np.flatnonzero(policy.slot_of >= 0)
        assert len(held) <= 64
        assert np.array_equal(policy.slot_key[policy.slot_of[held]], held)
        assert len(np.unique(policy.slot_of[held])) == len(held)


def test_lru_evicts_the_least_recently_used():
    policy = POLICIES["lru"](capacity=3, num_keys=10)
    policy.admit(np.array([1, 2, 3]))
    policy.lookup(np.array([1]))  # 2 is now the least recent
    policy.admit(np.array([4]))
    assert policy.slot_of[2] == -1
    assert (policy.slot_of[[1, 3, 4]] >= 0).all()


def test_clock_spares_referenced_keys():
    policy = POLICIES["clock"](capacity=3, num_keys=10)
    policy.admit(np.array([1, 2, 3]))
    policy.lookup(np.array([1, 3]))
    policy.admit(np.array([4]))
    assert policy.slot_of[2] == -1
    assert (policy.slot_of[[1, 3, 4]] >= 0).all()


def test_s3fifo_resists_a_scan():
    """Keys used repeatedly survive a one-time scan larger than the cache."""
    policy = POLICIES["s3fifo"](capacity=50, num_keys=10_000)
    hot = np.arange(20)
    for _ in range(3):
        slots = policy.lookup(hot)
        policy.admit(hot[slots < 0])
    scan = np.arange(1000, 1400)
    for lo in range(0, len(scan), 40):
        part = scan[lo : lo + 40]
        policy.admit(part[policy.lookup(part) < 0])
    assert (policy.lookup(hot) >= 0).all()


def test_policies_admit_at_most_capacity_per_call():
    for cls in POLICIES.values():
        policy = cls(capacity=5, num_keys=100)
        got = policy.admit(np.arange(20))
        assert (got[5:] == -1).all()
        assert len(policy) <= 5


# --------------------------------------------------------------- batch buffers
def _pool_sizes(tier: FeatureTier) -> list[int]:
    return [] if tier._pool is None else [b.nbytes for b in tier._pool._bufs]


@pytest.mark.parametrize(("k", "host_rows"), [(0, 0), (100, 300)], ids=["none", "raw"])
def test_a_chain_keeps_at_most_the_batch_buffers_it_is_told(tmp_path, k, host_rows):
    """The top tier's pool holds every returned batch (within its cap), the
    tiers below at most their cap of short-lived buffers."""
    store = write_store(tmp_path / "s", num_classes=4, **planted_arrays(num_nodes=N, feature_dim=D))
    row = store.region("features").row_bytes
    top = build_raw_tiers(
        store,
        device=torch.device("cpu"),
        cache_budget_bytes=k * row,
        host_budget_bytes=host_rows * row,
    )
    top.keep_batch_buffers(3, 1)
    rng = np.random.default_rng(0)
    held = []
    try:
        for i in range(40):
            # Batches of growing and shrinking sizes, so that buffers rarely fit.
            n = int(50 + 40 * (i % 7) + rng.integers(0, 30))
            ids = rng.integers(0, N, n)
            rows = top.read(ids)
            torch.testing.assert_close(rows, _expected(store, ids))
            # Every batch comes from the top tier's pool (when it has room), even
            # one with no device rows, so that one cap bounds the batches held.
            pool = top._pool._bufs if top._pool is not None else []
            assert any(np.shares_memory(rows.numpy(), b) for b in pool)
            held = (held + [rows])[-2:]  # what a loader keeps fetched at once
            assert len(_pool_sizes(top)) <= 3
            for tier in top.chain()[1:]:
                assert len(_pool_sizes(tier)) <= 1
        if k == 0:
            assert all(not _pool_sizes(t) for t in top.chain()[1:])
    finally:
        top.close()
