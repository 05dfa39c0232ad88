"""Checksums gathered while writing, and what mark_step fsyncs (refresh_store.checksums, refresh_store.writer)."""

from __future__ import annotations

import os

import crc32c
import numpy as np
import pytest

from refresh_store import writer as store_mod
from refresh_store.checksums import ChecksumLog, array_checksums, crc32c_combine
from refresh_store.writer import StoreWriter


@pytest.mark.parametrize("len_a, len_b", [(0, 5), (5, 0), (1, 1), (1000, 12_345), (7, 1 << 20)])
def test_crc32c_combine_matches_the_checksum_of_the_concatenation(len_a, len_b):
    rng = np.random.default_rng(len_a + len_b)
    a, b = rng.bytes(len_a), rng.bytes(len_b)
    assert crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len_b) == crc32c.crc32c(a + b)


def test_checksum_log_from_pieces_in_any_order():
    rng = np.random.default_rng(0)
    data = rng.bytes(1_000_003)
    cuts = [0, *sorted(rng.choice(len(data), 40, replace=False).tolist()), len(data)]
    pieces = list(zip(cuts[:-1], cuts[1:]))
    rng.shuffle(pieces)
    log = ChecksumLog(len(data), block_bytes=65_536)
    for a, b in pieces:
        log.add(a, memoryview(data)[a:b])
    want = [crc32c.crc32c(data[i : i + 65_536]) for i in range(0, len(data), 65_536)]
    assert log.block_sums() == want
    # A byte written twice, or never, leaves the checksums to a read-back.
    log.add(10, memoryview(data)[10:20])
    assert log.block_sums() is None
    gap = ChecksumLog(100, block_bytes=64)
    gap.add(0, memoryview(data)[:50])
    gap.add(60, memoryview(data)[60:100])
    assert gap.block_sums() is None


def _partial_checksums(writer, name):
    return array_checksums(writer.partial_path, name, store_mod.CHECKSUM_BLOCK_BYTES)


def test_commit_uses_logged_checksums_and_reads_back_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "CHECKSUM_BLOCK_BYTES", 4096)
    rng = np.random.default_rng(1)
    writer = StoreWriter(tmp_path / "s")
    feats = rng.standard_normal((1000, 7)).astype(np.float32)
    aw = writer.create_array("features", feats.shape, feats.dtype)
    for a in (600, 0, 300):  # out of order, crossing checksum blocks
        aw.write(a, feats[a : a + 300])
    aw.write(900, feats[900:])
    others = {
        "indptr": np.arange(1001, dtype=np.int64),
        "indices": rng.integers(0, 1000, 1000).astype(np.int32),
        "labels": rng.integers(0, 3, 1000),
        "train_idx": np.arange(10),
        "valid_idx": np.arange(10, 20),
        "test_idx": np.array([], dtype=np.int64),
        "new_id": np.arange(1000),
    }
    for name, arr in others.items():
        writer.create_array(name, arr.shape, arr.dtype).write(0, arr)
    old_id = writer.create_array("old_id", (1000,), np.int64)
    old_id.memmap()[:] = np.arange(1000)  # not seen by the log: read back at commit
    read = []
    real = store_mod.array_checksums

    def counting(path, name, *args):
        read.append(name)
        return real(path, name, *args)

    monkeypatch.setattr(store_mod, "array_checksums", counting)
    sums = writer._checksums()
    assert read == ["old_id"]
    monkeypatch.setattr(store_mod, "array_checksums", real)
    for name, entry in sums.items():
        assert entry == _partial_checksums(writer, name), name
    assert len(sums["features"]["crc32c"]) == -(-feats.nbytes // 4096) > 1


def test_checksums_survive_resume_and_are_dropped_when_an_array_is_recreated(tmp_path):
    writer = StoreWriter(tmp_path / "s")
    writer.create_array("labels", (10,), np.int64).write(0, np.arange(10))
    writer.mark_step("labels")
    again = StoreWriter(tmp_path / "s", resume=True)
    recorded = again._progress()["checksums"]["labels"]
    assert recorded == _partial_checksums(again, "labels")
    again.create_array("labels", (10,), np.int64)  # redone: the old record no longer holds
    assert "labels" not in again._progress()["checksums"]


def test_mark_step_fsyncs_only_files_modified_since_the_last_mark(tmp_path, monkeypatch):
    synced = []
    real = store_mod._fsync_path
    monkeypatch.setattr(store_mod, "_fsync_path", lambda p: (synced.append(p.name), real(p)))
    writer = StoreWriter(tmp_path / "s")
    old = writer.partial_path / "tmp" / "old.raw"
    old.parent.mkdir()
    old.write_bytes(b"x" * 100)
    writer.mark_step("first")
    assert "old.raw" in synced
    synced.clear()
    # Pretend the file was last touched long before the first mark.
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    new = writer.partial_path / "tmp" / "new.raw"
    new.write_bytes(b"y" * 100)
    writer.mark_step("second")
    assert "new.raw" in synced and "old.raw" not in synced
