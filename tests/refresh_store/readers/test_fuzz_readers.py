"""Fuzz tests of the readers: every source file is untrusted data.

Malformed npy/npz headers, truncated or corrupted files, malformed csv.gz, torch
pickles and hostile id sets end with the right answer or a RefreshError —
never a crash, a wrong row, or an allocation sized by an unchecked header.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from refresh_store.convert import convert
from refresh_store.errors import RefreshError, SourceFormatError
from refresh_store.readers import load_torch_pickle, npz_member, open_npy
from refresh_store.store import is_complete_store, open_store
from refresh_store.verify import verify_store

# A conversion takes ~0.5 s: the end-to-end fuzz tests run a third of the
# profile's examples (8 under `make test`, more under `make test-all`).
_CONVERT_EXAMPLES = max(5, settings.default.max_examples // 3)

_DIMS = st.sampled_from([0, 1, 2, 3, 7, -1, 2**31, 2**32, 2**62, 2**63, 10**15, 10**30])
_DESCR = st.sampled_from(
    [
        "<f4",
        "<f8",
        "|u1",
        "<i8",
        ">i4",
        "|b1",
        "<c8",
        "|O",
        "<U3",
        "|V0",
        "|V4",
        "<M8[s]",
        "[('a', '<f4')]",
        "'<f4'",
        "x",
        "<f4'}",
    ]
)


def _npy_bytes(descr: str, fortran: object, shape: object, payload: bytes, version: int) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    if descr.startswith("["):
        header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    body = header.encode("latin1")
    if version == 1:
        pad = (-(10 + len(body) + 1)) % 64
        head = b"\x93NUMPY\x01\x00" + (len(body) + pad + 1).to_bytes(2, "little")
    else:
        pad = (-(12 + len(body) + 1)) % 64
        head = b"\x93NUMPY\x02\x00" + (len(body) + pad + 1).to_bytes(4, "little")
    return head + body + b" " * pad + b"\n" + payload


def _check_npy(path: Path) -> None:
    """open_npy reads what numpy reads (allow_pickle=False), or refuses with SourceFormatError."""
    try:
        want = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - numpy's own errors vary; ours must not
        want = None
    try:
        rows = open_npy(path)
        got = rows.read(0, rows.shape[0]) if rows.shape else None
        shape = rows.shape
        rows.close()
    except SourceFormatError:
        return
    assert want is not None, f"open_npy accepted a file numpy refuses: {path.read_bytes()[:200]!r}"
    assert shape == want.shape
    if got is not None:
        np.testing.assert_array_equal(got, want)


@given(
    descr=_DESCR,
    fortran=st.sampled_from([False, True, "'yes'", 0]),
    shape=st.one_of(st.lists(_DIMS, max_size=3).map(tuple), st.sampled_from(["[3]", "3", "()"])),
    payload=st.binary(max_size=200),
    version=st.sampled_from([1, 2]),
)
@example(descr="<f4", fortran=False, shape=(2**32, 2**32), payload=b"", version=1)
@example(descr="<f4", fortran=False, shape=(-1, 4), payload=b"\0" * 64, version=1)
@example(descr="<f4", fortran=False, shape=(10**15, 128), payload=b"", version=1)
@example(descr="|O", fortran=False, shape=(1,), payload=b"\0" * 64, version=1)
@example(descr="<f4'}", fortran=False, shape=(), payload=b"", version=1)  # TokenError
@example(descr="|V0", fortran=False, shape=(2**63,), payload=b"", version=1)  # numpy's limit
@example(descr="<f4", fortran=False, shape=(0, 2**62), payload=b"", version=1)
@example(descr="|V0", fortran=False, shape=(3, 2**62), payload=b"", version=1)
def test_malformed_npy_headers(descr, fortran, shape, payload, version):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.npy"
        path.write_bytes(_npy_bytes(descr, fortran, shape, payload, version))
        _check_npy(path)


@given(
    shape=st.tuples(st.integers(0, 20), st.integers(1, 5)),
    dtype=st.sampled_from(["<f4", "<f2", "|u1", ">f8", "<i8"]),
    fortran=st.booleans(),
    cut=st.integers(0, 300),
    flips=st.lists(st.integers(0, 140), max_size=3),
)
@example(shape=(0, 1), dtype="<f4", fortran=False, cut=0, flips=[8])  # TokenError
def test_truncated_and_corrupted_npy(shape, dtype, fortran, cut, flips):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.npy"
        arr = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
        np.save(path, np.asfortranarray(arr) if fortran else arr)
        data = bytearray(path.read_bytes())
        for i in flips:  # header bytes (data flips change values, not validity)
            if i < len(data):
                data[i] ^= 0x41
        path.write_bytes(bytes(data[: max(0, len(data) - cut)] if cut else data))
        _check_npy(path)


@given(
    compressed=st.booleans(),
    n=st.integers(0, 40),
    cut=st.integers(0, 400),
    flip=st.lists(st.integers(0, 2000), max_size=3),
)
@example(compressed=True, n=0, cut=0, flip=[103])  # zlib.error in the header
def test_truncated_and_corrupted_npz(compressed, n, cut, flip):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        arr = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        (np.savez_compressed if compressed else np.savez)(path, node_feat=arr)
        data = bytearray(path.read_bytes())
        for i in flip:
            if i < len(data):
                data[i] ^= 0x33
        path.write_bytes(bytes(data[: max(0, len(data) - cut)] if cut else data))
        try:
            rows = npz_member(path, "node_feat")
            got = rows.read(0, rows.shape[0])
            rows.close()
        except SourceFormatError:
            return
        # zip's own crc is not checked on a memory-mapped stored member: a
        # flipped data byte reads as a changed value, which verify's checksums
        # of the converted store cannot know. Only the shape is promised here.
        assert got.shape[1:] == (3,) and got.dtype == np.float32
        if not flip:
            np.testing.assert_array_equal(got, arr)


def test_npz_with_an_object_member_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("node_feat.npy", buf.getvalue())
    with pytest.raises(SourceFormatError, match="objects"):
        npz_member(path, "node_feat")


@given(cut=st.integers(0, 2000), flips=st.lists(st.integers(0, 3000), max_size=4))
@example(cut=0, flips=[])
@example(cut=0, flips=[427])  # KeyError from the unpickler's memo
@example(cut=0, flips=[174])  # LookupError: unknown encoding
def test_truncated_and_corrupted_torch_pickles(cut, flips):
    import torch

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "split_dict.pt"
        split = {"train": np.arange(5), "valid": np.arange(5, 8), "test-dev": np.arange(8, 9)}
        torch.save(split, path)
        data = bytearray(path.read_bytes())
        for i in flips:
            if i < len(data):
                data[i] ^= 0x77
        path.write_bytes(bytes(data[: max(0, len(data) - cut)] if cut else data))
        try:
            got = load_torch_pickle(path, "split_dict.pt")
        except SourceFormatError:
            return
        if not flips and not cut:
            assert set(got) == set(split)
            for k in split:
                np.testing.assert_array_equal(got[k], split[k])


# ----------------------------------------------------------------------------- end to end

_IDS = st.lists(
    st.sampled_from([0, 1, 5, 19, 20, 21, -1, -20, 2**31, 2**63 - 1, -(2**63)]), max_size=8
)
_N = 20


def _convert_or_refuse(src: Path, dst: Path) -> bool:
    """Convert; True when a store was written. A refusal leaves nothing that opens."""
    try:
        convert(src, dst, progress=False)
    except RefreshError:
        assert not is_complete_store(dst)
        return False
    return True


@settings(max_examples=_CONVERT_EXAMPLES)
@given(
    edges_src=_IDS,
    edges_dst=_IDS,
    train=_IDS,
    labels_bad=st.sampled_from([None, -5, 2**40, float("nan")]),
    features_bad=st.sampled_from([None, float("nan"), float("inf")]),
)
@example(edges_src=[0, 25], edges_dst=[1, 2], train=[], labels_bad=None, features_bad=None)
@example(edges_src=[-1], edges_dst=[1], train=[0, 0, 3], labels_bad=None, features_bad=None)
def test_npy_layout_with_hostile_ids_converts_right_or_refuses(
    edges_src, edges_dst, train, labels_bad, features_bad
):
    k = min(len(edges_src), len(edges_dst))
    edge_index = np.array([edges_src[:k], edges_dst[:k]], dtype=np.int64).reshape(2, k)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((_N, 4)).astype(np.float32)
    labels = (np.arange(_N) % 3).astype(np.float64)
    if labels_bad is not None:
        labels[3] = labels_bad
    if features_bad is not None:
        features[2, 1] = features_bad
    d = Path(tempfile.mkdtemp(prefix="fuzz-npy-"))
    try:
        src = d / "src"
        src.mkdir()
        np.save(src / "features.npy", features)
        np.save(src / "labels.npy", labels)
        np.save(src / "edge_index.npy", edge_index)
        np.save(src / "train_idx.npy", np.array(train, dtype=np.int64))
        before = {p.name: p.read_bytes() for p in src.iterdir()}
        ok = _convert_or_refuse(src, d / "dst")
        assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # source untouched
        bad_edges = k and (edge_index.min() < 0 or edge_index.max() >= _N)
        bad_train = len(train) and (min(train) < 0 or max(train) >= _N)
        if ok:
            assert not bad_edges and not bad_train and features_bad is None
            assert verify_store(d / "dst").ok
            store = open_store(d / "dst")
            np.testing.assert_array_equal(np.asarray(store.features)[store.new_id], features)
            assert set(store.old_id[store.train_idx].tolist()) == set(train)
    finally:
        shutil.rmtree(d)


_CSV_LINES = st.lists(
    st.sampled_from(
        [
            "0,1",
            "1,2",
            "2,0",
            "3,1",
            "1",
            "0,1,2",
            "a,b",
            "",
            "-1,2",
            "0,20",
            "1e3,2",
            " 2 , 3",
            "99999999999999999999,1",
            "nan,1",
            "0;1",
            "\x00\x01",
        ]
    ),
    max_size=6,
)


@settings(max_examples=_CONVERT_EXAMPLES)
@given(
    edge_lines=_CSV_LINES,
    num_edges=st.sampled_from(["{e}", "0", "-3", "x", "1\n2", "", "10**15"]),
    num_nodes=st.sampled_from(["4", "0", "-1", "abc", "1000000000000000", ""]),
    feat_cut=st.sampled_from([0, 5, 30]),
    gzip_cut=st.sampled_from([0, 3, 12]),
)
@example(edge_lines=["0,1", "1,2"], num_edges="{e}", num_nodes="4", feat_cut=0, gzip_cut=0)
@example(edge_lines=[], num_edges="{e}", num_nodes="0", feat_cut=0, gzip_cut=0)  # 0 nodes
# An id past int64: pandas raised OverflowError, not one of the project's errors.
@example(edge_lines=["99999999999999999999,1"], num_edges="{e}", num_nodes="4", feat_cut=0,
         gzip_cut=0)  # fmt: skip
def test_malformed_ogbn_csv_converts_right_or_refuses(
    edge_lines, num_edges, num_nodes, feat_cut, gzip_cut
):
    d = Path(tempfile.mkdtemp(prefix="fuzz-ogbn-"))
    try:
        raw = d / "src" / "raw"
        raw.mkdir(parents=True)

        def put(name: str, text: str, cut: int = 0) -> None:
            data = gzip.compress(text.encode())
            (raw / name).write_bytes(data[: len(data) - cut] if cut else data)

        feats = "\n".join(",".join(str(i + j) for j in range(3)) for i in range(4)) + "\n"
        put("node-feat.csv.gz", feats, feat_cut)
        put("node-label.csv.gz", "0\n1\n2\n0\n")
        put("edge.csv.gz", "\n".join(edge_lines) + "\n", gzip_cut)
        put("num-edge-list.csv.gz", num_edges.replace("{e}", str(len(edge_lines))) + "\n")
        put("num-node-list.csv.gz", num_nodes + "\n")
        ok = _convert_or_refuse(d / "src", d / "dst")
        if ok:
            assert verify_store(d / "dst").ok
            store = open_store(d / "dst")
            assert store.num_nodes == 4
            np.testing.assert_array_equal(
                np.asarray(store.features)[store.new_id],
                np.arange(4)[:, None] + np.arange(3)[None, :],
            )
    finally:
        shutil.rmtree(d)


# ----------------------------------------------------------------------------- damaged layouts


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    from refresh_store.synthetic import make_dataset

    out = {}
    for layout in ("papers100m", "mag240m", "ogbn"):
        root = tmp_path_factory.mktemp(layout)
        out[layout] = make_dataset(
            layout, 300, root, seed=3, feature_dim=4, num_classes=3, progress=False
        )
    return out


@settings(max_examples=_CONVERT_EXAMPLES)
@given(
    layout=st.sampled_from(["papers100m", "mag240m", "ogbn"]),
    which=st.integers(0, 100),
    cut=st.sampled_from([0, 0, 1, 17, 200, 10**9]),
    flips=st.lists(st.integers(0, 10**6), max_size=3),
)
def test_damaged_dataset_files_convert_or_refuse(layouts, layout, which, cut, flips):
    """A truncated or corrupted file of a real layout: a store that verifies, or a RefreshError."""
    d = Path(tempfile.mkdtemp(prefix="fuzz-layout-"))
    try:
        src = d / "src"
        shutil.copytree(layouts[layout], src)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        target = files[which % len(files)]
        data = bytearray(target.read_bytes())
        for i in flips:
            if data:
                data[i % len(data)] ^= 0x5A
        target.write_bytes(bytes(data[: max(0, len(data) - cut)]))
        if _convert_or_refuse(src, d / "dst"):
            assert verify_store(d / "dst").ok
    finally:
        shutil.rmtree(d)


def test_split_file_claiming_1e11_ids_is_refused_before_allocating(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "features.npy", np.ones((5, 2), dtype=np.float32))
    np.save(src / "edge_index.npy", np.array([[0, 1], [1, 2]]))
    (src / "train_idx.npy").write_bytes(_npy_bytes("<i8", False, (10**11,), b"\0" * 80, 1))
    with pytest.raises(SourceFormatError, match="train_idx.npy.*truncated"):
        convert(src, tmp_path / "dst", progress=False)
    assert not is_complete_store(tmp_path / "dst")


@pytest.mark.parametrize(("key", "value"), [("author", -5), ("paper", "x"), ("num_classes", 1.5)])
def test_mag240m_meta_with_bad_counts_is_refused(layouts, tmp_path, key, value):
    import torch

    src = tmp_path / "src"
    shutil.copytree(layouts["mag240m"], src)
    meta = torch.load(src / "meta.pt", weights_only=True)
    meta[key] = value
    torch.save(meta, src / "meta.pt")
    for graph in ("papers", "full"):
        with pytest.raises(SourceFormatError, match="meta.pt"):
            convert(src, tmp_path / "dst", progress=False, mag240m_graph=graph)
