"""A run that does not fit its memory limit lowers the depths its user left at their defaults.

The plan's "interpreter and libraries" line measures the test process's RSS,
which grows as the suite runs; the tests pin it so that a limit between two
plans stays between them.
"""

from __future__ import annotations

import pytest
from _planted import planted_store, small_run_config

import refresh_train.memory_plan as memory_plan
from refresh_train.cli import config_from_args
from refresh_train.config import (
    ConfigError,
    HistoryConfig,
    LoaderConfig,
    TierConfig,
    TrainConfig,
)
from refresh_train.memory_fit import fit_memory, pin_history_lag, smaller_settings
from refresh_train.memory_plan import MemoryPlanError, plan_memory
from refresh_train.models import build_model
from refresh_train.trainer import Trainer

BOTH = ("lookahead", "prefetch")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("fit") / "s", num_nodes=3000, feature_dim=48)


@pytest.fixture(autouse=True)
def steady_rss(monkeypatch):
    monkeypatch.setattr(memory_plan, "_current_rss", lambda: 600 << 20)


def _config(store, cache: str = "raw", **kw) -> TrainConfig:
    return small_run_config(store, cache, **{"epochs": 2, "fit_memory": BOTH, **kw})


def _model(store, cfg):
    return build_model("sage", in_dim=store.feature_dim, hidden=cfg.hidden,
                       out_dim=store.num_classes, num_layers=cfg.layers)  # fmt: skip


def _depths(cfg: TrainConfig) -> tuple[int, int]:
    return cfg.tiers.lookahead_batches, cfg.loader.prefetch_batches


def _ladder(store, cfg) -> list[tuple[TrainConfig, int]]:
    """The settings the fit walks through, each with its plan's RAM total."""
    row = store.region("features").row_bytes
    steps = [cfg] + [c for _, c in smaller_settings(cfg, row)]
    return [(c, plan_memory(c, store, model=_model(store, c)).total()) for c in steps]


def test_the_ladder_halves_lookahead_then_lowers_prefetch(store):
    ladder = _ladder(store, _config(store))
    assert [_depths(c) for c, _ in ladder] == [(4, 2), (2, 2), (0, 2), (0, 1), (0, 0)]
    totals = [t for _, t in ladder]
    # No notch costs memory; the windows and each prefetched batch save some.
    assert all(b <= a for a, b in zip(totals, totals[1:])), totals
    assert totals[0] > totals[2] > totals[3] > totals[4], totals
    # Only the knobs named: prefetch alone.
    only = _config(store, fit_memory=("prefetch",))
    assert [_depths(c) for c in [only] + [c for _, c in smaller_settings(only, 1)]] == [
        (4, 2),
        (4, 1),
        (4, 0),
    ]


def test_the_fit_takes_the_first_notch_that_fits(store):
    ladder = _ladder(store, _config(store))
    picks = [i for i in range(1, len(ladder)) if ladder[i][1] < ladder[i - 1][1]]
    assert len(picks) >= 3
    for pick in picks:
        want, need = ladder[pick]
        limit = (need + ladder[pick - 1][1]) // 2  # the notch before does not fit
        cfg = _config(store, max_rss_bytes=limit)
        fit = fit_memory(cfg, store, model=_model(store, cfg))
        assert _depths(fit.config) == _depths(want)
        assert fit.plan.total() == need <= limit
        line = fit.describe()
        assert line.startswith("memory plan: lowered ") and line.endswith("to fit --max-rss")
        look, pre = _depths(want)
        assert (f"--lookahead 4 -> {look}" in line) == (look != 4)
        assert (f"--prefetch 2 -> {pre}" in line) == (pre != 2)


def test_a_run_that_fits_as_given_is_left_alone(store):
    cfg = _config(store, max_rss_bytes=64 << 30)
    fit = fit_memory(cfg, store, model=_model(store, cfg))
    assert _depths(fit.config) == (4, 2) and fit.changes == [] and fit.describe() == ""


def test_without_fit_memory_a_run_that_does_not_fit_is_refused(store):
    ladder = _ladder(store, _config(store))
    cfg = _config(store, max_rss_bytes=ladder[-1][1], fit_memory=())  # the fit would get there
    with pytest.raises(MemoryPlanError) as err:
        fit_memory(cfg, store, model=_model(store, cfg))
    assert "after lowering" not in str(err.value)


def test_when_nothing_fits_the_smallest_plan_speaks_and_says_what_was_lowered(store):
    cfg = _config(store, max_rss_bytes=64 << 20)
    with pytest.raises(MemoryPlanError) as err:
        fit_memory(cfg, store, model=_model(store, cfg))
    msg = str(err.value)
    assert msg.startswith("the plan needs ") and "--max-rss is 64.0 MiB" in msg
    assert msg.endswith("(after lowering --lookahead 4 -> 0, --prefetch 2 -> 0, not given)")
    assert "\n" not in msg


def test_the_command_line_lets_the_fit_lower_only_flags_not_given(store, tmp_path):
    s = ["--store", str(store.path)]
    assert config_from_args(s).fit_memory == BOTH
    assert config_from_args(s + ["--prefetch", "2"]).fit_memory == ("lookahead",)
    assert config_from_args(s + ["--lookahead", "8", "--prefetch", "1"]).fit_memory == ()
    toml = tmp_path / "run.toml"
    toml.write_text(f'store = "{store.path.as_posix()}"\nlookahead = 4\n')
    assert config_from_args(["--config", str(toml)]).fit_memory == ("prefetch",)
    with pytest.raises(ConfigError, match="fit_memory names lookahead and prefetch only"):
        TrainConfig(store="x", fit_memory=("hidden",))


def test_the_history_lag_is_pinned_before_the_lookahead_moves(store):
    row = store.region("features").row_bytes
    cfg = _config(store, "refresh")
    pinned = pin_history_lag(cfg, row)
    assert pinned.history.lag_steps == cfg.history.resolved_lag(4) == 6
    assert all(c.history.lag_steps == 6 for _, c in smaller_settings(pinned, row))
    given = _config(store, "refresh", history=HistoryConfig(staleness_iters=50, lag_steps=9))
    assert pin_history_lag(given, row).history.lag_steps == 9
    assert pin_history_lag(_config(store, "raw"), row) is not None


@pytest.mark.parametrize("cache", ["raw", "refresh"])
def test_a_fitted_run_trains_exactly_as_the_run_as_given(store, cache, capsys):
    """Depths change speed and traffic, not results: same losses, accuracy, history hits.

    (Lookahead windows read each window's disk rows once, so bytes per tier move.)
    """
    free = _config(store, cache)
    ladder = _ladder(store, free)
    smallest = ladder[-1][1]
    fitted_cfg = _config(store, cache, max_rss_bytes=smallest, progress=True)
    with Trainer(fitted_cfg) as t:
        assert _depths(t.config) == (0, 0)
        fitted = t.run()
    assert fitted[0]["memory_fit"] == ["--lookahead 4 -> 0", "--prefetch 2 -> 0"]
    err = capsys.readouterr().err
    assert "memory plan: lowered --lookahead 4 -> 0, --prefetch 2 -> 0 (not given)" in err
    with Trainer(free) as t:
        assert _depths(t.config) == (4, 2)
        given = t.run()
    keys = ["train_loss", "train_acc", "test_acc", "valid_acc"]
    if cache == "refresh":
        keys += ["hist_hits", "nodes_pruned"]
    for a, b in zip(fitted, given):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


@pytest.mark.parametrize("lookahead", [0, 4], ids=["plain", "staged"])
@pytest.mark.parametrize("cache", ["raw", "refresh"])
def test_serial_loading_holds_one_batch_per_tier(store, cache, lookahead):
    """At --prefetch 0 each tier's pool, sized one buffer, never had to allocate a second.

    A reference left to the previous batch (by the loader, a list or the
    training loop) while the next is fetched shows as an overflow.
    """
    tiers = _config(store, cache).tiers
    cfg = _config(
        store,
        cache,
        tiers=TierConfig(**{**tiers.__dict__, "lookahead_batches": lookahead}),
        loader=LoaderConfig(prefetch_batches=0),
        fit_memory=(),
        epochs=1,
    )
    with Trainer(cfg) as t:
        assert (t.plan.batch_buffers, t.plan.lower_batch_buffers) == (1, 1)
        t.run()
        pools = [tier._pool for tier in t.cache.tiers.chain() if tier._pool is not None]
        assert pools and pools[0].reused > 0
        assert [p.overflow for p in pools] == [0] * len(pools)
        assert all(len(p._bufs) <= 1 for p in pools)


@pytest.mark.slow
def test_the_published_settings_fit_4gib_on_a_300k_paper_mag240m_store(tmp_path):
    """Issue contract: SAGE 3x256, fanouts 15,10,5, batch 1024, --cache raw --cache-budget
    256MiB --host-budget 1GiB under --max-rss 4GiB on a generated MAG240M full graph of
    300K papers (776K nodes, 953 MB store). As given the plan needs 6.3 GiB; the fit lowers
    the default depths, and the epoch's measured peak stays within the printed total."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = dict(capture_output=True, text=True, timeout=1200, cwd=root)
    src, dst, metrics = tmp_path / "src", tmp_path / "store", tmp_path / "m.jsonl"
    tools = [sys.executable, "tools/make_dataset.py", "--layout", "mag240m", "--nodes", "300000"]
    assert subprocess.run(tools + ["--out", str(src)], **run).returncode == 0
    convert = [sys.executable, "tools/convert.py", str(src), str(dst), "--mag240m-graph", "full"]
    assert subprocess.run(convert + ["--no-progress"], **run).returncode == 0
    argv = [
        sys.executable, "-m", "refresh_train", "--store", str(dst), "--model", "sage",
        "--layers", "3", "--hidden", "256", "--fanouts", "15,10,5", "--batch-size", "1024",
        "--cache", "raw", "--cache-budget", "256MiB", "--host-budget", "1GiB",
        "--max-rss", "4GiB", "--epochs", "1", "--metrics-out", str(metrics), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(argv, **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "memory plan: lowered --lookahead 8 -> 0" in proc.stderr
    record = json.loads(metrics.read_text().splitlines()[0])
    total = record["memory_plan"]["ram_total_bytes"]
    assert record["peak_rss_bytes"] <= total <= 4 << 30
    assert record["memory_fit"][0] == "--lookahead 8 -> 0"
