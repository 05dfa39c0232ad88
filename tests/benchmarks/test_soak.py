"""The soak benchmark's analysis and its per-epoch probe (``benchmarks/soak.py``).

Its verdicts decide whether a run leaks, so the slope, the warm-up rule and
the "steady" rule are checked on series whose answer is known; a tiny run
checks that every epoch gets a sample with every field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402


def _epochs(key: str, values: list[float]) -> list[dict]:
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_slope_is_least_squares():
    xs = [2, 3, 4, 5, 6]
    assert soak.slope(xs, [3 * x + 5 for x in xs]) == pytest.approx(3.0)
    assert soak.slope(xs, [7.0] * 5) == 0.0
    # Noise around a line: the fit, not the end points.
    assert soak.slope([1, 2, 3, 4], [0.0, 2.0, 1.0, 3.0]) == pytest.approx(0.8)
    assert soak.slope([1], [4.0]) == 0.0


def test_rss_verdict_skips_the_warm_up_epoch_and_scales_with_the_run():
    mib = 2**20
    # A 300 MiB jump in epoch 1, then flat: the warm-up is not a leak.
    warm = soak.analyse(_epochs("rss_bytes", [700 * mib] + [1000 * mib] * 19), "rss_bytes")
    assert warm["verdict"] == "flat"
    assert warm["slope_per_epoch"] == pytest.approx(0.0)
    assert warm["epoch1"] == pytest.approx(700.0)
    # 2 MiB per epoch on 1000 MiB over 20 epochs = 40 MiB = 4 % of the mean: a leak.
    leak = [1000 * mib + 2 * mib * i for i in range(20)]
    a = soak.analyse(_epochs("rss_bytes", leak), "rss_bytes")
    assert a["verdict"] == "grows"
    assert a["slope_per_epoch"] == pytest.approx(2.0)
    assert a["range"] == pytest.approx(36.0)  # epochs 2..20
    # Growth that stops half-way (an allocator settling) is told apart from a leak.
    settles = [1000 * mib + 5 * mib * min(i, 8) for i in range(20)]
    assert soak.analyse(_epochs("rss_bytes", settles), "rss_bytes")["verdict"] == (
        "grows, then flat from epoch 11"
    )
    # 0.5 MiB per epoch = 10 MiB over the run = 1 %: within the tolerance.
    small = [1000 * mib + mib * i // 2 for i in range(20)]
    assert soak.analyse(_epochs("rss_bytes", small), "rss_bytes")["verdict"] == "flat"


def test_count_verdicts_need_exactly_zero_growth_after_epoch_1():
    flat = soak.analyse(_epochs("num_fds", [30] + [30] * 9), "num_fds")
    assert flat["verdict"] == "flat"
    one_more = soak.analyse(_epochs("num_fds", [30] * 9 + [31]), "num_fds")
    assert one_more["verdict"] == "grows"
    steady = soak.analyse(_epochs("num_threads", [7, 11, 17] + [20] * 7), "num_threads")
    assert steady["verdict"] == "grows, then steady from epoch 4"
    assert steady["settled_from_epoch"] == 4
    leak = soak.analyse(_epochs("num_threads", list(range(10, 20))), "num_threads")
    assert leak["verdict"] == "grows"
    assert leak["slope_per_epoch"] == pytest.approx(1.0)
    down = soak.analyse(_epochs("python_threads", [5, 6, 5, 6, 5, 6, 4]), "python_threads")
    assert down["verdict"] == "varies"


def test_a_tiny_run_samples_every_epoch_and_writes_its_report(tmp_path):
    out = tmp_path / "soak.json"
    argv = ["--nodes", "3000", "--labelled", "0.3", "--epochs", "3", "--modes", "refresh",
            "--in-process", "--data-dir", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    assert soak.main(argv) == 0
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["mode"] == "refresh"
    assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
    glibc = soak._mallinfo()[0] is not None
    for e in run["epochs"]:
        for key in [*(k for k in soak.SERIES if glibc or not k.startswith("malloc")), "wall_s", "numba_threads", "torch_threads", "valid_acc",
                    "thread_names", "python_thread_names", "fd_kinds"]:  # fmt: skip
            assert e[key] is not None, key
        assert e["peak_rss_bytes"] > 0 and e["num_fds"] > 0 and e["num_threads"] >= 1
        # Every tier served rows: device, host and disk.
        assert e["rows_device"] > 0 and e["rows_host"] > 0 and e["rows_disk"] > 0, e
        assert e["hist_entries"] is not None  # the history table is in use
    assert set(result["summary"]["refresh"]) == set(soak.SERIES)
    # The trainer's own threads are gone once it is closed and dropped.
    assert run["after_release"]["python_thread_names"].get("refresh-io", 0) == 0
    md = out.with_suffix(".md").read_text()
    assert "`--cache refresh`" in md and "slope / epoch" in md
    # --report redraws from the JSON alone.
    out.with_suffix(".md").unlink()
    assert soak.main(["--report", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == md
    if out.with_suffix(".png").exists():  # matplotlib is an optional (bench) dependency
        assert out.with_suffix(".png").stat().st_size > 0
