"""Fuzz tests of the store opener: a store is untrusted data.

Every damaged store ends with the right rows or a :class:`RefreshError`: never
a crash, a wrong row, or an allocation sized by an unchecked header.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from refresh_store.errors import RefreshError, StoreFormatError
from refresh_store.format import ARRAY_NAMES
from refresh_store.store import open_store
from refresh_store.verify import verify_store, verify_store_fast
from refresh_store.writer import write_store

_N = 50


def _arrays() -> dict[str, np.ndarray]:
    n = _N
    return {
        "features": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        "indptr": np.arange(n + 1, dtype=np.int64),
        "indices": np.arange(n, dtype=np.int64)[::-1].copy(),
        "labels": np.arange(n, dtype=np.int64) % 3,
        "train_idx": np.arange(10, dtype=np.int64),
        "valid_idx": np.arange(10, 20, dtype=np.int64),
        "test_idx": np.arange(20, 30, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store"
    write_store(path, **_arrays(), chunk_rows=16)
    return path


def _expected(path: Path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {name: np.array(store.array(name)) for name in ARRAY_NAMES}


def _read_everything(path: Path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {name: np.array(store.array(name)) for name in ARRAY_NAMES}


def _check_outcome(path: Path, expected: dict[str, np.ndarray]) -> None:
    """Right rows or a RefreshError; when the fast verify passes, every row is right."""
    try:
        got = _read_everything(path)
    except RefreshError:
        got = None
    try:
        fast_ok = verify_store_fast(path).ok
    except RefreshError:
        fast_ok = False
    try:
        full_ok = verify_store(path).ok
    except RefreshError:
        full_ok = False
    if fast_ok or full_ok:
        assert got is not None
        for name, want in expected.items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)


_INTS = st.sampled_from([-1, 0, 1, 15, 16, 17, 49, 50, 51, 64, 65, 10**15, 2**63, 2**64, 10**30])
_JSON_VALUES = st.one_of(
    _INTS,
    st.lists(_INTS, max_size=3),
    st.sampled_from(
        [
            None,
            True,
            1.5,
            "",
            "float32",
            "int64",
            "|O",
            "object",
            "<U4",
            "V0",
            "V8",
            "bogus",
            "complex64",
            "datetime64[s]",
            {},
            [],
            [[]],
            {"a": 1},
        ]
    ),
)
# Where in an array's zarr.json a value is replaced.
_ARRAY_KEYS = [
    ("shape",),
    ("shape", 0),
    ("shape", 1),
    ("data_type",),
    ("chunk_grid", "configuration", "chunk_shape"),
    ("chunk_grid", "configuration", "chunk_shape", 0),
    ("codecs",),
    ("codecs", 0, "name"),
    ("codecs", 0, "configuration", "chunk_shape"),
    ("codecs", 0, "configuration", "chunk_shape", 0),
    ("codecs", 0, "configuration", "codecs"),
    ("codecs", 0, "configuration", "index_location"),
    ("chunk_key_encoding", "configuration", "separator"),
]
_MANIFEST_KEYS = [
    "num_nodes",
    "num_edges",
    "feature_dim",
    "dtype",
    "num_classes",
    "format_version",
    "relations",
    "checksums",
]


def _set(doc, keys, value):
    for k in keys[:-1]:
        doc = doc[k]
    doc[keys[-1]] = value


def _copy(pristine: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fuzz-store-")) / "store"
    shutil.copytree(pristine, path)
    return path


@given(
    array=st.sampled_from(["features", "indptr", "labels", "train_idx"]),
    keys=st.sampled_from(_ARRAY_KEYS),
    value=_JSON_VALUES,
)
@example(array="features", keys=("shape", 0), value=10**15)
@example(array="features", keys=("codecs", 0, "configuration", "chunk_shape", 0), value=0)
@example(array="features", keys=("shape", 1), value=10**15)
@example(array="features", keys=("data_type",), value="|O")
@example(array="indptr", keys=("shape", 0), value=-1)
def test_damaged_array_metadata(pristine, array, keys, value):
    path = _copy(pristine)
    try:
        expected = _expected(pristine)
        meta_path = path / array / "zarr.json"
        meta = json.loads(meta_path.read_text())
        try:
            _set(meta, keys, value)
        except (IndexError, KeyError, TypeError):
            return
        meta_path.write_text(json.dumps(meta))
        _check_outcome(path, expected)
    finally:
        shutil.rmtree(path.parent)


@given(key=st.sampled_from(_MANIFEST_KEYS), value=_JSON_VALUES)
@example(key="num_nodes", value=10**15)
@example(key="num_nodes", value="50")
@example(key="dtype", value="|O")
def test_damaged_manifest(pristine, key, value):
    path = _copy(pristine)
    try:
        expected = _expected(pristine)
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"]["refresh"][key] = value
        (path / "zarr.json").write_text(json.dumps(meta))
        _check_outcome(path, expected)
    finally:
        shutil.rmtree(path.parent)


@given(
    array=st.sampled_from(["features", "indptr", "labels", "zarr.json"]),
    cut=st.integers(0, 2000),
    flip=st.lists(st.integers(0, 2000), max_size=4),
    which=st.sampled_from(["shard", "meta"]),
)
def test_truncated_and_corrupted_files(pristine, array, cut, flip, which):
    path = _copy(pristine)
    try:
        expected = _expected(pristine)
        if array == "zarr.json":
            target = path / "zarr.json"
        elif which == "shard":
            target = next(p for p in (path / array / "c").rglob("*") if p.is_file())
        else:
            target = path / array / "zarr.json"
        data = bytearray(target.read_bytes())
        for i in flip:
            if i < len(data):
                data[i] ^= 0x5A
        target.write_bytes(bytes(data[: max(0, len(data) - cut)]))
        _check_outcome(path, expected)
    finally:
        shutil.rmtree(path.parent)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "1" * 5000,
        "[]",
        "null",
        '{"zarr_format": 3, "node_type": "group", "attributes": []}',
        '{"zarr_format": 3, "node_type": "group", "attributes": {"refresh": 1}}',
    ],
)
def test_hostile_group_json_is_refused(pristine, tmp_path, text):
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    (path / "zarr.json").write_text(text)
    with pytest.raises(StoreFormatError, match="zarr.json|manifest|group"):
        open_store(path)


def test_store_claiming_1e15_rows_is_refused_before_allocating(pristine, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    for name, rows in (("features", 10**15), ("labels", 10**15)):
        meta = json.loads((path / name / "zarr.json").read_text())
        meta["shape"][0] = rows
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = rows
        (path / name / "zarr.json").write_text(json.dumps(meta))
    manifest = json.loads((path / "zarr.json").read_text())
    manifest["attributes"]["refresh"]["num_nodes"] = 10**15
    (path / "zarr.json").write_text(json.dumps(manifest))
    store = open_store(path)  # the manifest alone allocates nothing
    with pytest.raises(StoreFormatError, match="index|truncated|claims"):
        store.array("features")
    with pytest.raises(StoreFormatError):
        store.array("labels")
    assert not verify_store_fast(path).ok


@pytest.mark.parametrize("what", ["array_dir", "zarr_json", "shard", "shard_parent"])
def test_links_out_of_the_store_are_refused(pristine, tmp_path, what):
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    outside = tmp_path / "outside"
    shutil.copytree(pristine / "features", outside)
    target = {
        "array_dir": (path / "features", outside),
        "zarr_json": (path / "features" / "zarr.json", outside / "zarr.json"),
        "shard": (path / "features" / "c" / "0" / "0", outside / "c" / "0" / "0"),
        "shard_parent": (path / "features" / "c", outside / "c"),
    }[what]
    link, dest = target
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink()
    os.symlink(dest, link)
    with pytest.raises(StoreFormatError, match="outside the store"):
        open_store(path).array("features")


def test_array_name_with_dotdot_is_not_a_store_array(pristine):
    store = open_store(pristine)
    with pytest.raises(ValueError, match="unknown array"):
        store.array("../features")
    with pytest.raises(ValueError, match="unknown array"):
        store.array("/etc/passwd")


_TRUNCATE_AFTER_OPEN = r"""
import os, sys
import numpy as np
from refresh_store.errors import RefreshError
from refresh_store.io import IOConfig, IOScheduler
from refresh_store.store import open_store
path, mode = sys.argv[1], sys.argv[2]
store = open_store(path)
region = store.region("features")
with IOScheduler(region, IOConfig(mode=mode)) as io:
    io.gather(np.arange(4))
    os.truncate(region.path, 64)
    try:
        io.gather(np.arange(region.nrows))
    except RefreshError as exc:
        print("refused:", exc)
        sys.exit(0)
print("no error")
sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["buffered", "mmap"])
def test_shard_truncated_after_open_is_an_error_not_sigbus(tmp_path, mode):
    path = tmp_path / "store"
    n = 4096  # 4096 x 64 fp32 = 1 MiB: the rows read span many pages
    write_store(
        path,
        features=np.ones((n, 64), dtype=np.float32),
        indptr=np.zeros(n + 1, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int64),
        labels=np.zeros(n, dtype=np.int64),
        train_idx=np.arange(10),
        valid_idx=np.arange(10, 20),
        test_idx=np.arange(20, 30),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_AFTER_OPEN, str(path), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "refused:" in proc.stdout


def test_empty_array_with_huge_rows_is_refused(pristine, tmp_path):
    # 0 rows of 2^62 elements: no data to check against the file, but numpy
    # cannot even build the empty array.
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    meta = json.loads((path / "features" / "zarr.json").read_text())
    meta["shape"] = [0, 2**62]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [64, 2**62]
    meta["codecs"][0]["configuration"]["chunk_shape"] = [16, 2**62]
    (path / "features" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="single row-chunked shard"):
        open_store(path).array("features")
