"""Crash safety of the converter: killed at any point, DST never opens as a store; --resume finishes it.

Each test runs the real command line in a subprocess. Deterministic crashes
use the converter's hook (``REFRESH_CONVERT_CRASH_AFTER=<step>`` exits with
status 137 right after the step is recorded); the others are real SIGKILLs
sent while a larger conversion runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from refresh_store.convert import CRASH_ENV, STEPS
from refresh_store.errors import StoreFormatError, StoreIncompleteError
from refresh_store.format import ARRAY_NAMES
from refresh_store.store import open_store
from refresh_store.synthetic import make_dataset

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "convert.py"


def run_cli(
    *args: str, crash_after: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_after:
        env[CRASH_ENV] = crash_after
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_not_a_store(dst: Path) -> None:
    """Neither this project nor zarr-python sees a complete store at ``dst``."""
    with pytest.raises(StoreFormatError):
        open_store(dst)
    with pytest.raises(Exception):  # noqa: B017 - zarr raises FileNotFoundError or its own errors
        zarr.open_group(str(dst), mode="r")
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        with pytest.raises(StoreIncompleteError):
            open_store(partial)


def arrays_of(dst: Path) -> dict[str, np.ndarray]:
    store = open_store(dst)
    return {name: np.array(getattr(store, name)) for name in ARRAY_NAMES}


def assert_same_store(a: Path, b: Path) -> None:
    left, right = arrays_of(a), arrays_of(b)
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)
        assert left[name].dtype == right[name].dtype
    ma, mb = open_store(a).manifest, open_store(b).manifest
    assert ma["checksums"] == mb["checksums"]
    for key in ("num_nodes", "num_edges", "feature_dim", "dtype", "num_classes", "source"):
        assert ma[key] == mb[key], key


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("crash")
    src = make_dataset(
        "papers100m", 4000, base / "src", seed=2, feature_dim=8, num_classes=4, progress=False
    )
    ref = base / "ref"
    res = run_cli(str(src), str(ref))
    assert res.returncode == 0, res.stderr
    return src, ref


POINTS = [s for s in STEPS if s not in ("stage", "derive")] + ["before_commit"]


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_step_then_resume(small, tmp_path, point):
    src, ref = small
    dst = tmp_path / "store"
    res = run_cli(str(src), str(dst), crash_after=point)
    assert res.returncode == 137, res.stderr
    assert_not_a_store(dst)
    progress = json.loads((tmp_path / "store.partial" / ".refresh_progress.json").read_text())
    assert point == "before_commit" or point in progress["steps"]
    # a plain rerun without --resume or --overwrite never touches a finished store; here
    # there is none, and --resume must continue from the recorded steps
    res = run_cli(str(src), str(dst), "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed: skipped" in res.stdout
    assert_same_store(dst, ref)
    assert not (tmp_path / "store.partial").exists()


def test_resume_with_other_options_is_refused(small, tmp_path):
    src, _ = small
    dst = tmp_path / "store"
    assert run_cli(str(src), str(dst), crash_after="reordered").returncode == 137
    res = run_cli(str(src), str(dst), "--resume", "--dtype", "float16")
    assert res.returncode == 2 and "other options" in res.stderr
    assert_not_a_store(dst)


def test_rerun_without_resume_starts_over(small, tmp_path):
    src, ref = small
    dst = tmp_path / "store"
    assert run_cli(str(src), str(dst), crash_after="topology").returncode == 137
    res = run_cli(str(src), str(dst))
    assert res.returncode == 0 and "resumed" not in res.stdout
    assert_same_store(dst, ref)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("kill")
    src = make_dataset(
        "papers100m", 300_000, base / "src", seed=3, feature_dim=64, num_classes=8, progress=False
    )
    ref = base / "ref"
    res = run_cli(str(src), str(ref), "--memory-budget", "256MiB", "--feature-strategy", "shuffle")
    assert res.returncode == 0, res.stderr
    return src, ref


def _progress_steps(partial: Path) -> int:
    try:
        return len(json.loads((partial / ".refresh_progress.json").read_text())["steps"])
    except (OSError, ValueError):
        return -1


@pytest.mark.parametrize("after_steps", [1, 4, 7])
def test_real_sigkill_then_resume(large, tmp_path, after_steps):
    """SIGKILL while the pass after ``after_steps`` recorded steps is running."""
    src, ref = large
    dst = tmp_path / "store"
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    args = [str(src), str(dst), "--memory-budget", "256MiB", "--feature-strategy", "shuffle"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    partial = tmp_path / "store.partial"
    deadline = time.monotonic() + 240
    while _progress_steps(partial) < after_steps and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)  # into the next pass
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed, "the conversion finished before it could be killed"
    assert_not_a_store(dst)
    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert_same_store(dst, ref)
