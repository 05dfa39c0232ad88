"""Tests of refresh_store/synthetic/ and tools/make_dataset.py."""

from __future__ import annotations

import builtins
import gzip
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from refresh_store.synthetic import INFO_FILE, LAYOUTS, dataset_dir, make_dataset

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def no_prompt(monkeypatch):
    """ogb asks on stdin before re-downloading; a prompt here means the layout is wrong."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"ogb prompted: {args!r}")

    monkeypatch.setattr(builtins, "input", refuse)


def read_csv_ints(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, dtype=np.int64, delimiter=",", ndmin=1)


def mag_cites(path: Path) -> np.ndarray:
    return np.load(path / "processed" / "paper___cites___paper" / "edge_index.npy")


# ---------------------------------------------------------------------------
# Each layout opens with ogb's own loaders, offline, with the requested sizes.


def test_ogbn_products_opens_with_ogb(tmp_path, no_prompt):
    from ogb.nodeproppred import NodePropPredDataset

    n, d, c = 1500, 12, 5
    path = make_dataset("ogbn", n, tmp_path, seed=1, feature_dim=d, num_classes=c, progress=False)
    assert path == tmp_path / "ogbn_products" == dataset_dir("ogbn", tmp_path)
    info = json.loads((path / INFO_FILE).read_text())
    ds = NodePropPredDataset("ogbn-products", root=str(tmp_path))
    graph, labels = ds[0]
    assert graph["num_nodes"] == n
    assert graph["node_feat"].shape == (n, d) and graph["node_feat"].dtype == np.float32
    # ogbn-products is undirected: ogb adds the reverse of each raw edge.
    assert graph["edge_index"].shape == (2, 2 * info["num_edges"])
    assert 0.8 * 15 * n < info["num_edges"] < 1.2 * 15 * n
    assert labels.shape == (n, 1) and set(np.unique(labels)) == set(range(c))
    split = ds.get_idx_split()
    everything = np.concatenate([split["train"], split["valid"], split["test"]])
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))
    # Sales-ranking split: 8 % train, taken from the most popular products.
    assert abs(len(split["train"]) - 0.08 * n) <= 2
    indeg = np.bincount(graph["edge_index"][1], minlength=n)
    assert indeg[split["train"]].mean() > 2 * indeg[split["test"]].mean()


def test_ogbn_arxiv_has_year_file_and_time_split(tmp_path, no_prompt):
    from ogb.nodeproppred import NodePropPredDataset

    n = 1200
    path = make_dataset(
        "ogbn", n, tmp_path, name="ogbn-arxiv", feature_dim=4, num_classes=6, progress=False
    )
    assert path.name == "ogbn_arxiv"
    ds = NodePropPredDataset("ogbn-arxiv", root=str(tmp_path))
    graph, _ = ds[0]
    info = json.loads((path / INFO_FILE).read_text())
    assert graph["edge_index"].shape == (2, info["num_edges"])  # directed: no reverse edges
    year = graph["node_year"][:, 0]
    split = ds.get_idx_split()
    assert year[split["train"]].max() <= 2017
    assert (year[split["valid"]] == 2018).all()
    assert year[split["test"]].min() >= 2019
    assert sum(len(v) for v in split.values()) == n


def test_papers100m_opens_with_ogb(tmp_path, no_prompt):
    from ogb.nodeproppred import NodePropPredDataset

    n, d = 3000, 16
    path = make_dataset(
        "papers100m", n, tmp_path, seed=2, feature_dim=d, num_classes=7, labelled_fraction=0.1,
        progress=False,
    )  # fmt: skip
    assert path == tmp_path / "ogbn_papers100M"
    raw = np.load(path / "raw" / "data.npz", allow_pickle=False)
    assert sorted(raw.files) == [
        "edge_index", "node_feat", "node_year", "num_edges_list", "num_nodes_list",
    ]  # fmt: skip
    ds = NodePropPredDataset("ogbn-papers100M", root=str(tmp_path))
    graph, labels = ds[0]
    assert graph["num_nodes"] == n
    assert graph["node_feat"].shape == (n, d) and graph["node_feat"].dtype == np.float32
    assert graph["edge_index"].dtype == np.int64 and graph["edge_index"].shape[0] == 2
    assert graph["node_year"].shape == (n, 1)
    assert labels.shape == (n, 1) and labels.dtype.kind == "f"
    labelled = ~np.isnan(labels[:, 0])
    assert 0.07 < labelled.mean() < 0.13
    split = ds.get_idx_split()
    ids = np.concatenate([split["train"], split["valid"], split["test"]])
    np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(labelled))
    assert len(split["train"]) > 4 * len(split["test"]) > 0 < len(split["valid"])
    year = graph["node_year"][:, 0]
    assert year[split["train"]].max() < year[split["valid"]].min() <= year[split["test"]].min()


def test_papers100m_default_labels_tiny_and_large(tmp_path):
    # The real fraction (1.39 %) would leave a small test graph without labels.
    small = make_dataset("papers100m", 500, tmp_path / "a", feature_dim=2, num_classes=3, progress=False)  # fmt: skip
    big = make_dataset("papers100m", 400_000, tmp_path / "b", feature_dim=1, num_classes=3, avg_degree=0.5, progress=False)  # fmt: skip
    for path, want in ((small, 1.0), (big, 0.0139)):
        label = np.load(path / "raw" / "node-label.npz")["node_label"]
        assert abs(np.mean(~np.isnan(label)) - want) < 0.15 * want


def test_mag240m_opens_with_ogb_lsc(tmp_path, monkeypatch, no_prompt):
    # ogb.lsc's own torch.load of meta.pt / split_dict.pt needs pickles of numpy
    # arrays, refused by torch >= 2.6's weights_only default: allowed in this test only.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from ogb.lsc import MAG240MDataset

    n, c = 2500, 9
    path = make_dataset("mag240m", n, tmp_path, seed=4, feature_dim=24, num_classes=c, progress=False)  # fmt: skip
    assert path == tmp_path / "mag240m_kddcup2021"
    ds = MAG240MDataset(str(tmp_path))
    assert (ds.num_papers, ds.num_classes) == (n, c)
    assert ds.num_authors == round(1.005 * n) and ds.num_institutions >= 1  # 122.4M / 121.8M
    feat = ds.paper_feat
    assert feat.shape == (n, 24) and feat.dtype == np.float16
    assert ds.paper_label.shape == (n,) and ds.paper_year.shape == (n,)
    cites = ds.edge_index("paper", "paper")
    writes = ds.edge_index("author", "paper")
    affiliated = ds.edge_index("author", "institution")
    for ei, src_n, dst_n in (
        (cites, n, n),
        (writes, ds.num_authors, n),
        (affiliated, ds.num_authors, ds.num_institutions),
    ):
        assert ei.dtype == np.int64 and ei.shape[0] == 2 and ei.shape[1] > 0
        assert 0 <= ei[0].min() and ei[0].max() < src_n
        assert 0 <= ei[1].min() and ei[1].max() < dst_n
    assert 2.5 * n < writes.shape[1] < 4 * n
    split = ds.get_idx_split()
    assert set(split) == {"train", "valid", "test-whole", "test-dev", "test-challenge"}
    for ids in split.values():
        assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
    whole = split["test-whole"]
    np.testing.assert_array_equal(np.sort(np.concatenate([split["test-dev"], split["test-challenge"]])), whole)  # fmt: skip
    labelled = np.flatnonzero(~np.isnan(ds.all_paper_label))
    all_ids = np.concatenate([split["train"], split["valid"], whole])
    np.testing.assert_array_equal(np.sort(all_ids), labelled)
    assert set(np.unique(ds.all_paper_label[labelled])) == set(range(c))


# ---------------------------------------------------------------------------
# The graph looks like a raw real graph.


def in_degrees(path: Path, n: int) -> np.ndarray:
    return np.bincount(mag_cites(path)[1], minlength=n)


def rank_slope(indeg: np.ndarray) -> float:
    """Slope of log in-degree against log rank over the body of the distribution."""
    s = np.sort(indeg)[::-1].astype(np.float64)
    rank = np.arange(1, s.shape[0] + 1)
    keep = (rank >= 30) & (rank <= s.shape[0] // 10) & (s > 0)
    return float(np.polyfit(np.log(rank[keep] + 10), np.log(s[keep]), 1)[0])


def test_degree_skew_is_as_asked(tmp_path):
    n = 30_000
    shares, slopes = [], []
    for skew in (0.0, 0.4, 0.9):
        path = make_dataset(
            "mag240m", n, tmp_path / str(skew), skew=skew, feature_dim=1, num_classes=4,
            progress=False,
        )  # fmt: skip
        indeg = in_degrees(path, n)
        top = np.sort(indeg)[::-1][: n // 100].sum() / indeg.sum()
        shares.append(top)
        slopes.append(rank_slope(indeg))
    # Expected in-degree of popularity rank s is proportional to (s + 10) ** -skew.
    np.testing.assert_allclose(slopes, [-0.0, -0.4, -0.9], atol=0.1)
    assert shares[0] < shares[1] < shares[2]
    assert shares[2] > 0.2  # the top 1 % of nodes receive over a fifth of the edges


def test_raw_graph_warts_and_shuffled_ids(tmp_path):
    n = 20_000
    path = make_dataset("mag240m", n, tmp_path, feature_dim=1, num_classes=5, progress=False)
    src, dst = mag_cites(path)
    indeg = np.bincount(dst, minlength=n)
    outdeg = np.bincount(src, minlength=n)
    assert (src == dst).sum() > 10, "self-loops"
    keys = src * n + dst
    assert keys.shape[0] - np.unique(keys).shape[0] > 10, "repeated edges"
    isolated = (indeg == 0) & (outdeg == 0)
    source_only = (indeg == 0) & (outdeg > 0)
    assert 0.005 < isolated.mean() < 0.05
    assert 0.03 < source_only.mean() < 0.2
    # Sources come in id order (as in the real files); ids are not sorted by degree.
    assert (np.diff(src) >= 0).all()
    assert abs(np.corrcoef(np.arange(n), indeg)[0, 1]) < 0.05
    top = np.argsort(indeg)[::-1][:100]
    assert top.max() - top.min() > n // 2


def test_homophily_sets_intra_community_edges(tmp_path):
    n, c = 10_000, 4
    fractions = []
    for h in (0.0, 0.9):
        path = make_dataset(
            "mag240m", n, tmp_path / str(h), homophily=h, labelled_fraction=1.0, feature_dim=1,
            num_classes=c, skew=0.3, progress=False,
        )  # fmt: skip
        label = np.load(path / "processed" / "paper" / "node_label.npy").astype(np.int64)
        src, dst = mag_cites(path)
        keep = src != dst
        fractions.append(np.mean(label[src[keep]] == label[dst[keep]]))
        sizes = np.bincount(label) / n
        assert sizes.max() > 2 * sizes.min()  # imbalanced classes, as in real data
    chance = float(np.sum(sizes**2))
    assert abs(fractions[0] - chance) < 0.03
    assert abs(fractions[1] - (0.9 + 0.1 * chance)) < 0.03


def test_gnn_beats_mlp_on_planted_task(tmp_path, one_torch_thread):
    import torch

    n, c, d, hidden = 2000, 16, 32, 32
    path = make_dataset(
        "mag240m", n, tmp_path, seed=7, feature_dim=d, num_classes=c, labelled_fraction=1.0,
        progress=False,
    )  # fmt: skip
    paper = path / "processed" / "paper"
    x = torch.from_numpy(np.load(paper / "node_feat.npy").astype(np.float32))
    y = torch.from_numpy(np.load(paper / "node_label.npy").astype(np.int64))
    ei = torch.from_numpy(mag_cites(path))
    src = torch.cat([ei[0], ei[1]])
    dst = torch.cat([ei[1], ei[0]])
    deg = torch.bincount(dst, minlength=n).clamp(min=1).float()
    mean_adj = torch.sparse_coo_tensor(
        torch.stack([dst, src]), 1.0 / deg[dst], (n, n), check_invariants=True
    ).coalesce()
    x_mean = torch.sparse.mm(mean_adj, x)  # layer 1's aggregation has no parameters
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, test = perm[: n // 2], perm[n // 2 :]

    def accuracy(use_graph: bool) -> float:
        torch.manual_seed(0)
        width = 2 if use_graph else 1
        lin1 = torch.nn.Linear(width * d, hidden)
        lin2 = torch.nn.Linear(width * hidden, c)

        def forward() -> torch.Tensor:
            # SAGE-style layers: own representation next to the neighbours' mean.
            if not use_graph:
                return lin2(torch.relu(lin1(x)))
            h = torch.relu(lin1(torch.cat([x, x_mean], 1)))
            return lin2(torch.cat([h, torch.sparse.mm(mean_adj, h)], 1))

        opt = torch.optim.Adam([*lin1.parameters(), *lin2.parameters()], lr=0.02)
        for _ in range(60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward()[train], y[train]).backward()
            opt.step()
        with torch.no_grad():
            return float((forward()[test].argmax(1) == y[test]).float().mean())

    mlp, gnn = accuracy(False), accuracy(True)
    assert mlp > 2.0 / c, "features alone carry some signal"
    assert gnn > mlp + 0.10, f"GNN {gnn:.3f} vs MLP {mlp:.3f}"


# ---------------------------------------------------------------------------
# Determinism and arguments.


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_seed_same_bytes_any_block_size(tmp_path, layout):
    kw = dict(feature_dim=5, num_classes=3, progress=False)
    a = files_of(make_dataset(layout, 3000, tmp_path / "a", seed=11, block_rows=1024, **kw))
    b = files_of(make_dataset(layout, 3000, tmp_path / "b", seed=11, block_rows=700, **kw))
    c = files_of(make_dataset(layout, 3000, tmp_path / "c", seed=12, **kw))
    assert a.keys() == b.keys() == c.keys()
    assert a == b
    differ = [k for k in a if a[k] != c[k]]
    big = "node_feat.npy" if layout == "mag240m" else "node-feat.csv.gz"
    assert any(big in k or k.endswith("data.npz") for k in differ)
    assert any("edge" in k or k.endswith("data.npz") for k in differ)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param(dict(layout="ogbn-products"), ValueError, "layout='ogbn-products'", id="layout"),
        pytest.param(dict(num_nodes=50), ValueError, "num_nodes=50 is too small", id="tiny"),
        pytest.param(dict(num_nodes=0), ValueError, "num_nodes=0", id="zero-nodes"),
        pytest.param(dict(num_nodes=True), TypeError, "num_nodes=True", id="bool-nodes"),
        pytest.param(dict(num_nodes=1e4), TypeError, "num_nodes=10000.0", id="float-nodes"),
        pytest.param(dict(seed=-1), ValueError, "seed=-1", id="seed"),
        pytest.param(dict(feature_dim=0), ValueError, "feature_dim=0", id="dim"),
        pytest.param(dict(num_classes=1), ValueError, "num_classes=1", id="classes"),
        pytest.param(dict(skew=2.5), ValueError, "skew=2.5", id="skew"),
        pytest.param(dict(avg_degree=float("nan")), ValueError, "avg_degree=nan", id="degree"),
        pytest.param(dict(labelled_fraction=0.0), ValueError, "labelled_fraction=0.0", id="labelled"),
        pytest.param(dict(homophily=1.5), ValueError, "homophily=1.5", id="homophily"),
        pytest.param(dict(name="ogbn-arxiv"), ValueError, "name='ogbn-arxiv' does not fit", id="name"),
        pytest.param(dict(block_rows=0), ValueError, "block_rows=0", id="block"),
    ],
)  # fmt: skip
def test_bad_arguments_are_rejected(tmp_path, kwargs, error, match):
    args = dict(layout="papers100m", num_nodes=1000, out=tmp_path, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        make_dataset(**args)
    assert not any(tmp_path.iterdir()), "nothing written on bad arguments"


def test_existing_folder_needs_overwrite_and_must_be_ours(tmp_path):
    kw = dict(feature_dim=2, num_classes=3, progress=False)
    path = make_dataset("mag240m", 500, tmp_path, seed=1, **kw)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_dataset("mag240m", 500, tmp_path, seed=2, **kw)
    before = files_of(path)
    make_dataset("mag240m", 500, tmp_path, seed=2, overwrite=True, **kw)
    assert files_of(path) != before
    assert not (tmp_path / "mag240m_kddcup2021.partial").exists()
    (path / INFO_FILE).unlink()
    with pytest.raises(FileExistsError, match="not written by make_dataset"):
        make_dataset("mag240m", 500, tmp_path, overwrite=True, **kw)
    assert (path / "meta.pt").exists(), "a folder that is not ours is left alone"


def load_cli():
    spec = importlib.util.spec_from_file_location("make_dataset_cli", ROOT / "tools" / "make_dataset.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_dataset_and_prints_path(tmp_path, capsys):
    cli = load_cli()
    args = ["--layout", "papers100m", "--nodes", "800", "--out", str(tmp_path), "--seed", "3"]
    assert cli.main([*args, "--feature-dim", "6", "--classes", "4", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ogbn_papers100M")
    info = json.loads((tmp_path / "ogbn_papers100M" / INFO_FILE).read_text())
    assert (info["num_nodes"], info["feature_dim"], info["num_classes"], info["seed"]) == (800, 6, 4, 3)  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--layout", "ogbn", "--nodes", "x", "--out", "o"], "invalid int value", id="nodes"),
        pytest.param(["--layout", "csv", "--nodes", "9", "--out", "o"], "invalid choice", id="layout"),
        pytest.param(["--nodes", "9", "--out", "o"], "--layout", id="missing"),
        pytest.param(["--layout", "ogbn", "--nodes", "5000", "--out", "o", "--skew", "-1"], "skew=-1.0", id="skew"),
        pytest.param(["--layout", "ogbn", "--nodes", "20", "--out", "o"], "too small", id="small"),
    ],
)  # fmt: skip
def test_cli_bad_arguments_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    cli = load_cli()
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's own checks exit directly
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and message in err and err.startswith("make_dataset.py: error:")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_memory_stays_bounded_at_two_million_nodes(tmp_path):
    # 2M x 128 float32 features are 1 GiB and the edge index 0.5 GiB: streaming
    # must keep the process far below either.
    script = textwrap.dedent(
        f"""
        import resource
        from refresh_store.synthetic import make_dataset
        # A small run first loads (or JIT-compiles, on a cold Numba cache) every
        # kernel, whose memory is not the generator's: measure the growth after it.
        make_dataset("papers100m", 20_000, {str(tmp_path / "warm")!r}, progress=False)
        warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        make_dataset("papers100m", 2_000_000, {str(tmp_path)!r}, block_rows=32768, progress=False)
        print(warm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    warm_kib, peak_kib = map(int, res.stdout.split())
    growth_mib = (peak_kib - warm_kib) / 1024
    assert growth_mib < 300, f"peak RSS grew by {growth_mib:.0f} MiB over the warm-up run"
    data = np.load(tmp_path / "ogbn_papers100M" / "raw" / "data.npz")
    assert data["num_nodes_list"][0] == 2_000_000
    assert 0.95 * 30e6 < data["num_edges_list"][0] < 1.05 * 30e6
