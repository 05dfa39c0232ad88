"""The command line and TOML config fill TrainConfig; bad input exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _planted import planted_store

from refresh_train.cli import config_from_args, main
from refresh_train.config import ConfigError, TrainConfig, parse_fanouts, parse_size
from refresh_train.metrics import read_jsonl


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("cli") / "s", num_nodes=600)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("2GiB", 2 << 30),
        ("512 MiB", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("10MB", 10_000_000),
        ("3k", 3072),
        ("1tib", 1 << 40),
        (123, 123),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "2XB", "1e999GiB", "1,5GiB", True])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="size"):
        parse_size(text, name="--host-budget")


def test_parse_fanouts():
    assert parse_fanouts("15,10,5") == (15, 10, 5)
    assert parse_fanouts(" -1, 3 ") == (-1, 3)
    assert parse_fanouts([4, 0]) == (4, 0)
    for bad in ("", "15,,5", "a", "15,-2", [1.5]):
        with pytest.raises(ConfigError, match="fanouts"):
            parse_fanouts(bad)


def test_every_flag_reaches_the_config(store, tmp_path):
    cfg = config_from_args(
        f"--store {store.path} --model gat --layers 2 --hidden 64 --dropout 0.25 --norm layer "
        "--fanouts 7,3 --batch-size 256 --epochs 5 --lr 0.01 --seed 9 --device cpu "
        "--cache none --cache-budget 3MiB --host-budget 0 --host-policy s3fifo --io-mode buffered "
        "--io-queue-depth 4 --io-engine aio --prefetch 0 --eval layerwise --eval-fanouts -1,-1 "
        f"--eval-batch-size 99 --eval-every 2 --eval-tmp-dir {tmp_path} --metrics-out m.jsonl "
        f"--checkpoint-dir {tmp_path / 'ck'} --resume --no-progress".split()
    )
    assert isinstance(cfg, TrainConfig)
    assert (cfg.model, cfg.layers, cfg.hidden, cfg.dropout, cfg.norm) == (
        "gat",
        2,
        64,
        0.25,
        "layer",
    )
    assert (cfg.fanouts, cfg.batch_size, cfg.epochs, cfg.lr, cfg.seed) == ((7, 3), 256, 5, 0.01, 9)
    t = cfg.tiers
    assert (t.cache, t.cache_budget_bytes, t.host_budget_bytes) == ("none", 3 << 20, 0)
    assert (t.host_policy, t.io_mode, t.io_queue_depth) == ("s3fifo", "buffered", 4)
    assert t.io_engine == "aio"
    assert cfg.loader.prefetch_batches == 0
    e = cfg.eval
    assert (e.mode, e.fanouts, e.batch_size, e.every_epochs) == ("layerwise", (-1, -1), 99, 2)
    assert e.tmp_dir == str(tmp_path)
    assert cfg.metrics_out == "m.jsonl" and cfg.resume and not cfg.progress


def test_defaults_match_the_issue(store):
    cfg = config_from_args(["--store", str(store.path)])
    assert (cfg.model, cfg.layers, cfg.hidden, cfg.fanouts) == ("sage", 3, 256, (15, 10, 5))
    assert (cfg.batch_size, cfg.lr, cfg.tiers.cache) == (1024, 0.003, "raw")
    assert (cfg.tiers.cache_budget_bytes, cfg.tiers.host_budget_bytes) == (1 << 30, 4 << 30)
    # --layers follows --fanouts when not given.
    assert config_from_args(["--store", str(store.path), "--fanouts", "5,5"]).layers == 2


def test_toml_keys_are_flag_names_and_flags_win(store, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'store = "{store.path.as_posix()}"\n'
        'fanouts = "9,4"\n'
        "batch-size = 64\n"
        'cache-budget = "2MiB"\n'
        "host_budget = 1048576\n"
        "eval-fanouts = [5, 5]\n"
        "no-progress = true\n"
        "hidden = 32\n"
    )
    cfg = config_from_args(["--config", str(toml), "--hidden", "48"])
    assert cfg.fanouts == (9, 4) and cfg.layers == 2 and cfg.batch_size == 64
    assert cfg.tiers.cache_budget_bytes == 2 << 20 and cfg.tiers.host_budget_bytes == 1 << 20
    assert cfg.eval.fanouts == (5, 5) and not cfg.progress
    assert cfg.hidden == 48  # the flag overrides the file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('stroe = "x"\n', "unknown key 'stroe'"),
        ("store = \n", "not valid TOML"),
        ('[tiers]\ncache = "raw"\n', "table"),
        ('store = "S"\nlayers = "three"\n', "layers must be an integer"),
    ],
)
def test_bad_toml_is_reported(tmp_path, content, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(content)
    with pytest.raises(ConfigError, match=message):
        config_from_args(["--config", str(toml)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "{missing}"], "does not exist"),
        (["--store", "{store}", "--cache-budget", "lots"], "--cache-budget must be a size"),
        (["--store", "{store}", "--fanouts", "10,x"], "--fanouts must be comma-separated"),
        (["--store", "{store}", "--fanouts", "5,5", "--layers", "3"], "layers is 3"),
        (["--store", "{store}", "--model", "transformer"], "model must be one of"),
        (["--store", "{store}", "--cache", "magic"], "cache must be one of"),
        (["--store", "{store}", "--host-policy", "fifo"], "host_policy must be one of"),
        (["--store", "{store}", "--resume"], "resume needs checkpoint_dir"),
        (["--store", "{store}", "--epochs", "two"], "invalid int value"),
        (["--store", "{store}", "--no-such-flag"], "unrecognized arguments"),
        (["--config", "{missing}.toml"], "does not exist"),
        ([], "--store is required"),
    ],
)
def test_bad_input_exits_2_with_one_line(store, tmp_path, capsys, args, message):
    argv = [a.format(store=store.path, missing=tmp_path / "missing") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refresh-train: error:")
    assert message in err


def test_main_trains_end_to_end(store, tmp_path, capsys):
    metrics = tmp_path / "m.jsonl"
    argv = (
        f"--store {store.path} --fanouts 4,4 --hidden 16 --batch-size 128 --epochs 2 "
        f"--cache-budget 8KiB --host-budget 16KiB --metrics-out {metrics} "
        f"--checkpoint-dir {tmp_path / 'ck'} --eval-batch-size 256"
    ).split()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "valid %" in out and "disk read" in out  # the per-epoch table
    assert [r["epoch"] for r in read_jsonl(metrics)] == [1, 2]
    assert main([*argv, "--epochs", "3", "--resume", "--no-progress"]) == 0
    assert [r["epoch"] for r in read_jsonl(metrics)] == [1, 2, 3]


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "refresh_train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "--cache-budget" in proc.stdout and "--eval-fanouts" in proc.stdout
