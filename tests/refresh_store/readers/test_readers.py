"""Tests of refresh_store.readers: every layout is read without executing anything from it."""

from __future__ import annotations

import fractions
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from refresh_store.convert import convert
from refresh_store.errors import SourceFormatError
from refresh_store.readers import (
    MappedRows,
    detect_format,
    load_torch_pickle,
    npz_member,
    open_npy,
    open_source,
)
from refresh_store.readers.mag240m import mean_rows
from refresh_store.readers.npy import ZipStreamRows
from refresh_store.store import open_store
from refresh_store.synthetic import make_dataset


def test_npy_is_mapped_without_unpickling(tmp_path):
    a = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "a.npy", a)
    rows = open_npy(tmp_path / "a.npy")
    assert rows.random_access and rows.shape == (20, 3)
    np.testing.assert_array_equal(rows.read(2, 5), a[2:5])
    np.testing.assert_array_equal(rows.take(np.array([0, 7, 19])), a[[0, 7, 19]])
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(open_npy(tmp_path / "f.npy").read(0, 20), a)
    np.save(tmp_path / "o.npy", np.array([object()] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(SourceFormatError, match="only plain numeric arrays"):
        open_npy(tmp_path / "o.npy")
    (tmp_path / "t.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-40])
    with pytest.raises(SourceFormatError, match="is truncated"):
        open_npy(tmp_path / "t.npy")
    (tmp_path / "x.npy").write_bytes(b"not an array at all")
    with pytest.raises(SourceFormatError, match="not a valid .npy"):
        open_npy(tmp_path / "x.npy")


def test_npz_members_stored_are_mapped_and_compressed_are_streamed(tmp_path):
    feat = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    ei = np.arange(40, dtype=np.int64).reshape(2, 20)
    np.savez(tmp_path / "s.npz", node_feat=feat, edge_index=ei)
    np.savez_compressed(tmp_path / "c.npz", node_feat=feat, edge_index=ei)
    stored = npz_member(tmp_path / "s.npz", "node_feat")
    assert isinstance(stored, MappedRows)
    np.testing.assert_array_equal(stored.read(0, 1000), feat)
    packed = npz_member(tmp_path / "c.npz", "node_feat")
    assert isinstance(packed, ZipStreamRows) and not packed.random_access
    got = np.concatenate([packed.read(a, min(1000, a + 300)) for a in range(0, 1000, 300)])
    np.testing.assert_array_equal(got, feat)
    with pytest.raises(SourceFormatError, match="front to back"):
        packed.read(10, 20)
    with pytest.raises(
        SourceFormatError, match=r"has no array 'labels'; it holds \['edge_index', 'node_feat'\]"
    ):
        npz_member(tmp_path / "s.npz", "labels")
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError):
        rows = npz_member(tmp_path / "cut.npz", "node_feat")
        rows.read(0, 1000)


def _rename_globals(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle inside a torch zip file (as an older numpy would have named things)."""
    with zipfile.ZipFile(path) as zf:
        items = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in items:
            if info.filename.endswith("data.pkl"):
                data = data.replace(old, new)
            zf.writestr(info, data)


def test_torch_pickles_load_numpy_arrays_only(tmp_path):
    split = {"train": np.arange(5), "valid": np.array([7, 8], dtype=np.int32), "n": 3}
    torch.save(split, tmp_path / "split.pt")
    got = load_torch_pickle(tmp_path / "split.pt", "split.pt")
    np.testing.assert_array_equal(got["train"], np.arange(5))
    assert got["valid"].dtype == np.int32 and got["n"] == 3
    # numpy 1.x (which wrote the real MAG240M files) names its module numpy.core
    torch.save(split, tmp_path / "old.pt", pickle_protocol=2)
    _rename_globals(tmp_path / "old.pt", b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(
        load_torch_pickle(tmp_path / "old.pt", "old.pt")["train"], np.arange(5)
    )


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_pickle_with_other_globals_is_refused(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"train": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(SourceFormatError, match="refusing to unpickle"):
        load_torch_pickle(tmp_path / "evil.pt", "split_dict.pt")
    assert not marker.exists()
    torch.save({"train": fractions.Fraction(1, 3)}, tmp_path / "frac.pt")
    with pytest.raises(SourceFormatError, match=r"refers to 'fractions.Fraction'"):
        load_torch_pickle(tmp_path / "frac.pt", "split_dict.pt")


@pytest.fixture(scope="module")
def mag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mag")
    return make_dataset("mag240m", 2000, out, seed=5, feature_dim=4, num_classes=3, progress=False)


def test_mag240m_refuses_a_poisoned_split_dict(mag, tmp_path, capsys):
    import shutil

    from refresh_store.cli import main

    root = tmp_path / "mag240m_kddcup2021"
    shutil.copytree(mag, root)
    marker = tmp_path / "executed"
    torch.save({"train": _Evil(str(marker))}, root / "split_dict.pt")
    assert main([str(root), str(tmp_path / "dst"), "--no-progress"]) == 2
    assert "split_dict.pt" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "dst").exists()


def test_mag240m_test_split_choice(mag):
    split = torch.load(mag / "split_dict.pt", weights_only=False)
    src = open_source(mag)
    np.testing.assert_array_equal(src.splits["test"], split["test-dev"])
    assert src.info["test_split"] == "test-dev"
    src.close()
    src = open_source(mag, split="test-whole")
    np.testing.assert_array_equal(src.splits["test"], split["test-whole"])
    src.close()
    with pytest.raises(SourceFormatError, match="no split 'nope'"):
        open_source(mag, split="nope")


@pytest.mark.parametrize("windows, max_open", [(1, 256), (7, 256), (7, 3)])
def test_mean_rows_out_of_core(tmp_path, windows, max_open):
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((300, 6)).astype(np.float16)
    rows.tofile(tmp_path / "rows.raw")
    src = MappedRows(tmp_path / "rows.raw", 0, (300, 6), np.float16)
    s, t = rng.integers(0, 300, 2000), rng.integers(0, 90, 2000)

    class Edges:
        name, num_edges = "e", 2000

        def blocks(self, max_edges):
            for a in range(0, 2000, max_edges):
                yield a, s[a : a + max_edges], t[a : a + max_edges]

    work = 3 * (90 // windows + 1) * (6 * 6 + 8)
    got = mean_rows(
        src, Edges(), 95, tmp_path / "out.raw", np.dtype(np.float32), work, tmp_path,
        max_open_files=max_open,
    )  # fmt: skip
    want = np.zeros((95, 6))
    np.add.at(want, t, rows[s].astype(np.float32))
    want /= np.maximum(np.bincount(t, minlength=95), 1)[:, None]
    np.testing.assert_allclose(got.read(0, 95), want, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("mean_*"))


def test_csc_npy_layout_equals_edge_index_layout(tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    src, dst = rng.integers(0, n, 900), rng.integers(0, n, 900)
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        np.save(root / "features.npy", rng.standard_normal((n, 3)).astype(np.float32) * 0)
    np.save(a / "edge_index.npy", np.stack([src, dst]))
    order = np.argsort(dst, kind="stable")
    np.save(b / "indptr.npy", np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))]))
    np.save(b / "indices.npy", src[order].astype(np.int32))
    for root in (a, b):
        convert(root, root / "store", progress=False)
    for name in ("indptr", "indices", "old_id"):
        np.testing.assert_array_equal(
            getattr(open_store(a / "store"), name), getattr(open_store(b / "store"), name)
        )
    np.save(b / "indptr.npy", np.array([0, 5, 3] + [900] * (n - 2)))
    with pytest.raises(SourceFormatError, match="decreases at node 1"):
        convert(b, tmp_path / "bad", progress=False)


def test_detect_format_and_errors(tmp_path):
    make_dataset(
        "ogbn", 1000, tmp_path / "one", seed=1, feature_dim=3, num_classes=3, progress=False
    )
    assert detect_format(tmp_path / "one") == ("ogbn", tmp_path / "one" / "ogbn_products")
    make_dataset(
        "papers100m", 1000, tmp_path / "one", seed=1, feature_dim=3, num_classes=3, progress=False
    )
    with pytest.raises(SourceFormatError, match="holds several datasets"):
        detect_format(tmp_path / "one")
    with pytest.raises(SourceFormatError, match="holds no dataset this tool knows"):
        detect_format(tmp_path)
    with pytest.raises(SourceFormatError, match="looks like the ogbn layout, not npy"):
        open_source(tmp_path / "one" / "ogbn_products", "npy")
    root = tmp_path / "one" / "ogbn_products"
    (root / "split" / "other").mkdir()
    with pytest.raises(SourceFormatError, match="several split folders"):
        open_source(root)
    assert open_source(root, split="sales_ranking").info["split"] == "sales_ranking"
