"""Tests of refresh_store.verify and ``refresh-convert verify``: damage is found and located."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from refresh_store.checksums import array_checksums
from refresh_store.cli import main
from refresh_store.convert import convert
from refresh_store.store import open_store
from refresh_store.verify import verify_store


def _npy_source(root: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    np.save(root / "features.npy", rng.standard_normal((n, 4)).astype(np.float32))
    np.save(root / "edge_index.npy", rng.integers(0, n, (2, 6 * n)))
    np.save(root / "labels.npy", rng.integers(0, 3, n))
    np.save(root / "train_idx.npy", np.arange(0, 50))
    np.save(root / "valid_idx.npy", np.arange(50, 80))
    np.save(root / "test_idx.npy", np.arange(80, 100))
    return root


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("verify")
    convert(_npy_source(base / "src"), base / "store", progress=False)
    return base / "store"


@pytest.fixture
def store(good_store, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(good_store, dst)
    return dst


def _data_path(store: Path, name: str) -> Path:
    return Path(open_store(store).region(name).path)


def _rewrite(store: Path, name: str, values: np.ndarray, *, fix_checksums: bool) -> None:
    """Overwrite the data of array ``name``; optionally make the manifest agree (invariants only)."""
    region = open_store(store).region(name)
    with open(region.path, "r+b") as f:
        f.seek(int(region.chunk_offsets[0]))
        f.write(np.ascontiguousarray(values, dtype=region.dtype).tobytes())
    if fix_checksums:
        meta_path = store / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["refresh"]["checksums"][name] = array_checksums(store, name)
        meta_path.write_text(json.dumps(meta))


def test_good_store_passes(store, capsys):
    report = verify_store(store)
    assert report.ok, report.failures
    assert {"checksums", "topology", "permutation", "labels", "splits"} <= set(report.checked)
    assert main(["verify", str(store)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


def test_flipped_feature_byte_is_located(store, capsys):
    path = _data_path(store, "features")
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x40
    path.write_bytes(bytes(data))
    report = verify_store(store)
    assert len(report.failures) == 1
    assert report.failures[0].startswith("features: bytes [0, 4800) fail their checksum")
    assert main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: features: bytes [0, 4800)" in out


def test_broken_indptr_is_reported_even_with_matching_checksums(store):
    indptr = np.array(open_store(store).indptr)
    indptr[10], indptr[11] = indptr[11] + 5, indptr[10]
    _rewrite(store, "indptr", indptr, fix_checksums=True)
    failures = verify_store(store).failures
    assert failures == [
        f"indptr decreases at node 10: indptr[10] = {indptr[10]} > indptr[11] = {indptr[11]}"
    ]


def test_bad_indptr_end_ids_permutation_labels_splits(store):
    s = open_store(store)
    n, e = s.num_nodes, s.num_edges
    indptr = np.array(s.indptr)
    indptr[-1] = e - 1
    _rewrite(store, "indptr", indptr, fix_checksums=True)
    indices = np.array(s.indices)
    indices[7] = n + 3
    _rewrite(store, "indices", indices, fix_checksums=True)
    old = np.array(s.old_id)
    old[4], old[5] = old[5], old[4]
    _rewrite(store, "old_id", old, fix_checksums=True)
    labels = np.array(s.labels)
    labels[2] = 9
    _rewrite(store, "labels", labels, fix_checksums=True)
    test = np.array(s.test_idx)
    test[0] = s.train_idx[3]
    _rewrite(store, "test_idx", test, fix_checksums=True)
    failures = "\n".join(verify_store(store).failures)
    assert f"indptr ends at {e - 1}; it must end at E = {e}" in failures
    assert f"indices[7] = {n + 3} is outside [0, {n})" in failures
    assert "old_id[4]" in failures and "not the inverse of new_id" in failures
    assert "labels[2] = 9 is outside [-1, 3)" in failures
    assert "train_idx and test_idx share 1 nodes" in failures


def test_permutation_that_is_not_a_bijection(store):
    new = np.array(open_store(store).new_id)
    new[1] = new[0]
    _rewrite(store, "new_id", new, fix_checksums=True)
    (failure,) = verify_store(store).failures
    assert failure.startswith("new_id is not a bijection: new id ")


def test_unusable_input_exits_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    assert main(["verify", str(tmp_path / "partial")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no manifest" in err and len(err.splitlines()) == 1


def test_truncated_shard_is_a_failure(store):
    path = _data_path(store, "indices")
    path.write_bytes(path.read_bytes()[:100])
    report = verify_store(store)
    assert not report.ok and report.failures[0].startswith("indices: ")


def test_good_store_features_are_scanned_finite(store):
    assert "features finite" in verify_store(store).checked


def test_nan_in_a_store_converted_without_allow_nan_is_a_failure(store, capsys):
    s = open_store(store)
    assert s.manifest["convert"]["allow_nan"] is False
    feats = np.array(s.features)
    feats[17, 2] = np.nan
    feats[40, 0] = np.inf
    _rewrite(store, "features", feats, fix_checksums=True)
    report = verify_store(store)
    assert report.failures == [
        "features: 2 NaN/inf values, the first in row 17; the store was converted without "
        "--allow-nan, which refuses them: the data is damaged"
    ]
    assert main(["verify", str(store)]) == 1


def test_nan_kept_by_allow_nan_is_a_note(tmp_path):
    src = _npy_source(tmp_path / "src")
    feats = np.load(src / "features.npy")
    feats[5, 1] = np.nan
    np.save(src / "features.npy", feats)
    convert(src, tmp_path / "store", progress=False, allow_nan=True)
    row = int(np.asarray(open_store(tmp_path / "store").new_id)[5])
    report = verify_store(tmp_path / "store")
    assert report.ok, report.failures
    assert report.notes == [
        f"features: 1 NaN/inf values, the first in row {row} (kept: --allow-nan)"
    ]
    assert "features: 1 NaN/inf (allowed)" in report.checked


def test_verify_command_prints_notes(tmp_path, capsys):
    src = _npy_source(tmp_path / "src")
    feats = np.load(src / "features.npy")
    feats[2, 0] = np.inf
    np.save(src / "features.npy", feats)
    convert(src, tmp_path / "store", progress=False, allow_nan=True)
    assert main(["verify", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("NOTE: features: 1 NaN/inf values") and out[1].startswith("OK: ")


def test_features_are_scanned_even_without_their_checksums(store):
    s = open_store(store)
    feats = np.array(s.features)
    feats[3, 3] = -np.inf
    _rewrite(store, "features", feats, fix_checksums=False)
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["refresh"]["checksums"]["features"]
    meta_path.write_text(json.dumps(meta))
    failures = verify_store(store).failures
    assert failures[0] == "features: the manifest has no checksums for it"
    assert any(f.startswith("features: 1 NaN/inf values, the first in row 3;") for f in failures)
