"""The trainer verifies its store at open: fast always, full with --verify-store."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from _planted import planted_store

from refresh_store.verify import verify_store_fast
from refresh_train.cli import config_from_args, main

_TRAIN = "--fanouts 4,4 --hidden 16 --batch-size 128 --epochs 1 --eval-batch-size 256"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("trust") / "s", num_nodes=600)


def _flip_feature_byte(path) -> None:
    shard = path / "features" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_verify_store_flag_and_toml_key_reach_the_config(store, tmp_path):
    assert not config_from_args(["--store", str(store.path)]).verify_store
    assert config_from_args(["--store", str(store.path), "--verify-store"]).verify_store
    toml = tmp_path / "c.toml"
    toml.write_text(f'store = "{store.path}"\nverify-store = true\n')
    assert config_from_args(["--config", str(toml)]).verify_store


def test_fast_verify_is_quick_on_a_small_store(store):
    verify_store_fast(store.path)  # warm imports
    t = time.perf_counter()
    report = verify_store_fast(store.path)
    took = time.perf_counter() - t
    assert report.ok, report.failures
    assert took < 0.25, took  # well under a second (measured ~5 ms)


def test_fast_verify_reads_a_bounded_sample(store, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(store.path, path)
    _flip_feature_byte(path)
    assert not verify_store_fast(path).ok  # small store: every block checked
    report = verify_store_fast(path, sample_bytes=0)
    assert report.ok and "checksums of 0 of" in report.checked[-1]


def test_damaged_store_is_refused_at_open_in_one_line(store, tmp_path, capsys):
    path = tmp_path / "s"
    shutil.copytree(store.path, path)
    _flip_feature_byte(path)
    assert main(["--store", str(path), *_TRAIN.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fails verification" in err and "features" in err
    assert "Traceback" not in err


def test_verify_store_flag_runs_the_full_check(store, tmp_path, capsys):
    # A damaged label the checksums were recomputed for: only the full check
    # (labels in [-1, num_classes)) sees it.
    from refresh_store.checksums import array_checksums
    from refresh_store.store import read_json

    path = tmp_path / "s"
    shutil.copytree(store.path, path)
    shard = path / "labels" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[0:8] = np.int64(1000).tobytes()
    shard.write_bytes(bytes(data))
    meta = read_json(path / "zarr.json")
    meta["attributes"]["refresh"]["checksums"]["labels"] = array_checksums(path, "labels")
    import json

    (path / "zarr.json").write_text(json.dumps(meta))
    assert verify_store_fast(path).ok
    assert main(["--store", str(path), "--verify-store", *_TRAIN.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fails verification" in err and "labels" in err


@pytest.mark.parametrize("damage", ["huge_rows", "link_out", "bad_dtype"])
def test_hostile_store_exits_2_in_one_line(store, tmp_path, capsys, damage):
    import json
    import os

    path = tmp_path / "s"
    shutil.copytree(store.path, path)
    meta_path = path / "features" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    if damage == "huge_rows":
        meta["shape"][0] = 10**15
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**15
    elif damage == "bad_dtype":
        meta["data_type"] = "|O"
    meta_path.write_text(json.dumps(meta))
    if damage == "link_out":
        outside = tmp_path / "outside"
        shutil.copytree(path / "features", outside)
        shutil.rmtree(path / "features")
        os.symlink(outside, path / "features")
    assert main(["--store", str(path), *_TRAIN.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "features" in err


def test_store_claiming_2e40_classes_is_refused_before_the_model_is_built(tmp_path, capsys):
    # The output layer is hidden x num_classes: 2^40 classes asked torch for 70 TB.
    from _planted import planted_arrays

    from refresh_store.writer import write_store

    arrays = planted_arrays(num_nodes=600)
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][0] = 2**40
    write_store(tmp_path / "s", num_classes=2**40 + 1, **arrays)
    assert main(["--store", str(tmp_path / "s"), *_TRAIN.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classes" in err


@pytest.mark.parametrize("split", ["train_idx", "test_idx"])
def test_a_split_label_past_the_classes_is_refused_in_one_line(tmp_path, capsys, split):
    """Checksums a store's maker recomputed pass the fast verify; the labels a run
    reads are checked against the classes before any step (training: a traceback
    in the loss; evaluation: a silently wrong score)."""
    from _planted import planted_arrays

    from refresh_store.writer import write_store

    arrays = planted_arrays(num_nodes=600)
    node = int(arrays[split][3])
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][node] = 99
    path = tmp_path / "s"
    write_store(path, num_classes=4, **arrays)
    assert verify_store_fast(path).ok  # consistent checksums: the sample cannot tell
    metrics = tmp_path / "m.jsonl"
    argv = ["--store", str(path), "--metrics-out", str(metrics), *_TRAIN.split()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"labels[{node}] = 99 (a {split[:-4]} node) is outside [-1, 4)" in err
    assert not metrics.exists()
