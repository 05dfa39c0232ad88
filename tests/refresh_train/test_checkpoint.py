"""Checkpoints are atomic, safe to load, and resuming reproduces an uninterrupted run."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from _planted import planted_store

import refresh_train.tiers.disk as disk_tier
from refresh_store.io.scheduler import IOScheduler
from refresh_train.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from refresh_train.config import EvalConfig, TierConfig, TrainConfig
from refresh_train.metrics import read_jsonl
from refresh_train.trainer import Trainer, train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("ckpt") / "s", num_nodes=1200)


def _config(store, tmp, **kw) -> TrainConfig:
    row = store.region("features").row_bytes
    base = dict(
        store=str(store.path),
        layers=2,
        hidden=16,
        fanouts=(6, 4),
        batch_size=100,
        epochs=2,
        lr=0.01,
        dropout=0.5,  # dropout draws from torch's RNG: resume must restore it
        seed=7,
        tiers=TierConfig(cache="raw", cache_budget_bytes=100 * row, host_budget_bytes=200 * row),
        eval=EvalConfig(mode="sampled", batch_size=512),
        checkpoint_dir=str(tmp / "ckpt"),
        metrics_out=str(tmp / "m.jsonl"),
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg: TrainConfig):
    with Trainer(cfg) as t:
        records = t.run()
        return records, {k: v.clone() for k, v in t.model.state_dict().items()}


def test_resume_reaches_the_uninterrupted_result(store, tmp_path):
    full_records, full_state = _run(_config(store, tmp_path / "a"))

    _run(_config(store, tmp_path / "b", epochs=1))
    assert len(read_jsonl(tmp_path / "b" / "m.jsonl")) == 1
    resumed_records, resumed_state = _run(_config(store, tmp_path / "b", resume=True))

    for k in full_state:
        assert torch.equal(full_state[k], resumed_state[k]), k
    assert len(resumed_records) == 2
    keys = ("epoch", "train_loss", "train_acc", "valid_acc", "test_acc", "rows_device")
    for ra, rb in zip(full_records, resumed_records):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}
    # The metrics file holds every epoch once, in order.
    assert [r["epoch"] for r in read_jsonl(tmp_path / "b" / "m.jsonl")] == [1, 2]


def test_resume_without_rng_restore_would_differ(store, tmp_path, monkeypatch):
    """Guards the test above: the RNG state matters (dropout), so restoring it is tested."""
    full_records, full_state = _run(_config(store, tmp_path / "a"))
    _run(_config(store, tmp_path / "b", epochs=1))
    monkeypatch.setattr("refresh_train.trainer.restore_rng_state", lambda state: None)
    _, resumed_state = _run(_config(store, tmp_path / "b", resume=True))
    assert any(not torch.equal(full_state[k], resumed_state[k]) for k in full_state)


def test_resume_when_already_done_changes_nothing(store, tmp_path):
    records, state = _run(_config(store, tmp_path, epochs=1))
    again, state2 = _run(_config(store, tmp_path, epochs=1, resume=True))
    assert again == records
    for k in state:
        assert torch.equal(state[k], state2[k])


def test_checkpoint_is_written_atomically_and_loads_with_weights_only(store, tmp_path):
    train(_config(store, tmp_path, epochs=1))
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT_NAME]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    assert set(state) >= {"model", "optimizer", "rng", "records", "config", "extra"}
    assert state["config"]["seed"] == 7
    # A file a full unpickler would need (arbitrary objects) is refused.
    torch.save({"format": 1, "evil": random.Random(0)}, ckpt / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(ckpt)


def test_resume_errors_name_the_problem(store, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(_config(store, tmp_path, resume=True))
    train(_config(store, tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="hidden=16"):
        Trainer(_config(store, tmp_path, hidden=32, resume=True))
    (tmp_path / "ckpt" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_refused_resume_closes_what_the_trainer_had_opened(store, tmp_path, monkeypatch):
    # A constructor that raises never reaches __exit__: the disk tier it had
    # opened (a file and I/O threads) must be released by the constructor itself.
    train(_config(store, tmp_path, epochs=1))
    opened: list[IOScheduler] = []

    class Recorded(IOScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(disk_tier, "IOScheduler", Recorded)
    threads_before = set(threading.enumerate())
    with pytest.raises(CheckpointError, match="hidden=16") as refused:
        Trainer(_config(store, tmp_path, hidden=32, resume=True))
    # ``refused`` keeps the traceback, so the half-built trainer is still
    # alive: nothing below was released by the garbage collector.
    assert refused.traceback
    assert opened and all(s._closed for s in opened)
    started = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not [t.name for t in started if t.name.startswith("refresh-io")]


def test_rng_state_round_trip():
    torch.manual_seed(3)
    random.seed(3)
    state = capture_rng_state()
    a = (torch.rand(4), random.random())
    restore_rng_state(state)
    b = (torch.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
