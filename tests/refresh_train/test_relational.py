"""Relational models end to end: a generated MAG240M full graph, --model rsage|rgat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _planted import planted_store

from refresh_store.convert import convert
from refresh_store.synthetic import make_dataset
from refresh_train.cli import main
from refresh_train.config import TierConfig, TrainConfig
from refresh_train.memory_plan import plan_memory
from refresh_train.metrics import read_jsonl
from refresh_train.models import build_model
from refresh_train.sampler import NeighborSampler

CLASSES = 4


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("rel")
    src = make_dataset(
        "mag240m", 1500, base, seed=2, feature_dim=16, num_classes=CLASSES, progress=False
    )
    convert(src, base / "store", mag240m_graph="full", progress=False)
    return base / "store"


def _argv(store, tmp_path, model, cache, epochs=2):
    return [
        "--store", str(store), "--model", model, "--layers", "2", "--hidden", "32",
        "--fanouts", "8,4", "--batch-size", "128", "--epochs", str(epochs), "--lr", "0.01",
        "--cache", cache, "--cache-budget", "256KiB", "--host-budget", "512KiB",
        "--eval-batch-size", "512", "--no-progress", "--seed", "0",
        "--metrics-out", str(tmp_path / "m.jsonl"), "--checkpoint-dir", str(tmp_path / "ck"),
    ]  # fmt: skip


def test_cli_rsage_with_cache_refresh_learns(full_store, tmp_path):
    assert main(_argv(full_store, tmp_path, "rsage", "refresh", epochs=3)) == 0
    records = read_jsonl(tmp_path / "m.jsonl")
    assert len(records) == 3
    # Well above chance (1/4) on the planted communities, and the cache served.
    assert records[-1]["test_acc"] > 0.5
    assert sum(r["hist_hits"] for r in records) > 0


@pytest.mark.parametrize(
    ("model", "cache"),
    [
        ("rsage", "none"),
        ("rsage", "raw"),
        pytest.param("rgat", "raw", marks=pytest.mark.slow),  # its forward: test_models_relational
    ],
)
def test_cli_relational_models_run_with_every_raw_mode(full_store, tmp_path, model, cache):
    assert main(_argv(full_store, tmp_path, model, cache, epochs=1)) == 0
    assert read_jsonl(tmp_path / "m.jsonl")[-1]["test_acc"] > 0.0


def test_homogeneous_models_keep_working_on_a_typed_store(full_store, tmp_path):
    assert main(_argv(full_store, tmp_path, "sage", "raw", epochs=1)) == 0


def test_relational_model_on_store_without_edge_types_exits_2(tmp_path, capsys):
    store = planted_store(tmp_path / "plain", num_nodes=300)
    assert store.manifest["format_version"] == 1 and not store.has_edge_types
    argv = _argv(tmp_path / "plain", tmp_path, "rsage", "raw")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model rsage" in err[0] and "edge types" in err[0]
    assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "ck").exists()
    # The same store trains a homogeneous model.
    assert main(_argv(tmp_path / "plain", tmp_path, "sage", "none", epochs=1)) == 0


def test_memory_plan_counts_per_relation_weights_and_edge_types(full_store):
    from refresh_store.store import open_store

    store = open_store(full_store)
    cfg = TrainConfig(
        store=str(full_store), model="rsage", layers=2, hidden=32, fanouts=(8, 4),
        batch_size=128, tiers=TierConfig(cache="none"), progress=False,
    )  # fmt: skip
    plan = plan_memory(cfg, store)
    item = {i.name: i for i in plan.items}
    model = build_model("rsage", 16, 32, store.num_classes, 2, num_relations=5)
    params = sum(p.numel() * 4 for p in model.parameters())
    assert item["model parameters"].device_bytes == params
    assert (
        params
        > 5
        * sum(p.numel() * 4 for p in build_model("sage", 16, 32, store.num_classes, 2).parameters())
        // 2
    )
    assert "edge_type" in item["topology (copied into RAM)"].note


def test_layerwise_and_sampled_evaluation_sample_per_relation(full_store):
    from refresh_store.store import open_store

    store = open_store(full_store)
    torch.manual_seed(0)
    model = build_model("rsage", 16, 8, store.num_classes, 1, num_relations=5).eval()
    s = NeighborSampler(
        store.indptr, store.indices, [-1], edge_type=store.edge_type, num_relations=5
    )
    seeds = np.asarray(store.test_idx[:50])
    mb = s.sample(seeds, 0)
    assert mb.blocks[0].edge_type is not None
    x = torch.from_numpy(np.asarray(store.features)[mb.input_nodes.numpy()])
    with torch.no_grad():
        assert model(mb, x).shape == (50, store.num_classes)
