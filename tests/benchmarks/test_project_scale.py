"""The fitting and projection arithmetic of ``benchmarks/project_scale.py`` (no data, no I/O)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import project_scale as ps  # noqa: E402

SIZES = np.array([250e3, 500e3, 1e6, 2e6])


def test_power_fit_recovers_a_known_law():
    y = 3.0 * SIZES**0.4
    f = ps.fit_power(SIZES, y)
    assert f["a"] == pytest.approx(3.0, rel=1e-9)
    assert f["b"] == pytest.approx(0.4, rel=1e-9)
    assert f["rms_log"] < 1e-9
    assert ps.predict(f, 111e6) == pytest.approx(3.0 * 111e6**0.4, rel=1e-9)


def test_saturating_fit_recovers_a_known_curve():
    y = 900e3 * SIZES / (SIZES + 1.5e6)
    f = ps.fit_saturating(SIZES, y)
    assert f is not None
    assert f["y_max"] == pytest.approx(900e3, rel=1e-9)
    assert f["n_half"] == pytest.approx(1.5e6, rel=1e-9)
    assert ps.predict(f, 1e12) == pytest.approx(900e3, rel=1e-5)


def test_saturating_fit_refuses_growth_that_does_not_level_off():
    assert ps.fit_saturating(SIZES, SIZES**1.2) is None


def test_fits_reject_non_positive_data():
    with pytest.raises(ValueError):
        ps.fit_power(SIZES, np.array([1.0, 0.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        ps.fit_saturating(SIZES[:1], np.array([1.0]))


def test_fit_and_project_picks_the_better_fit_and_checks_the_holdout():
    noise = np.array([1.0, 1.01, 0.99, 1.0])
    y = 900e3 * SIZES / (SIZES + 1.5e6) * noise
    out = ps.fit_and_project(list(SIZES), list(y), 111e6)
    assert out["chosen"] == "saturating"
    assert out["full"] == pytest.approx(out["saturating_full"])
    assert out["full"] < 900e3 * 1.05  # levels off
    assert out["power_full"] > out["full"]  # the power law keeps growing
    assert out["extrapolation"] == pytest.approx(111e6 / 2e6)
    assert abs(out["holdout_error"]) < 0.05
    exact = ps.fit_and_project(list(SIZES), list(2.0 * SIZES**0.5), 111e6)
    assert exact["chosen"] == "power"
    assert exact["full"] == pytest.approx(2.0 * 111e6**0.5, rel=1e-9)
    assert exact["holdout_error"] == pytest.approx(0.0, abs=1e-9)


def test_io_seconds_is_the_larger_of_the_iops_and_bandwidth_bounds():
    disk = {"iops": 100_000, "bandwidth": 1e9}
    # 50K reads: 0.5 s of IOPS; 100 MB: 0.1 s of bandwidth
    assert ps.io_seconds(50_000, 100e6, disk) == pytest.approx(0.5)
    # 10 reads of 1 GB in all: bandwidth-bound
    assert ps.io_seconds(10, 1e9, disk) == pytest.approx(1.0)


def test_project_epoch_units_and_overlap():
    e = ps.project_epoch(1000, t_io=0.2, t_sample=0.05, t_compute=0.1)
    assert e["pipelined_s"] == pytest.approx(200.0)  # 1000 batches x the slowest stage
    assert e["serial_s"] == pytest.approx(350.0)
    assert e["bound"] == "io"
    assert ps.project_epoch(10, t_io=0, t_sample=0, t_compute=1)["bound"] == "compute"


def test_uncoalesced_share_and_caps():
    assert ps.uncoalesced_share(0.0, 16) == 1.0  # alone in the file: every row a read
    assert ps.uncoalesced_share(1.0, 16) == 0.0
    assert ps.uncoalesced_share(0.01, 16) == pytest.approx(0.99**16)
    # 1024 seeds x (1+15) x (1+10) x (1+5) distinct nodes at most
    assert ps.ROWS_CAP == 1024 * 16 * 11 * 6
    assert ps.EDGES_CAP == 1024 * 15 + 1024 * 16 * 10 + 1024 * 16 * 11 * 5


def _record(ds: str, n: int, rows: float) -> dict:
    share = rows / n
    loader = {"rows_disk": rows, "reads": rows / 4, "bytes_read": rows * 600.0, "rows_device": 0}
    raw = dict(loader, rows_disk=0.8 * rows, reads=0.2 * rows, bytes_read=0.8 * rows * 600)
    la = dict(loader, rows_disk=0.5 * rows, reads=0.05 * rows, bytes_read=0.5 * rows * 600)
    return {
        "dataset": ds, "nodes": n, "row_bytes": 512,
        "sampler": {"rows": rows, "edges": 1.2 * rows, "sample_s": 1e-7 * 1.2 * rows,
                    "rows_share": share},
        "compute": {"compute_s": 2e-6 * 1.2 * rows},
        "none": loader, "raw": raw, "raw-la": la,
    }  # fmt: skip


def test_analyse_projects_an_epoch_with_a_low_and_a_high_end():
    recs = [_record("papers100m", int(n), 900e3 * n / (n + 1.5e6)) for n in SIZES]
    a = ps.analyse(recs, {"factor": 100.0})
    assert set(a) == {"papers100m"}
    v = a["papers100m"]
    assert v["batches_full"] == math.ceil(ps.DATASETS["papers100m"]["full_train"] / 1024)
    lo, hi = v["rows_full"]
    assert lo <= hi <= ps.ROWS_CAP
    for key, p in v["projection"].items():
        assert p["low"]["pipelined_s"] <= p["high"]["pipelined_s"], key
        assert p["low"]["pipelined_s"] <= p["low"]["serial_s"]
        # reads never exceed the disk rows a batch has
        assert p["high"]["reads_per_batch"] <= p["high"]["disk_rows_per_batch"] + 1e-6
    none = v["projection"]["none.nvme_gpu"]["low"]
    # compute on the GPU is the CPU's divided by the factor
    cpu = v["projection"]["none.fio_cpu"]["low"]
    assert none["t_compute"] == pytest.approx(cpu["t_compute"] / 100.0)
    # epoch = batches x the slowest per-batch stage
    slowest = max(none["t_io"], none["t_sample"], none["t_compute"])
    assert none["pipelined_s"] == pytest.approx(v["batches_full"] * slowest)


def test_effective_gap_inverts_the_coalescing_model():
    share = ps.uncoalesced_share(0.05, 12)
    assert ps.effective_gap(share, 0.05) == pytest.approx(12.0)
    assert ps.effective_gap(1.0, 0.05) is None  # nothing merged: undefined
    assert ps.effective_gap(0.5, 1.0) is None  # a window holding every row


def test_window_batches_respects_the_lookahead_budget():
    assert ps.window_batches(1e6, 512, 1) == 1
    assert ps.window_batches(1e5, 512, 8) == 8  # 51 MB a batch: 8 fit in 2 GiB
    assert ps.window_batches(1e6, 1536, 8) == 1  # 1.5 GB a batch: one at a time
