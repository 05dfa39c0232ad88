"""Bad input to the converter: one line on stderr, exit 2, nothing that opens as a store.

Run as a subprocess with stderr a pipe (as in a script or CI log): progress
bars are drawn only on a terminal, so the error line is the whole of stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refresh_store.store import is_complete_store

_ROOT = Path(__file__).resolve().parents[2]


def _npy_source(path: Path, *, bad_edge: bool = False, truncate: bool = False) -> Path:
    path.mkdir()
    n = 3000  # big enough that several passes run before the bad edge is found
    rng = np.random.default_rng(0)
    np.save(path / "features.npy", rng.standard_normal((n, 8)).astype(np.float32))
    np.save(path / "labels.npy", np.arange(n) % 5)
    edges = rng.integers(0, n, (2, 20_000))
    if bad_edge:
        edges[1, -1] = n + 7
    np.save(path / "edge_index.npy", edges)
    if truncate:
        data = (path / "features.npy").read_bytes()
        (path / "features.npy").write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [("bad_edge", "edge"), ("truncate", "features.npy"), ("empty", "features.npy")],
)
def test_converter_bad_input_is_one_line_exit_2(tmp_path, kind, message):
    src = tmp_path / "src"
    if kind == "empty":
        src.mkdir()
        (src / "features.npy").write_bytes(b"")
    else:
        _npy_source(src, bad_edge=kind == "bad_edge", truncate=kind == "truncate")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    dst = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(_ROOT / "tools" / "convert.py"), str(src), str(dst)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error:") and message in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert not is_complete_store(dst)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # source untouched


@pytest.mark.parametrize("command", [[], ["export"]])
@pytest.mark.parametrize("size", ["12XB", "0", "-1GiB"])
def test_a_bad_memory_budget_is_a_usage_error_naming_the_flag(tmp_path, capsys, command, size):
    from refresh_store.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*command, str(tmp_path / "a"), str(tmp_path / "b"), f"--memory-budget={size}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: argument --memory-budget: must be " in err
    assert repr(size) in err and err.count("--memory-budget") == 1
    assert not (tmp_path / "b").exists()
