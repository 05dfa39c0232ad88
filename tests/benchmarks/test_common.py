"""What the benchmarks share (``benchmarks/_common.py``): keeping earlier results, naming the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _common import cpu_kind, previous_results  # noqa: E402


def _write(path: Path, settings: str, records: list) -> str:
    text = json.dumps({"settings": settings, "records": records})
    path.write_text(text)
    return text


def test_no_file_means_nothing_to_keep(tmp_path):
    assert previous_results(tmp_path / "r.json", "a") == {}


def test_results_of_the_same_settings_are_returned(tmp_path):
    out = tmp_path / "r.json"
    _write(out, "a", [{"x": 1}])
    assert previous_results(out, "a")["records"] == [{"x": 1}]


def test_runs_of_other_settings_are_refused_and_the_file_left_alone(tmp_path, capsys):
    out = tmp_path / "r.json"
    text = _write(out, "a", [{"x": 1}])
    assert previous_results(out, "b") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings" in err and "'a'" in err and "--out" in err
    assert out.read_text() == text


def test_a_file_without_runs_may_be_replaced(tmp_path):
    out = tmp_path / "r.json"
    _write(out, "a", [])
    assert previous_results(out, "b") == {"settings": "a", "records": []}


def test_adopt_decides_and_may_migrate(tmp_path):
    out = tmp_path / "r.json"
    _write(out, "old a", [{"x": 1}])

    def adopt(old, settings):
        if old["settings"] != "old " + settings:
            return False
        old["settings"] = settings
        return True

    assert previous_results(out, "a", adopt)["settings"] == "a"
    assert previous_results(out, "b", adopt) is None


def test_cpu_kind_names_the_model_and_the_instruction_set_of_the_kernels():
    import torch

    kind = cpu_kind()
    model, capability = kind.rsplit(", ", 1)
    assert capability == torch.backends.cpu.get_cpu_capability()
    assert model  # the model name, or "unknown CPU" where /proc/cpuinfo has none
