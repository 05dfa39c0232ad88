"""The memory-access benchmark's bookkeeping (``benchmarks/memory_access.py``).

Its runs take hours, so it must keep what it measured when cut short, rerun only
what is missing, and write its tables from whatever records it has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import memory_access as ma  # noqa: E402

TINY = [
    "--sections", "grid", "--budgets", "0.2", "--seeds", "0", "--epochs", "1",
    "--hidden", "16", "--batch-size", "64",
    "--papers-nodes", "3000", "--products-nodes", "2000",
]  # fmt: skip


def test_records_resume_and_report(tmp_path, capsys):
    out = tmp_path / "ma.json"
    args = TINY + ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert ma.main(args) == 0
    first = json.loads(out.read_text())
    recs = first["records"]
    # none, raw and refresh on both datasets
    assert sorted((r["dataset"], r["mode"]) for r in recs) == sorted(
        (ds, m) for ds in ("papers", "products") for m in ("none", "raw", "refresh")
    )
    for r in recs:
        for key in ("dataset", "model", "policy", "budget_frac", "seed",
                    "memory_access_bytes", "epoch_time_s", "test_acc"):  # fmt: skip
            assert key in r, key
        assert r["memory_access_bytes"] > 0
    by_mode = {(r["dataset"], r["mode"]): r for r in recs}
    for ds in ("papers", "products"):
        assert (
            by_mode[ds, "raw"]["memory_access_bytes"] < by_mode[ds, "none"]["memory_access_bytes"]
        )

    # Drop one record: a rerun measures only that one and keeps the others as they were.
    dropped = by_mode["papers", "refresh"]
    first["records"] = [r for r in recs if r is not dropped]
    out.write_text(json.dumps(first))
    capsys.readouterr()
    assert ma.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("] {") == 1 and "'refresh'" in printed.split("] {")[1].split("\n")[0]
    second = json.loads(out.read_text())
    assert len(second["records"]) == len(recs)
    kept = {ma.run_key(r["run"]): r for r in second["records"]}
    for r in recs:
        if r is not dropped:
            assert kept[ma.run_key(r["run"])] == r
    # Bytes are a function of the seed and flags, not of timing.
    again = kept[ma.run_key(dropped["run"])]
    assert again["memory_access_bytes"] == dropped["memory_access_bytes"]

    # --fresh reruns the chosen runs and keeps every other record as it was.
    capsys.readouterr()
    assert ma.main(args + ["--fresh", "--datasets", "products"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("] {") == 3 and "'papers'" not in printed.split("# Memory")[0]
    third = {ma.run_key(r["run"]): r for r in json.loads(out.read_text())["records"]}
    assert third.keys() == kept.keys()
    for key, r in kept.items():
        if r["dataset"] == "papers":
            assert third[key] == r
        else:
            assert third[key]["memory_access_bytes"] == r["memory_access_bytes"]

    # Other settings (here --epochs 2) never overwrite the records: refused, file untouched.
    before = out.read_text()
    capsys.readouterr()
    assert ma.main([a if a != "1" else "2" for a in args]) == 2
    assert "holds runs with other settings" in capsys.readouterr().err
    assert out.read_text() == before

    # --report rewrites the tables from the records alone.
    out.with_suffix(".md").unlink()
    assert ma.main(["--report", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| papers |" in md or "papers" in md
    assert ma.main(["--report", "--out", str(tmp_path / "missing.json")]) == 2


def test_sweeps_plan_each_setting_once_with_its_history_field():
    """Every swept value but the default is one refresh run varying only that field."""
    import argparse

    args = argparse.Namespace(
        sections={"sweeps"}, datasets={"papers"}, seeds=[0], budgets=[0.1],
        quantiles=[0.5, 0.9], staleness=[20, 200], warmups=[0, 100], max_serves=[4],
        shadows=["gradients"],
    )  # fmt: skip
    runs = ma.plan(args)
    varied = [{k: r[k] for k in ma.VARIANT_KEYS if k in r} for r in runs]
    assert varied == [{"grad_quantile": 0.5}, {"staleness_iters": 20}, {"warmup_steps": 100},
                      {"max_serves": 4}, {"shadow": "gradients"}]  # fmt: skip
    assert all(r["mode"] == "refresh" and r["budget_frac"] == 0.1 for r in runs)
    # Each name is a HistoryConfig field, so run_config can pass it on as is.
    from refresh_train.config import HistoryConfig

    for v in varied:
        assert HistoryConfig(**v) != HistoryConfig()


def test_every_variant_runs_on_every_seed_with_later_raw_runs_last():
    """Models, policies and sweeps are planned per seed: the first seed's whole
    picture first, then the other seeds' runs, whose raw runs (which train like
    none) come last, so a run stopped before them has every paired accuracy."""
    import argparse

    args = argparse.Namespace(
        sections={"models", "policies", "sweeps"}, datasets={"papers"}, seeds=[0, 3],
        budgets=[0.1], quantiles=[0.7], staleness=[100], warmups=[0], models=["gcn", "gat"],
        max_serves=[], shadows=[],
    )  # fmt: skip
    runs = ma.plan(args)
    keys = [ma.run_key(r) for r in runs]
    assert len(set(keys)) == len(keys)
    first = [r for r in runs if r["seed"] == 0]
    later = [r for r in runs if r["seed"] == 3]
    # The degree-ordered table on the first seed only (its bytes do not depend on the seed).
    assert [r["seed"] for r in runs if r.get("order") == "degree"] == [0]
    # Otherwise the same variants on both seeds, and seed 0's all before seed 3's.
    strip = [{k: v for k, v in r.items() if k != "seed"} for r in first if "order" not in r]
    assert sorted(map(str, strip)) == sorted(
        str({k: v for k, v in r.items() if k != "seed"}) for r in later
    )
    assert runs[: len(first)] == first
    # Per seed: 4 policy runs (and the degree order's on the first), 2 sweep runs,
    # GCN and GAT in each of 3 modes.
    assert (len(first), len(later)) == (5 + 2 + 6, 4 + 2 + 6)
    modes = [r["mode"] for r in later]
    assert modes[-2:] == ["raw", "raw"] and "raw" not in modes[:-2]
    models = {(r["model"], r["mode"]) for r in later if r["section"] == "models"}
    assert models == {(m, mode) for m in ("gcn", "gat") for mode in ma.MODES}

    # Other budgets: the policies' bytes against the budget, on the first seed only.
    args.budgets = [0.05, 0.1]
    runs = ma.plan(args)
    at5 = [r for r in runs if r["budget_frac"] == 0.05]
    assert {r["seed"] for r in at5} == {0} and {r["section"] for r in at5} == {"policies"}
    assert sorted(str(r.get("policy", r.get("layers"))) for r in at5) == sorted(
        [*map(str, ma.POLICY_NAMES[1:]), "(2, 1)"]
    )


def test_models_choose_the_models_sections_models(tmp_path, capsys):
    """--models gat adds GAT's runs alone (each mode, every seed), not GCN's too."""
    import argparse

    args = argparse.Namespace(
        sections={"models"}, datasets={"papers", "products"}, seeds=[0, 4], budgets=[0.1],
        quantiles=[], staleness=[], warmups=[], models=["gat"], max_serves=[], shadows=[],
    )  # fmt: skip
    runs = ma.plan(args)
    assert {r["model"] for r in runs} == {"gat"}
    assert sorted((r["dataset"], r["mode"], r["seed"]) for r in runs) == sorted(
        (ds, mode, s) for ds in ("papers", "products") for mode in ma.MODES for s in (0, 4)
    )
    # An unknown model (SAGE is the grid's) is refused before anything runs.
    assert_refused(["--sections", "models", "--models", "gat,sage"],
                   "--models: unknown model 'sage'", tmp_path, capsys)  # fmt: skip


def assert_refused(argv: list[str], message: str, tmp_path, capsys) -> None:
    """``argv`` exits 2 with ``message`` in one line, before writing any output."""
    out = tmp_path / "bad.json"
    assert ma.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_frontier_pairs_each_setting_with_none_of_its_seed():
    def rec(mode, acc, nbytes, seed=0, budget=0.1, **varied):
        run = dict(section="x", dataset="papers", mode=mode, budget_frac=budget, seed=seed,
                   model="sage", **varied)  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=nbytes)

    records = [
        rec("none", 0.80, 1000, budget=0.0),
        rec("none", 0.70, 2000, seed=1, budget=0.0),
        rec("raw", 0.80, 700),
        rec("refresh", 0.79, 400),
        rec("refresh", 0.78, 300, policy="stale"),
        rec("refresh", 0.78, 300, grad_quantile=1.0),  # trains as "stale" does
        rec("refresh", 0.81, 600, staleness_iters=50, layers=[2, 1]),
        rec("refresh", 0.50, 100, seed=1),  # another seed: not on seed 0's plot
        rec("refresh", 0.50, 100, order="degree"),  # the earlier table
        rec("refresh", 0.50, 100, budget=0.2),
    ]
    got = ma.frontier(records)
    want = [
        ("policy=stale = q=1.0", 0.3, -2.0),
        ("refresh (defaults)", 0.4, -1.0),
        ("staleness=50, layers=2,1", 0.6, 1.0),
        ("raw", 0.7, 0.0),
    ]
    assert [g[0] for g in got] == [w[0] for w in want]
    for (_, share, diff), (_, s, d) in zip(got, want):
        assert abs(share - s) < 1e-12 and abs(diff - d) < 1e-9
    assert ma.frontier([r for r in records if r["mode"] != "none"]) == []


def test_accuracy_against_none_is_paired_by_seed():
    def rec(mode, seed, acc, section="grid", budget=0.1, **varied):
        run = dict(section=section, dataset="papers", mode=mode, budget_frac=budget, seed=seed,
                   model="sage", **varied)  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=100 + seed,
                    epoch_time_s=1.0, last_epoch={}, feature_ram_bytes=1)  # fmt: skip

    records = [rec("none", s, a, budget=0.0) for s, a in ((0, 0.80), (1, 0.70), (2, 0.75))]
    records += [rec("refresh", 0, 0.79, section="sweeps", staleness_iters=50)]
    records += [rec("refresh", s, 0.74) for s in (0, 1, 2)]
    records += [rec("refresh", 3, 0.70, section="sweeps", grad_quantile=0.5)]  # no none of seed 3
    records += [rec("refresh", 0, 0.78, section="sweeps", max_serves=4)]  # a row of its own
    rows = {(r["section"], r["staleness_iters"], r["grad_quantile"]): r
            for r in ma.summarize(records, {})["rows"] if r["mode"] == "refresh"}  # fmt: skip
    assert abs(rows["sweeps", 50, None]["acc_minus_none_points"] - (-1.0)) < 1e-9
    assert abs(rows["grid", None, None]["acc_minus_none_points"] - (-1.0)) < 1e-9
    assert abs(rows["sweeps", None, 0.5]["acc_minus_none_points"] - (-5.0)) < 1e-9
    assert abs(rows["sweeps", 50, None]["share_of_none"] - 1.0) < 1e-12
    serves = rows["sweeps", None, None]
    assert serves["max_serves"] == 4 and serves["runs"] == 1
    assert abs(serves["acc_minus_default_points"] - 4.0) < 1e-9
    assert ma._variant(serves) == "max serves=4"
    # Against the default policy of the same seed: +5 points for the staleness sweep.
    assert abs(rows["sweeps", 50, None]["acc_minus_default_points"] - 5.0) < 1e-9
    assert rows["sweeps", None, 0.5]["acc_minus_default_points"] is None  # no default of seed 3
    assert rows["grid", None, None]["acc_minus_default_points"] is None  # the default itself


def test_policies_are_compared_with_the_default_of_each_seed_and_show_the_entry_error():
    def rec(mode, seed, acc, section="grid", error=None, **varied):
        run = dict(section=section, dataset="papers", mode=mode, seed=seed, model="sage",
                   budget_frac=0.0 if mode == "none" else 0.1, **varied)  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=100, epoch_time_s=1.0,
                    last_epoch={"hist_drift_rel_err": error}, feature_ram_bytes=1)  # fmt: skip

    # The default is 2 and 4 points below none; admitting every embedding 1 and 3 above
    # the default: +2 +/- 12.706 against it, and a mean entry error of 0.6 over its runs.
    records = [rec("none", 0, 0.80), rec("none", 1, 0.70)]
    records += [rec("refresh", 0, 0.78, error=0.5), rec("refresh", 1, 0.66, error=0.7)]
    records += [rec("refresh", 0, 0.79, section="policies", policy="stale", error=0.4),
                rec("refresh", 1, 0.69, section="policies", policy="stale", error=0.8)]  # fmt: skip
    rows = {r["section"]: r for r in ma.summarize(records, {})["rows"] if r["mode"] == "refresh"}
    stale = rows["policies"]
    assert abs(stale["acc_minus_default_points"] - 2.0) < 1e-9
    assert abs(stale["acc_minus_default_ci95_points"] - 12.706) < 1e-3
    assert abs(stale["entry_error"] - 0.6) < 1e-12
    md = ma.markdown({"summary": ma.summarize(records, {}), "machine": "m",
                      "load_start": "0", "load_end": "0", "settings": "s"})  # fmt: skip
    assert (
        "| policy=stale | 2 | 100.0 % | 74.00 | -1.00 ± 0.00 (2) | +2.00 ± 12.71 (2) | 60.0 % |"
        in md
    )


def test_accuracy_interval_is_over_paired_seed_differences():
    def rec(mode, seed, acc, budget=0.1, section="grid"):
        run = dict(section=section, dataset="papers", mode=mode, budget_frac=budget, seed=seed,
                   model="sage")  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=100, epoch_time_s=1.0,
                    last_epoch={}, feature_ram_bytes=1, test_nodes=10_000)  # fmt: skip

    # none differs a lot between seeds, refresh is exactly one point below it on each:
    # paired, the interval is zero; unpaired it would be several points wide.
    nones = [rec("none", s, a, budget=0.0) for s, a in ((0, 0.80), (1, 0.70), (2, 0.75))]
    refresh = [rec("refresh", s, a) for s, a in ((0, 0.79), (1, 0.69), (2, 0.74))]
    one = [rec("raw", 0, 0.78)]
    rows = {r["mode"]: r for r in ma.summarize(nones + refresh + one, {})["rows"]}
    assert abs(rows["refresh"]["acc_minus_none_points"] - (-1.0)) < 1e-9
    assert rows["refresh"]["acc_minus_none_ci95_points"] < 1e-9
    assert rows["refresh"]["paired_seeds"] == 3
    assert rows["raw"]["acc_minus_none_ci95_points"] is None  # one seed has no spread
    assert rows["none"]["acc_minus_none_ci95_points"] is None
    # Two differences of 1 and 3 points: mean 2, standard error 1, t(0.975, 1 dof) = 12.706.
    mean, half = ma.paired_ci95([1.0, 3.0])
    assert mean == 2.0 and abs(half - 12.706) < 1e-3
    assert ma.paired_ci95([0.5]) == (0.5, None)
    assert abs(ma.test_set_se_points(0.5, 10_000) - 0.5) < 1e-12
    md = ma.markdown({"summary": ma.summarize(nones + refresh + one, {}), "machine": "m",
                      "load_start": "0", "load_end": "0", "settings": "s"})  # fmt: skip
    assert "| -1.00 ± 0.00 (3) |" in md and "| -2.00 |" in md
    # Each row says how many seeds its absolute accuracy is over.
    assert "| 10 % | refresh | 3 |" in md and "| 10 % | raw | 1 |" in md
    assert "Test set: 10,000 nodes" in md
    assert "load average 0 at the start of the last invocation" in md and "runs that kept" not in md
    # The load each run saw, over the runs that recorded it (older records did not).
    kept = [dict(r, load=[x, 1.0]) for r, x in zip(nones, (2.5, 0.4, 7.25))]
    line = ma.runs_load(kept + refresh + one)
    assert line.startswith("load average (1 minute) 0.4-7.2 at the starts of the 3 runs")


def test_epoch_times_compare_the_runs_of_the_baselines_seed():
    def rec(mode, seed, t, section="grid", budget=0.1):
        return dict(section=section, dataset="papers", model="sage", mode=mode, seed=seed,
                    budget_frac=budget, epoch_time_s=t)  # fmt: skip

    records = [
        rec("none", 0, 70.0, budget=0.0),
        rec("raw", 0, 60.0),
        rec("raw", 1, 10.0),  # another seed, measured at another moment
        rec("refresh", 1, 5.0),
        rec("refresh", 0, 30.0),
        rec("refresh", 0, 1.0, budget=0.2),
        rec("pyg-warm", 0, 20.0, section="baseline", budget=0.0),
        rec("pyg-cold", 0, 90.0, section="baseline", budget=0.0),
    ]
    t = ma.epoch_times(records)
    assert t["seed"] == 0
    assert [r["epoch_time_s"] for _, r in t["rows"]] == [70.0, 60.0, 30.0, 20.0, 90.0]
    assert (t["pyg"], t["raw"], t["refresh"]) == (20.0, 60.0, 30.0)
    # Without a baseline, the first seed's runs.
    t = ma.epoch_times([r for r in records if r["section"] == "grid"])
    assert t["seed"] == 0 and t["pyg"] is None and t["refresh"] == 30.0


def test_staleness_points_pair_each_setting_with_none_of_its_seeds(tmp_path):
    def rec(mode, seed, acc, nbytes, section="grid", budget=0.1, dataset="papers", **varied):
        run = dict(section=section, dataset=dataset, mode=mode, budget_frac=budget, seed=seed,
                   model="sage", **varied)  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=nbytes, epoch_time_s=1.0,
                    last_epoch={}, feature_ram_bytes=1)  # fmt: skip

    # Seed 0 is the lucky one: one-seed settings must be read against it alone.
    records = [rec("none", s, a, 1000, budget=0.0) for s, a in ((0, 0.80), (1, 0.70), (2, 0.72))]
    records += [rec("refresh", s, a, 400) for s, a in ((0, 0.79), (1, 0.69), (2, 0.71))]
    records += [rec("refresh", 0, 0.81, 600, section="sweeps", staleness_iters=20)]
    records += [rec("refresh", s, a, 500, section="sweeps", staleness_iters=100)
                for s, a in ((0, 0.80), (1, 0.72), (2, 0.73))]  # fmt: skip
    records += [rec("refresh", 0, 0.5, 100, section="sweeps", grad_quantile=0.7)]  # not staleness
    records += [rec("refresh", 0, 0.5, 100, section="sweeps", max_serves=4)]  # nor this
    records += [rec("none", 0, 0.9, 900, budget=0.0, dataset="products"),
                rec("refresh", 0, 0.9, 100, dataset="products")]  # fmt: skip
    rows = ma.summarize(records, {})["rows"]
    got = ma.staleness_points(rows)
    want = [(20, 1.0, 0.6, 1), (100, 1.0, 0.5, 3), (200, -1.0, 0.4, 3)]
    assert [(t, n) for t, _, _, n, _ in got] == [(t, n) for t, _, _, n in want]
    for (_, diff, share, _, _), (_, d, sh, _) in zip(got, want):
        assert abs(diff - d) < 1e-9 and abs(share - sh) < 1e-12
    # The interval: none for one seed; at 200 every seed is one point below, so zero wide.
    assert got[0][4] is None and got[1][4] > 1.0 and got[2][4] < 1e-9
    # The plots draw from such rows without error.
    files = ma.plots({"summary": {"rows": rows, "ideal": {}}, "records": records},
                     tmp_path / "ma.json")  # fmt: skip
    assert str(tmp_path / "ma_staleness.png") in files
    assert all(Path(f).stat().st_size > 0 for f in files)


def test_buffered_reads_give_the_same_runs_and_no_epoch_times(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "data"), "--datasets", "papers"]
    direct, buffered = tmp_path / "direct.json", tmp_path / "buffered.json"
    assert ma.main(TINY + data + ["--out", str(direct)]) == 0
    assert ma.main(TINY + data + ["--out", str(buffered), "--io", "buffered"]) == 0
    one = {ma.run_key(r["run"]): r for r in json.loads(direct.read_text())["records"]}
    two = {ma.run_key(r["run"]): r for r in json.loads(buffered.read_text())["records"]}
    assert one.keys() == two.keys() and len(one) == 3
    for key, r in one.items():
        b = two[key]
        assert (r["io_mode"], b["io_mode"]) == ("direct", "buffered")
        # The reads really went through the page cache (the mode the I/O scheduler opened).
        assert b["describe"]["io_mode"] == "buffered"
        # The same rows in the same order: bytes, losses and accuracy bit for bit.
        for field in ("memory_access_bytes", "train_loss", "test_acc", "valid_acc"):
            assert b[field] == r[field], field
    rows = json.loads(buffered.read_text())["summary"]["rows"]
    assert all(r["epoch_time_s"] is None for r in rows)
    assert all(
        r["epoch_time_s"] is not None for r in json.loads(direct.read_text())["summary"]["rows"]
    )
    md = buffered.with_suffix(".md").read_text()
    assert "## SAGE on `papers`" in md and "Epoch time" not in md
    # The sections that measure time refuse page-cache reads, and write nothing.
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    assert ma.main(["--io", "buffered", "--sections", "grid,baseline", "--out", str(bad)]) == 2
    assert "--io buffered: the baseline section" in capsys.readouterr().err
    assert not bad.exists()


def test_epoch_times_leave_out_page_cache_runs():
    recs = [
        dict(section="grid", dataset="papers", model="sage", mode="raw", seed=0,
             budget_frac=0.1, epoch_time_s=60.0),
        dict(section="grid", dataset="papers", model="sage", mode="refresh", seed=0,
             budget_frac=0.1, epoch_time_s=5.0, io_mode="buffered"),
    ]  # fmt: skip
    t = ma.epoch_times(recs)
    assert [r["mode"] for _, r in t["rows"]] == ["raw"] and t["refresh"] is None


def test_an_unknown_shadow_kind_is_refused_before_anything_runs(tmp_path, capsys):
    assert_refused(["--sections", "sweeps", "--shadows", "values,both"],
                   "--shadows: unknown kind 'both'", tmp_path, capsys)  # fmt: skip


def test_settings_over_seeds_keep_the_settings_run_on_enough_seeds():
    def rec(mode, seed, acc, section="grid", **varied):
        run = dict(section=section, dataset="papers", mode=mode, budget_frac=0.1 if mode != "none"
                   else 0.0, seed=seed, model="sage", **varied)  # fmt: skip
        return dict(run, run=run, test_acc=acc, memory_access_bytes=100.0 if mode == "none"
                    else 40.0, epoch_time_s=1.0, last_epoch={}, feature_ram_bytes=1)  # fmt: skip

    seeds = (0, 1, 2)
    records = [rec("none", s, 0.80 + s / 100) for s in seeds]
    records += [rec("refresh", s, 0.79 + s / 100) for s in seeds]  # -1 point on every seed
    records += [rec("refresh", s, 0.78 + s / 100 + (s - 1) / 100, section="sweeps",
                    max_serves=4) for s in seeds]  # fmt: skip
    records += [rec("refresh", 0, 0.5, section="sweeps", staleness_iters=20)]  # one seed only
    got = ma.settings_over_seeds(ma.summarize(records, {})["rows"])
    assert [g[0] for g in got] == ["default", "max serves=4"]
    (_, share, diff, ci, n), (_, _, diff4, ci4, _) = got
    assert (share, n) == (0.4, 3) and abs(diff + 1) < 1e-9 and abs(ci) < 1e-9
    assert abs(diff4 + 2) < 1e-9 and ci4 > 1  # -3, -2, -1 points: a wide interval
