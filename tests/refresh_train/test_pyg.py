"""The PyG remote backend: PyG's NodeLoader and a plain PyG model train from a store."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from _params import DEVICES
from _planted import planted_arrays, planted_store
from torch_geometric.loader import NodeLoader
from torch_geometric.nn import GraphSAGE

from refresh_store.writer import write_store
from refresh_train.config import EvalConfig, LoaderConfig, TierConfig, TrainConfig
from refresh_train.pyg import (
    PygAdapterError,
    StoreFeatureStore,
    StoreGraphStore,
    StoreNeighborSampler,
    open_pyg,
)
from refresh_train.trainer import train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The trainer tests' planted store, with a non-trivial permutation to original ids."""
    arrays = planted_arrays()
    return write_store(tmp_path_factory.mktemp("pyg") / "s", num_classes=4, **arrays)


def _loader(fs, gs, sampler, nodes, **kw) -> NodeLoader:
    kw.setdefault("batch_size", 128)
    return NodeLoader(data=(fs, gs), node_sampler=sampler, input_nodes=nodes, **kw)


def _in_edges(store) -> set[tuple[int, int]]:
    indptr, indices = np.asarray(store.indptr), np.asarray(store.indices)
    dst = np.repeat(np.arange(store.num_nodes), np.diff(indptr))
    return set(zip(indices.tolist(), dst.tolist()))


def test_contract_numpy_train_idx_as_zarr_reads_it(store):
    fs, gs, sampler = open_pyg(str(store.path), num_neighbors=[10, 5])
    train_idx = zarr.open_group(str(store.path), mode="r")["train_idx"][:]
    assert isinstance(train_idx, np.ndarray)
    loader = _loader(fs, gs, sampler, train_idx, batch_size=512, shuffle=True)
    seen = []
    for batch in loader:
        for key in ("x", "y", "edge_index", "n_id", "batch_size"):
            assert key in batch, key
        seen.append(batch.n_id[: batch.batch_size])
    assert len(seen) == -(-len(train_idx) // 512)
    np.testing.assert_array_equal(np.sort(torch.cat(seen).numpy()), np.sort(train_idx))
    fs.close()


def test_batches_are_pyg_subgraphs_of_the_store(store):
    fanouts = [6, 3]
    fs, gs, sampler = open_pyg(store, num_neighbors=fanouts, seed=3)
    edges = _in_edges(store)
    deg = np.diff(np.asarray(store.indptr))
    feats, labels = np.asarray(store.features), np.asarray(store.labels)
    seeds = torch.from_numpy(np.asarray(store.train_idx[:200]).copy())
    for batch in _loader(fs, gs, sampler, seeds, batch_size=100):
        n_id, ei, b = batch.n_id.numpy(), batch.edge_index, batch.batch_size
        np.testing.assert_array_equal(n_id[:b], seeds[batch.input_id].numpy())  # seeds first
        assert len(np.unique(n_id)) == len(n_id)
        assert sum(batch.num_sampled_nodes) == len(n_id)
        assert sum(batch.num_sampled_edges) == ei.shape[1]
        np.testing.assert_array_equal(batch.x.numpy(), feats[n_id])
        np.testing.assert_array_equal(batch.y.numpy(), labels[n_id])
        # Every edge is an in-edge of the store; each hop's edges go into the
        # previous hop's new nodes, from nodes up to this hop; a node draws
        # min(fanout, degree) neighbours once, at its hop.
        glob = set(zip(n_id[ei[0]].tolist(), n_id[ei[1]].tolist()))
        assert glob <= edges
        ends = np.cumsum(batch.num_sampled_nodes)
        start = 0
        for h, (ne, f) in enumerate(zip(batch.num_sampled_edges, fanouts)):
            src, dst = ei[0, start : start + ne].numpy(), ei[1, start : start + ne].numpy()
            lo = ends[h - 1] if h else 0
            assert np.all((dst >= lo) & (dst < ends[h])) and np.all(src < ends[h + 1])
            got = np.bincount(dst - lo, minlength=ends[h] - lo)
            np.testing.assert_array_equal(got, np.minimum(f, deg[n_id[lo : ends[h]]]))
            start += ne
        # No node is there without an edge into the seeds' tree.
        assert set(range(b, len(n_id))) <= set(ei[0].tolist())
    fs.close()


@pytest.mark.parametrize("device", DEVICES)
def test_tiers_serve_the_same_rows_and_count_them(store, device):
    row = store.region("features").row_bytes
    fs = StoreFeatureStore(
        store, device=device, cache_budget_bytes=300 * row, host_budget_bytes=400 * row
    )
    ids = torch.tensor([0, 5, 299, 300, 1500, 5, 1999])
    x = fs.get_tensor(group_name=None, attr_name="x", index=ids)
    assert x.device.type == device
    np.testing.assert_array_equal(x.cpu().numpy(), np.asarray(store.features)[ids.numpy()])
    stats = fs.stats()
    assert stats["rows_device"] == 4 and stats["rows_host"] + stats["rows_disk"] == 3
    assert fs.get_tensor_size(None, "x") == (store.num_nodes, store.feature_dim)
    whole = fs.get_tensor(None, "x", None)  # the memory map itself
    assert whole.shape == (store.num_nodes, store.feature_dim)
    np.testing.assert_array_equal(whole[7].numpy(), store.features[7])
    fs.close()


def test_original_ids_in_and_out(store):
    old_id, new_id = np.asarray(store.old_id), np.asarray(store.new_id)
    assert not np.array_equal(old_id, np.arange(store.num_nodes))  # the test means something
    fs, gs, sampler = open_pyg(store, num_neighbors=[5, 5], ids="original")
    source_train = old_id[np.asarray(store.train_idx)]  # what export writes as train_idx.npy
    batch = next(iter(_loader(fs, gs, sampler, torch.from_numpy(source_train[:64]))))
    np.testing.assert_array_equal(batch.n_id[:64].numpy(), source_train[:64])
    store_ids = new_id[batch.n_id.numpy()]
    np.testing.assert_array_equal(batch.x.numpy(), np.asarray(store.features)[store_ids])
    np.testing.assert_array_equal(batch.y.numpy(), np.asarray(store.labels)[store_ids])
    # the same draws as in store ids: only the numbering differs
    fs2, gs2, sampler2 = open_pyg(store, num_neighbors=[5, 5])
    b2 = next(iter(_loader(fs2, gs2, sampler2, torch.from_numpy(new_id[source_train[:64]]))))
    np.testing.assert_array_equal(new_id[batch.n_id.numpy()], b2.n_id.numpy())
    torch.testing.assert_close(batch.edge_index, b2.edge_index)
    y_all = fs.get_tensor(None, "y", None)
    np.testing.assert_array_equal(y_all.numpy(), np.asarray(store.labels)[new_id])
    fs.close()
    fs2.close()


def test_graph_store_is_the_memory_mapped_csc(store):
    gs = StoreGraphStore(store)
    (attr,) = gs.get_all_edge_attrs()
    assert attr.layout.value == "csc" and attr.size == (store.num_nodes, store.num_nodes)
    row, colptr = gs.get_edge_index(None, "csc")
    np.testing.assert_array_equal(row.numpy(), store.indices)
    np.testing.assert_array_equal(colptr.numpy(), store.indptr)
    assert row.dtype == torch.int32  # as stored: no copy
    for t, name in ((row, "indices"), (colptr, "indptr")):
        assert _mapped_file(t.data_ptr()) == store.region(name).path, name
    with pytest.raises(KeyError):
        gs.get_edge_index(None, "coo")  # stored as csc only; coo() converts
    coo_row, coo_col, _ = gs.coo()
    assert coo_row.numel() == store.num_edges
    wide, _ = StoreGraphStore(store, index_dtype=torch.int64).get_edge_index(None, "csc")
    assert wide.dtype == torch.int64


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux), or None."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5].strip() if len(parts) == 6 else None
    return None


def _accuracy(model, loader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in loader:
            pred = model(b.x, b.edge_index)[: b.batch_size].argmax(-1)
            right += int((pred == b.y[: b.batch_size]).sum())
            total += b.batch_size
    return right / total


def test_pyg_graphsage_reaches_the_trainers_accuracy(store, capsys):
    """A plain torch_geometric GraphSAGE trained through the adapter against this
    project's trainer on the same store, model size, fanouts, batches and epochs."""
    epochs, fanouts, batch_size, lr = 3, [8, 4], 128, 0.01
    records = train(
        TrainConfig(
            store=str(store.path),
            model="sage",
            layers=2,
            hidden=32,
            fanouts=tuple(fanouts),
            batch_size=batch_size,
            epochs=epochs,
            lr=lr,
            seed=1,
            tiers=TierConfig(cache="none"),
            eval=EvalConfig(mode="sampled", batch_size=512),
            loader=LoaderConfig(prefetch_batches=2),
            progress=False,
        )
    )
    trainer_acc = records[-1]["test_acc"]

    torch.manual_seed(1)
    fs, gs, sampler = open_pyg(store, num_neighbors=fanouts, seed=1)
    model = GraphSAGE(store.feature_dim, 32, num_layers=2, out_channels=store.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_loader = _loader(fs, gs, sampler, store.train_idx, batch_size=batch_size, shuffle=True)
    for _ in range(epochs):
        model.train()
        for b in train_loader:
            opt.zero_grad()
            out = model(b.x, b.edge_index)[: b.batch_size]
            loss = torch.nn.functional.cross_entropy(out, b.y[: b.batch_size])
            loss.backward()
            opt.step()
    pyg_acc = _accuracy(model, _loader(fs, gs, sampler, store.test_idx, batch_size=512))
    fs.close()
    with capsys.disabled():
        print(
            f"\ntest accuracy: PyG GraphSAGE via adapter {pyg_acc:.4f}, trainer {trainer_acc:.4f}"
        )
    assert trainer_acc > 0.85
    assert pyg_acc >= trainer_acc - 0.03


@pytest.mark.skipif(
    importlib.util.find_spec("pyg_lib") is None
    and importlib.util.find_spec("torch_sparse") is None,
    reason="PyG's NeighborLoader needs pyg-lib or torch-sparse; neither is installed",
)
def test_pygs_own_neighbor_loader_over_the_same_pair(store):
    from torch_geometric.loader import NeighborLoader

    fs = StoreFeatureStore(store)
    gs = StoreGraphStore(store, index_dtype=torch.int64)  # PyG's samplers want int64
    loader = NeighborLoader(
        data=(fs, gs), num_neighbors=[5, 5], input_nodes=torch.from_numpy(np.array(store.train_idx[:256])), batch_size=128
    )  # fmt: skip
    feats, edges = np.asarray(store.features), _in_edges(store)
    for b in loader:
        np.testing.assert_array_equal(b.x.numpy(), feats[b.n_id.numpy()])
        n_id = b.n_id.numpy()
        assert set(zip(n_id[b.edge_index[0]].tolist(), n_id[b.edge_index[1]].tolist())) <= edges
    fs.close()


def test_same_seed_same_batches(store):
    def first(seed):
        fs, gs, s = open_pyg(store, num_neighbors=[4, 4], seed=seed)
        batch = next(iter(_loader(fs, gs, s, torch.arange(100))))
        fs.close()
        return batch

    a, b, c = first(0), first(0), first(1)
    torch.testing.assert_close(a.n_id, b.n_id)
    torch.testing.assert_close(a.edge_index, b.edge_index)
    assert not torch.equal(a.n_id, c.n_id) or not torch.equal(a.edge_index, c.edge_index)


def test_bad_input_is_refused(store, tmp_path):
    with pytest.raises(PygAdapterError, match="ids must be 'store' or 'original'"):
        open_pyg(store, [5], ids="reordered")
    fs, gs, sampler = open_pyg(store, [5])
    with pytest.raises(PygAdapterError, match="outside"):
        next(iter(_loader(fs, gs, sampler, torch.tensor([0, store.num_nodes]))))
    with pytest.raises(PygAdapterError, match="index of 'x' holds node -1"):
        fs.get_tensor(None, "x", torch.tensor([-1]))
    with pytest.raises(PygAdapterError, match="read-only"):
        fs.put_tensor(torch.zeros(1, store.feature_dim), None, "x", torch.tensor([0]))
    with pytest.raises(PygAdapterError, match="read-only"):
        gs.put_edge_index((torch.zeros(1), torch.zeros(2)), None, "csc")
    fs.close()
    with pytest.raises(PygAdapterError, match="feature tiers"):
        StoreFeatureStore(store, host_budget_bytes=1 << 16, host_policy="fifo-ish")
    with pytest.raises(PygAdapterError, match="list of fanouts"):
        StoreNeighborSampler(store, {("a", "b", "c"): [5]})
    with pytest.raises(PygAdapterError, match="num_neighbors"):
        StoreNeighborSampler(store, [5, -3])
    # a store whose permutation does not cover its nodes has no original id space
    arrays = planted_arrays(num_nodes=300)
    arrays["new_id"], arrays["old_id"] = arrays["new_id"][:-1], arrays["old_id"][:-1]
    bad = write_store(tmp_path / "bad", num_classes=4, **arrays)
    with pytest.raises(PygAdapterError, match="original id space does not match"):
        open_pyg(bad, [5], ids="original")
    open_pyg(bad, [5])[0].close()  # its store ids are fine


def test_planted_store_helper_still_opens(tmp_path):
    s = planted_store(tmp_path / "p", num_nodes=200)
    fs, gs, sampler = open_pyg(s, [3])
    assert next(iter(_loader(fs, gs, sampler, torch.arange(50)))).batch_size == 50
    fs.close()


def test_example_script_runs(store, capsys):
    """examples/pyg_graphsage.py, as the README runs it, on the planted store."""
    path = Path(__file__).resolve().parents[2] / "examples" / "pyg_graphsage.py"
    example = runpy.run_path(str(path))
    result = example["main"](["--store", str(store.path), "--epochs", "1", "--fanouts", "8,4",
                              "--batch-size", "256", "--lr", "0.01", "--cache-budget", "16KiB"])  # fmt: skip
    assert result["test_acc"] > 0.5  # 4 balanced classes: chance is 0.25
    assert result["rows_device"] > 0 and result["rows_disk"] > 0
    assert "test acc" in capsys.readouterr().out
