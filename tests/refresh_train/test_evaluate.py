"""Layer-wise inference is exact and out of core; accuracy is ogb's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _planted import planted_store

from refresh_train.config import EvalConfig, TierConfig
from refresh_train.evaluate import accuracy, evaluate, predict_layerwise, predict_sampled
from refresh_train.models import build_model
from refresh_train.modes import CACHE_MODES
from refresh_train.sampler import NeighborSampler


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("eval") / "s", num_nodes=800, avg_degree=5)


@pytest.fixture(scope="module")
def cache(store):
    row = store.region("features").row_bytes
    mode = CACHE_MODES["raw"](
        store, TierConfig(cache_budget_bytes=50 * row, host_budget_bytes=0), torch.device("cpu")
    )
    yield mode
    mode.close()


@pytest.mark.parametrize("name", ["sage", "gcn", "gat"])
def test_layerwise_equals_full_neighbourhood_sampling(store, cache, name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, store.feature_dim, 24, store.num_classes, 3, dropout=0.3)
    nodes = np.concatenate([store.valid_idx, store.test_idx])[:300]
    full = NeighborSampler(store.indptr, store.indices, [-1, -1, -1], seed=0)
    tiers = cache.eval_tiers()
    sampled = predict_sampled(model, full, tiers, nodes, batch_size=64, device=torch.device("cpu"))
    stats: dict = {}
    layerwise = predict_layerwise(
        model,
        store.indptr,
        store.indices,
        tiers,
        nodes,
        batch_size=100,
        device=torch.device("cpu"),
        tmp_dir=tmp_path,
        stats=stats,
    )
    assert layerwise.shape == (len(nodes), store.num_classes)
    torch.testing.assert_close(layerwise, sampled, rtol=1e-4, atol=1e-5)
    # Intermediate layers went through disk, and the files are gone.
    assert stats["hidden_bytes_written"] == 2 * store.num_nodes * 24 * 4
    assert stats["hidden_bytes_read"] > 0
    assert list(tmp_path.iterdir()) == []


def test_sampled_prediction_differs_with_small_fanouts(store, cache):
    """A sanity check that the equality above is not trivial."""
    torch.manual_seed(0)
    model = build_model("sage", store.feature_dim, 24, store.num_classes, 2, dropout=0.0)
    nodes = np.asarray(store.valid_idx)
    small = NeighborSampler(store.indptr, store.indices, [2, 2], seed=0)
    full = NeighborSampler(store.indptr, store.indices, [-1, -1], seed=0)
    tiers = cache.eval_tiers()
    a = predict_sampled(model, small, tiers, nodes, batch_size=64, device=torch.device("cpu"))
    b = predict_sampled(model, full, tiers, nodes, batch_size=64, device=torch.device("cpu"))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("mode", ["sampled", "layerwise"])
def test_evaluate_reports_accuracy_and_its_own_counters(store, cache, mode, tmp_path):
    torch.manual_seed(0)
    model = build_model("sage", store.feature_dim, 16, store.num_classes, 2)
    model.train()
    cache.reset_stats()
    out = evaluate(
        model,
        store,
        cache.eval_tiers(),
        EvalConfig(mode=mode, batch_size=128, tmp_dir=str(tmp_path)),
        train_fanouts=(5, 5),
        device=torch.device("cpu"),
    )
    assert model.training  # restored
    assert 0.0 <= out["valid_acc"] <= 1.0 and 0.0 <= out["test_acc"] <= 1.0
    assert out["eval_mode"] == mode
    assert out["eval_rows_device"] + out["eval_rows_host"] + out["eval_rows_disk"] > 0
    assert out["eval_bytes_disk"] == out["eval_rows_disk"] * store.region("features").row_bytes
    # Training counters are untouched by evaluation.
    assert cache.stats()["rows_disk"] == 0 and cache.stats()["rows_device"] == 0


def test_accuracy_is_ogbs():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(0.75)
    assert accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) is None
