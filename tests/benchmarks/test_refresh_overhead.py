"""The refresh-overhead benchmark runs end to end and checks its two countings agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import refresh_overhead as ro  # noqa: E402


def test_runs_on_a_tiny_graph(tmp_path):
    out = tmp_path / "ro.json"
    argv = ["--papers-nodes", "3000", "--batches", "2", "--repeats", "1", "--batch-size", "32",
            "--hidden", "16", "--data-dir", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    assert ro.main(argv) == 0
    res = json.loads(out.read_text())
    ms = res["ms_per_batch"]
    assert len(ms) == 6 and all(v > 0 for v in ms.values())
    assert res["input_rows_per_batch"] > res["layer1_rows_per_batch"] > 0
    md = out.with_suffix(".md").read_text()
    assert "one pass (now)" in md and "faster than one pass per candidate" in md


def test_bad_counts_rejected(tmp_path):
    assert ro.main(["--batches", "0", "--out", str(tmp_path / "x.json")]) == 2
