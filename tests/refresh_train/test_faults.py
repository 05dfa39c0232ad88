"""Faults while training: failed and short reads, Ctrl-C, full disks.

Reads fail through the fault layer of ``_faults.py`` (under the I/O
scheduler, where its kernels call ``pread``); disks fill up through a
replaced ``open``. Each run is compared with an uninterrupted one.
"""

from __future__ import annotations

import errno
import signal
import time

import numpy as np
import pytest
import torch
from _faults import GARBAGE, FaultyReads, FullDisk
from _planted import planted_store

import refresh_train.checkpoint as checkpoint_module
import refresh_train.metrics as metrics_module
from refresh_store.errors import IOSchedulerError, RefreshError
from refresh_store.io import IOConfig
from refresh_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from refresh_train.cli import main
from refresh_train.metrics import read_jsonl
from refresh_train.stopping import SigintLatch, TrainingStopped
from refresh_train.tiers import DiskTier
from refresh_train.trainer import Trainer

EPOCHS = 2
BATCHES = 5  # per epoch: 500 training nodes of 1000, batch size 100


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("faults") / "s", num_nodes=1000)


def _row_offset(store, row: int) -> int:
    region = store.region("features")
    chunk, within = divmod(row, region.chunk_rows)
    return int(region.chunk_offsets[chunk]) + within * region.row_bytes


# --------------------------------------------------------------- the disk tier
@pytest.mark.parametrize(
    ("code", "times", "retries", "tries"),
    [
        pytest.param(errno.EIO, 2, 3, 3, id="eio-twice-then-ok"),
        pytest.param(errno.EINTR, 1, 3, 2, id="eintr-once-then-ok"),
        pytest.param(errno.EIO, None, 3, 4, id="eio-for-good"),
        pytest.param(errno.EIO, 1, 0, 1, id="eio-once-no-retries"),
        pytest.param(errno.EINVAL, 1, 3, 1, id="einval-is-not-retried"),
        pytest.param(0, 1, 3, 1, id="short-read-is-not-retried"),
    ],
)
def test_disk_tier_retries_transient_errors_only(store, monkeypatch, code, times, retries, tries):
    region = store.region("features")
    ids = np.arange(region.nrows - 1, -1, -7, dtype=np.int64)
    target = _row_offset(store, int(ids[3])) + 1
    expected = np.asarray(store.features)[ids]
    tier = DiskTier(
        region,
        IOConfig(mode="buffered", queue_depth=2, read_retries=retries, retry_backoff_s=0.001),
    )
    faults = FaultyReads(monkeypatch, region.path, target, code=code, times=times)
    out = torch.full((len(ids), *expected.shape[1:]), -1.0)
    try:
        t0 = time.perf_counter()
        if times is not None and tries > times:  # fewer faults than tries: the read succeeds
            tier.read(torch.from_numpy(ids), out=out)
            np.testing.assert_array_equal(out.numpy(), expected)
            assert tier.scheduler.stats()["read_retries"] == times
        else:
            with pytest.raises(IOSchedulerError) as info:
                tier.read(torch.from_numpy(ids), out=out)
            msg = str(info.value)
            assert "\n" not in msg and repr(str(region.path)) in msg
            # The failed read's offset is named, and it is the read that covers the fault.
            assert f"offset {info.value.offset}" in msg
            assert info.value.offset <= target
            assert ("short read" in msg) == (code == 0)
            if code:
                assert info.value.errno == code
            assert time.perf_counter() - t0 < 2.0  # the backoff is bounded
        assert faults.failures == min(tries, times or tries)
    finally:
        tier.close()


def test_short_read_leaves_wrong_bytes_that_are_never_served(store, monkeypatch):
    """The fault layer scribbles over the rows of the short read, as the kernel would
    leave them; the tier raises instead of returning them."""
    region = store.region("features")
    tier = DiskTier(region, IOConfig(mode="buffered", queue_depth=1))
    FaultyReads(monkeypatch, region.path, _row_offset(store, 10), code=0)
    out = torch.zeros((4, *region.row_shape))
    try:
        with pytest.raises(IOSchedulerError, match="short read"):
            tier.read(torch.tensor([10, 3, 500, 10]), out=out)
        assert (out.numpy().view(np.uint8) == GARBAGE).any()  # what a silent path would serve
    finally:
        tier.close()


# --------------------------------------------------------------- the trainer
def _argv(store, tmp, *extra: str) -> list[str]:
    return [
        "--store", str(store.path), "--layers", "2", "--hidden", "16", "--fanouts", "5,3",
        "--batch-size", "100", "--epochs", str(EPOCHS), "--lr", "0.01", "--seed", "3",
        "--cache", "raw", "--cache-budget", "4KiB", "--host-budget", "8KiB", "--prefetch", "2",
        "--lookahead", "2",
        "--eval-batch-size", "512", "--checkpoint-dir", str(tmp / "ckpt"),
        "--metrics-out", str(tmp / "m.jsonl"), "--no-progress", *extra,
    ]  # fmt: skip


KEYS = ("epoch", "train_loss", "train_acc", "valid_acc", "test_acc")


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    assert main(_argv(store, tmp)) == 0
    return load_checkpoint(tmp / "ckpt"), read_jsonl(tmp / "m.jsonl")


def _same_run(tmp, uninterrupted) -> None:
    whole, whole_metrics = uninterrupted
    state = load_checkpoint(tmp / "ckpt")
    assert state["epoch"] == EPOCHS and "mid_epoch" not in state["extra"]
    for k, v in whole["model"].items():
        assert torch.equal(v, state["model"][k]), k
    got = read_jsonl(tmp / "m.jsonl")
    assert [{k: r[k] for k in KEYS} for r in got] == [
        {k: r[k] for k in KEYS} for r in whole_metrics
    ]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("in_training", [True, False], ids=["in-training", "in-evaluation"])
def test_failed_read_stops_with_a_checkpoint_that_resumes_exactly(
    store, tmp_path, monkeypatch, capsys, uninterrupted, in_training
):
    region = store.region("features")
    target = _row_offset(store, region.nrows // 2)
    # In training the first read succeeds and the fault comes at the second (lookahead
    # windows of 2 batches: a read pass each). In evaluation the faults start when it
    # does: how many passes training takes depends on how far its stages ran ahead.
    skip = 1 if in_training else 10**9
    faults = FaultyReads(monkeypatch, region.path, target, code=errno.EIO, skip_calls=skip)
    if not in_training:
        real_evaluate = Trainer.evaluate

        def evaluate(self):
            faults.skip_calls = faults.calls
            return real_evaluate(self)

        monkeypatch.setattr(Trainer, "evaluate", evaluate)
    assert main(_argv(store, tmp_path)) == 2
    err = _one_line(capsys)
    assert err.startswith("refresh-train: error: reading ") and str(region.path) in err
    assert "byte offset" in err and "(tried 4 times)" in err and "--resume" in err
    assert faults.failures == 4
    state = load_checkpoint(tmp_path / "ckpt")
    done = state["extra"]["mid_epoch"]["batches_done"]
    assert state["epoch"] == 0 and (0 < done < BATCHES if in_training else done == BATCHES)
    assert f"after {done} of its {BATCHES} batches" in err
    assert not (tmp_path / "m.jsonl").read_text()  # no epoch finished, none claimed

    monkeypatch.undo()  # the disk is mended
    assert main(_argv(store, tmp_path, "--resume")) == 0
    _same_run(tmp_path, uninterrupted)


def test_short_read_stops_the_run_and_no_step_trains_on_it(store, tmp_path, monkeypatch, capsys):
    region = store.region("features")
    target = _row_offset(store, region.nrows // 2)
    FaultyReads(monkeypatch, region.path, target, code=0, skip_calls=1)
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k)
    )
    assert main(_argv(store, tmp_path)) == 2
    err = _one_line(capsys)
    assert "short read of" in err and str(region.path) in err and "at offset" in err
    state = load_checkpoint(tmp_path / "ckpt")
    # Every step trained is in the checkpoint: none ran on the batch with the short read.
    assert state["extra"]["step"] == state["extra"]["mid_epoch"]["batches_done"] == len(steps)


@pytest.fixture
def sigint_default():
    """SIGINT as an interactive run has it: a shell's background job (``cmd &``,
    ``nohup``) starts with it ignored, and the latch then rightly leaves it so."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_after_the_batch_and_resume_equals_an_uninterrupted_run(
    store, tmp_path, monkeypatch, capsys, uninterrupted, sigint_default
):
    real_step = torch.optim.Adam.step
    count = [0]

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        count[0] += 1
        if count[0] == BATCHES + 2:  # the third step of the second epoch
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert main(_argv(store, tmp_path)) == 130
    err = _one_line(capsys)
    assert err.startswith("refresh-train: interrupted: stopped in epoch 2 after 2 of its 5")
    assert "continue with --resume" in err
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["epoch"] == 1 and state["extra"]["mid_epoch"]["batches_done"] == 2
    assert count[0] == BATCHES + 2  # stopped right after that batch
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.undo()
    assert main(_argv(store, tmp_path, "--resume")) == 0
    _same_run(tmp_path, uninterrupted)


def test_ctrl_c_with_the_history_cache_keeps_the_epoch_checkpoint(
    store, tmp_path, monkeypatch, capsys, sigint_default
):
    """--cache refresh cannot resume between steps: the epoch-end checkpoint stays as it was."""
    real_step = torch.optim.Adam.step
    count = [0]

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        count[0] += 1
        if count[0] == BATCHES + 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    argv = _argv(store, tmp_path, "--cache", "refresh", "--cache-budget", "16KiB")
    assert main(argv) == 130
    err = _one_line(capsys)
    assert "--cache refresh checkpoints only at epoch ends" in err
    assert "still holds epoch 1, and --resume repeats epoch 2" in err
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["epoch"] == 1 and "mid_epoch" not in state["extra"]
    assert state["extra"]["step"] == BATCHES


def test_second_ctrl_c_stops_at_once(sigint_default):
    with SigintLatch() as latch:
        signal.raise_signal(signal.SIGINT)
        assert latch.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_full_disk_while_writing_metrics_keeps_earlier_lines(
    store, tmp_path, monkeypatch, capsys, uninterrupted
):
    assert main(_argv(store, tmp_path, "--epochs", "1")) == 0
    before = (tmp_path / "m.jsonl").read_bytes()
    # Room for the first line again (a resumed run rewrites it) and part of the second.
    FullDisk(monkeypatch, metrics_module, free_bytes=len(before) + 40)
    assert main(_argv(store, tmp_path, "--resume")) == 2
    err = _one_line(capsys)
    assert "cannot write metrics file" in err and "No space left on device" in err
    assert "earlier lines are intact" in err and "--resume" in err
    assert (tmp_path / "m.jsonl").read_bytes() == before  # the cut line was taken back

    monkeypatch.undo()
    assert main(_argv(store, tmp_path, "--resume")) == 0
    _same_run(tmp_path, uninterrupted)


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    store, tmp_path, monkeypatch, capsys
):
    assert main(_argv(store, tmp_path, "--epochs", "1")) == 0
    ckpt = tmp_path / "ckpt" / CHECKPOINT_NAME
    before, metrics = ckpt.read_bytes(), (tmp_path / "m.jsonl").read_bytes()
    disk = FullDisk(monkeypatch, checkpoint_module, free_bytes=ckpt.stat().st_size // 2)
    assert main(_argv(store, tmp_path, "--resume")) == 2
    err = _one_line(capsys)
    assert f"cannot write checkpoint {str(ckpt)!r}: No space left on device" in err
    assert "the previous one is intact" in err and "repeats epoch 2" in err
    assert disk.free == 0  # it did fill the disk
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [CHECKPOINT_NAME]  # no .partial
    assert load_checkpoint(ckpt.parent)["epoch"] == 1
    assert (tmp_path / "m.jsonl").read_bytes() == metrics


def test_stops_are_refresh_errors():
    """The command line's one-line, exit-2 path catches them."""
    assert issubclass(TrainingStopped, RefreshError)
    assert issubclass(IOSchedulerError, RefreshError)


def test_an_ignored_sigint_stays_ignored():
    """A run started with SIGINT ignored (``nohup``, ``cmd &``) is not made interruptible."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SigintLatch() as latch:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert not latch.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
