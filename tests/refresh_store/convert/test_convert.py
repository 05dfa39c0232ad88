"""Tests of refresh_store.convert: stores built from each layout equal a plain numpy reference."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorstore as ts
import torch
import zarr

from refresh_store.cli import main
from refresh_store.convert import _topology as _csc
from refresh_store.convert import convert, parse_size
from refresh_store.convert.permute import permute_rows
from refresh_store.convert.reorder import degree_order
from refresh_store.errors import ConvertError
from refresh_store.format import ARRAY_NAMES
from refresh_store.readers import open_source
from refresh_store.store import open_store
from refresh_store.synthetic import make_dataset

N = 3000
D = 8
C = 5
QUIET = {"progress": False}


# ----------------------------------------------------------------------------- sources


def _csv(path: Path) -> np.ndarray:
    return pd.read_csv(path, header=None).to_numpy()


def load_raw(root: Path, layout: str) -> dict:
    """Everything in a source, read in full with numpy/pandas (the test's independent view)."""
    if layout == "ogbn":
        raw = root / "raw"
        edges = _csv(raw / "edge.csv.gz").T
        out = dict(
            features=_csv(raw / "node-feat.csv.gz").astype(np.float32),
            src=edges[0],
            dst=edges[1],
            labels=_csv(raw / "node-label.csv.gz")[:, 0].astype(np.float64),
        )
        split_dir = next((root / "split").iterdir())
        out["splits"] = {
            s: _csv(split_dir / f"{s}.csv.gz")[:, 0] for s in ("train", "valid", "test")
        }
    elif layout == "papers100m":
        data = np.load(root / "raw" / "data.npz", allow_pickle=False)
        out = dict(
            features=data["node_feat"],
            src=data["edge_index"][0],
            dst=data["edge_index"][1],
            labels=np.load(root / "raw" / "node-label.npz")["node_label"].reshape(-1),
        )
        out["splits"] = {
            s: _csv(root / "split" / "time" / f"{s}.csv.gz")[:, 0]
            for s in ("train", "valid", "test")
        }
    elif layout == "mag240m":
        proc = root / "processed"
        ei = np.load(proc / "paper___cites___paper" / "edge_index.npy")
        split = torch.load(root / "split_dict.pt", weights_only=False)  # written by this test run
        out = dict(
            features=np.load(proc / "paper" / "node_feat.npy"),
            src=ei[0],
            dst=ei[1],
            labels=np.load(proc / "paper" / "node_label.npy").astype(np.float64),
            splits={"train": split["train"], "valid": split["valid"], "test": split["test-dev"]},
        )
    else:
        ei = np.load(root / "edge_index.npy")
        out = dict(
            features=np.load(root / "features.npy"),
            src=ei[0],
            dst=ei[1],
            labels=np.load(root / "labels.npy").astype(np.float64),
            splits={s: np.load(root / f"{s}_idx.npy") for s in ("train", "valid", "test")},
        )
    return out


def expected_store(
    raw: dict,
    *,
    undirected: bool = True,
    self_loops: str = "drop",
    reorder: str = "degree",
    dtype=None,
) -> dict:
    """What a converted store must hold, computed in memory with plain numpy."""
    n = len(raw["features"])
    s, d = np.asarray(raw["src"], np.int64), np.asarray(raw["dst"], np.int64)
    if self_loops != "keep":
        keep = s != d
        s, d = s[keep], d[keep]
    if undirected:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
    if self_loops == "add":
        s, d = np.concatenate([s, np.arange(n)]), np.concatenate([d, np.arange(n)])
    pairs = np.unique(np.stack([d, s], axis=1), axis=0)
    d, s = pairs[:, 0], pairs[:, 1]
    deg = np.bincount(d, minlength=n)
    old_id = np.lexsort((np.arange(n), -deg)) if reorder == "degree" else np.arange(n)
    new_id = np.empty(n, dtype=np.int64)
    new_id[old_id] = np.arange(n)
    nd, ns = new_id[d], new_id[s]
    order = np.lexsort((ns, nd))
    labels = np.where(np.isnan(raw["labels"]), -1, raw["labels"]).astype(np.int64)
    feats = raw["features"][old_id]
    return dict(
        features=feats.astype(dtype) if dtype is not None else feats,
        indptr=np.concatenate([[0], np.cumsum(np.bincount(nd, minlength=n))]),
        indices=ns[order],
        labels=labels[old_id],
        train_idx=new_id[raw["splits"]["train"]],
        valid_idx=new_id[raw["splits"]["valid"]],
        test_idx=new_id[raw["splits"]["test"]],
        new_id=new_id,
        old_id=old_id,
    )


def make_npy(root: Path, n: int = 400, d: int = 6, seed: int = 0) -> Path:
    """A plain npy layout with the corner cases: self-loops, repeated edges, a hub, isolated nodes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    src = rng.integers(0, n - 20, 4 * n)  # nodes n-20.. have no out-edges
    dst = rng.integers(0, n - 20, 4 * n)
    src = np.concatenate(
        [src, np.arange(1, 200), [5, 5, 7], src[:50]]
    )  # hub 0, self-loops, repeats
    dst = np.concatenate([dst, np.zeros(199, dtype=np.int64), [5, 5, 7], dst[:50]])
    np.save(root / "features.npy", rng.standard_normal((n, d)).astype(np.float32))
    np.save(root / "edge_index.npy", np.stack([src, dst]).astype(np.int64))
    labels = rng.integers(0, 4, n).astype(np.float32)
    labels[::7] = np.nan
    np.save(root / "labels.npy", labels)
    perm = rng.permutation(n)
    np.save(root / "train_idx.npy", perm[:100])
    np.save(root / "valid_idx.npy", perm[100:150])
    np.save(root / "test_idx.npy", perm[150:200])
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("src")
    out = {
        layout: make_dataset(
            layout, N, base / layout, seed=3, feature_dim=D, num_classes=C, progress=False
        )
        for layout in ("ogbn", "papers100m", "mag240m")
    }
    out["npy"] = make_npy(base / "npy" / "data")
    return out


def assert_store_equals(dst: Path, want: dict) -> None:
    """zarr-python, tensorstore and open_store all read ``want`` from the store."""
    group = zarr.open_group(str(dst), mode="r")
    store = open_store(dst)
    for name in ARRAY_NAMES:
        ref = want[name]
        np.testing.assert_array_equal(group[name][:], ref, err_msg=f"zarr {name}")
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(dst / name)}}
        np.testing.assert_array_equal(
            ts.open(spec).result().read().result(), ref, err_msg=f"ts {name}"
        )
        np.testing.assert_array_equal(np.asarray(getattr(store, name)), ref, err_msg=name)
    assert group["features"].dtype == want["features"].dtype
    assert store.num_edges == len(want["indices"]) and store.num_nodes == len(want["labels"])


# ----------------------------------------------------------------------------- whole conversions


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("layout", ["ogbn", "papers100m", "mag240m", "npy"])
def test_each_format_matches_reference(datasets, tmp_path, layout):
    dst = tmp_path / "store"
    before = _digest(datasets[layout])
    summary = convert(datasets[layout], dst, **QUIET)
    assert _digest(datasets[layout]) == before  # the source is never modified
    raw = load_raw(datasets[layout], layout)
    want = expected_store(raw, undirected=layout != "npy")
    assert_store_equals(dst, want)
    m = open_store(dst).manifest
    assert m["reorder"] == "degree" and m["source"]["format"] == layout
    assert m["num_classes"] == (C if layout != "npy" else 4)
    assert summary.num_edges == len(want["indices"]) and summary.peak_rss_bytes > 0
    assert not (tmp_path / "store.partial").exists()
    store = open_store(dst)
    deg = np.diff(store.indptr)
    assert np.all(deg[:-1] >= deg[1:])  # hottest rows first
    ties = deg[:-1] == deg[1:]
    assert np.all(store.old_id[:-1][ties] < store.old_id[1:][ties])
    if layout == "npy":
        assert store.old_id[0] == 0  # the hub of make_npy


def test_reorder_none_directed_float16(datasets, tmp_path):
    dst = tmp_path / "s"
    convert(datasets["papers100m"], dst, reorder="none", undirected=False, dtype="float16", **QUIET)
    raw = load_raw(datasets["papers100m"], "papers100m")
    want = expected_store(raw, undirected=False, reorder="none", dtype=np.float16)
    assert_store_equals(dst, want)
    assert open_store(dst).manifest["undirected"] is False


@pytest.mark.parametrize("self_loops", ["keep", "add"])
def test_self_loop_policies(datasets, tmp_path, self_loops):
    dst = tmp_path / "s"
    convert(datasets["npy"], dst, self_loops=self_loops, undirected=True, **QUIET)
    want = expected_store(load_raw(datasets["npy"], "npy"), self_loops=self_loops)
    assert_store_equals(dst, want)
    store = open_store(dst)
    loops = sum(
        int(v in store.indices[store.indptr[v] : store.indptr[v + 1]])
        for v in range(store.num_nodes)
    )
    raw = load_raw(datasets["npy"], "npy")
    in_source = len(np.unique(raw["src"][raw["src"] == raw["dst"]]))  # 5, 7 and random ones
    assert loops == (store.num_nodes if self_loops == "add" else in_source) and in_source >= 2


def test_shuffle_strategy_writes_the_same_features(datasets, tmp_path):
    convert(datasets["papers100m"], tmp_path / "s", feature_strategy="shuffle", **QUIET)
    want = expected_store(load_raw(datasets["papers100m"], "papers100m"))
    np.testing.assert_array_equal(open_store(tmp_path / "s").features, want["features"])
    assert open_store(tmp_path / "s").manifest["convert"]["feature_strategy"] == "shuffle"


def test_compressed_npz_is_streamed_and_staged(datasets, tmp_path):
    src = tmp_path / "ogbn_papers100M"
    shutil.copytree(datasets["papers100m"], src)
    with np.load(src / "raw" / "data.npz") as data:
        arrays = {k: data[k] for k in data.files}
    np.savez_compressed(src / "raw" / "data.npz", **arrays)  # as OGB ships it
    with zipfile.ZipFile(src / "raw" / "data.npz") as zf:
        assert zf.getinfo("node_feat.npy").compress_type == zipfile.ZIP_DEFLATED
    convert(src, tmp_path / "s", feature_strategy="gather", **QUIET)
    assert_store_equals(tmp_path / "s", expected_store(load_raw(src, "papers100m")))


def test_mag240m_full_graph_means(datasets, tmp_path):
    root = datasets["mag240m"]
    convert(root, tmp_path / "s", mag240m_graph="full", dtype="float32", **QUIET)
    store = open_store(tmp_path / "s")
    proc = root / "processed"
    paper = np.load(proc / "paper" / "node_feat.npy").astype(np.float32)
    writes = np.load(proc / "author___writes___paper" / "edge_index.npy")
    aff = np.load(proc / "author___affiliated_with___institution" / "edge_index.npy")
    p = len(paper)
    meta = torch.load(root / "meta.pt", weights_only=True)
    a, i = meta["author"], meta["institution"]
    author = np.zeros((a, D), np.float64)
    np.add.at(author, writes[0], paper[writes[1]])
    author /= np.maximum(np.bincount(writes[0], minlength=a), 1)[:, None]
    author = author.astype(np.float32)
    inst = np.zeros((i, D), np.float64)
    np.add.at(inst, aff[1], author[aff[0]])
    inst /= np.maximum(np.bincount(aff[1], minlength=i), 1)[:, None]
    feats = np.concatenate([paper, author, inst.astype(np.float32)])
    assert store.num_nodes == p + a + i
    np.testing.assert_allclose(store.features, feats[store.old_id], rtol=1e-5, atol=1e-6)
    cites = np.load(proc / "paper___cites___paper" / "edge_index.npy")
    raw = dict(
        features=feats,
        src=np.concatenate([cites[0], writes[0] + p, aff[0] + p]),
        dst=np.concatenate([cites[1], writes[1], aff[1] + p + a]),
        labels=np.concatenate(
            [np.load(proc / "paper" / "node_label.npy").astype(np.float64), np.full(a + i, np.nan)]
        ),
        splits=load_raw(root, "mag240m")["splits"],
    )
    want = expected_store(raw)
    for name in ("indptr", "indices", "labels", "train_idx", "new_id"):
        np.testing.assert_array_equal(getattr(store, name), want[name], err_msg=name)
    assert store.manifest["source"]["node_types"]["author"] == [p, p + a]


def test_cli_summary_overwrite_and_refusals(datasets, tmp_path, capsys):
    dst = tmp_path / "s"
    rc = main([str(datasets["npy"]), str(dst), "--no-progress", "--memory-budget", "256MiB"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("nodes (N)", "edges (E)", "peak RSS", "features: gather", "topology"):
        assert word in out
    with pytest.raises(ConvertError, match="--overwrite"):
        convert(datasets["npy"], dst, **QUIET)
    assert main([str(datasets["npy"]), str(dst), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    convert(datasets["npy"], dst, overwrite=True, reorder="none", **QUIET)
    assert open_store(dst).manifest["reorder"] == "none"
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert main([str(datasets["npy"]), str(other), "--no-progress", "--overwrite"]) == 2
    assert "non-empty folder that is not a ReFresh store" in capsys.readouterr().err
    assert (other / "precious.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- pieces, small budgets


def test_csc_passes_with_many_small_buckets(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    src = np.concatenate([rng.integers(0, n, 5000), np.arange(n)])
    dst = np.concatenate([rng.integers(0, n, 5000), np.zeros(n, dtype=np.int64)])  # hub 0

    class Edges(_csc.EdgeSource):
        name, num_edges = "test", len(src)

        def blocks(self, max_edges):
            for a in range(0, len(src), max_edges):
                yield a, src[a : a + max_edges], dst[a : a + max_edges]

    raw = dict(features=np.zeros((n, 1)), src=src, dst=dst, labels=np.zeros(n), splits={})
    raw["splits"] = {s: np.empty(0, np.int64) for s in ("train", "valid", "test")}
    want = expected_store(raw)
    buckets = _csc.bucket_edges(
        Edges(), n, undirected=True, drop_self_loops=True, tmp_dir=tmp_path, capacity=700,
        block_edges=333, tick=lambda r, b: None,
    )  # fmt: skip
    assert len(buckets) > 10 and max(b.count for b in buckets) <= 700
    deg = np.zeros(n, dtype=np.int32)
    buckets, e = _csc.dedupe_buckets(
        buckets, n, add_self_loops=False, degrees=deg, tmp_dir=tmp_path, tick=lambda r, b: None
    )
    assert e == len(want["indices"])
    new_id, _ = degree_order(deg)
    np.testing.assert_array_equal(new_id, want["new_id"])
    hist_deg = np.sort(deg)[::-1]
    bounds = _csc.new_id_bounds(hist_deg.astype(np.int64), np.ones(n, np.int64), 700)
    relabelled = _csc.relabel_buckets(
        buckets, n, new_id.astype(np.int32), bounds, tmp_dir=tmp_path, block_edges=100,
        tick=lambda r, b: None,
    )  # fmt: skip
    indptr = np.zeros(n + 1, np.int64)
    indices = np.zeros(e, np.int32)

    def put(arr):
        return lambda start, block: arr.__setitem__(slice(start, start + len(block)), block)

    written = _csc.write_csc(
        relabelled, n, write_indptr=put(indptr), write_indices=put(indices),
        indices_dtype=np.dtype(np.int32), sort=True, tmp_dir=tmp_path, tick=lambda r, b: None,
    )  # fmt: skip
    assert written == e
    np.testing.assert_array_equal(indptr, want["indptr"])
    np.testing.assert_array_equal(indices, want["indices"])


# "gather-reader": the gather plan without the in-memory new_id table, reading
# each block's old ids back and sorting them instead of scanning the table.
@pytest.mark.parametrize("strategy", ["gather", "gather-reader", "shuffle"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(np.float32, id="fp32"), pytest.param(np.float16, id="fp16")]
)
def test_permute_rows_in_many_blocks(tmp_path, strategy, dtype):
    from refresh_store.readers import MappedRows

    rng = np.random.default_rng(2)
    n, d = 1000, 5
    data = rng.standard_normal((n, d)).astype(np.float32)
    data.tofile(tmp_path / "rows.raw")
    src = MappedRows(tmp_path / "rows.raw", 0, (n, d), np.float32)
    new_id, old_id = degree_order(rng.integers(0, 50, n))
    table = new_id.astype(np.int32)
    if strategy == "gather-reader":
        strategy, table = "gather", np.empty(0, np.int32)
    out = np.zeros((n, d), dtype)

    def write(start, block):
        assert block.dtype == dtype
        out[start : start + len(block)] = block

    info = permute_rows(
        src, write, np.dtype(dtype), table, lambda a, b: old_id[a:b], 4000,
        tmp_path, strategy, check_finite=True,
    )  # fmt: skip
    assert info["blocks"] > 10
    np.testing.assert_array_equal(out, data[old_id].astype(dtype))
    assert not list(tmp_path.glob("shuffle_*"))
    data[old_id[517], 3] = np.inf
    data.tofile(tmp_path / "rows.raw")
    found = []

    def refuse(old):
        found.append(old)
        raise ConvertError("refused")

    with pytest.raises(ConvertError):
        permute_rows(
            MappedRows(tmp_path / "rows.raw", 0, (n, d), np.float32), write, np.dtype(dtype),
            table, lambda a, b: old_id[a:b], 4000, tmp_path, strategy,
            check_finite=True, on_nonfinite=refuse,
        )  # fmt: skip
    assert found == [old_id[517]]


def test_gather_refuses_a_table_that_is_not_a_permutation(tmp_path):
    from refresh_store.readers import MappedRows

    n, d = 300, 4
    np.arange(n * d, dtype=np.float32).tofile(tmp_path / "rows.raw")
    src = MappedRows(tmp_path / "rows.raw", 0, (n, d), np.float32)
    table = np.arange(n, dtype=np.int64)[::-1].copy()
    table[7] = table[8]  # two nodes share a new id, one new id has none
    with pytest.raises(ValueError, match="not a permutation"):
        permute_rows(
            src, lambda a, b: None, np.dtype(np.float32), table, lambda a, b: np.arange(a, b),
            1 << 20, tmp_path, "gather",
        )  # fmt: skip


def test_degree_order_ties_by_old_id():
    new_id, old_id = degree_order(np.array([1, 3, 1, 0, 3]))
    np.testing.assert_array_equal(old_id, [1, 4, 0, 2, 3])
    np.testing.assert_array_equal(new_id[old_id], np.arange(5))


def test_parse_size():
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5g") == int(1.5 * (1 << 30))
    assert parse_size("1000") == 1000
    for bad in ("two", "-1G", "3X"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_open_source_detects_root_folders(datasets):
    for layout in ("ogbn", "papers100m", "mag240m"):
        src = open_source(datasets[layout].parent)  # ogb's root holding one dataset
        assert src.format == layout and src.num_nodes == N
        src.close()


# ----------------------------------------------------------------------------- refused inputs


def _refused(capsys, src: Path, dst: Path, *extra: str, phrase: str) -> None:
    """The CLI refuses: exit 2, one line on stderr naming the problem, nothing left at dst."""
    rc = main([str(src), str(dst), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert phrase in err, err
    assert not dst.exists() or not any(dst.iterdir())
    assert not dst.with_name(dst.name + ".partial").exists()


def _break_npy(root: Path, case: str) -> None:
    n = 400
    if case == "missing":
        (root / "features.npy").unlink()
    elif case == "truncated":
        data = (root / "features.npy").read_bytes()
        (root / "features.npy").write_bytes(data[: len(data) // 2])
    elif case == "shape":
        np.save(root / "features.npy", np.zeros(n, np.float32))
    elif case == "dtype":
        np.save(root / "features.npy", np.zeros((n, 3), np.int64))
    elif case == "object":
        np.save(root / "features.npy", np.array([{"a": 1}] * n, dtype=object), allow_pickle=True)
    elif case == "edge_range":
        np.save(root / "edge_index.npy", np.array([[0, 1, 2], [1, n, 0]], dtype=np.int64))
    elif case == "nan":
        f = np.load(root / "features.npy")
        f[123, 2] = np.nan
        np.save(root / "features.npy", f)
    elif case == "label_range":
        lab = np.load(root / "labels.npy")
        lab[9] = -3
        np.save(root / "labels.npy", lab)
    elif case == "label_fraction":
        lab = np.load(root / "labels.npy")
        lab[10] = 1.5
        np.save(root / "labels.npy", lab)
    elif case == "split_overlap":
        np.save(root / "test_idx.npy", np.load(root / "train_idx.npy")[:3])
    elif case == "split_range":
        np.save(root / "valid_idx.npy", np.array([1, n + 5]))


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("missing", "is missing"),
        ("truncated", "is truncated"),
        ("shape", "expected a 2-D float array"),
        ("dtype", "expected a 2-D float array"),
        ("object", "only plain numeric arrays"),
        ("edge_range", "node ids must lie in [0, 400)"),
        ("nan", "features of node 123 in 'features.npy' hold NaN or inf"),
        ("label_range", "label of node 9"),
        ("label_fraction", "whole numbers"),
        ("split_overlap", "splits must be disjoint"),
        ("split_range", "node ids must lie in [0, 400)"),
    ],
)
def test_bad_npy_input_is_refused(tmp_path, capsys, case, phrase):
    src = make_npy(tmp_path / "src")
    _break_npy(src, case)
    _refused(capsys, src, tmp_path / "dst", phrase=phrase)


def test_allow_nan_keeps_nan(tmp_path, capsys):
    src = make_npy(tmp_path / "src")
    _break_npy(src, "nan")
    assert main([str(src), str(tmp_path / "dst"), "--no-progress", "--allow-nan"]) == 0
    store = open_store(tmp_path / "dst")
    assert np.isnan(store.features[store.new_id[123], 2])


def test_float16_overflow_is_refused(tmp_path, capsys):
    src = make_npy(tmp_path / "src")
    f = np.load(src / "features.npy")
    f[7, 0] = 1e6
    np.save(src / "features.npy", f)
    _refused(capsys, src, tmp_path / "dst", "--dtype", "float16", phrase="overflows float16")


def test_bad_csv_and_npz_sources_are_refused(datasets, tmp_path, capsys):
    ogbn = tmp_path / "ogbn_products"
    shutil.copytree(datasets["ogbn"], ogbn)
    feat = pd.read_csv(ogbn / "raw" / "node-feat.csv.gz", header=None)
    feat.iloc[:-5].to_csv(ogbn / "raw" / "node-feat.csv.gz", header=False, index=False)
    _refused(capsys, ogbn, tmp_path / "d1", phrase="truncated or the node count is wrong")
    papers = tmp_path / "ogbn_papers100M"
    shutil.copytree(datasets["papers100m"], papers)
    data = (papers / "raw" / "data.npz").read_bytes()
    (papers / "raw" / "data.npz").write_bytes(data[: len(data) // 3])
    _refused(capsys, papers, tmp_path / "d2", phrase="data.npz")


def test_memory_budget_too_small(datasets, tmp_path, capsys):
    _refused(
        capsys, datasets["npy"], tmp_path / "dst", "--memory-budget", "64MiB", phrase="too small"
    )


def test_disk_full_up_front(datasets, tmp_path, capsys, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    # (the package exports the function convert, which hides the module's name)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    _refused(capsys, datasets["npy"], tmp_path / "dst", phrase="not enough free space")


def test_disk_full_while_writing(datasets, tmp_path, capsys, monkeypatch):
    from refresh_store.writer import ArrayWriter

    real = ArrayWriter.write
    calls = []

    def full(self, start, block):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, start, block)

    monkeypatch.setattr(ArrayWriter, "write", full)
    _refused(capsys, datasets["npy"], tmp_path / "dst", phrase="disk full")
    assert len(calls) > 3


def test_script_exits_2_without_traceback(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[3] / "tools" / "convert.py"
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nothing"), str(tmp_path / "dst")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: source {str(tmp_path / 'nothing')!r} is not a folder"


def test_direct_writer_writes_aligned_blocks_and_tails(tmp_path):
    from refresh_store.checksums import array_checksums
    from refresh_store.convert._row_writers import DirectWriter, aligned_empty
    from refresh_store.writer import StoreWriter

    writer = StoreWriter(tmp_path / "s")
    aw = writer.create_array("features", (10_000, 3), np.float32)
    counted = []
    direct = DirectWriter(aw, counted.append)
    rng = np.random.default_rng(0)
    want = rng.standard_normal((10_000, 3)).astype(np.float32)
    block = aligned_empty((4096, 3), np.float32)
    for start in (0, 4096):  # aligned offsets and buffers: O_DIRECT for all but the tail
        block[:] = want[start : start + 4096]
        direct(start, block)
    direct(8192, want[8192:])  # unaligned buffer: buffered
    direct.close()
    aw.flush()
    got = np.fromfile(aw.path, dtype=np.float32, count=30_000).reshape(10_000, 3)
    np.testing.assert_array_equal(got, want)
    assert sum(counted) == want.nbytes
    # Checksummed on the way out, as the commit would compute them by reading back.
    assert aw.crc_log.as_checksums() == array_checksums(writer.partial_path, "features")
    with pytest.raises(ValueError, match="does not fit"):
        DirectWriter(aw, counted.append)(9_999, want[:5])
    writer.abort()


def test_block_writer_splits_blocks_at_aligned_rows():
    from refresh_store.convert._row_writers import _Writer, aligned_empty

    block = aligned_empty((10_000, 3), np.float32)
    assert block.ctypes.data % 4096 == 0 and block.flags.writeable
    block[:] = np.arange(30_000, dtype=np.float32).reshape(10_000, 3)
    pieces = []
    with _Writer(lambda start, rows: pieces.append((start, rows.copy())), threads=2) as writer:
        writer.submit(0, 40_960, block)
    pieces.sort(key=lambda p: p[0])
    # O_DIRECT needs every piece to start on a multiple of 4096 rows.
    assert [p[0] for p in pieces] == [40_960, 40_960 + 8192]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), block)

    def fail(start, rows):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), _Writer(fail, threads=2) as writer:
        writer.submit(0, 0, block)
        writer.wait_for_buffer(0)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_bucket_file_reads_back_its_segments_without_padding(tmp_path, direct):
    from refresh_store.convert._row_writers import _SegmentFile, aligned_empty

    rng = np.random.default_rng(3)
    parts = [rng.bytes(k) for k in (1, 5000, 4096, 12_345, 3)]
    f = _SegmentFile(tmp_path / "bucket.raw")
    if not direct and f.fd_direct is not None:  # as on a file system without O_DIRECT
        os.close(f.fd_direct)
        f.fd_direct = None
    staging = aligned_empty((8192,), np.dtype(np.uint8))  # smaller than a segment: pieces
    for part in parts:
        f.append(memoryview(part), staging)
    buf = aligned_empty((f.end + 4096,), np.dtype(np.uint8))
    got = f.read_compact(buf)
    f.close()
    want = b"".join(parts)
    assert got == len(want) and bytes(buf[:got]) == want
