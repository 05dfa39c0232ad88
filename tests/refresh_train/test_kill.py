"""Killed runs: SIGKILL at any moment, or while a checkpoint is written, and a real
Ctrl-C, leave a loadable checkpoint from which ``--resume`` reaches the result
of an uninterrupted run. Each case runs the trainer in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import planted_store

import refresh_train
from refresh_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from refresh_train.cli import main
from refresh_train.metrics import read_jsonl

pytestmark = pytest.mark.slow

EPOCHS = 3
KEYS = ("epoch", "train_loss", "train_acc", "valid_acc", "test_acc")
# The subprocesses import this checkout, wherever pytest was started.
ENV = {**os.environ, "PYTHONPATH": str(Path(refresh_train.__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("kill") / "s", num_nodes=1000)


def _argv(store, tmp) -> list[str]:
    # Batches of 8: about 60 steps an epoch (see _SLOW_STEPS).
    return [
        "--store", str(store.path), "--layers", "2", "--hidden", "16", "--fanouts", "5,3",
        "--batch-size", "8", "--epochs", str(EPOCHS), "--lr", "0.01", "--seed", "5",
        "--cache", "raw", "--cache-budget", "4KiB", "--host-budget", "8KiB", "--lookahead", "2",
        "--eval-batch-size", "512", "--checkpoint-dir", str(tmp / "ckpt"),
        "--metrics-out", str(tmp / "m.jsonl"), "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    assert main(_argv(store, tmp)) == 0
    return load_checkpoint(tmp / "ckpt"), read_jsonl(tmp / "m.jsonl")


def _resume_to_the_end_and_compare(store, tmp, uninterrupted) -> None:
    resume = ["--resume"] if (tmp / "ckpt" / CHECKPOINT_NAME).exists() else []
    assert main([*_argv(store, tmp), *resume]) == 0
    whole, whole_metrics = uninterrupted
    state = load_checkpoint(tmp / "ckpt")
    assert state["epoch"] == EPOCHS
    for k, v in whole["model"].items():
        assert torch.equal(v, state["model"][k]), k
    got = read_jsonl(tmp / "m.jsonl")
    assert [{k: r[k] for k in KEYS} for r in got] == [
        {k: r[k] for k in KEYS} for r in whole_metrics
    ]


# Runs the trainer with every optimiser step at least 10 ms long, so an epoch
# (about 60 steps) lasts at least 0.6 s on any machine: a kill or Ctrl-C sent
# 0-0.4 s after a checkpoint lands in the next epoch, not after the run ended
# (on an idle machine the epochs took 0.3 s and the last kill came too late).
_SLOW_STEPS = textwrap.dedent(
    """
    import sys, time
    import torch
    from refresh_train.cli import main

    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        time.sleep(0.01)
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = step
    sys.exit(main(sys.argv[1:]))
    """
)


# Ctrl-C at a fixed optimiser step: the process sends itself SIGINT right
# after step CTRL_C_AT_STEP, so where the signal lands does not depend on how
# two loaded processes are scheduled (sent from the test after it saw the
# first epoch's metrics, a starved test process could send it after the
# last step, when a Ctrl-C rightly changes nothing).
_CTRL_C_AT_STEP = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from refresh_train.cli import main

    real_step = torch.optim.Adam.step
    at = int(os.environ["CTRL_C_AT_STEP"])
    steps = [0]

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    torch.optim.Adam.step = step
    # As an interactive shell leaves it, whatever the parent process ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
    """
)


def _start(args: list[str], code: str | None = None, env=None) -> subprocess.Popen:
    if code is None:
        cmd = [sys.executable, "-m", "refresh_train", *args]
    else:
        cmd = [sys.executable, "-c", code, *args]
    return subprocess.Popen(
        cmd, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(proc: subprocess.Popen, ready, timeout_s: float = 600.0) -> bool:
    """Poll until ``ready()`` or the process ends; whether it is still running."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the trainer neither got going nor ended")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def test_sigkill_at_random_moments_then_resume_reaches_the_same_result(
    store, tmp_path, uninterrupted
):
    rng = np.random.default_rng(20261206)
    ckpt = tmp_path / "ckpt" / CHECKPOINT_NAME
    kills = 0
    for _ in range(4):
        resume = ["--resume"] if ckpt.exists() else []
        seen = _mtime(ckpt)
        proc = _start([*_argv(store, tmp_path), *resume], _SLOW_STEPS)
        # Once training runs (a checkpoint was written), kill it a moment later:
        # in a batch, in evaluation or while the next checkpoint is written.
        if _wait_for(proc, lambda seen=seen: _mtime(ckpt) != seen):
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
        else:
            assert proc.wait() == 0, proc.stderr.read().decode()
        proc.stderr.close()
        state = load_checkpoint(tmp_path / "ckpt")  # always loadable
        assert 1 <= state["epoch"] <= EPOCHS
        # The metrics file never holds a cut line.
        read_jsonl(tmp_path / "m.jsonl")
    assert kills >= 2
    _resume_to_the_end_and_compare(store, tmp_path, uninterrupted)


# Runs the trainer, and SIGKILLs it at one moment of writing its second checkpoint.
_KILL_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    import refresh_train.checkpoint as ck
    from refresh_train.cli import main

    point = os.environ["KILL_POINT"]
    saves = [0]
    real_save, real_write = ck.atomic_torch_save, ck._Writes.write
    real_replace, real_fsync_dir = os.replace, ck._fsync_dir

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def save(path, payload):
        saves[0] += 1
        return real_save(path, payload)

    def write(self, data):
        if point == "in-torch-save" and saves[0] == 2:
            real_write(self, bytes(data)[: len(data) // 2])
            die()
        return real_write(self, data)

    def replace(src, dst, *a, **k):
        if point == "before-rename" and saves[0] == 2 and str(dst).endswith("checkpoint.pt"):
            die()
        return real_replace(src, dst, *a, **k)

    def fsync_dir(path):
        if point == "after-rename" and saves[0] == 2:
            die()
        return real_fsync_dir(path)

    ck.atomic_torch_save, ck._Writes.write, ck._fsync_dir = save, write, fsync_dir
    os.replace = replace
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("point", "epoch_kept"),
    [("in-torch-save", 1), ("before-rename", 1), ("after-rename", 2)],
)
def test_sigkill_while_writing_a_checkpoint_keeps_one_that_resumes(
    store, tmp_path, uninterrupted, point, epoch_kept
):
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_WHILE_SAVING, *_argv(store, tmp_path)],
        env={**ENV, "KILL_POINT": point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    ckpt_dir = tmp_path / "ckpt"
    if point == "in-torch-save":
        assert (ckpt_dir / (CHECKPOINT_NAME + ".partial")).exists()  # the kill hit mid-write
    assert load_checkpoint(ckpt_dir)["epoch"] == epoch_kept
    _resume_to_the_end_and_compare(store, tmp_path, uninterrupted)
    assert not (ckpt_dir / (CHECKPOINT_NAME + ".partial")).exists()


def test_ctrl_c_in_a_real_process_saves_and_resumes(store, tmp_path, uninterrupted):
    per_epoch = -(-len(store.train_idx) // 8)  # batches of 8 (_argv)
    at = per_epoch + per_epoch // 2  # half-way through the second epoch
    proc = _start(_argv(store, tmp_path), _CTRL_C_AT_STEP, {"CTRL_C_AT_STEP": str(at)})
    _, err = proc.communicate(timeout=300)
    lines = err.decode().splitlines()
    assert proc.returncode == 130, err.decode()
    assert len(lines) == 1 and lines[0].startswith("refresh-train: interrupted: stopped ")
    assert "continue with --resume" in lines[0]
    state = load_checkpoint(tmp_path / "ckpt")
    assert state["epoch"] == 1  # stopped in the second epoch, after the step it was at
    assert state["extra"]["mid_epoch"]["batches_done"] == at - per_epoch
    _resume_to_the_end_and_compare(store, tmp_path, uninterrupted)
