"""The memory plan sizes what a run allocates, and a run that cannot fit is refused.

Tolerances (stated once): ``exact`` items equal the structure's bytes;
``bound`` items are at least what the structure holds; per-batch figures
measured on probe batches are at least the largest batch of the epoch and at
most 1.3 times it (a 10 % margin over the probes); the step's activation
estimate lies within 0.75-1.6 times the measured peak of a step (plus 8 MiB
for a small step's fixed costs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import planted_store, small_run_config

from refresh_train._memory_sizes import policy_bytes
from refresh_train.cli import config_from_args, main
from refresh_train.config import (
    ConfigError,
    EvalConfig,
    HistoryConfig,
    LoaderConfig,
    TrainConfig,
)
from refresh_train.memory_plan import MemoryPlanError, plan_memory
from refresh_train.metrics import read_jsonl
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches
from refresh_train.tiers import POLICIES
from refresh_train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
CACHES = ["none", "raw", "refresh"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("plan") / "s", num_nodes=3000, feature_dim=48)


def _config(store, cache: str = "raw", **kw) -> TrainConfig:
    return small_run_config(store, cache, **kw)


def _items(plan) -> dict:
    return {i.name: i for i in plan.items}


def _pool_bytes(tier) -> int:
    return 0 if tier._pool is None else sum(b.nbytes for b in tier._pool._bufs)


def _arrays_bytes(obj) -> int:
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))


def _max_shape(batches) -> list[tuple[int, int, int]]:
    return [
        tuple(max(b.blocks[layer].__getattribute__(k) for b in batches) for k in ks)
        for layer in range(len(batches[0].blocks))
        for ks in [("num_src", "num_dst", "num_edges")]
    ]


# ----------------------------------------------------------------- the figures
@pytest.mark.parametrize("cache", CACHES)
def test_plan_figures_match_the_structures(store, cache):
    cfg = _config(store, cache)
    with Trainer(cfg) as t:
        plan, items = t.plan, _items(t.plan)
        row = store.region("features").row_bytes
        # Exact: the topology the sampler holds, the tiers, the model.
        assert plan.topology_in_ram and t.sampler.in_memory
        topo = t.sampler.indptr.nbytes + t.sampler.indices.nbytes
        assert items["topology (copied into RAM)"].ram_bytes == topo
        host = t.cache.tiers.below
        if cache == "none":
            assert "device tier (raw rows)" not in items and "host tier" not in items
        elif cache == "raw":
            dev = items["device tier (raw rows)"].device_bytes
            assert dev == t.cache.tiers.cache.nbytes > 0
        if cache != "none":
            assert items["host tier"].ram_bytes == host.buffer.nbytes + _arrays_bytes(host.policy)
        if cache == "refresh":
            # Automatic split: rows and table together, wherever the split moves.
            table = t.cache.table
            planned = items["device tier + history table"].device_bytes
            assert table.nbytes > 0 and t.cache.tiers.cache.nbytes > 0
            assert t.cache.tiers.cache.nbytes + table.nbytes <= planned
            assert planned <= cfg.tiers.cache_budget_bytes
            births = sum(b.nbytes for b in table.birth.values())
            assert births <= items["history birth stamps"].ram_bytes
        params = sum(p.nbytes for p in t.model.parameters())
        assert items["model parameters"].device_bytes == params

        records = t.run()
        # After a step: gradients and Adam's two moments (its step counters are scalars).
        state = sum(v.nbytes for s in t.optimizer.state.values() for v in s.values() if v.dim() > 0)
        grads = sum(p.grad.nbytes for p in t.model.parameters() if p.grad is not None)
        assert items["gradients and Adam state"].device_bytes == grads + state

        # Bounds: what the pools and windows hold after an epoch and an evaluation.
        top = t.cache.tiers
        assert 0 < _pool_bytes(top) <= items["batch features"].ram_bytes
        assert len(top._pool._bufs) <= plan.batch_buffers
        lower = sum(_pool_bytes(x) for x in top.chain()[1:])
        assert lower <= items.get("host/disk staging buffers", items["batch features"]).ram_bytes
        if cache != "none":
            windows = sum(b.nbytes for b in host._windows._bufs)
            assert 0 < windows <= items["lookahead windows"].ram_bytes
        assert t.cache._eval_tiers is None  # released after evaluation
        assert records[0]["loader_peak_bytes"] <= plan.loader_budget_bytes
        assert records[0]["memory_plan"] == plan.to_dict()
        if cache == "refresh":
            assert t.cache.tiers.cache.nbytes + t.cache.table.nbytes <= planned

        # Per-batch figures against every batch of the epoch, sampled again.
        sampler = NeighborSampler(store.indptr, store.indices, list(cfg.fanouts), seed=cfg.seed)
        parts = list(epoch_batches(store.train_idx, cfg.batch_size, cfg.seed, 0))
        batches = [sampler.sample(s, batch_seed(0, i)) for i, s in enumerate(parts)]
        real = _max_shape(batches)
        for got, want in zip(real, plan.batch.blocks):
            for g, w in zip(got, want):
                assert g <= w <= 1.3 * g, (real, plan.batch.blocks)
        blocks = max(b.nbytes(row) - len(b.input_nodes) * row for b in batches)
        if cache != "refresh":  # refresh adds bounds for its pruning arrays
            assert blocks <= plan.batch.blocks_bytes <= 1.3 * blocks
        # The sampling thread's scratch after the largest batch.
        sampler.sample(parts[0], batch_seed(0, 0))
        sc = sampler._local.scratch
        scratch = sc.local_map.nbytes + sum(b.nbytes for b in sc._bufs.values())
        assert scratch <= items["sampler scratch"].ram_bytes
        # Evaluation's batches (valid then test, eval fanouts = training's).
        eval_in = []
        for name in ("valid_idx", "test_idx"):
            idx = np.asarray(getattr(store, name), dtype=np.int64)
            for lo in range(0, len(idx), cfg.eval.batch_size):
                eval_in.append(len(sampler.sample(idx[lo : lo + 512], 0).input_nodes))
        assert max(eval_in) <= plan.eval_batch.input_rows <= 1.3 * max(eval_in)


def test_layerwise_evaluation_blocks_are_bounded(store):
    cfg = _config(store, eval=EvalConfig(mode="layerwise", batch_size=256))
    plan = plan_memory(cfg)
    one_hop = NeighborSampler(store.indptr, store.indices, [-1], seed=0)
    rng = np.random.default_rng(0)
    chunks = [np.arange(lo, min(lo + 256, store.num_nodes)) for lo in range(0, 3000, 256)]
    chunks += [np.sort(rng.choice(store.num_nodes, 256, replace=False)) for _ in range(4)]
    for nodes in chunks:
        block = one_hop.sample(nodes, 0).blocks[0]
        assert block.num_src <= plan.eval_batch.input_rows
        assert block.num_edges <= plan.eval_batch.blocks[0][2]
    # The bound is the largest in-degrees together.
    deg = np.sort(np.diff(np.asarray(store.indptr)))
    assert plan.eval_batch.blocks[0][2] == deg[-256:].sum()


def test_a_fixed_split_plans_rows_and_table_exactly(store):
    cfg = _config(store, "refresh", history=HistoryConfig(fraction=0.25))
    with Trainer(cfg) as t:
        items = _items(t.plan)
        assert items["device tier (raw rows)"].device_bytes == t.cache.tiers.cache.nbytes
        assert items["history table"].device_bytes == t.cache.table.nbytes > 0
        births = sum(b.nbytes for b in t.cache.table.birth.values())
        assert items["history birth stamps"].ram_bytes == births
        assert "split resize" not in items


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_bytes_equal_the_policys_arrays(name):
    for capacity, keys in ((0, 0), (1, 10), (1000, 5000), (4097, 100_000)):
        policy = POLICIES[name](capacity, keys)
        assert policy_bytes(name, capacity, keys) == _arrays_bytes(policy)


def test_a_topology_too_large_for_ram_is_planned_mapped(store):
    plan = plan_memory(_config(store), available_bytes=100_000)  # a quarter: 25 KB
    items = _items(plan)
    assert not plan.topology_in_ram
    assert items["topology (memory-mapped)"].ram_bytes == 0
    assert "topology (copied into RAM)" not in items


def test_the_table_is_printed_at_start_unless_no_progress(store, capsys):
    with Trainer(_config(store, progress=True)) as t:
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].startswith("memory plan (")
        assert any(line.startswith("total") for line in lines)
        for item in t.plan.items:
            assert item.name in out
    with Trainer(_config(store, progress=False)):
        assert "memory plan" not in capsys.readouterr().out


def test_the_plan_is_plain_data(store):
    plan = plan_memory(_config(store, "refresh"))
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["ram_total_bytes"] == plan.total("ram")
    phases = d["ram_phase_bytes"]
    assert d["ram_total_bytes"] == phases["always"] + max(
        phases["train"], phases["eval"], phases["epoch end"]
    )
    assert {i["basis"] for i in d["items"]} <= {"exact", "measured", "bound", "estimate"}


def test_a_byte_budget_on_the_loader_changes_no_result(store):
    """A --prefetch-budget that holds back almost every batch trains the same model."""
    ref = Trainer(_config(store, "raw", epochs=1))
    one = ref.plan.batch.nbytes
    runs = []
    for cfg in (
        _config(store, "raw"),
        _config(store, "raw", loader=LoaderConfig(prefetch_batches=2, prefetch_budget_bytes=one)),
    ):
        with Trainer(cfg) as t:
            records = t.run()
            runs.append((records, {k: v.clone() for k, v in t.model.state_dict().items()}))
            assert records[0]["loader_peak_bytes"] <= t.plan.loader_budget_bytes
    ref.close()
    (a, sa), (b, sb) = runs
    assert a[0]["train_loss"] == b[0]["train_loss"] and a[0]["valid_acc"] == b[0]["valid_acc"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert b[0]["loader_peak_bytes"] < a[0]["loader_peak_bytes"]


# ----------------------------------------------------------------- the step
_STEP = """
import json, sys
import numpy as np, torch, torch.nn.functional as F
from refresh_store.store import open_store
from refresh_train._memory_sizes import step_bytes
from refresh_train.models import build_model
from refresh_train.sampler import NeighborSampler

path, model_name, training = sys.argv[1], sys.argv[2], sys.argv[3] == "train"
store = open_store(path)
torch.manual_seed(0)
m = build_model(model_name, in_dim=store.feature_dim, hidden=128, out_dim=store.num_classes,
                num_layers=2, dropout=0.5)
opt = torch.optim.Adam(m.parameters())
s = NeighborSampler(store.indptr, store.indices, [10, 5], seed=0)
rng = np.random.default_rng(0)

def batch(i, n):
    b = s.sample(np.sort(rng.choice(store.num_nodes, n, replace=False)), i)
    b.features = torch.from_numpy(np.asarray(store.features[b.input_nodes.numpy()]))
    b.labels = torch.from_numpy(np.asarray(store.labels[b.seeds.numpy()]))
    return b

def step(b):
    m.train(training)
    with torch.set_grad_enabled(training):
        out = m(b, b.features)
        if training:
            loss = F.cross_entropy(out, b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

step(batch(1, 8))  # BLAS, autograd and Adam's state set up on a tiny batch
b = batch(2, 1024)
rss = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
step(b)
blocks = [(x.num_src, x.num_dst, x.num_edges) for x in b.blocks]
est = step_bytes(model_name, m.dims, blocks, store.features.dtype.itemsize, dropout=0.5,
                 heads=getattr(m, "heads", 1), training=training)
print(json.dumps({"measured": status("VmHWM") - rss, "estimate": est}))
"""


@pytest.fixture(scope="module")
def wide_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    return {
        np.float16: planted_store(
            root / "f16", num_nodes=40_000, feature_dim=384, dtype=np.float16
        ),
        np.float32: planted_store(root / "f32", num_nodes=40_000, feature_dim=192),
    }


def _step_case(store, model: str, mode: str) -> None:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    proc = subprocess.run(
        [sys.executable, "-c", _STEP, str(store.path), model, mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    measured, estimate = got["measured"], got["estimate"]
    assert 0.75 * measured <= estimate <= 1.6 * measured + (8 << 20), got


def test_the_step_estimate_matches_a_measured_step(wide_stores):
    """SAGE on float16 rows: the chunked casting path MAG240M-width stores take."""
    _step_case(wide_stores[np.float16], "sage", "train")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_the_step_estimate_for_every_model(wide_stores, model, mode, dtype):
    _step_case(wide_stores[dtype], model, mode)


# ----------------------------------------------------------------- refusal
def test_a_plan_above_max_rss_is_refused_in_one_line_and_writes_nothing(store, tmp_path, capsys):
    metrics, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    argv = [
        "--store", str(store.path), "--fanouts", "8,4", "--batch-size", "128", "--epochs", "1",
        "--max-rss", "64MiB", "--metrics-out", str(metrics), "--checkpoint-dir", str(ck),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refresh-train: error: the plan needs ")
    assert "GiB of RAM" in err or "MiB of RAM" in err
    assert "--max-rss is 64.0 MiB: raise it" in err
    assert "interpreter and libraries" in err
    assert not metrics.exists() and not ck.exists()


def test_the_default_limit_is_the_memory_available(store):
    cfg = _config(store, max_rss_bytes=None)
    plan = plan_memory(cfg, available_bytes=1 << 20)
    assert plan.limits_from == {"ram": "machine"}
    with pytest.raises(MemoryPlanError, match=r"available \(--max-rss not given\)"):
        plan.check()
    # With 0 nothing is checked.
    plan_memory(_config(store, max_rss_bytes=0), available_bytes=1 << 20).check()


def test_a_limit_that_fits_passes_and_names_what_it_checks(store):
    plan = plan_memory(_config(store, max_rss_bytes=64 << 30, device_memory_bytes=1))
    plan.check()  # --device-memory is not checked on the CPU: the device is RAM
    assert plan.device_memory_bytes == 0 and plan.total("device") == 0
    need = plan.total("ram")
    tight = plan_memory(_config(store, max_rss_bytes=need - (1 << 20)))
    with pytest.raises(MemoryPlanError, match="--max-rss is"):
        tight.check()
    assert "--max-rss" in tight.format_table().splitlines()[0]


def test_a_cuda_plan_counts_device_memory_apart(store):
    """Planned without a GPU (the limit is given, so CUDA is never asked)."""
    cfg = _config(store, "raw", device="cuda", device_memory_bytes=1 << 20)
    plan = plan_memory(cfg)
    items = _items(plan)
    assert plan.device == "cuda" and plan.total("device") > 0
    dev = items["device tier (raw rows)"]
    assert dev.device_bytes > 0 and dev.ram_bytes == 0
    # On CUDA the device's structures leave RAM; on the CPU they count there.
    cpu = plan_memory(_config(store, "raw"))
    assert plan.total("ram") < cpu.total("ram")
    assert " device " in plan.format_table().splitlines()[1]
    with pytest.raises(MemoryPlanError, match=r"of device memory .*--device-memory is 1.0 MiB"):
        plan.check()


def test_max_rss_and_friends_from_flags_and_toml(store, tmp_path):
    cfg = config_from_args(
        f"--store {store.path} --max-rss 4GiB --device-memory 80GiB --prefetch-budget 512MiB".split()
    )
    assert (cfg.max_rss_bytes, cfg.device_memory_bytes) == (4 << 30, 80 << 30)
    assert cfg.loader.prefetch_budget_bytes == 512 << 20
    assert config_from_args(["--store", str(store.path)]).max_rss_bytes is None
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'store = "{store.path.as_posix()}"\nmax-rss = "3GiB"\ndevice_memory = 0\n'
        'prefetch-budget = "1GiB"\n'
    )
    cfg = config_from_args(["--config", str(toml)])
    assert (cfg.max_rss_bytes, cfg.device_memory_bytes) == (3 << 30, 0)
    assert cfg.loader.prefetch_budget_bytes == 1 << 30
    with pytest.raises(ConfigError, match="--max-rss must be a size"):
        config_from_args(["--store", str(store.path), "--max-rss", "lots"])
    with pytest.raises(ConfigError, match="prefetch_budget_bytes must be"):
        config_from_args(["--store", str(store.path), "--prefetch-budget", "0"])
    with pytest.raises(ConfigError, match="max_rss_bytes must be"):
        TrainConfig(store="x", max_rss_bytes=-1)


def test_python_dash_m_refuses_a_store_above_max_rss(store, tmp_path):
    """The contract: ``python -m refresh_train --store S --max-rss 64MiB ...``."""
    metrics = tmp_path / "m.jsonl"
    argv = [
        sys.executable, "-m", "refresh_train", "--store", str(store.path),
        "--max-rss", "64MiB", "--epochs", "1", "--metrics-out", str(metrics),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "--max-rss is 64.0 MiB" in proc.stderr
    assert "the plan needs " in proc.stderr
    assert not metrics.exists()


# ----------------------------------------------------------------- peak RSS
@pytest.fixture(scope="module")
def large_store(tmp_path_factory):
    # 80K nodes x 256 float32: 78 MiB of features, ten times the host tier below.
    return planted_store(tmp_path_factory.mktemp("rss") / "s", num_nodes=80_000, feature_dim=256)


@pytest.mark.slow
@pytest.mark.parametrize("cache", CACHES)
def test_peak_rss_stays_within_the_printed_total(large_store, tmp_path, cache):
    """A fresh process reading with O_DIRECT: every epoch's peak RSS within the plan."""
    metrics = tmp_path / "m.jsonl"
    argv = [
        sys.executable, "-m", "refresh_train", "--store", str(large_store.path),
        "--model", "sage", "--layers", "2", "--hidden", "64", "--fanouts", "10,5",
        "--batch-size", "512", "--epochs", "2", "--cache", cache, "--cache-budget", "4MiB",
        "--host-budget", "8MiB", "--lookahead-budget", "8MiB", "--io-mode", "direct",
        "--eval-batch-size", "2048", "--metrics-out", str(metrics),
        "--checkpoint-dir", str(tmp_path / "ck"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memory plan (" in proc.stdout  # printed at start
    records = read_jsonl(metrics)
    plan = records[0]["memory_plan"]
    total = plan["ram_total_bytes"]
    assert (large_store.path / "features").exists()
    assert large_store.features.nbytes > 8 * (8 << 20)
    for r in records:
        assert r["peak_rss_bytes"] <= total, (r["epoch"], r["peak_rss_bytes"], total)
    # The plan is a bound, not a guess far above: the peak reaches half of it.
    assert max(r["peak_rss_bytes"] for r in records) >= 0.5 * total


@pytest.mark.parametrize("cache", CACHES)
def test_a_short_epoch_bounds_the_batches_in_flight(store, cache):
    """A loader lives for one epoch: the plan holds no more batches than the epoch has."""
    n_train = len(store.train_idx)
    long_plan = plan_memory(_config(store, cache, batch_size=16))
    short = plan_memory(_config(store, cache, batch_size=n_train))  # one batch per epoch
    assert long_plan.batch_buffers > 1
    assert short.batch_buffers == 1
    assert "lookahead windows" not in _items(short)  # one batch: nothing to look ahead to
    # And the run itself: one batch per epoch trains within the plan's buffers.
    with Trainer(_config(store, cache, batch_size=n_train)) as t:
        assert t.plan.batch_buffers == 1
        rec = t.train_epoch(0)
        assert (
            np.isfinite(rec["train_loss"])
            and rec["rows_device"] + rec["rows_host"] + rec["rows_disk"] > 0
        )
