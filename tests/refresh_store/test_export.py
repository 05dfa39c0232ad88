"""refresh_store.export: npy -> store -> npy gives the source back; bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refresh_store import export as export_mod
from refresh_store.cli import main
from refresh_store.convert import convert
from refresh_store.export import DEFAULT_ARRAYS, ExportError, export_store
from refresh_store.format import ARRAY_NAMES
from refresh_store.store import open_store
from refresh_store.writer import write_store

QUIET = {"progress": False}


def make_source(root: Path, n: int = 500, d: int = 5, seed: int = 1) -> dict:
    """An npy layout with self-loops, repeated edges, a hub (node 3) and isolated nodes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    src = rng.integers(0, n - 30, 5 * n)
    dst = rng.integers(0, n - 30, 5 * n)
    src = np.concatenate([src, np.arange(100, 400), [9, 9, 11], src[:40]])
    dst = np.concatenate([dst, np.full(300, 3), [9, 9, 11], dst[:40]])
    raw = {
        "features": rng.standard_normal((n, d)).astype(np.float32),
        "edge_index": np.stack([src, dst]).astype(np.int64),
        "labels": np.where(rng.random(n) < 0.2, -1, rng.integers(0, 6, n)).astype(np.int64),
    }
    perm = rng.permutation(n)  # splits in no particular order: the order must survive
    raw["train_idx"], raw["valid_idx"], raw["test_idx"] = perm[:150], perm[150:220], perm[220:300]
    for name, arr in raw.items():
        np.save(root / f"{name}.npy", arr)
    return raw


def expected_edges(raw: dict, *, undirected: bool, self_loops: str = "drop") -> set:
    n = len(raw["features"])
    s, d = raw["edge_index"]
    if self_loops != "keep":
        s, d = s[s != d], d[s != d]
    if undirected:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
    if self_loops == "add":
        s, d = np.concatenate([s, np.arange(n)]), np.concatenate([d, np.arange(n)])
    return set(zip(s.tolist(), d.tolist()))


def load(out: Path) -> dict:
    return {p.stem: np.load(p, allow_pickle=False) for p in out.glob("*.npy")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("export") / "src"
    return root, make_source(root)


@pytest.fixture(scope="module")
def store(source, tmp_path_factory):
    dst = tmp_path_factory.mktemp("export") / "store"
    convert(source[0], dst, undirected=True, **QUIET)
    return open_store(dst)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 37 rows and 53 edges, so every pass streams in many pieces (the hub's
    300+ in-edges make one span on their own)."""
    init = export_mod._Exporter.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.block, self.block_edges = 37, 53

    monkeypatch.setattr(export_mod._Exporter, "__init__", patched)


@pytest.mark.parametrize("blocks", ["one-block", "many-blocks"])
def test_round_trip_gives_the_source_back(source, store, tmp_path, request, blocks):
    if blocks == "many-blocks":
        request.getfixturevalue("small_blocks")
    _, raw = source
    out = tmp_path / "out"
    summary = export_store(store, out)
    got = load(out)
    assert sorted(got) == sorted(DEFAULT_ARRAYS)
    assert set(summary.arrays) == set(DEFAULT_ARRAYS)
    for name in ("features", "labels", "train_idx", "valid_idx", "test_idx"):
        assert got[name].dtype == raw[name].dtype, name
        np.testing.assert_array_equal(got[name], raw[name], err_msg=name)
    ei = got["edge_index"]
    assert ei.dtype == np.int64 and ei.shape == (2, store.num_edges)
    pairs = list(zip(ei[0].tolist(), ei[1].tolist()))
    assert len(set(pairs)) == len(pairs)  # deduplicated
    assert set(pairs) == expected_edges(raw, undirected=True)
    info = json.loads((out / "export.json").read_text())
    assert info["complete"] and info["ids"] == "original"
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("self_loops", ["keep", "add"])
def test_directed_and_self_loop_policies(source, tmp_path, self_loops):
    root, raw = source
    convert(root, tmp_path / "s", undirected=False, self_loops=self_loops, **QUIET)
    export_store(tmp_path / "s", tmp_path / "out", arrays=["edge_index"])
    ei = np.load(tmp_path / "out" / "edge_index.npy")
    want = expected_edges(raw, undirected=False, self_loops=self_loops)
    assert set(zip(ei[0].tolist(), ei[1].tolist())) == want and ei.shape[1] == len(want)


def test_export_reconverts_to_the_same_store(store, tmp_path):
    export_store(store, tmp_path / "npy")
    again = open_store(convert(tmp_path / "npy", tmp_path / "again", **QUIET).dst)
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(again.array(name), store.array(name), err_msg=name)


def test_store_ids_are_the_arrays_as_stored(store, tmp_path, small_blocks):
    names = ["features", "labels", "indptr", "indices", "edge_index", "train_idx", "old_id"]
    export_store(store, tmp_path / "out", arrays=names, ids="store")
    got = load(tmp_path / "out")
    for name in names:
        if name != "edge_index":
            np.testing.assert_array_equal(got[name], store.array(name), err_msg=name)
    deg = np.diff(store.indptr)
    np.testing.assert_array_equal(got["edge_index"][0], store.indices)
    np.testing.assert_array_equal(got["edge_index"][1], np.repeat(np.arange(store.num_nodes), deg))


def test_cli_exports(store, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["export", str(store.path), str(out), "--arrays", "labels,test_idx", "--no-progress"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.npy", "test_idx.npy"]
    assert "labels.npy" in capsys.readouterr().out


def _bad_perm_store(path: Path, case: str):
    rng = np.random.default_rng(0)
    n = 50
    kw = dict(
        features=rng.standard_normal((n, 3)).astype(np.float32),
        indptr=np.zeros(n + 1, np.int64),
        indices=np.zeros(0, np.int32),
        labels=np.zeros(n, np.int64),
        train_idx=np.arange(10),
        valid_idx=np.arange(10, 20),
        test_idx=np.arange(20, 30),
    )
    if case == "short":
        kw.update(new_id=np.arange(n - 1), old_id=np.arange(n - 1))
    else:  # both arrays the same 3-cycle: not inverse of each other
        p = np.roll(np.arange(n), 1)
        kw.update(new_id=p, old_id=p)
    return write_store(path, **kw)


@pytest.mark.parametrize(
    "case, phrase",
    [
        pytest.param("unknown-array", "unknown array 'weights'", id="unknown-array"),
        pytest.param("missing-array", "no readable array 'labels'", id="missing-array"),
        pytest.param("csc-original", "has no form in original ids", id="csc-in-original-ids"),
        pytest.param("perm-short", "id space does not match", id="permutation-wrong-length"),
        pytest.param("perm-not-inverse", "not inverse permutations", id="permutation-not-inverse"),
        pytest.param("out-exists", "exists", id="out-exists"),
        pytest.param("not-a-store", "not a ReFresh store", id="not-a-store"),
    ],
)
def test_bad_input_one_line_exit_2(store, tmp_path, capsys, case, phrase):
    out = tmp_path / "out"
    path, extra = str(store.path), []
    if case == "unknown-array":
        extra = ["--arrays", "features,weights"]
    elif case == "missing-array":
        broken = tmp_path / "broken"
        write_store(broken, **{n: store.array(n) for n in ARRAY_NAMES})
        for f in (broken / "labels").iterdir():
            f.unlink() if f.is_file() else None
        path = str(broken)
    elif case == "csc-original":
        extra = ["--arrays", "indices"]
    elif case == "perm-short":
        path = str(_bad_perm_store(tmp_path / "bad", "short").path)
    elif case == "perm-not-inverse":
        path = str(_bad_perm_store(tmp_path / "bad", "cycle").path)
    elif case == "out-exists":
        out.mkdir()
        (out / "mine.npy").write_bytes(b"keep")
    elif case == "not-a-store":
        path = str(tmp_path)
    assert main(["export", path, str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert phrase in err, err
    assert len(err.strip().splitlines()) == 1
    if case == "out-exists":
        assert [p.name for p in out.iterdir()] == ["mine.npy"]
        assert (out / "mine.npy").read_bytes() == b"keep"
    else:
        assert not out.exists()
    assert not (tmp_path / "out.partial").exists()


def test_library_refuses_a_bad_id_space_name(store, tmp_path):
    with pytest.raises(ExportError, match="ids must be one of"):
        export_store(store, tmp_path / "o", ids="reordered")
