"""``benchmarks/pyg_structure.py``: the three runs it compares, end to end on a tiny graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pyg_structure as ps  # noqa: E402


def test_three_runs_and_their_table(tmp_path):
    out = tmp_path / "ps.json"
    args = ["--papers-nodes", "3000", "--epochs", "2", "--hidden", "16", "--batch-size", "64",
            "--data-dir", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    assert ps.main(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == sorted(ps.RUNS)
    for r in runs.values():
        assert len(r["train_loss"]) == 2 and r["test_acc"] is not None
    # The capped loop aggregates fewer edges, so it does not train like the plain one.
    assert runs["pyg-capped"]["train_loss"] != runs["pyg"]["train_loss"]
    md = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in md for name in ps.RUNS)


def test_unknown_run_exits_2(tmp_path, capsys):
    assert ps.main(["--runs", "pyg,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown run 'nope'" in capsys.readouterr().err
