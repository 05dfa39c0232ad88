"""Data-parallel training (torchrun, gloo on the CPU) equals single-process training.

Two processes train on the same global batches as one process; with
``--dropout 0`` and ``--cache none|raw`` the weights, losses and
accuracies must match single-process training within float tolerance. The
store has unlabelled training seeds (label -1), so the ranks' labelled
shares of a batch differ and a loss not weighted by them would show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import planted_arrays

from refresh_store.store import open_store
from refresh_store.writer import write_store
from refresh_train import distributed
from refresh_train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from refresh_train.cli import config_from_args, main
from refresh_train.distributed import DistContext, check_same_store, shard, shard_epoch
from refresh_train.evaluate import shard_positions
from refresh_train.metrics import merge_records, read_jsonl
from refresh_train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_ddp_worker.py")
LAUNCH_TIMEOUT_S = 300

#: The planted store has 301 training nodes: batches of 60 end with a batch
#: of one seed (rank 1 gets none of its own); batches of 62 end with one of
#: 53 seeds, split 27/26.
COMMON = (
    "--layers 2 --hidden 16 --fanouts 4,3 --epochs 2 --lr 0.02 --dropout 0 --seed 3 "
    "--eval-batch-size 100 --prefetch 1 --lookahead 2 --no-progress"
)


def _argv(store, extra: str) -> list[str]:
    return ["--store", str(store)] + f"{COMMON} {extra}".split()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    arrays = planted_arrays(num_nodes=602, feature_dim=16, seed=5)
    arrays["labels"][arrays["train_idx"][::5]] = -1  # unlabelled training seeds
    path = tmp_path_factory.mktemp("ddp") / "s"
    write_store(path, num_classes=4, **arrays)
    return path


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N ARGS`` (it picks a free local port).

    Started in a session of its own, so that a launch past the timeout is
    killed with all its workers rather than leaving them behind.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    cmd += args
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"torchrun ran past {LAUNCH_TIMEOUT_S} s: {err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _single(argv: list[str]):
    with Trainer(config_from_args(argv)) as t:
        records = t.run()
        return records, {k: v.clone() for k, v in t.model.state_dict().items()}


def _ddp_runs(tmp: Path, runs: dict[str, list[str]]) -> dict[str, dict]:
    """Train every run of ``runs`` in one 2-process launch of the worker."""
    spec = tmp / "spec.json"
    spec.write_text(json.dumps(list(runs.items())))
    done = torchrun([str(WORKER), str(spec), str(tmp)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    out = {}
    for name in runs:
        ranks = [json.loads((tmp / f"{name}.rank{r}.json").read_text()) for r in range(2)]
        state = torch.load(tmp / f"{name}.pt", weights_only=True)
        out[name] = {"ranks": ranks, "state": state}
    return out


# ------------------------------------------------------------- pure helpers
def test_launch_is_read_from_torchrun_variables():
    assert DistContext.from_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert DistContext.from_env(env) == DistContext(1, 4, 1, 2)
    for bad in ({"RANK": "0", "WORLD_SIZE": "2"}, {**env, "RANK": "4"}, {**env, "RANK": "x"}):
        with pytest.raises(ValueError, match="torchrun"):
            DistContext.from_env(bad)


def test_shares_partition_each_global_batch():
    labels = np.array([0, -1, 2, 1, -1, 3, 0], dtype=np.int64)
    batches = [np.array([6, 1, 4, 0]), np.array([2, 3]), np.array([5])]
    for world in (1, 2, 3):
        got = [shard_epoch(batches, labels, r, world) for r in range(world)]
        for b, seeds in enumerate(batches):
            real = [own[b] for own, shares in got if not shares[b].pad]
            assert sorted(np.concatenate(real).tolist()) == sorted(seeds.tolist())
            for _, shares in got:
                assert shares[b].size == len(seeds)
                assert shares[b].labelled == int((labels[seeds] >= 0).sum())
    own, shares = shard_epoch(batches, labels, 2, 3)
    assert [s.pad for s in shares] == [False, True, True]
    assert own[1].tolist() == [2] and own[2].tolist() == [5]  # the batch's first seed, masked
    assert shard(np.arange(7), 1, 3).tolist() == [1, 4]
    # Evaluation cuts batches as one process does, then splits each.
    assert shard_positions(7, 3, (1, 2)).tolist() == [1, 4]
    assert sorted(np.concatenate([shard_positions(7, 3, (r, 2)) for r in (0, 1)])) == list(range(7))


def test_records_sum_counters_and_recompute_rates():
    a = {"epoch": 2, "batches": 5, "rows_device": 3, "rows_host": 1, "rows_disk": 0,
         "hit_rate_device": 0.75, "train_loss": 1.5, "peak_rss_bytes": 10, "valid_correct": 3,
         "valid_labelled": 4, "valid_acc": 0.75, "hist_hits": 2, "hist_mean_age_of_hits": 4.0,
         "hist_entries": 1, "hist_rows": 4, "hist_lookups_l1": 6, "hist_occupancy": 0.25,
         "hist_drift_probes": 3, "hist_drift_rel_err": 0.5, "hist_drift_mean_age": 10.0}  # fmt: skip
    b = {**a, "rows_device": 1, "rows_disk": 4, "peak_rss_bytes": 30, "valid_correct": 1,
         "valid_acc": 0.25, "hist_hits": 6, "hist_mean_age_of_hits": 8.0, "hist_entries": 3,
         "hist_drift_probes": 1, "hist_drift_rel_err": 0.1, "hist_drift_mean_age": 2.0}  # fmt: skip
    m = merge_records([a, b])
    assert (m["epoch"], m["batches"], m["train_loss"], m["world_size"]) == (2, 5, 1.5, 2)
    assert (m["rows_device"], m["rows_host"], m["rows_disk"]) == (4, 2, 4)
    assert m["hit_rate_device"] == 0.4 and m["peak_rss_bytes"] == 30
    assert m["valid_acc"] == 0.5  # 4 correct of 8
    assert m["hist_mean_age_of_hits"] == (4.0 * 2 + 8.0 * 6) / 8
    assert m["hist_occupancy"] == 4 / 8
    assert m["hist_drift_probes"] == 4
    assert m["hist_drift_rel_err"] == pytest.approx((0.5 * 3 + 0.1) / 4)
    assert m["hist_drift_mean_age"] == (10.0 * 3 + 2.0) / 4


# ------------------------------------------------------- two processes
#: --cache refresh with hits from the second batch on: each rank prunes with
#: its own table, so only that it runs, hits and sums is checked, and that
#: resuming from the per-rank cache states reproduces the uninterrupted run.
REFRESH = (
    "--cache refresh --batch-size 30 --cache-budget 8KiB --host-budget 4KiB --hist-lag 1 "
    "--lookahead 0 --hist-fraction 0.5 --staleness 50"
)


@pytest.fixture(scope="module")
def ddp_exact(store, tmp_path_factory):
    """One 2-process launch (process start-up is most of its time) of:
    --cache none (batch 60: a last batch of one seed; layer-wise evaluation),
    --cache raw (batch 62) as 1 epoch then --resume to 2, and --cache
    refresh uninterrupted and as 1 epoch then --resume to 2."""
    tmp = tmp_path_factory.mktemp("ddp-exact")
    ck, a, b = tmp / "ck", tmp / "refresh-a", tmp / "refresh-b"
    runs = {
        "none": _argv(store, "--cache none --batch-size 60 --eval layerwise"),
        "raw1": _argv(store, f"--cache raw --batch-size 62 --epochs 1 --checkpoint-dir {ck}"),
        "raw": _argv(store, f"--cache raw --batch-size 62 --checkpoint-dir {ck} --resume"),
    }
    for argv in runs.values():
        argv += ["--cache-budget", "2KiB", "--host-budget", "4KiB"]
    runs["refresh"] = _argv(store, f"{REFRESH} --checkpoint-dir {a}")
    runs["refresh1"] = _argv(store, f"{REFRESH} --epochs 1 --checkpoint-dir {b}")
    runs["refresh_resumed"] = _argv(store, f"{REFRESH} --checkpoint-dir {b} --resume")
    return runs, _ddp_runs(tmp, runs)


@pytest.mark.parametrize("mode", ["none", "raw"])
def test_two_processes_train_like_one(ddp_exact, mode):
    runs, results = ddp_exact
    argv = [a for a in runs[mode] if a != "--resume"]
    i = argv.index("--checkpoint-dir") if "--checkpoint-dir" in argv else None
    if i is not None:
        del argv[i : i + 2]
    ref_records, ref_state = _single(argv)
    got = results[mode]
    for rank in got["ranks"]:  # every rank reports the global figures
        records = rank["records"]
        assert [r["epoch"] for r in records] == [1, 2]
        for want, have in zip(ref_records, records):
            assert have["world_size"] == 2
            assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
            assert have["train_acc"] == want["train_acc"]
            assert have["valid_acc"] == want["valid_acc"]
            assert have["test_acc"] == want["test_acc"]
            assert have["valid_labelled"] + have["test_labelled"] > 0
    for key, value in ref_state.items():
        torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # The weights moved: equality is not that of an untrained model.
    init = Trainer(config_from_args(argv + ["--epochs", "0"]))
    moved = max((init.model.state_dict()[k] - v).abs().max().item() for k, v in ref_state.items())
    init.close()
    assert moved > 1e-2


def test_counters_are_the_sum_of_the_ranks(ddp_exact):
    _, results = ddp_exact
    ranks = results["raw"]["ranks"]
    last = ranks[0]["records"][-1]
    for key in ("rows_device", "rows_host", "rows_disk", "disk_bytes_read", "bytes_host"):
        per_rank = [r["local"][key] for r in ranks]
        assert min(per_rank) > 0, key
        assert last[key] == sum(per_rank), key
    assert last["hit_rate_device"] == last["rows_device"] / sum(
        last[f"rows_{t}"] for t in ("device", "host", "disk")
    )


def test_resume_under_ddp_continues_the_checkpointed_run(ddp_exact, store):
    runs, results = ddp_exact
    ck = Path(runs["raw"][runs["raw"].index("--checkpoint-dir") + 1])
    state = load_checkpoint(ck)  # weights_only
    assert state["epoch"] == 2 and state["extra"]["world_size"] == 2
    assert len(state["extra"]["rng_ranks"]) == 2
    # The resumed run restored epoch 1's record and added epoch 2's.
    first = results["raw1"]["ranks"][0]["records"]
    assert results["raw"]["ranks"][0]["records"][0] == first[0]
    for key, value in results["raw"]["state"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)
    # Nothing but rank 0's checkpoint: none and raw keep no cache state.
    assert sorted(p.name for p in ck.iterdir()) == [CHECKPOINT_NAME]


def test_resume_with_another_world_size_is_refused(ddp_exact, capsys):
    runs, _ = ddp_exact
    argv = runs["raw"] + ["--epochs", "3"]
    ck = Path(argv[argv.index("--checkpoint-dir") + 1])
    before = (ck / CHECKPOINT_NAME).read_bytes()
    assert main(argv) == 2  # one process resuming a 2-process checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 process(es)" in err[0] and "WORLD_SIZE" in err[0]
    assert (ck / CHECKPOINT_NAME).read_bytes() == before


def test_torchrun_cli_writes_metrics_and_checkpoint_once(store, tmp_path):
    args = ["-m", "refresh_train", *_argv(store, "--cache raw --batch-size 64 --epochs 1")]
    args = [a for a in args if a != "--no-progress"]  # rank 0 alone prints
    args += ["--metrics-out", "m.jsonl", "--checkpoint-dir", "ck"]
    done = torchrun(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = read_jsonl(tmp_path / "m.jsonl")
    assert [r["epoch"] for r in lines] == [1] and lines[0]["world_size"] == 2
    assert done.stdout.count("memory plan") == 1
    assert done.stdout.count("valid %") == 1  # the epoch table
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [CHECKPOINT_NAME]
    state = load_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 1 and state["records"][0]["train_loss"] == lines[0]["train_loss"]


# ------------------------------------------------------------- bad input
def _launch_env(monkeypatch, rank: int, world: int = 2) -> None:
    # No process group is joined: every case here stops before that.
    for key, value in dict(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=world,
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=1).items():  # fmt: skip
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--batch-size 61", "--batch-size 61 is not divisible by the 2 processes"),
        ("--batch-size 1", "use --batch-size 2,"),
        ("--batch-size 64 --device cuda:1", "pass --device cuda"),
        ("--batch-size 64 --epochs -1", "epochs"),
    ],
    ids=["batch-not-divisible", "batch-below-world", "one-gpu-for-all", "bad-flag"],
)
def test_bad_input_is_reported_once_by_rank_0(store, tmp_path, monkeypatch, capsys, flags, message):
    argv = _argv(store, flags) + ["--metrics-out", str(tmp_path / "m.jsonl")]
    argv += ["--checkpoint-dir", str(tmp_path / "ck")]
    for rank in (1, 0):
        _launch_env(monkeypatch, rank)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        if rank == 1:
            assert err == []
        else:
            assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_half_a_launch_is_refused(store, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(_argv(store, "--batch-size 64")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MASTER_ADDR" in err[0] and "torchrun" in err[0]


def test_a_different_store_on_another_rank_is_refused(store, monkeypatch):
    # Two ranks, without a process group: gather_all returns what each would send.
    same = open_store(store)
    monkeypatch.setattr(distributed, "gather_all", lambda mine: [mine, mine])
    check_same_store(same)
    monkeypatch.setattr(distributed, "gather_all", lambda mine: [mine, ("0" * 64, "elsewhere/s")])
    with pytest.raises(ValueError, match=r"--store differs.*rank 1's 'elsewhere/s'.*verify"):
        check_same_store(same)


def test_torchrun_bad_input_writes_nothing(store, tmp_path):
    args = ["-m", "refresh_train", *_argv(store, "--batch-size 61")]
    args += ["--metrics-out", "m.jsonl", "--checkpoint-dir", "ck"]
    done = torchrun(args, cwd=tmp_path)
    assert done.returncode != 0  # torchrun reports its failed workers (status 2) with 1
    ours = [line for line in done.stderr.splitlines() if line.startswith("refresh-train:")]
    assert len(ours) == 1 and "--batch-size 61 is not divisible" in ours[0]
    assert "exitcode  : 2" in done.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------- --cache refresh
def test_refresh_under_ddp_hits_on_every_rank_and_resumes(ddp_exact):
    runs, results = ddp_exact
    full = results["refresh"]
    last = full["ranks"][0]["records"][-1]
    hits = [r["local"]["hist_hits"] for r in full["ranks"]]
    assert min(hits) > 0 and last["hist_hits"] == sum(hits)
    for key in ("hist_lookups", "hist_admitted", "rows_disk", "rows_saved", "hist_rows"):
        assert last[key] == sum(r["local"][key] for r in full["ranks"]), key
    # Rank 1 keeps its table next to rank 0's checkpoint, one epoch's only.
    ck = Path(runs["refresh"][runs["refresh"].index("--checkpoint-dir") + 1])
    assert sorted(p.name for p in ck.iterdir()) == ["cache-rank1.epoch2.pt", CHECKPOINT_NAME]
    # Resumed from every rank's table, the run continues exactly; the raw
    # tiers are not checkpointed, so only their counters may differ.
    resumed = results["refresh_resumed"]
    for key, value in full["state"].items():
        torch.testing.assert_close(resumed["state"][key], value, rtol=0, atol=0, msg=key)
    for rank in (0, 1):
        have, want = resumed["ranks"][rank]["local"], full["ranks"][rank]["local"]
        for key in ("hist_lookups", "hist_hits", "hist_admitted", "nodes_pruned", "rows_saved"):
            assert have[key] == want[key], (rank, key)
    for key in ("train_loss", "train_acc", "valid_acc", "test_acc"):
        assert resumed["ranks"][0]["records"][-1][key] == last[key], key
