"""Which nodes get the history table's slots (refresh_train/history/slots.py).

The scores are checked against the formula computed edge by edge in plain
Python and against how often the sampler really puts each node at the
cached layer; the map against a dict; and, end to end, the table must serve
nodes that the degree prefix would never hold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _planted import planted_store, small_run_config

from refresh_train.checkpoint import CheckpointError
from refresh_train.config import HistoryConfig, TierConfig
from refresh_train.history.slots import UNRANKED, SlotOrder, lookup_scores
from refresh_train.sampler import NeighborSampler
from refresh_train.trainer import Trainer


def _graph(n: int, seed: int, max_deg: int = 9):
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, max_deg, n)
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    indices = np.concatenate(
        [rng.choice(n, d, replace=False) for d in deg] or [np.zeros(0, int)]
    ).astype(np.int64)
    return indptr, indices


def _scores_by_hand(indptr, indices, train, fanouts, layer):
    n, num_layers = len(indptr) - 1, len(fanouts)
    r = {v: 0.0 for v in range(n)}
    for v in train:
        r[int(v)] = 1.0
    for lay in range(num_layers - 1, layer - 1, -1):
        f = fanouts[num_layers - 1 - lay]
        nxt = dict(r)
        for u in range(n):
            lo, hi = int(indptr[u]), int(indptr[u + 1])
            if r[u] and hi > lo:
                p = r[u] * (1.0 if f < 0 or hi - lo <= f else f / (hi - lo))
                for e in range(lo, hi):
                    nxt[int(indices[e])] += p
        r = nxt
    seeds = set(int(v) for v in train)
    return np.array([r[v] - (1.0 if v in seeds else 0.0) for v in range(n)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fanouts", [(3, 2, 4), (-1, 2, 3), (5, 5)])
def test_scores_follow_the_formula(seed, fanouts):
    indptr, indices = _graph(60, seed)
    train = np.random.default_rng(seed + 10).choice(60, 7, replace=False)
    layers = tuple(range(1, len(fanouts)))
    got = lookup_scores(indptr, indices, train, fanouts, layers)
    assert sorted(got) == sorted(layers)
    for layer in layers:
        want = _scores_by_hand(indptr, indices, train, fanouts, layer)
        np.testing.assert_allclose(got[layer], want, rtol=1e-5, atol=1e-5)


def test_scores_at_the_last_hidden_layer_are_how_often_sampling_puts_a_node_there():
    # One seed per batch: a batch's layer L-1 is its seed and the seed's distinct
    # sampled in-neighbours, so the expected non-seed visits per epoch are exact.
    indptr, indices = _graph(80, 3, max_deg=12)
    train = np.random.default_rng(4).choice(80, 10, replace=False)
    fanouts = [4, 3]
    score = lookup_scores(indptr, indices, train, fanouts, (1,))[1]
    sampler = NeighborSampler(indptr, indices, fanouts, seed=0)
    epochs = 400
    seen = np.zeros(80)
    for i in range(epochs):
        for j, v in enumerate(train):
            batch = sampler.sample(np.array([v]), i * 1000 + j)
            seen[batch.layer_nodes[1].numpy()[1:]] += 1
    sampler.close()
    np.testing.assert_allclose(seen / epochs, score, atol=0.12)
    assert score.max() > 0.5  # the check compared something


def test_slots_map_nodes_by_descending_score_ties_by_id():
    indptr, indices = _graph(200, 5)
    train = np.arange(0, 200, 9)
    order = SlotOrder.by_lookups(indptr, indices, train, (4, 3), (1,), limit=10**6)
    score = lookup_scores(indptr, indices, train, (4, 3), (1,))[1]
    slotted = np.flatnonzero(score > 0)
    assert order.ranked(1) == len(slotted)
    nodes = order.nodes(1, np.arange(order.ranked(1)))
    keyed = sorted(slotted.tolist(), key=lambda v: (-score[v], v))
    assert nodes.tolist() == keyed
    ids = np.arange(200)
    slots = order.slots(1, ids)
    want = {v: s for s, v in enumerate(keyed)}
    assert slots.tolist() == [want.get(v, UNRANKED) for v in ids.tolist()]
    # A limit keeps a prefix of the same order, and the same fingerprint.
    cut = SlotOrder.by_lookups(indptr, indices, train, (4, 3), (1,), limit=7)
    assert cut.nodes(1, np.arange(7)).tolist() == keyed[:7]
    assert (cut.slots(1, ids) < 7).sum() == 7
    assert cut.fingerprint() == order.fingerprint()
    other = SlotOrder.by_lookups(indptr, indices, train[1:], (4, 3), (1,), limit=10**6)
    assert other.fingerprint() != order.fingerprint()
    degree = SlotOrder.by_degree()
    assert degree.slots(1, ids).tolist() == ids.tolist() and degree.ranked(1) is None


def _refresh_config(store, order: str, **kw):
    cfg = small_run_config(store, cache="refresh", **kw)
    row = store.region("features").row_bytes
    return cfg.replace(
        tiers=TierConfig(
            cache="refresh", cache_budget_bytes=120 * row, host_budget_bytes=0, lookahead_batches=0
        ),  # fmt: skip
        history=HistoryConfig(staleness_iters=50, lag_steps=2, fraction=0.5, order=order),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("slots") / "s", num_nodes=2000)


def test_the_table_serves_nodes_the_degree_prefix_would_not_hold(store, monkeypatch):
    served: list[np.ndarray] = []
    with Trainer(_refresh_config(store, "lookups", epochs=2)) as t:
        mode = t.cache
        rows = mode.table.rows
        prune = mode._prune

        def spy(layer, ids, step, num_seeds, found):
            out = prune(layer, ids, step, num_seeds, found)
            served.append(ids[out >= 0])
            return out

        monkeypatch.setattr(mode, "_prune", spy)
        records = t.run()
        assert sum(r["hist_hits"] for r in records) > 0
        hits = np.concatenate(served)
        # Every served node has a slot below the table's size ...
        assert (mode.order.slots(1, hits) < rows).all()
        # ... and some are beyond the degree prefix of the same size.
        assert (hits >= rows).any()
        # The slots went to nodes the layer looks up: none of score 0.
        score = lookup_scores(store.indptr, store.indices, store.train_idx, t.fanouts, (1,))[1]
        assert (score[mode.order.nodes(1, np.arange(rows))] > 0).all()


def test_more_hits_than_the_degree_prefix_at_the_same_bytes(store):
    hits = {}
    for order in ("lookups", "degree"):
        with Trainer(_refresh_config(store, order, epochs=2)) as t:
            records = t.run()
            hits[order] = sum(r["hist_hits"] for r in records)
            assert t.cache.describe()["hist_order"] == order
    assert hits["lookups"] > hits["degree"]


def test_a_checkpoint_resumes_only_under_the_order_it_was_written_with(store, tmp_path):
    cfg = _refresh_config(store, "degree", epochs=1).replace(checkpoint_dir=str(tmp_path))
    with Trainer(cfg) as t:
        t.run()
    resumed = cfg.replace(
        epochs=2, resume=True, history=dataclasses.replace(cfg.history, order="lookups")
    )
    with pytest.raises(CheckpointError, match="--hist-order"):
        with Trainer(resumed) as t:
            t.run()
    with Trainer(cfg.replace(epochs=2, resume=True)) as t:
        assert len(t.run()) == 2
