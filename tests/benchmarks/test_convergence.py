"""The convergence benchmark's bookkeeping (``benchmarks/convergence.py``).

Its runs take an hour; it must evaluate every epoch, keep what it measured,
rerun only what is missing and pick the epoch a user would select.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import convergence as cv  # noqa: E402
from _common import cpu_kind  # noqa: E402

TINY = ["--papers-nodes", "3000", "--epochs", "2", "--hidden", "16", "--batch-size", "64"]


def test_every_epoch_is_evaluated_and_a_rerun_measures_only_what_is_missing(tmp_path, capsys):
    out = tmp_path / "cv.json"
    args = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert cv.main(args) == 0
    recs = json.loads(out.read_text())["records"]
    assert sorted(r["variant"] for r in recs) == sorted(cv.DEFAULT_VARIANTS)
    for r in recs:
        assert [e["epoch"] for e in r["epochs"]] == [1, 2]
        assert len(r["load"]) == 2 and min(r["load"]) >= 0  # the run's own, start and end
        for e in r["epochs"]:
            assert set(cv.EPOCH_KEYS) <= set(e)
            assert e["test_acc"] is not None and e["valid_acc"] is not None
            assert e["memory_access_bytes"] > 0
        # Two fresh computations of the same seeds differ (other draws, other dropout);
        # with a table, measured on the training nodes it has slots for, if any.
        assert r["noise_floor_rel_err"] is None or 0 < r["noise_floor_rel_err"] < 2
        assert r["cpu"] == cpu_kind()
    by = {r["variant"]: r for r in recs}
    assert 0 < by["none"]["noise_floor_rel_err"] < 2
    assert by["none"]["epochs"][0]["hist_lookups"] is None
    assert by["refresh"]["epochs"][-1]["hist_lookups"] > 0
    # refresh-exact1 is refresh until its last epoch, which reads no history.
    exact = by["refresh-exact1"]["epochs"]
    assert exact[0] | {"epoch_time_s": 0} == by["refresh"]["epochs"][0] | {"epoch_time_s": 0}
    assert exact[-1]["hist_lookups"] == 0 and exact[-1]["hist_hits"] == 0

    # Drop one run: the rerun trains only that one and gets the same bytes.
    data = json.loads(out.read_text())
    data["records"] = [r for r in data["records"] if r["variant"] != "refresh"]
    out.write_text(json.dumps(data))
    capsys.readouterr()
    assert cv.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("] ") == 1 and "] refresh, seed 0" in printed
    again = {r["variant"]: r for r in json.loads(out.read_text())["records"]}
    assert again["none"] == by["none"]
    assert [e["memory_access_bytes"] for e in again["refresh"]["epochs"]] == [
        e["memory_access_bytes"] for e in by["refresh"]["epochs"]
    ]
    assert "| refresh-nostale |" in out.with_suffix(".md").read_text()


def test_the_diagnostic_variants_run_when_named(tmp_path, monkeypatch):
    """Named, each trains with its history setting (the tiny graph's one batch per
    epoch gets no hits, so the settings are checked where they reach the trainer)."""
    seen = {}
    trainer = cv.Trainer

    def recording(cfg):
        seen[(cfg.history.max_serves, cfg.history.shadow)] = cfg.tiers.cache
        return trainer(cfg)

    monkeypatch.setattr(cv, "Trainer", recording)
    out = tmp_path / "cv.json"
    variants = "refresh-serves1,refresh-shadow-values,refresh-shadow-gradients"
    args = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out), "--variants", variants]
    assert cv.main(args) == 0
    recs = {r["variant"]: r for r in json.loads(out.read_text())["records"]}
    assert set(recs) == set(variants.split(","))
    assert not set(recs) & set(cv.DEFAULT_VARIANTS)
    assert seen == {(1, None): "refresh", (None, "values"): "refresh",
                    (None, "gradients"): "refresh"}  # fmt: skip


def test_budgets_share_one_none_run_and_a_file_of_other_settings_is_kept(tmp_path, capsys):
    out = tmp_path / "cv.json"
    args = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out),
                   "--variants", "none,refresh", "--budgets", "0.05,0.20"]  # fmt: skip
    assert cv.main(args) == 0
    recs = json.loads(out.read_text())["records"]
    # none holds no feature memory: one run serves both budgets.
    assert sorted((r["variant"], r["budget_frac"]) for r in recs) == [
        ("none", 0.0),
        ("refresh", 0.05),
        ("refresh", 0.20),
    ]
    rows = cv.summarize(recs)
    assert [(r["variant"], r["budget_frac"]) for r in rows] == [
        ("none", 0.0),
        ("refresh", 0.05),
        ("refresh", 0.20),
    ]
    # Each budget's refresh is paired with the same none.
    assert all(r["vs_none_last_points"] is not None for r in rows)
    md = out.with_suffix(".md").read_text()
    assert "| refresh | 5 % |" in md and "| refresh | 20 % |" in md

    # Another --epochs is another settings set: refused, the file untouched.
    before = out.read_text()
    capsys.readouterr()
    assert cv.main([a if a != "2" else "3" for a in args]) == 2
    assert "holds runs with other settings" in capsys.readouterr().err
    assert out.read_text() == before


def test_the_products_graph_is_its_own_settings(tmp_path, capsys):
    out = tmp_path / "cv.json"
    base = TINY + ["--products-nodes", "3000", "--data-dir", str(tmp_path / "data"),
                   "--out", str(out), "--variants", "none,refresh"]  # fmt: skip
    assert cv.main(base + ["--dataset", "products"]) == 0
    data = json.loads(out.read_text())
    assert data["graph"] == "products" and data["dataset"]["layout"] == "ogbn"
    assert data["settings"].endswith("products graph 3,000 nodes")
    assert [p.name.split("_")[0] for p in (tmp_path / "data").iterdir()] == ["products"]
    assert {r["variant"] for r in data["records"]} == {"none", "refresh"}
    # The papers graph's runs never mix into a products file.
    capsys.readouterr()
    assert cv.main(base) == 2
    assert "holds runs with other settings" in capsys.readouterr().err


def test_the_model_is_its_own_settings_and_every_run_trains_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cv.json"
    base = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out),
                   "--variants", "none,refresh", "--epochs", "1"]  # fmt: skip
    trained = []
    real = cv.ma.run_config
    monkeypatch.setattr(cv.ma, "run_config",
                        lambda *a, **kw: trained.append(kw["model"]) or real(*a, **kw))  # fmt: skip
    assert cv.main(base + ["--model", "gcn"]) == 0
    assert trained == ["gcn", "gcn"]
    data = json.loads(out.read_text())
    assert data["model"] == "gcn" and data["settings"].startswith("GCN 3x16,")
    # SAGE's runs never mix into a GCN file.
    capsys.readouterr()
    assert cv.main(base) == 2
    assert "holds runs with other settings" in capsys.readouterr().err
    assert trained == ["gcn", "gcn"]


def test_eval_every_leaves_epochs_unevaluated_but_always_the_last(tmp_path, capsys):
    out = tmp_path / "cv.json"
    base = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out),
                   "--variants", "none,refresh"]  # fmt: skip
    args = [a if a != "2" else "3" for a in base] + ["--eval-every", "2"]
    assert cv.main(args) == 0
    data = json.loads(out.read_text())
    assert "evaluation every 2 epochs and after the last" in data["settings"]
    for r in data["records"]:
        scored = [e["epoch"] for e in r["epochs"] if e["test_acc"] is not None]
        assert scored == [2, 3]
        assert all(e["memory_access_bytes"] > 0 for e in r["epochs"])
    rows = {r["variant"]: r for r in cv.summarize(data["records"])}
    assert rows["refresh"]["selected_epoch"][0] in (2, 3)
    assert rows["refresh"]["vs_none_last_points"] is not None
    # Epoch 1's difference is unknown; its bytes are still compared.
    e1, e2, e3 = cv.epoch_differences(data["records"])["refresh", 0.10]
    assert e1["acc"] is None and e1["share"] > 0
    assert e2["acc"] is not None and e3["acc"] is not None
    # Evaluating every epoch is another settings set: its runs never mix with these.
    capsys.readouterr()
    assert cv.main(args[:-2]) == 2
    assert "holds runs with other settings" in capsys.readouterr().err


def test_buffered_reads_give_the_same_records_but_for_the_times(tmp_path):
    base = TINY + ["--data-dir", str(tmp_path / "data"), "--variants", "none,refresh"]
    direct, buffered = tmp_path / "direct.json", tmp_path / "buffered.json"
    assert cv.main(base + ["--out", str(direct)]) == 0
    assert cv.main(base + ["--out", str(buffered), "--io", "buffered"]) == 0

    def untimed(path):
        recs = json.loads(path.read_text())["records"]
        return {r["variant"]: [e | {"epoch_time_s": 0} for e in r["epochs"]] for r in recs}

    assert untimed(direct) == untimed(buffered)
    recs = json.loads(buffered.read_text())["records"]
    assert {r["io_mode"] for r in recs} == {"buffered"}
    assert all(row["epoch_time_s"] is None for row in cv.summarize(recs))
    mixed = cv.summarize(recs + [r | {"variant": "refresh-q0.7", "io_mode": "direct"}
                                 for r in recs if r["variant"] == "refresh"])  # fmt: skip
    assert [row["epoch_time_s"] is None for row in mixed] == [True, True, False]


def test_unevaluated_epochs_are_skipped_by_selection_and_the_last_quarter():
    none = _run(0, [0.5] * 8, [0.5] * 6 + [0.70, 0.72], [100] * 8, "none")
    refresh = _run(0, [0.5] * 6 + [0.9, 0.6], [0.5] * 6 + [0.66, 0.70], [40] * 8, "refresh")
    for run in (none, refresh):
        for e in run["epochs"][::2]:  # epochs 1, 3, 5, 7 were not evaluated
            e["valid_acc"] = e["test_acc"] = None
    rows = {r["variant"]: r for r in cv.summarize([none, refresh])}
    # Epoch 7's 0.9 validation accuracy was never measured: epoch 8 is selected.
    assert rows["refresh"]["selected_epoch"] == [8]
    # The last quarter (epochs 7-8) has one evaluated epoch.
    assert abs(rows["none"]["test_acc_last_quarter"] - 0.72) < 1e-9
    assert abs(rows["refresh"]["vs_none_last_quarter_points"] - (-2.0)) < 1e-9


def test_records_from_before_budgets_were_kept_per_run_are_adopted():
    settings = "SAGE 3x16, 2 epochs, host budget 0"
    old = {
        "settings": "SAGE 3x16, 2 epochs, device budget 10 % of the feature bytes, host budget 0",
        "records": [_run(0, [0.5], [0.5], [100], "none"), _run(0, [0.5], [0.5], [40], "refresh")],
    }
    assert cv._adopt(old, settings)
    assert [r["budget_frac"] for r in old["records"]] == [0.0, 0.10]
    assert old["settings"] == settings
    other = {"settings": "SAGE 3x16, 3 epochs, device budget 10 % of the feature bytes, "
             "host budget 0", "records": []}  # fmt: skip
    assert not cv._adopt(other, settings)


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert cv.main(["--variants", "none,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    for bad in ("0", "1.5", "ten", ""):
        assert cv.main(["--budgets", bad, "--out", str(tmp_path / "x.json")]) == 2
        assert "--budgets" in capsys.readouterr().err
    for bad in ("0", "-1"):
        assert cv.main(["--eval-every", bad, "--out", str(tmp_path / "x.json")]) == 2
        assert "--eval-every" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert cv.main(["--report", "--out", str(tmp_path / "missing.json")]) == 2


def _run(seed: int, valid: list[float], test: list[float], nbytes: list[int], variant: str):
    return {
        "variant": variant,
        "seed": seed,
        "epochs": [
            {
                "epoch": i + 1,
                "valid_acc": v,
                "test_acc": t,
                "memory_access_bytes": b,
                "epoch_time_s": 1.0,
                "hist_mean_age_of_hits": None,
            }  # fmt: skip
            for i, (v, t, b) in enumerate(zip(valid, test, nbytes))
        ],
    }


def test_selection_differences_and_still_rising():
    none = _run(0, [0.5, 0.7, 0.7, 0.69], [0.50, 0.72, 0.71, 0.70], [100] * 4, "none")
    refresh = _run(0, [0.5, 0.6, 0.65, 0.71], [0.50, 0.60, 0.66, 0.73], [90, 60, 50, 40], "refresh")
    rows = {r["variant"]: r for r in cv.summarize([none, refresh])}
    # The first epoch of the best validation accuracy is the one selected.
    assert rows["none"]["selected_epoch"] == [2]
    assert rows["none"]["test_acc_selected"] == 0.72
    assert rows["refresh"]["selected_epoch"] == [4]
    assert abs(rows["refresh"]["vs_none_selected_points"] - 1.0) < 1e-9
    assert abs(rows["refresh"]["vs_none_last_points"] - 3.0) < 1e-9
    assert rows["refresh"]["share_of_none_last_epoch"] == 0.4
    # Four epochs: the last quarter is the last epoch; eight: the last two.
    assert abs(rows["refresh"]["vs_none_last_quarter_points"] - 3.0) < 1e-9
    long = [_run(0, [0.5] * 8, [0.5] * 6 + [0.70, 0.72], [100] * 8, "none"),
            _run(0, [0.5] * 8, [0.9] * 6 + [0.66, 0.70], [40] * 8, "refresh")]  # fmt: skip
    rows8 = {r["variant"]: r for r in cv.summarize(long)}
    assert abs(rows8["none"]["test_acc_last_quarter"] - 0.71) < 1e-9
    assert abs(rows8["refresh"]["vs_none_last_quarter_points"] - (-3.0)) < 1e-9
    assert "| 71.00 | +0.00 |" in cv.markdown({"machine": "m", "load_start": "0", "load_end": "0",
                                               "settings": "s", "summary": cv.summarize(long)})  # fmt: skip
    # Validation still rose in the last quarter for refresh (0.71 > 0.65 + 0.002), not for none.
    assert rows["refresh"]["still_rising"] and not rows["none"]["still_rising"]


def test_differences_carry_an_interval_over_paired_seeds():
    # Seed 1's none is far below seed 0's; refresh is 3 and 1 points above none of its
    # own seed at the last epoch: mean 2, standard error 1, t(0.975, 1 dof) = 12.706.
    runs = [
        _run(0, [0.5, 0.7], [0.50, 0.70], [100, 100], "none"),
        _run(1, [0.4, 0.5], [0.40, 0.50], [100, 100], "none"),
        _run(0, [0.5, 0.7], [0.50, 0.73], [90, 40], "refresh"),
        _run(1, [0.4, 0.5], [0.40, 0.51], [90, 40], "refresh"),
    ]
    rows = {r["variant"]: r for r in cv.summarize(runs)}
    assert abs(rows["refresh"]["vs_none_last_points"] - 2.0) < 1e-9
    assert abs(rows["refresh"]["vs_none_last_ci95"] - 12.706) < 1e-3
    assert rows["none"]["vs_none_last_ci95"] is None
    # One seed: a difference, no interval.
    one = {r["variant"]: r for r in cv.summarize([runs[0], runs[2]])}
    assert abs(one["refresh"]["vs_none_last_points"] - 3.0) < 1e-9
    assert one["refresh"]["vs_none_last_ci95"] is None


def test_training_loss_is_compared_with_nones_of_the_same_seed():
    # A lower accuracy with a lower training loss on both seeds: the table says so.
    runs = [
        _run(0, [0.7], [0.70], [100], "none"),
        _run(1, [0.6], [0.60], [100], "none"),
        _run(0, [0.69], [0.69], [40], "refresh"),
        _run(1, [0.59], [0.59], [40], "refresh"),
    ]
    for r, loss in zip(runs, (0.80, 0.90, 0.78, 0.91)):
        r["epochs"][-1]["train_loss"] = loss
    rows = {r["variant"]: r for r in cv.summarize(runs)}
    ref = rows["refresh"]
    assert abs(ref["train_loss_last"] - 0.845) < 1e-9
    assert abs(ref["vs_none_train_loss_last"] - (-0.02 + 0.01) / 2) < 1e-9
    assert (ref["train_loss_below_none"], ref["train_loss_paired"]) == (1, 2)
    assert cv._loss(ref) == "0.845 (-0.005, lower on 1 of 2)"
    assert cv._loss(rows["none"]) == "0.850"


def test_the_entry_error_is_the_mean_of_the_last_epochs_that_have_one():
    runs = [
        _run(0, [0.7, 0.7], [0.70, 0.70], [100, 100], "none"),
        _run(0, [0.7, 0.7], [0.69, 0.69], [40, 40], "refresh"),
        _run(1, [0.7, 0.7], [0.69, 0.69], [40, 40], "refresh"),
        _run(2, [0.7, 0.7], [0.69, 0.69], [40, 40], "refresh"),  # recorded before the metric
    ]
    for r, errs in zip(runs[1:], ([0.9, 0.2], [0.8, 0.3], [None, None])):
        for e, err in zip(r["epochs"], errs):
            e["hist_drift_rel_err"] = err
    runs[1]["noise_floor_rel_err"], runs[2]["noise_floor_rel_err"] = 0.1, 0.2
    rows = {r["variant"]: r for r in cv.summarize(runs)}
    assert abs(rows["refresh"]["drift_rel_err_last"] - 0.25) < 1e-9
    assert abs(rows["refresh"]["noise_floor"] - 0.15) < 1e-9
    assert rows["none"]["drift_rel_err_last"] is None and rows["none"]["noise_floor"] is None
    table = cv.markdown({"machine": "m", "load_start": "0", "load_end": "0", "settings": "s",
                         "summary": cv.summarize(runs)})  # fmt: skip
    assert "| 25.0 % (15.0 %) |" in table and table.count(" | - |\n") >= 1


def test_epoch_differences_pair_each_epoch_with_nones_of_the_same_seed():
    runs = [
        _run(0, [0.5, 0.7], [0.50, 0.70], [100, 100], "none"),
        _run(1, [0.4, 0.5], [0.40, 0.50], [200, 200], "none"),
        _run(0, [0.5, 0.7], [0.52, 0.69], [90, 40], "refresh"),
        _run(1, [0.4, 0.5], [0.40, 0.47], [90, 40], "refresh"),
        _run(0, [0.5], [0.45], [50], "refresh-q0.7"),  # no none of seed 5: left out below
        _run(5, [0.5], [0.45], [50], "refresh-q0.7"),
    ]
    for r, losses in zip(runs, ([1.0, 0.8], [1.1, 0.9], [1.1, 0.7], [1.1, 0.8], [1.0], [1.0])):
        for e, loss in zip(r["epochs"], losses):
            e["train_loss"] = loss
    d = cv.epoch_differences(runs)
    assert set(d) == {("refresh", 0.10), ("refresh-q0.7", 0.10)}
    e1, e2 = d["refresh", 0.10]
    assert (e1["epoch"], e1["seeds"]) == (1, 2)
    assert abs(e1["acc"] - 1.0) < 1e-9  # +2 and 0 points
    assert abs(e2["acc"] - (-2.0)) < 1e-9  # -1 and -3 points
    assert abs(e2["acc_ci95"] - 12.706) < 1e-3  # standard error 1, t(0.975, 1 dof)
    assert abs(e1["train_loss"] - 0.05) < 1e-9 and abs(e2["train_loss"] - (-0.1)) < 1e-9
    assert abs(e1["share"] - (0.9 + 0.45) / 2) < 1e-9
    (q,) = d["refresh-q0.7", 0.10]
    assert q["seeds"] == 1 and q["acc_ci95"] is None and abs(q["acc"] - (-5.0)) < 1e-9


def test_the_noise_floor_compares_two_draws_of_the_table_nodes(tmp_path, monkeypatch):
    """With a table, the floor's seeds are training nodes with a slot, each sampled twice."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "refresh_train"))
    from _planted import planted_store

    from refresh_train.config import EvalConfig, HistoryConfig, TierConfig, TrainConfig
    from refresh_train.trainer import Trainer

    store = planted_store(tmp_path / "s", num_nodes=1000)
    row = store.region("features").row_bytes
    cfg = TrainConfig(
        store=str(store.path), model="sage", layers=2, hidden=16, fanouts=(5, 5), batch_size=32,
        epochs=1, lr=0.01, seed=1, progress=False, eval=EvalConfig(mode="sampled"),
        tiers=TierConfig(cache="refresh", cache_budget_bytes=200 * row, host_budget_bytes=0),
        history=HistoryConfig(staleness_iters=20, lag_steps=2, fraction=0.3),
    )  # fmt: skip
    with Trainer(cfg) as trainer:
        trainer.run()
        cache = trainer.cache
        held = np.asarray(store.train_idx)
        held = set(held[cache.order.slots(1, held) < cache.table.rows].tolist())
        assert 0 < len(held) < len(store.train_idx)
        draws = []
        sample = trainer.sampler.sample
        monkeypatch.setattr(
            trainer.sampler, "sample", lambda s, b: draws.append((list(s), b)) or sample(s, b)
        )
        floor = cv.noise_floor(trainer, 1, seed=0, batches=2)
    assert 0 < floor < 2
    assert len(draws) == 4  # two batches, each drawn twice with other batch seeds
    for (a, ba), (b, bb) in zip(draws[::2], draws[1::2]):
        assert a == b and ba != bb and set(a) <= held
