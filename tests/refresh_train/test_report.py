"""``refresh-train report``: figures and a table from metrics files, refusals with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refresh_train.cli import main as train_main
from refresh_train.report import ReportError, load_run, markdown_table, write_report

pytest.importorskip("matplotlib", reason="the report draws with matplotlib (the [bench] extra)")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("accuracy", "loss", "memory_access", "hit_rates", "report")


def _records(epochs: int, *, refresh: bool, scale: float = 1.0) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        rec = {
            "epoch": e,
            "epoch_time_s": 2.0 * scale,
            "train_loss": 1.5 / e,
            "train_acc": 0.5 + 0.1 * e,
            "valid_acc": 0.45 + 0.1 * e,
            "test_acc": 0.44 + 0.1 * e,
            "rows_device": 600 * e,
            "rows_host": 300,
            "rows_disk": int(1000 * scale),
            "bytes_device": 600 * e * 64,
            "bytes_host": 300 * 64,
            "bytes_disk": int(1000 * scale) * 64,
            "memory_access_bytes": 300 * 64 + int(1000 * scale) * 64,
        }
        if refresh:
            rec.update(hist_lookups=1000, hist_hits=100 * e)
        out.append(rec)
    return out


def _write(path: Path, records: list[dict], header: bool = True) -> Path:
    lines = [json.dumps(r) for r in records]
    if header:  # a record without an epoch (not one the trainer writes today) is skipped
        lines.insert(0, json.dumps({"run": "header"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [
        _write(tmp_path / "raw.jsonl", _records(3, refresh=False)),
        _write(tmp_path / "refresh.jsonl", _records(3, refresh=True, scale=0.5)),
    ]


def test_report_draws_every_figure_and_a_table(runs, tmp_path):
    out = tmp_path / "report"
    table = write_report(runs, out)
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
    assert (out / "report.md").read_text(encoding="utf-8").strip() == table
    assert not (tmp_path / "report.partial").exists()
    lines = table.splitlines()
    assert len(lines) == 2 + len(runs)  # header, rule, one row per run
    assert lines[2].startswith("| raw | 3 |") and lines[3].startswith("| refresh | 3 |")
    # raw: no history columns; refresh: 600/1000 hits over 3 epochs
    assert lines[2].rstrip(" |").endswith("-")
    assert "20.00 %" in lines[3]
    # best valid 0.75 at epoch 3, test there 0.74
    assert "75.00 %" in lines[2] and "74.00 %" in lines[2]


def test_same_stem_runs_get_their_folder_in_the_label(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    paths = [_write(a / "m.jsonl", _records(2, refresh=False)), _write(b / "m.jsonl", _records(2, refresh=False))]  # fmt: skip
    table = write_report(paths, tmp_path / "out")
    assert "| a/m |" in table and "| b/m |" in table


def test_a_prefix_all_runs_share_is_dropped_from_labels(tmp_path):
    paths = [_write(tmp_path / f"metrics_{c}.jsonl", _records(2, refresh=False)) for c in ("raw", "refresh")]  # fmt: skip
    table = write_report(paths, tmp_path / "out")
    assert "| raw |" in table and "| refresh |" in table


def test_cli_subcommand_prints_the_table(runs, tmp_path, capsys):
    assert train_main(["report", *map(str, runs), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "| run | epochs |" in printed
    assert (tmp_path / "r" / "report.png").is_file()


@pytest.mark.parametrize(
    "case, phrase",
    [
        pytest.param("missing", "does not exist", id="missing-file"),
        pytest.param("empty", "no epoch records", id="no-epochs"),
        pytest.param("garbage", "is not JSON", id="not-json"),
        pytest.param("exists", "exists", id="out-exists"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_overwritten(runs, tmp_path, capsys, case, phrase):
    out = tmp_path / "out"
    files = [str(runs[0])]
    if case == "missing":
        files = [str(tmp_path / "nope.jsonl")]
    elif case == "empty":
        files = [str(_write(tmp_path / "e.jsonl", [], header=True))]
    elif case == "garbage":
        (tmp_path / "g.jsonl").write_text('{"epoch": 1}\nnot json\n', encoding="utf-8")
        files = [str(tmp_path / "g.jsonl")]
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine", encoding="utf-8")
    assert train_main(["report", *files, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and len(err.strip().splitlines()) == 1
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not (tmp_path / "out.partial").exists()


def test_missing_matplotlib_is_one_clear_line(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ReportError, match="matplotlib is not installed"):
        write_report(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_run_sorts_epochs(tmp_path):
    recs = _records(3, refresh=False)
    run = load_run(_write(tmp_path / "x.jsonl", recs[::-1]))
    assert [r["epoch"] for r in run.records] == [1, 2, 3]
    assert markdown_table([run]).count("\n") == 2


def test_python_dash_m_reaches_the_report(runs, tmp_path):
    out = tmp_path / "viam"
    proc = subprocess.run(
        [sys.executable, "-m", "refresh_train", "report", str(runs[0]), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "accuracy.png").is_file()
