"""Lookahead windows read the disk rows of several batches at once and change no result.

Covers :mod:`refresh_train.tiers._lookahead` (``merge_unique``, ``first_window``,
``StagedRows``), the host tier's ``stage()``/``staged()``, ``RawCache``'s
``stage``/``fetch``, the loader's staging stage, the trainer and the
``--lookahead``/``--lookahead-budget`` options.
"""

from __future__ import annotations

import threading
import time
from functools import reduce

import numpy as np
import pytest
import torch
from _planted import planted_store
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_tiers import _expected, _rows_total
from test_trainer import _config

from refresh_train.batch import MiniBatch
from refresh_train.cli import config_from_args, main
from refresh_train.config import ConfigError, LoaderConfig, TierConfig
from refresh_train.loader import BatchLoader
from refresh_train.modes import CACHE_MODES
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches
from refresh_train.tiers import POLICIES, DiskTier, HostTier, StagedRows
from refresh_train.tiers._lookahead import first_window, merge_unique
from refresh_train.trainer import Trainer

N = 1200


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("lookahead") / "s", num_nodes=N)


def _sorted_ids(lo: int, hi: int, max_size: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(st.integers(lo, hi), unique=True, max_size=max_size).map(
        lambda xs: np.array(sorted(xs), dtype=np.int64)
    )


def _union(arrays) -> np.ndarray:
    return reduce(np.union1d, arrays, np.empty(0, np.int64)).astype(np.int64)


# ---------------------------------------------------------------- merge_unique
@settings(max_examples=200, deadline=None)
@given(a=_sorted_ids(-30, 60, 40), b=_sorted_ids(-30, 60, 40))
@example(a=np.empty(0, np.int64), b=np.empty(0, np.int64))
@example(a=np.array([-(2**62), 2**62], np.int64), b=np.array([0, 2**62], np.int64))
def test_merge_unique_equals_union1d(a, b):
    got = merge_unique(a, b)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.union1d(a, b))
    np.testing.assert_array_equal(merge_unique(b, a), got)


# ---------------------------------------------------------------- first_window
@settings(max_examples=200, deadline=None)
@given(needs=st.lists(_sorted_ids(0, 40, 12), max_size=12), max_rows=st.integers(0, 25))
def test_first_window_properties(needs, max_rows):
    n, ids = first_window(needs, max_rows)
    if not needs:
        assert n == 0 and len(ids) == 0
        return
    assert 1 <= n <= len(needs)
    if len(needs[0]) > max_rows:
        # Too big alone: the batch reads its own rows.
        assert n == 1 and len(ids) == 0
        return
    np.testing.assert_array_equal(ids, _union(needs[:n]))
    assert len(ids) <= max_rows
    if n < len(needs):
        # Greedy: the window closes only when the next batch does not fit.
        assert len(np.union1d(ids, needs[n])) > max_rows


def test_first_window_examples():
    a, b, c = np.array([1, 2, 3]), np.array([3, 4]), np.array([9])
    n, ids = first_window([a, b, c], 5)
    assert (n, ids.tolist()) == (3, [1, 2, 3, 4, 9])
    n, ids = first_window([a, b, c], 4)
    assert (n, ids.tolist()) == (2, [1, 2, 3, 4])
    big = np.arange(10, 20)
    assert first_window([a, big, b], 4)[0] == 1
    n, ids = first_window([big, a], 4)
    assert (n, len(ids)) == (1, 0)
    assert first_window([], 4)[0] == 0


# ------------------------------------------------------------ HostTier staging
HOSTS = [
    pytest.param((0, "clock"), id="capacity0"),
    *[pytest.param((100, p), id=f"capacity100-{p}") for p in sorted(POLICIES)],
]


@pytest.fixture(params=HOSTS)
def host(request, store):
    rows, policy = request.param
    disk = DiskTier(store.region("features"))
    tier = HostTier(disk, rows * disk.row_bytes, policy)
    yield tier
    tier.close()


def _requests(seed: int, count: int = 4, size: int = 60) -> list[np.ndarray]:
    # Overlapping batches in random order, so a window row serves several batches.
    rng = np.random.default_rng(seed)
    pool = rng.choice(N, 150, replace=False)
    return [rng.choice(pool, size, replace=False) for _ in range(count)]


def _read_staged(host: HostTier, window: StagedRows, ids: np.ndarray) -> torch.Tensor:
    try:
        with host.staged(window):
            return host.read(ids).clone()
    finally:
        window.release()


def test_a_window_serves_every_miss_without_more_disk_reads(host, store):
    batches = _requests(0)
    unique = _union([np.unique(b) for b in batches])
    total = sum(len(b) for b in batches)
    window = host.stage(unique, len(batches))
    assert len(window) == len(unique)  # the cache is empty: nothing left out
    before = host.stats()
    assert before["rows_disk"] == before["host_staged_rows"] == len(unique)
    reads_before = before["disk_reads"]
    assert reads_before > 0
    for ids in batches:
        assert torch.equal(_read_staged(host, window, ids), _expected(store, ids))
    after = host.stats()
    assert after["rows_disk"] == len(unique)  # each window row once on disk
    assert after["disk_reads"] == reads_before  # the fetches read nothing more
    assert _rows_total(after) == total
    # First use of a row is the disk read; every later use is a host hit.
    assert after["rows_host"] == total - len(unique)
    assert after["host_staged_rows"] == len(unique)
    if host.capacity == 0:
        assert after["host_window_rows"] == total
    else:
        assert len(unique) <= after["host_window_rows"] <= total
    assert window.rows is None  # released by the last batch


def test_a_staged_window_leaves_out_rows_the_cache_holds(store):
    disk = DiskTier(store.region("features"))
    host = HostTier(disk, 100 * disk.row_bytes, "clock")
    try:
        warm = np.arange(700, 740)
        host.read(warm)
        assert (host.policy.lookup(warm) >= 0).all()
        host.reset_stats()
        want = np.arange(720, 800)
        window = host.stage(want, 1)
        np.testing.assert_array_equal(window.ids, np.arange(740, 800))
        assert host.stats()["rows_disk"] == host.stats()["host_staged_rows"] == 60
        rows = _read_staged(host, window, want[::-1].copy())
        assert torch.equal(rows, _expected(store, want[::-1]))
        stats = host.stats()
        assert stats["rows_disk"] == 60 and stats["rows_host"] == 20
        assert _rows_total(stats) == len(want)
    finally:
        host.close()


def test_ids_outside_the_window_come_from_disk(host, store):
    window = host.stage(np.arange(300, 340), 2)
    ids = np.array([310, 5, 339, 1199, 300, 6])  # 5, 1199, 6 are not in the window
    assert torch.equal(_read_staged(host, window, ids), _expected(store, ids))
    stats = host.stats()
    assert stats["rows_disk"] == 40 + 3
    assert stats["host_window_rows"] == 3
    assert _rows_total(stats) == 40 + 3  # 37 window rows not yet used by any batch
    ids = np.array([301, 302, 7])
    assert torch.equal(_read_staged(host, window, ids), _expected(store, ids))
    assert window.rows is None
    # Outside any staged block the window is not used.
    assert torch.equal(host.read(np.array([320])), _expected(store, [320]))


def test_staged_rows_release_after_every_batch():
    ids = np.array([2, 5, 9], np.int64)
    staged = StagedRows(ids, torch.arange(6.0).reshape(3, 2), batches=3)
    pos, at = staged.find(np.array([9, 4, 2, 9]))
    assert pos.tolist() == [0, 2, 3] and at.tolist() == [2, 0, 2]
    assert staged.take(np.array([2, 0])) == 0
    assert staged.take(np.array([0, 1])) == 1
    staged.release()
    staged.release()
    assert staged.rows is not None
    staged.release()
    assert staged.rows is None
    pos, at = staged.find(np.array([2, 5]))
    assert len(pos) == len(at) == 0


def test_an_empty_window_is_harmless(host, store):
    window = host.stage(np.empty(0, np.int64), 1)
    assert len(window) == 0
    ids = np.array([1, 2, 3])
    assert torch.equal(_read_staged(host, window, ids), _expected(store, ids))
    assert host.stats()["rows_disk"] == 3


def test_overlapping_windows_keep_the_chain_contract(store):
    """The pipelined loader stages window k+1 while window k is still being fetched."""
    disk = DiskTier(store.region("features"))
    host = HostTier(disk, 100 * disk.row_bytes, "clock")
    try:
        ids = np.arange(500, 520)
        w1 = host.stage(ids, 1)
        w2 = host.stage(ids, 1)  # staged before w1's batch is fetched
        _read_staged(host, w1, ids)  # admits the rows into the cache
        _read_staged(host, w2, ids)  # served by the cache; w2's rows are never used
        assert _rows_total(host.stats()) == 2 * len(ids)
    finally:
        host.close()


def test_duplicate_ids_in_a_staged_read_are_counted(store):
    disk = DiskTier(store.region("features"))
    host = HostTier(disk, 0, "clock")
    try:
        window = host.stage(np.array([5, 9], np.int64), 1)
        ids = np.array([5, 5, 9])
        assert torch.equal(_read_staged(host, window, ids), _expected(store, ids))
        assert _rows_total(host.stats()) == 3
    finally:
        host.close()


# ------------------------------------------------------------ RawCache.stage
def _cache(store, mode: str = "raw", **kw):
    row = store.region("features").row_bytes
    tiers = dict(cache=mode, cache_budget_bytes=100 * row, host_budget_bytes=200 * row)
    tiers.update(kw)
    return CACHE_MODES[mode](store, TierConfig(**tiers), torch.device("cpu"))


def _sampled(store, count: int = 6) -> list[MiniBatch]:
    sampler = NeighborSampler(store.indptr, store.indices, [6, 4], seed=5)
    parts = list(epoch_batches(store.train_idx, 64, seed=5, epoch=1))[:count]
    return [sampler.sample(p, batch_seed(1, i)) for i, p in enumerate(parts)]


@pytest.mark.parametrize("host_rows", [0, 200], ids=["host0", "host200"])
def test_raw_cache_stage_then_fetch_equals_the_store_and_no_cache(store, host_rows):
    row = store.region("features").row_bytes
    cache = _cache(store, host_budget_bytes=host_rows * row, lookahead_batches=6)
    plain = _cache(store, "none", lookahead_batches=6)
    try:
        assert cache.lookahead_batches() == 6 and plain.lookahead_batches() == 0
        batches, ref = _sampled(store), _sampled(store)
        assert cache.stage(batches) == len(batches)  # the default budget holds them all
        windows = [b.extra.get("staged") for b in batches]
        assert all(isinstance(w, StagedRows) for w in windows)
        staged = cache.stats()
        assert staged["host_staged_rows"] > 0
        total = 0
        for b, r in zip(batches, ref):
            got = cache.fetch(b).features
            assert "staged" not in b.extra
            want = _expected(store, b.input_nodes.numpy())
            assert torch.equal(got, want)
            assert torch.equal(got, plain.fetch(r).features)
            total += len(b.input_nodes)
        assert all(w.rows is None for w in windows)  # each fetch released its share
        stats = cache.stats()
        assert _rows_total(stats) == total
        if host_rows == 0:
            # Every row below the device tier came from the window.
            assert stats["rows_disk"] == staged["rows_disk"]
            assert stats["disk_reads"] == staged["disk_reads"]
    finally:
        cache.close()
        plain.close()


def test_a_budget_below_one_batch_stages_nothing(store):
    row = store.region("features").row_bytes
    cache = _cache(store, lookahead_batches=4, lookahead_budget_bytes=5 * row)
    try:
        assert cache.lookahead_batches() == 4
        batches = _sampled(store, 4)
        # Each batch needs more than 5 rows from below the device tier.
        assert all(int((b.input_nodes >= 100).sum()) > 5 for b in batches)
        rest = list(batches)
        while rest:
            assert cache.stage(rest) == 1  # each too big alone: no window, one batch taken
            rest = rest[1:]
        assert all("staged" not in b.extra and not b.extra for b in batches)
        assert cache.stats()["host_staged_rows"] == 0
        for b in batches:
            want = _expected(store, b.input_nodes.numpy())
            assert torch.equal(cache.fetch(b).features, want)
    finally:
        cache.close()


def test_a_budget_that_holds_two_batches_takes_two_at_a_time(store):
    batches = _sampled(store, 6)
    k = 100  # the device tier's rows in _cache
    needs = [np.unique(b.input_nodes.numpy()[b.input_nodes.numpy() >= k]) for b in batches]
    budget_rows = len(np.union1d(needs[0], needs[1]))
    assert len(np.union1d(np.union1d(needs[0], needs[1]), needs[2])) > budget_rows
    row = store.region("features").row_bytes
    cache = _cache(store, host_budget_bytes=0, lookahead_budget_bytes=budget_rows * row)
    try:
        assert cache.stage(batches) == 2
        assert batches[0].extra["staged"] is batches[1].extra["staged"]
        assert len(batches[0].extra["staged"]) == budget_rows
        assert all("staged" not in b.extra for b in batches[2:])
        for b in batches[:2]:
            want = _expected(store, b.input_nodes.numpy())
            assert torch.equal(cache.fetch(b).features, want)
    finally:
        cache.close()


@pytest.mark.parametrize(
    ("batches", "budget_rows", "expected"),
    [(8, 1.0, 8), (2, 1.0, 2), (4, 0.5, 0), (4, 0.0, 0), (1, 100, 0), (0, 100, 0)],
)
def test_lookahead_batches_is_off_below_one_row_or_one_batch(store, batches, budget_rows, expected):
    row = store.region("features").row_bytes
    budget = int(budget_rows * row)
    cache = _cache(store, lookahead_batches=batches, lookahead_budget_bytes=budget)
    try:
        assert cache.lookahead_batches() == expected
        assert cache.describe()["lookahead_batches"] == expected
    finally:
        cache.close()


# ------------------------------------------------------------ loader staging
def _loader(store, cache, prefetch: int, stage: bool) -> BatchLoader:
    sampler = NeighborSampler(store.indptr, store.indices, [6, 4], seed=5)
    parts = list(epoch_batches(store.train_idx, 64, seed=5, epoch=1))
    seeds = [batch_seed(1, i) for i in range(len(parts))]
    if not stage:
        return BatchLoader(parts, seeds, sampler.sample, cache.fetch, prefetch)
    return BatchLoader(
        parts,
        seeds,
        sampler.sample,
        cache.fetch,
        prefetch,
        stage=cache.stage,
        stage_batches=cache.lookahead_batches(),
    )


@pytest.mark.parametrize("prefetch", [0, 1, 3], ids=["serial", "prefetch1", "prefetch3"])
def test_staging_loader_yields_the_same_batches(store, prefetch):
    ref_cache, cache = _cache(store, lookahead_batches=0), _cache(store, lookahead_batches=3)
    try:
        ref = list(_loader(store, ref_cache, 0, stage=False))
        loader = _loader(store, cache, prefetch, stage=True)
        got = list(loader)
        assert len(got) == len(ref) > 5
        assert [b.extra["index"] for b in got] == list(range(len(ref)))
        for x, y in zip(ref, got):
            assert torch.equal(x.seeds, y.seeds)
            assert torch.equal(x.input_nodes, y.input_nodes)
            assert torch.equal(x.features, y.features)
            assert torch.equal(y.features, _expected(store, y.input_nodes.numpy()))
        assert cache.stats()["host_staged_rows"] > 0
        assert loader.times.stage_s > 0 and loader.times.batches == len(ref)
    finally:
        ref_cache.close()
        cache.close()


def _fake_sample(seeds, bseed):
    t = torch.from_numpy(seeds)
    return MiniBatch(seeds=t, blocks=[], input_nodes=t, layer_nodes=[t], batch_seed=bseed)


_threads_before: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _note_threads_before():
    """Threads alive when a test starts: an earlier test's I/O pool, released by the
    garbage collector without waiting, may still be winding down during this one."""
    _threads_before.clear()
    _threads_before.update(threading.enumerate())


def _refresh_threads() -> list[str]:
    """The project's threads started during this test and still alive."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith("refresh-") and t not in _threads_before]  # fmt: skip


@pytest.mark.parametrize("prefetch", [0, 1, 3], ids=["serial", "prefetch1", "prefetch3"])
def test_stage_sees_consecutive_windows_before_their_fetches(prefetch):
    events: list[tuple[str, list[int]]] = []
    lock = threading.Lock()

    def stage(batches):
        with lock:
            events.append(("stage", [b.batch_seed for b in batches]))

    def fetch(batch):
        with lock:
            events.append(("fetch", [batch.batch_seed]))
        return batch

    parts = [np.array([i]) for i in range(10)]
    loader = BatchLoader(parts, range(10), _fake_sample, fetch, prefetch, stage, stage_batches=4)
    assert [b.batch_seed for b in loader] == list(range(10))
    windows = [ids for kind, ids in events if kind == "stage"]
    assert windows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    staged_at = {}
    for n, (kind, ids) in enumerate(events):
        if kind == "stage":
            staged_at.update(dict.fromkeys(ids, n))
        else:
            assert staged_at[ids[0]] < n, events  # staged before fetched
    assert [ids[0] for kind, ids in events if kind == "fetch"] == list(range(10))
    assert _refresh_threads() == []


def _recording_fetch(fetched: list[int], lock: threading.Lock):
    """A fetch hook that appends each batch's seed to ``fetched``."""

    def fetch(batch):
        with lock:
            fetched.append(batch.batch_seed)
        return batch

    return fetch


@pytest.mark.parametrize("prefetch", [1, 3, 9], ids=["prefetch1", "prefetch3", "prefetch9"])
def test_at_most_two_windows_are_staged_and_not_fully_fetched(prefetch):
    """A window's rows live until its last batch is fetched: two windows at most."""
    fetched: list[int] = []
    open_at_stage: list[int] = []
    lock = threading.Lock()
    windows: list[list[int]] = []

    def stage(batches):
        with lock:
            open_now = sum(1 for w in windows if not set(w) <= set(fetched))
            open_at_stage.append(open_now)
            windows.append([b.batch_seed for b in batches])

    fetch = _recording_fetch(fetched, lock)
    parts = [np.array([i]) for i in range(23)]
    loader = BatchLoader(parts, range(23), _fake_sample, fetch, prefetch, stage, stage_batches=3)
    for _ in loader:
        time.sleep(0.002)  # a slow consumer: the stager runs as far ahead as it may
    assert len(windows) == 8
    assert max(open_at_stage) == 1  # the window being fetched; the new one makes two


@pytest.mark.parametrize("prefetch", [0, 1, 3], ids=["serial", "prefetch1", "prefetch3"])
def test_a_stage_that_takes_fewer_batches_gets_the_rest_next(prefetch):
    """The hook may take a prefix (its budget): the rest opens the next window."""
    calls: list[list[int]] = []
    fetched: list[int] = []
    lock = threading.Lock()

    def stage(batches):
        with lock:
            calls.append([b.batch_seed for b in batches])
        return 1 if batches[0].batch_seed % 3 == 0 else min(2, len(batches))

    fetch = _recording_fetch(fetched, lock)
    parts = [np.array([i]) for i in range(11)]
    loader = BatchLoader(parts, range(11), _fake_sample, fetch, prefetch, stage, stage_batches=4)
    assert [b.batch_seed for b in loader] == list(range(11))
    assert fetched == list(range(11))
    firsts = [c[0] for c in calls]
    assert firsts == [0, 1, 3, 4, 6, 7, 9, 10]  # each call starts where the last window ended
    assert all(len(c) == min(4, 11 - c[0]) for c in calls)  # handed up to stage_batches
    assert _refresh_threads() == []


@pytest.mark.parametrize("bad", [0, 5])
def test_a_stage_taking_no_or_too_many_batches_is_an_error(bad):
    parts = [np.array([i]) for i in range(8)]
    loader = BatchLoader(parts, range(8), _fake_sample, lambda b: b, 2, lambda bs: bad, 4)
    with pytest.raises(ValueError, match="stage\\(\\) must take 1..4 batches"):
        list(loader)
    assert _refresh_threads() == []


@pytest.mark.parametrize("stage_batches", [0, 1])
def test_no_staging_with_windows_of_one_batch(stage_batches):
    calls = []
    parts = [np.array([i]) for i in range(5)]
    loader = BatchLoader(
        parts, range(5), _fake_sample, lambda b: b, 2, calls.append, stage_batches=stage_batches
    )
    assert [b.batch_seed for b in loader] == list(range(5))
    assert calls == [] and loader.stage_batches == 0


@pytest.mark.parametrize("prefetch", [0, 2], ids=["serial", "prefetch2"])
def test_an_error_in_stage_reaches_the_consumer(prefetch):
    def stage(batches):
        if batches[0].batch_seed == 4:
            raise ValueError("broken window at 4")

    parts = [np.array([i]) for i in range(12)]
    loader = BatchLoader(parts, range(12), _fake_sample, lambda b: b, prefetch, stage, 4)
    got = []
    with pytest.raises(ValueError, match="broken window at 4"):
        for b in loader:
            got.append(b.batch_seed)
    assert got == [0, 1, 2, 3]
    assert _refresh_threads() == []


def test_breaking_out_early_stops_the_stage_thread():
    parts = [np.array([i]) for i in range(200)]
    loader = BatchLoader(parts, range(200), _fake_sample, lambda b: b, 2, lambda bs: None, 4)
    gen = iter(loader)
    for b in gen:
        if b.batch_seed == 5:
            assert "refresh-stage" in _refresh_threads()
            break
    gen.close()
    assert _refresh_threads() == []


# ------------------------------------------------------------ trainer
@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("lookahead-train") / "s")


def test_lookahead_does_not_change_training(train_store):
    results = []
    for lookahead in (0, 4):
        row = train_store.region("features").row_bytes
        tiers = TierConfig(
            cache="raw",
            cache_budget_bytes=150 * row,
            host_budget_bytes=300 * row,
            lookahead_batches=lookahead,
        )
        cfg = _config(train_store, tiers=tiers, loader=LoaderConfig(prefetch_batches=2))
        with Trainer(cfg) as t:
            records = t.run()
            state = {k: v.clone() for k, v in t.model.state_dict().items()}
        results.append((records, state))
    (ref, ref_state), (got, state) = results
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got):
        for key in ("train_loss", "train_acc", "valid_acc", "test_acc", "batches"):
            assert a[key] == b[key], key
        assert "stage_s" in a and "stage_s" in b
        assert a["stage_s"] == 0.0 and b["stage_s"] > 0
        assert a["fetch_s"] > 0 and b["fetch_s"] > 0  # each stage's own busy time
        assert a["host_staged_rows"] == 0 and b["host_staged_rows"] > 0
    for k in ref_state:
        assert torch.equal(ref_state[k], state[k]), k


# ------------------------------------------------------------ CLI and config
def test_lookahead_flags_reach_the_tier_config(store):
    cfg = config_from_args(
        ["--store", str(store.path), "--lookahead", "3", "--lookahead-budget", "64MiB"]
    )
    assert cfg.tiers.lookahead_batches == 3
    assert cfg.tiers.lookahead_budget_bytes == 64 << 20
    default = config_from_args(["--store", str(store.path)]).tiers
    assert (default.lookahead_batches, default.lookahead_budget_bytes) == (8, 2 << 30)


def test_lookahead_keys_in_a_toml_file(store, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'store = "{store.path.as_posix()}"\nlookahead = 2\nlookahead-budget = "1MiB"\n'
    )
    cfg = config_from_args(["--config", str(toml)])
    assert cfg.tiers.lookahead_batches == 2
    assert cfg.tiers.lookahead_budget_bytes == 1 << 20
    # A flag wins over the file.
    assert (
        config_from_args(["--config", str(toml), "--lookahead", "5"]).tiers.lookahead_batches == 5
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lookahead_batches": -1}, "lookahead_batches must be an integer >= 0, got -1"),
        ({"lookahead_batches": True}, "lookahead_batches must be an integer >= 0, got True"),
        ({"lookahead_budget_bytes": -4096}, "lookahead_budget_bytes must be an integer >= 0"),
    ],
)
def test_tier_config_rejects_bad_lookahead(kw, message):
    with pytest.raises(ConfigError, match=message):
        TierConfig(**kw)


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["--lookahead", "-1"], None, "lookahead_batches must be an integer >= 0, got -1"),
        (["--lookahead-budget=-1GiB"], None, "--lookahead-budget must be a size"),
        ([], "lookahead = -2\n", "lookahead_batches must be an integer >= 0, got -2"),
        ([], 'lookahead-budget = "-1MiB"\n', "--lookahead-budget must be a size"),
    ],
)
def test_bad_lookahead_exits_2_with_one_line(store, tmp_path, capsys, args, toml, message):
    argv = ["--store", str(store.path), *args]
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        argv += ["--config", str(path)]
    with pytest.raises(ConfigError, match=message):
        config_from_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refresh-train: error:")
    assert message in err
