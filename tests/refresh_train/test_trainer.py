"""The trainer learns, counts tier traffic honestly, and is exact whatever the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _params import DEVICES
from _planted import planted_store, small_run_config

from refresh_train.config import EvalConfig, HistoryConfig, LoaderConfig, TierConfig, TrainConfig
from refresh_train.metrics import read_jsonl
from refresh_train.sampler import NeighborSampler, batch_seed, epoch_batches
from refresh_train.trainer import Trainer, train

REQUIRED = (
    "epoch epoch_time_s sample_s fetch_s compute_s train_loss train_acc valid_acc test_acc "
    "rows_device rows_host rows_disk bytes_device bytes_host bytes_disk disk_bytes_read "
    "disk_reads peak_rss_bytes"
).split()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("trainer") / "s")


def _config(store, **kw) -> TrainConfig:
    """:func:`small_run_config` with a raw cache of 150 device and 300 host rows, no
    lookahead, the default history, 2 epochs and the memory check on."""
    row = store.region("features").row_bytes
    base = dict(
        epochs=2,
        seed=1,
        tiers=TierConfig(cache="raw", cache_budget_bytes=150 * row, host_budget_bytes=300 * row),
        history=HistoryConfig(),
        eval=EvalConfig(mode="sampled", batch_size=512),
        max_rss_bytes=None,
    )
    base.update(kw)
    return small_run_config(store, **base)


@pytest.mark.parametrize("device", DEVICES)
def test_training_learns_the_planted_task(store, device, tmp_path):
    records = train(_config(store, epochs=3, device=device, metrics_out=str(tmp_path / "m.jsonl")))
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    # 4 balanced classes: chance is 25%; the neighbourhood makes it easy.
    assert records[-1]["valid_acc"] > 0.85
    assert records[-1]["test_acc"] > 0.85
    lines = read_jsonl(tmp_path / "m.jsonl")
    assert len(lines) == 3
    for line in lines:
        for key in REQUIRED:
            assert key in line, key


def test_records_count_training_fetches_exactly(store):
    cfg = _config(store, epochs=1)
    records = train(cfg)
    rec = records[0]
    row = store.region("features").row_bytes
    for tier in ("device", "host", "disk"):
        assert rec[f"bytes_{tier}"] == rec[f"rows_{tier}"] * row
    # Every input row of every batch is served by exactly one tier.
    sampler = NeighborSampler(store.indptr, store.indices, list(cfg.fanouts), seed=cfg.seed)
    parts = epoch_batches(store.train_idx, cfg.batch_size, cfg.seed, 0)
    inputs = sum(len(sampler.sample(p, batch_seed(0, i)).input_nodes) for i, p in enumerate(parts))
    assert rec["rows_device"] + rec["rows_host"] + rec["rows_disk"] == inputs
    assert rec["rows_device"] > 0 and rec["rows_host"] > 0 and rec["rows_disk"] > 0
    assert rec["disk_bytes_read"] >= rec["bytes_disk"] > 0  # alignment only adds bytes
    assert rec["disk_reads"] > 0
    # Evaluation has its own counters.
    assert rec["eval_rows_disk"] + rec["eval_rows_device"] > 0
    assert rec["peak_rss_bytes"] > 0


def test_evaluation_does_not_touch_training_counters(store):
    a = train(_config(store, epochs=2, eval=EvalConfig(mode="sampled")))
    b = train(_config(store, epochs=2, eval=EvalConfig(mode="layerwise", every_epochs=2)))
    for ra, rb in zip(a, b):
        for key in ("rows_device", "rows_host", "rows_disk", "disk_bytes_read", "train_loss"):
            assert ra[key] == rb[key], key
    assert b[0]["valid_acc"] is None and b[1]["valid_acc"] is not None
    assert a[0]["eval_mode"] == "sampled" and b[1]["eval_mode"] == "layerwise"


def test_cache_mode_and_pipelining_do_not_change_results(store):
    """The raw tiers are exact: none/raw, any policy, serial/pipelined train the same model."""
    runs = [
        _config(store, epochs=1, tiers=TierConfig(cache="none")),
        _config(store, epochs=1),
        _config(
            store,
            epochs=1,
            tiers=TierConfig(cache="raw", host_budget_bytes=1 << 20, host_policy="lru"),
        ),
        _config(store, epochs=1, loader=LoaderConfig(prefetch_batches=0)),
    ]
    results = []
    for cfg in runs:
        with Trainer(cfg) as t:
            records = t.run()
            results.append((records, {k: v.clone() for k, v in t.model.state_dict().items()}))
    ref_records, ref_state = results[0]
    assert ref_records[-1]["rows_device"] == ref_records[-1]["rows_host"] == 0
    for records, state in results[1:]:
        for ra, rb in zip(ref_records, records):
            assert ra["train_loss"] == rb["train_loss"]
            assert ra["valid_acc"] == rb["valid_acc"]
        for k in ref_state:
            assert torch.equal(ref_state[k], state[k]), k
    assert results[1][0][-1]["rows_device"] > 0


@pytest.mark.parametrize("model", ["gcn", "gat", "mlp"])
def test_every_model_trains(store, model):
    records = train(_config(store, model=model, epochs=1))
    assert np.isfinite(records[-1]["train_loss"])
    rows = sum(records[-1][f"rows_{t}"] for t in ("device", "host", "disk"))
    if model == "mlp":
        # The MLP reads only its seeds' features.
        assert rows == len(store.train_idx)
    else:
        assert rows > 3 * len(store.train_idx)
        assert records[-1]["valid_acc"] > 0.3  # chance is 0.25


def test_a_registered_cache_mode_gets_every_hook(store, tmp_path):
    """The hook point the historical cache uses: a new --cache name, no trainer change."""
    from refresh_train.checkpoint import load_checkpoint
    from refresh_train.modes import CACHE_MODES, RawCache, register_cache_mode

    calls = {"prune": 0, "sample": [], "fetch": 0, "forward": 0, "after_step": [], "loaded": None}
    calls["end_epoch"] = 0

    class Counting(RawCache):
        name = "counting-test"

        def sample(self, sampler, seeds, batch_seed, step):
            calls["sample"].append(step)

            def hook(layer, ids):
                calls["prune"] += 1
                return np.zeros(len(ids), dtype=bool)  # expand everything

            return sampler.sample(seeds, batch_seed, prune=hook)

        def end_epoch(self):
            calls["end_epoch"] += 1

        def fetch(self, batch):
            calls["fetch"] += 1
            return super().fetch(batch)

        def forward(self, model, batch):
            calls["forward"] += 1
            return super().forward(model, batch)

        def after_step(self, batch, logits, step):
            calls["after_step"].append(step)

        def state_dict(self):
            return {"steps_seen": torch.tensor(len(calls["after_step"]))}

        def load_state_dict(self, state):
            calls["loaded"] = state

    register_cache_mode(Counting)
    try:
        tiers = TierConfig(cache="counting-test", cache_budget_bytes=4096, host_budget_bytes=0)
        cfg = _config(store, epochs=1, tiers=tiers, checkpoint_dir=str(tmp_path))
        records = train(cfg)
        n = records[0]["batches"]
        assert calls["fetch"] == calls["forward"] == n
        assert calls["after_step"] == list(range(n))
        assert calls["sample"] == list(range(n))  # each batch knows the step it trains at
        assert calls["prune"] == n * (cfg.layers - 1)  # blocks 1..L-1 of every batch
        assert calls["end_epoch"] == 1
        assert load_checkpoint(tmp_path)["extra"]["cache"]["steps_seen"].item() == n
        train(cfg.replace(epochs=2, resume=True))
        assert calls["loaded"]["steps_seen"].item() == n
        assert calls["after_step"][n:] == list(range(n, 2 * n))
        assert calls["sample"][n:] == list(range(n, 2 * n))
    finally:
        CACHE_MODES.pop("counting-test", None)
