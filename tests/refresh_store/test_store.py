"""Tests of refresh_store.store: the writer, the reader and the format guarantees."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import zarr

from refresh_store.checksums import array_checksums
from refresh_store.errors import ConvertError, StoreFormatError, StoreIncompleteError
from refresh_store.format import FORMAT_VERSION
from refresh_store.store import open_store
from refresh_store.writer import StoreWriter, write_store


def _arrays(n: int = 1001, d: int = 7, dtype=np.float32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, 6, n)
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    return dict(
        features=rng.standard_normal((n, d)).astype(dtype),
        indptr=indptr,
        indices=rng.integers(0, n, int(indptr[-1])).astype(np.int32),
        labels=rng.integers(-1, 4, n),
        train_idx=np.arange(0, 50),
        valid_idx=np.arange(50, 60),
        test_idx=np.array([], dtype=np.int64),
    )


@pytest.mark.parametrize(
    "dtype", [pytest.param(np.float16, id="fp16"), pytest.param(np.float32, id="fp32")]
)
@pytest.mark.parametrize("chunk_rows", [1, 64, 4096])
def test_roundtrip_readable_by_zarr_and_tensorstore(tmp_path, dtype, chunk_rows):
    arrays = _arrays(dtype=dtype)
    store = write_store(tmp_path / "s", chunk_rows=chunk_rows, **arrays)
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    for name, ref in arrays.items():
        np.testing.assert_array_equal(np.asarray(getattr(store, name)), ref, err_msg=name)
        np.testing.assert_array_equal(group[name][:], ref, err_msg=name)
        t = ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s" / name)}}
        ).result()
        np.testing.assert_array_equal(t.read().result(), ref, err_msg=name)
    assert store.manifest["format_version"] == FORMAT_VERSION
    assert store.num_nodes == 1001 and store.feature_dim == 7 and store.num_classes == 4


def test_region_offsets_address_rows(tmp_path):
    arrays = _arrays(n=777, d=5)
    store = write_store(tmp_path / "s", chunk_rows=32, **arrays)
    region = store.region("features")
    assert region.contiguous and region.row_bytes == 20
    ids = np.array([0, 776, 31, 32, 400])
    raw = np.fromfile(region.path, dtype=np.uint8)
    for i, off in zip(ids, region.row_offsets(ids)):
        row = raw[off : off + region.row_bytes].view(np.float32)
        np.testing.assert_array_equal(row, arrays["features"][i])


def test_zarr_rewrite_moves_chunks_and_reader_follows_index(tmp_path):
    arrays = _arrays(n=300, d=4)
    write_store(tmp_path / "s", chunk_rows=16, **arrays)
    # zarr-python rewrites the whole shard on a partial write; the reader must
    # keep returning the right rows whatever the new layout is.
    g = zarr.open_group(str(tmp_path / "s"), mode="r+")
    g["features"][5] = np.full(4, 9.0, dtype=np.float32)
    expected = arrays["features"].copy()
    expected[5] = 9.0
    store = open_store(tmp_path / "s")
    region = store.region("features")
    raw = np.fromfile(region.path, dtype=np.uint8)
    for i in [0, 5, 17, 299]:
        off = region.row_offsets(np.array([i]))[0]
        np.testing.assert_array_equal(raw[off : off + 16].view(np.float32), expected[i])


def test_checksums_detect_a_flipped_byte(tmp_path):
    store = write_store(tmp_path / "s", **_arrays())
    before = array_checksums(tmp_path / "s", "features")
    assert before == store.manifest["checksums"]["features"]
    path = store.region("features").path
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    assert array_checksums(tmp_path / "s", "features") != before


def test_uncommitted_store_never_opens_as_complete(tmp_path):
    dst = tmp_path / "s"
    writer = StoreWriter(dst)
    arrays = _arrays()
    for name, arr in arrays.items():
        writer.create_array(name, arr.shape, arr.dtype).write(0, arr)
    # Nothing at DST until commit; the partial group has no manifest.
    assert not dst.exists()
    with pytest.raises(StoreIncompleteError, match="did not finish"):
        open_store(writer.partial_path)
    with pytest.raises(StoreFormatError, match="--resume"):
        open_store(dst)


def test_destination_rules(tmp_path):
    arrays = _arrays()
    write_store(tmp_path / "s", **arrays)
    with pytest.raises(ConvertError, match="--overwrite"):
        write_store(tmp_path / "s", **arrays)
    arrays["labels"] = np.zeros_like(arrays["labels"])
    store = write_store(tmp_path / "s", overwrite=True, **arrays)
    assert not np.asarray(store.labels).any()
    assert not (tmp_path / "s.old").exists() and not (tmp_path / "s.partial").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ConvertError, match="not a ReFresh store"):
        write_store(other, overwrite=True, **arrays)
    assert (other / "precious.txt").read_text() == "keep me"


def test_resume_bookkeeping(tmp_path):
    writer = StoreWriter(tmp_path / "s")
    writer.create_array("labels", (10,), np.int64).write(0, np.arange(10))
    writer.mark_step("labels", {"rows": 10})
    again = StoreWriter(tmp_path / "s", resume=True)
    assert again.step_done("labels") and again.step_info("labels") == {"rows": 10}
    np.testing.assert_array_equal(np.asarray(again.open_array("labels").memmap()), np.arange(10))
    fresh = StoreWriter(tmp_path / "s")  # without resume, an old partial is discarded
    assert not fresh.step_done("labels") and not fresh.has_array("labels")


def test_wrong_version_and_damage_are_reported(tmp_path):
    write_store(tmp_path / "s", **_arrays())
    meta_path = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["refresh"]["format_version"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="format_version 3"):
        open_store(tmp_path / "s")
    meta["attributes"]["refresh"]["format_version"] = FORMAT_VERSION
    meta_path.write_text(json.dumps(meta))
    shard = tmp_path / "s" / "labels" / "c" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    with pytest.raises(StoreFormatError, match="crc32c"):
        open_store(tmp_path / "s").region("labels")
    with pytest.raises(StoreFormatError, match="does not exist"):
        open_store(tmp_path / "missing")


def test_shard_linked_outside_store_is_refused(tmp_path):
    write_store(tmp_path / "s", **_arrays())
    outside = tmp_path / "elsewhere"
    shard = tmp_path / "s" / "labels" / "c" / "0"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(StoreFormatError, match="outside the store"):
        open_store(tmp_path / "s").region("labels")


def _rss_file_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_dropping_a_memmaps_pages_leaves_its_contents(tmp_path):
    """Pages read through a store's memory map count in RSS until dropped; the
    array reads the same afterwards (the page cache keeps them)."""
    from refresh_store.store import drop_resident_pages

    data = np.arange(8 << 20, dtype=np.float32).reshape(-1, 16)  # 32 MiB
    store = write_store(
        tmp_path / "s",
        features=data,
        indptr=np.zeros(data.shape[0] + 1, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int32),
        labels=np.zeros(data.shape[0], dtype=np.int64),
        train_idx=np.arange(4, dtype=np.int64),
        valid_idx=np.arange(4, dtype=np.int64),
        test_idx=np.arange(4, dtype=np.int64),
        num_classes=1,
    )
    features = store.features
    total = float(features.sum(dtype=np.float64))  # reads every page through the map
    before = _rss_file_bytes()
    assert drop_resident_pages(features.view(np.ndarray)[10:])  # a view finds its map
    after = _rss_file_bytes()
    assert before - after > 24 << 20
    assert float(features.sum(dtype=np.float64)) == total
    assert not drop_resident_pages(np.zeros(4))
