"""configs/*.toml parse into the settings the README's "Training MAG240M from SSD" states."""

from __future__ import annotations

from pathlib import Path

import pytest

from refresh_train.cli import config_from_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GiB = 1 << 30


def test_mag240m_config_is_the_rgraphsage_baseline_within_the_memory_plan(tmp_path):
    cfg = config_from_args(["--config", str(CONFIGS / "mag240m.toml"), "--store", str(tmp_path)])
    assert cfg.store == str(tmp_path)  # --store on the command line wins over the file's
    # OGB-LSC examples/lsc/mag240m/rgnn.py, --model rgraphsage
    assert (cfg.model, cfg.layers, cfg.hidden, cfg.fanouts) == ("rsage", 2, 1024, (25, 15))
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.dropout, cfg.norm, cfg.seed) == (
        1024, 100, 0.001, 0.5, "batch", 42,
    )  # fmt: skip
    assert cfg.device == "cuda" and cfg.tiers.cache == "refresh"
    t = cfg.tiers
    assert (t.cache_budget_bytes, t.host_budget_bytes, t.lookahead_budget_bytes) == (
        48 * GiB, 40 * GiB, 8 * GiB,
    )  # fmt: skip
    assert (t.io_mode, t.lookahead_batches) == ("direct", 8)
    assert cfg.max_rss_bytes == 120 * GiB  # the stated machine has 128 GiB
    assert (cfg.history.grad_quantile, cfg.history.staleness_iters) == (0.9, 200)
    assert (cfg.eval.mode, cfg.eval.fanouts, cfg.eval.batch_size, cfg.eval.every_epochs) == (
        "sampled", None, 1024, 5,
    )  # fmt: skip
    assert (cfg.predict_out, cfg.predict_split) == ("runs/mag240m-submission", "test-dev")
    assert (cfg.metrics_out, cfg.checkpoint_dir) == ("runs/mag240m.jsonl", "runs/mag240m-ckpt")


def test_papers100m_config_is_the_graphsage_baseline(tmp_path):
    cfg = config_from_args(["--config", str(CONFIGS / "papers100m.toml"), "--store", str(tmp_path)])
    assert cfg.store == str(tmp_path)
    assert (cfg.model, cfg.layers, cfg.hidden, cfg.fanouts, cfg.batch_size) == (
        "sage", 3, 256, (15, 10, 5), 1024,
    )  # fmt: skip
    assert (cfg.epochs, cfg.lr, cfg.dropout, cfg.norm) == (20, 0.003, 0.5, "none")
    t = cfg.tiers
    assert (t.cache, t.cache_budget_bytes, t.host_budget_bytes) == ("refresh", 48 * GiB, 32 * GiB)
    assert cfg.max_rss_bytes == 120 * GiB and cfg.device == "cuda"
    assert (cfg.predict_out, cfg.predict_split) == ("runs/papers100m-predictions", "test")


@pytest.mark.parametrize("name", ["mag240m.toml", "papers100m.toml"])
def test_config_store_paths_are_relative(name):
    cfg = config_from_args(["--config", str(CONFIGS / name)])
    for path in (cfg.store, cfg.metrics_out, cfg.checkpoint_dir, cfg.predict_out):
        assert not Path(path).is_absolute()
    assert cfg.store.startswith("stores/")
