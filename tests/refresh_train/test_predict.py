"""End to end on a generated MAG240M: convert (full graph) -> train rsage with --cache refresh
from configs/mag240m.toml scaled down -> MAG240MEvaluator -> test-dev submission file.

The submission is checked against a brute force: the trained model's exact
logits for every paper, computed densely from the dataset's own files in the
original numbering (not from the store's topology)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import planted_store

from refresh_store import convert, make_dataset, open_store
from refresh_train.checkpoint import load_checkpoint
from refresh_train.cli import main
from refresh_train.metrics import read_jsonl
from refresh_train.models import build_model
from refresh_train.predict import write_y_pred

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mag240m.toml"
CLASSES = 4


@pytest.fixture(scope="module")
def mag(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    src = make_dataset(
        "mag240m", 1500, base, seed=3, feature_dim=16, num_classes=CLASSES, progress=False
    )
    convert(src, base / "store", mag240m_graph="full", progress=False)
    return src, base / "store"


def scaled(store, tmp_path, *extra):
    """configs/mag240m.toml with sizes a 2-core CPU trains in seconds."""
    return [
        "--config", str(CONFIG), "--store", str(store), "--device", "cpu", "--hidden", "32",
        "--fanouts", "8,4", "--batch-size", "128", "--epochs", "2", "--lr", "0.01",
        "--cache-budget", "256KiB", "--host-budget", "512KiB", "--lookahead-budget", "4MiB",
        "--io-mode", "auto", "--max-rss", "0", "--eval", "layerwise", "--eval-every", "1",
        "--eval-batch-size", "512", "--no-progress",
        "--metrics-out", str(tmp_path / "m.jsonl"), "--checkpoint-dir", str(tmp_path / "ck"),
        "--predict-out", str(tmp_path / "sub"), *extra,
    ]  # fmt: skip


def split_dict(src: Path) -> dict[str, np.ndarray]:
    # The generator's own file (numpy arrays pickled by torch.save).
    return torch.load(src / "split_dict.pt", weights_only=False)


def brute_force_logits(src: Path, store_path: Path, model) -> np.ndarray:
    """Exact full-neighbourhood R-GraphSAGE logits of every paper, in original ids.

    Relations from the raw ``edge_index.npy`` files: cites (both directions,
    self-loops dropped), writes (author -> paper), written_by, affiliated_with,
    affiliation_of; duplicate edges count once. Features: the store's rows
    mapped back to original ids (author and institution means are the
    converter's, tested with it).
    """
    store = open_store(store_path)
    meta = torch.load(src / "meta.pt", weights_only=False)
    p, a = meta["paper"], meta["author"]
    n = store.num_nodes
    proc = src / "processed"
    cites = np.load(proc / "paper___cites___paper" / "edge_index.npy")
    writes = np.load(proc / "author___writes___paper" / "edge_index.npy")
    aff = np.load(proc / "author___affiliated_with___institution" / "edge_index.npy")
    keep = cites[0] != cites[1]
    pairs = {  # relation -> (src, dst) in the homogeneous numbering
        "cites": (
            np.concatenate([cites[0][keep], cites[1][keep]]),
            np.concatenate([cites[1][keep], cites[0][keep]]),
        ),
        "writes": (writes[0] + p, writes[1]),
        "written_by": (writes[1], writes[0] + p),
        "affiliated_with": (aff[0] + p, aff[1] + p + a),
        "affiliation_of": (aff[1] + p + a, aff[0] + p),
    }
    x = torch.from_numpy(np.asarray(store.features[np.asarray(store.new_id)], dtype=np.float32))

    def mean(h: torch.Tensor, rel: str) -> torch.Tensor:
        s, d = pairs[rel]
        uniq = np.unique(np.stack([d, s], axis=1), axis=0)
        out = torch.zeros(n, h.shape[1])
        out.index_add_(0, torch.from_numpy(uniq[:, 0]), h[torch.from_numpy(uniq[:, 1])])
        deg = np.bincount(uniq[:, 0], minlength=n)
        return out / torch.from_numpy(np.maximum(deg, 1)).float()[:, None]

    model.eval()
    h = x
    with torch.no_grad():
        for layer in range(model.num_layers):
            root = model.roots[layer]
            out = h @ root.weight.T + root.bias
            for r, rel in enumerate(store.relations):
                lin = model.convs[layer][r].lin_l
                out = out + mean(h, rel) @ lin.weight.T + lin.bias
            h = torch.relu(model.norms[layer](out)) if layer < model.num_layers - 1 else out
    return h[:p].numpy()


def trained_model(store_path: Path, ckpt: Path):
    store = open_store(store_path)
    state = load_checkpoint(ckpt)
    cfg = state["config"]
    model = build_model(
        "rsage",
        in_dim=store.feature_dim,
        hidden=cfg["hidden"],
        out_dim=store.num_classes,
        num_layers=cfg["layers"],
        dropout=cfg["dropout"],
        norm=cfg["norm"],
        num_relations=store.num_relations,
    )
    model.load_state_dict(state["model"])
    return model


def agrees(y_pred: np.ndarray, logits: np.ndarray) -> None:
    """y_pred is the argmax of the brute-force logits (ties within float noise excepted)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(y_pred[clear], logits.argmax(1)[clear])


def test_mag240m_end_to_end_submission(mag, tmp_path, capsys):
    from ogb.lsc import MAG240MEvaluator

    src, store = mag
    assert main(scaled(store, tmp_path)) == 0
    records = read_jsonl(tmp_path / "m.jsonl")
    assert len(records) == 2 and records[-1]["evaluator"] == "ogb.lsc.MAG240MEvaluator"
    assert records[-1]["cache"] == "refresh" and sum(r["hist_lookups"] for r in records) > 0

    # The submission: ogb's file name, one int16 key, one entry per test-dev paper.
    path = tmp_path / "sub" / "y_pred_mag240m_test-dev.npz"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [path.name]
    with np.load(path, allow_pickle=False) as f:
        assert list(f.keys()) == ["y_pred"]
        y_pred = f["y_pred"]
    splits = split_dict(src)
    test_dev = np.asarray(splits["test-dev"])
    assert y_pred.dtype == np.int16 and y_pred.shape == test_dev.shape
    assert y_pred.min() >= 0 and y_pred.max() < CLASSES

    # Entry i is the model's prediction for paper split_dict['test-dev'][i] (original id).
    logits = brute_force_logits(src, store, trained_model(store, tmp_path / "ck"))
    agrees(y_pred.astype(np.int64), logits[test_dev])

    # Validation accuracy through MAG240MEvaluator equals our own count, from the
    # dataset's labels and the brute-force predictions.
    valid = np.asarray(splits["valid"])
    y_true = np.load(src / "processed" / "paper" / "node_label.npy")[valid].astype(np.int64)
    mine = float((logits[valid].argmax(1) == y_true).mean())
    official = MAG240MEvaluator().eval(
        {"y_true": torch.from_numpy(y_true), "y_pred": torch.from_numpy(logits[valid].argmax(1))}
    )["acc"]
    assert official == pytest.approx(mine)
    assert records[-1]["valid_acc"] == pytest.approx(mine, abs=1.5 / len(valid))
    assert mine > 1.5 / CLASSES  # it learned something

    # Predict-only from the checkpoint (--resume, epochs reached): the valid split.
    argv = scaled(store, tmp_path, "--resume", "--predict-split", "valid")
    argv[argv.index("--predict-out") + 1] = str(tmp_path / "sub_valid")
    assert main(argv) == 0
    with np.load(tmp_path / "sub_valid" / "y_pred_mag240m_valid.npz", allow_pickle=False) as f:
        y_valid = f["y_pred"].astype(np.int64)
    agrees(y_valid, logits[valid])
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 2  # no epoch trained again
    capsys.readouterr()


def _nothing_written(tmp_path: Path) -> None:
    for name in ("m.jsonl", "ck", "sub"):
        assert not (tmp_path / name).exists(), name


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        pytest.param(["--predict-split", "test-challenge"], "--predict-split", id="other-test"),
        pytest.param(["--predict-split", "nope"], "predict_split", id="unknown-split"),
        pytest.param(["--max-rss", "64MiB"], "--max-rss", id="cannot-fit"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(mag, tmp_path, capsys, extra, flag):
    _, store = mag
    assert main(scaled(store, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
    _nothing_written(tmp_path)


def test_existing_submission_is_refused_before_training(mag, tmp_path, capsys):
    _, store = mag
    (tmp_path / "sub").mkdir()
    existing = tmp_path / "sub" / "y_pred_mag240m_test-dev.npz"
    existing.write_bytes(b"keep me")
    assert main(scaled(store, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--predict-out" in err and "exists" in err
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "ck").exists()


def test_mag240m_split_names_need_a_mag240m_store(tmp_path, capsys):
    store = planted_store(tmp_path / "s", num_nodes=300)
    argv = [
        "--store", str(store.path), "--layers", "2", "--fanouts", "4,2", "--hidden", "8",
        "--epochs", "1", "--no-progress", "--predict-out", str(tmp_path / "p"),
        "--predict-split", "test-dev",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "--predict-split test-dev" in capsys.readouterr().err
    argv[-1] = "test"
    assert main(argv) == 0
    with np.load(tmp_path / "p" / "y_pred_test.npz", allow_pickle=False) as f:
        assert f["y_pred"].shape == (len(store.test_idx),)


def test_file_format_is_ogbs_at_the_real_size(tmp_path):
    """At the real test-dev size ogb's own writer runs: same name, key, dtype, values."""
    from ogb.lsc import MAG240MEvaluator

    y = np.random.default_rng(0).integers(0, 153, size=88092)
    MAG240MEvaluator().save_test_submission({"y_pred": y}, str(tmp_path / "ogb"), "test-dev")
    ours = write_y_pred(y, tmp_path / "ours" / "y_pred_mag240m_test-dev.npz")
    theirs = tmp_path / "ogb" / "y_pred_mag240m_test-dev.npz"
    with np.load(ours, allow_pickle=False) as a, np.load(theirs, allow_pickle=False) as b:
        assert list(a.keys()) == list(b.keys()) == ["y_pred"]
        assert a["y_pred"].dtype == b["y_pred"].dtype == np.int16
        np.testing.assert_array_equal(a["y_pred"], b["y_pred"])
    assert sorted(p.name for p in ours.parent.iterdir()) == [ours.name]  # no .partial left
    with pytest.raises(FileExistsError):
        write_y_pred(y, ours)
