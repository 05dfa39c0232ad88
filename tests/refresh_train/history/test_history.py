"""Unit tests of refresh_train/history: the table, the admission policies, the budget split.

Each piece is checked against a plain model of what its docstring promises
(a dict of births for the table, a sort for the gradient rule, the split's
rule with crafted counters); the mode that composes them is tested in
``test_refresh.py``.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from _params import DEVICES

from refresh_train.config import HIST_POLICY_NAMES
from refresh_train.history import (
    HIST_POLICIES,
    INITIAL_HIST_FRACTION,
    BudgetSplit,
    HistoryTable,
    SplitCounters,
    make_policy,
)
from refresh_train.history.table import EMPTY

DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.float32, id="fp32")]


# ---------------------------------------------------------------------- table
class TableModel:
    """What the table should answer: the last (birth, embedding) committed per (layer, node)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.entries: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}

    def commit(self, layer, ids, emb, step) -> None:
        for i, v in enumerate(ids.tolist()):
            if v < self.rows:
                self.entries[(layer, v)] = (step, emb[i].clone())

    def lookup(self, layer, ids, step, staleness, skip=0) -> np.ndarray:
        out = np.full(len(ids), -1, dtype=np.int64)
        for p, v in enumerate(ids.tolist()):
            if p < skip or v >= self.rows or (layer, v) not in self.entries:
                continue
            if step - self.entries[(layer, v)][0] <= staleness:
                out[p] = v
        return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_table_answers_like_a_dict_of_births(device, dtype):
    """Random commits and lookups against the plain model, finite and infinite staleness."""
    rng = np.random.default_rng(3)
    rows, width = 40, 5
    table = HistoryTable((2, 1), width, rows, dtype, device)
    model = TableModel(rows)
    for step in range(60):
        for layer in (2, 1):
            ids = rng.choice(55, size=rng.integers(0, 12), replace=False).astype(np.int64)
            emb = torch.randn(len(ids), width)
            table.commit(layer, ids, emb.to(device), step)
            model.commit(layer, ids, emb.to(dtype), step)
        ids = rng.integers(0, 60, 30).astype(np.int64)
        for layer in (2, 1):
            for staleness, skip in ((0, 0), (3, 4), (17, 0), (math.inf, 2)):
                got = table.lookup(layer, ids, step, staleness, skip=skip)
                assert np.array_equal(got, model.lookup(layer, ids, step, staleness, skip)), (
                    step,
                    layer,
                    staleness,
                )
                hit = got[got >= 0]
                emb = table.gather(layer, hit).cpu()
                assert emb.dtype == dtype and emb.shape == (len(hit), width)
                for row, v in zip(emb, hit.tolist()):
                    assert torch.equal(row, model.entries[(layer, v)][1])
    live = sum(step - b <= 5 for b, _ in model.entries.values())
    assert table.live(59, 5) == live
    assert table.live(59, math.inf) == len(model.entries)


@pytest.mark.parametrize("max_serves", [1, 3])
def test_an_entry_serves_at_most_max_serves_lookups(max_serves):
    """Counted by serve(), zero again when the node's next embedding is committed,
    kept by resize and by a checkpoint; live() counts exhausted entries out."""
    rng = np.random.default_rng(max_serves)
    rows, staleness = 30, 6
    table = HistoryTable((1,), 2, rows, torch.float32, "cpu", max_serves=max_serves)
    births: dict[int, int] = {}
    served: dict[int, int] = {}
    exhausted = 0
    for step in range(80):
        ids = rng.choice(40, size=8, replace=False).astype(np.int64)
        table.commit(1, ids, torch.randn(8, 2), step)
        for v in ids[ids < rows].tolist():
            births[v], served[v] = step, 0
        for _ in range(2):
            ids = rng.choice(40, size=15, replace=False).astype(np.int64)
            want = [
                v if v in births and step - births[v] <= staleness and served[v] < max_serves
                else -1
                for v in ids.tolist()
            ]  # fmt: skip
            got = table.lookup(1, ids, step, staleness)
            assert got.tolist() == want, step
            exhausted += sum(
                v in births and step - births[v] <= staleness and served[v] >= max_serves
                for v in ids.tolist()
            )
            table.serve(1, got[got >= 0])
            for v in got[got >= 0].tolist():
                served[v] += 1
        live = sum(step - births[v] <= staleness and served[v] < max_serves for v in births)
        assert table.live(step, staleness) == live
    assert exhausted > 0, "no lookup met an exhausted entry: the limit was not exercised"
    buf = io.BytesIO()
    torch.save(table.state_dict(), buf)
    buf.seek(0)
    again = HistoryTable((1,), 2, 0, torch.float32, "cpu", max_serves=max_serves)
    again.load_state_dict(torch.load(buf, weights_only=True))
    ids = np.arange(40, dtype=np.int64)
    assert np.array_equal(again.lookup(1, ids, 79, staleness), table.lookup(1, ids, 79, staleness))
    table.resize(rows + 5)
    assert np.array_equal(again.serves[1], table.serves[1][:rows])


def test_table_never_serves_an_empty_row():
    table = HistoryTable((1,), 2, 8, torch.float32, "cpu")
    ids = np.arange(10, dtype=np.int64)
    for step in (0, 10**6, 10**15):
        assert (table.lookup(1, ids, step, math.inf) == -1).all()
        assert (table.lookup(1, ids, step, 10**12) == -1).all()
    assert table.live(10**6, math.inf) == 0
    assert (table.birth[1] == EMPTY).all()


def test_table_commit_drops_ids_it_does_not_hold_and_rejects_negative_ids():
    table = HistoryTable((1,), 3, 6, torch.float32, "cpu")
    emb = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    table.commit(1, np.array([5, 6, 2, 9]), emb, step=4)  # 6 and 9 are beyond the table
    assert np.flatnonzero(table.birth[1] != EMPTY).tolist() == [2, 5]
    assert torch.equal(table.gather(1, np.array([5, 2])), emb[[0, 2]])
    with pytest.raises(IndexError, match="-1"):
        table.commit(1, np.array([1, -1]), emb[:2], step=5)
    table.commit(1, np.array([], dtype=np.int64), emb[:0], step=6)  # nothing to do
    assert table.birth[1][2] == 4


def test_table_resize_keeps_the_prefix_and_forgets_the_rest():
    width = 4
    table = HistoryTable((2, 1), width, 10, torch.float16, "cpu")
    assert table.row_bytes == width * 2 and table.nbytes == 2 * 10 * width * 2
    ids = np.arange(10, dtype=np.int64)
    emb = torch.randn(10, width)
    for layer in (2, 1):
        table.commit(layer, ids, emb, step=7)
    table.resize(4)
    assert table.rows == 4 and table.nbytes == 2 * 4 * width * 2
    assert table.lookup(1, ids, 7, 0).tolist() == [0, 1, 2, 3] + [-1] * 6
    table.resize(8)  # rows 4..7 come back empty: no entry is resurrected
    assert table.lookup(2, ids, 7, 0).tolist() == [0, 1, 2, 3] + [-1] * 6
    assert torch.equal(table.gather(2, np.arange(4)), emb[:4].half())
    assert torch.equal(table.gather(2, np.arange(4, 8)), torch.zeros(4, width, dtype=torch.half))
    table.resize(0)
    assert table.nbytes == 0 and (table.lookup(1, ids, 7, 10) == -1).all()
    with pytest.raises(ValueError, match="rows"):
        table.resize(-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_table_state_dict_round_trips_through_a_weights_only_load(dtype):
    rng = np.random.default_rng(0)
    table = HistoryTable((2, 1), 6, 30, dtype, "cpu")
    for step, layer in ((3, 2), (5, 1), (9, 2)):
        ids = rng.choice(30, 12, replace=False).astype(np.int64)
        table.commit(layer, ids, torch.randn(12, 6), step)
    buf = io.BytesIO()
    torch.save(table.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = HistoryTable((2, 1), 6, 3, dtype, "cpu")  # sized differently: the state says
    other.load_state_dict(state)
    assert other.rows == 30
    for layer in (2, 1):
        assert np.array_equal(other.birth[layer], table.birth[layer])
        assert torch.equal(other.emb[layer], table.emb[layer])
    with pytest.raises(ValueError, match="no layer 3"):
        HistoryTable((3,), 6, 3, dtype, "cpu").load_state_dict(state)
    state["layer1"]["ids"] = state["layer1"]["ids"] + 100
    with pytest.raises(ValueError, match="out of range"):
        HistoryTable((2, 1), 6, 3, dtype, "cpu").load_state_dict(state)


# ------------------------------------------------------------------ policies
def _smallest(norms: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` smallest norms, ties by position, in ascending order."""
    order = np.lexsort((np.arange(len(norms)), norms))
    return np.sort(order[:count])


NORM_CASES = [
    pytest.param(np.array([3.0, 1.0, 2.0, 1.0, 0.5, 2.0, 2.0, 7.0, 0.0, 2.0]), id="ties"),
    pytest.param(np.zeros(7), id="all-equal"),
    pytest.param(np.random.default_rng(1).exponential(size=97), id="random-97"),
    pytest.param(np.array([4.0]), id="one"),
    pytest.param(np.zeros(0), id="none"),
]


@pytest.mark.parametrize("norms", NORM_CASES)
@pytest.mark.parametrize("q", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("name", ["grad+stale", "grad"])
def test_gradient_policies_admit_the_floor_q_n_smallest_norms(name, q, norms):
    policy = make_policy(name, q, seed=0)
    n = len(norms)
    got = policy.select(torch.tensor(norms, dtype=torch.float32), n, step=3, layer=1)
    assert got.dtype == np.int64
    expected = _smallest(norms.astype(np.float32), math.floor(Fraction(str(q)) * n))
    assert got.tolist() == expected.tolist()


def test_quantile_count_is_floor_of_the_decimal_quantile():
    norms = torch.arange(90, dtype=torch.float32)
    assert len(make_policy("grad+stale", 0.7).select(norms, 90, 0, 1)) == 63
    assert len(make_policy("random", 0.29).select(None, 100, 0, 1)) == 29


@pytest.mark.parametrize("n", [0, 1, 13, 200])
def test_stale_policy_admits_every_computed_embedding(n):
    policy = make_policy("stale", 0.3, seed=5)
    assert not policy.needs_grad and policy.uses_staleness
    assert policy.select(None, n, step=2, layer=1).tolist() == list(range(n))


def test_random_policy_is_a_reproducible_floor_q_n_subset_per_seed_step_and_layer():
    n, q = 200, 0.4
    policy = make_policy("random", q, seed=11)
    assert not policy.needs_grad and policy.uses_staleness
    picks = {}
    for step in range(4):
        for layer in (1, 2):
            got = policy.select(None, n, step, layer)
            assert len(got) == math.floor(q * n) and len(np.unique(got)) == len(got)
            assert np.array_equal(got, np.sort(got)) and 0 <= got.min() and got.max() < n
            # The same (seed, step, layer) always gives the same draw, from a new policy too.
            again = make_policy("random", q, seed=11).select(None, n, step, layer)
            assert np.array_equal(got, again)
            picks[(step, layer)] = tuple(got.tolist())
    assert len(set(picks.values())) == len(picks), "draws repeat across steps or layers"
    other_seed = make_policy("random", q, seed=12).select(None, n, 0, 1)
    assert tuple(other_seed.tolist()) != picks[(0, 1)]
    # Norms are ignored: the draw does not depend on them.
    with_norms = policy.select(torch.rand(n), n, 0, 1)
    assert tuple(with_norms.tolist()) == picks[(0, 1)]


def test_policy_registry_flags_and_unknown_names():
    assert sorted(HIST_POLICIES) == sorted(HIST_POLICY_NAMES)
    flags = {k: (c.uses_staleness, c.needs_grad) for k, c in HIST_POLICIES.items()}
    assert flags == {
        "grad+stale": (True, True),
        "grad": (False, True),
        "stale": (True, False),
        "random": (True, False),
    }
    with pytest.raises(ValueError, match="hist_policy must be one of"):
        make_policy("lru", 0.9)


# --------------------------------------------------------------------- split
def _counters(noprune, ideal, usable=1.0, grid=4) -> SplitCounters:
    """Counters whose table would spare ``noprune - ideal`` rows per candidate, all in
    the candidate's own band, every band's lookups giving the usable share ``usable``."""
    steps = 1000
    if usable == 1.0:  # without a staleness bound every looked-up node is usable
        c = SplitCounters(grid, np.ones(grid + 1, np.int64), math.inf, 0, 1.0)
        c.band_lookups[:] = 1
    else:  # t = 200, lag 0, a = 1: usable = 200 p / (200 p + 1), p = lookups / steps
        c = SplitCounters(grid, np.ones(grid + 1, np.int64), 200, 0, 1.0)
        c.band_lookups[:] = round(steps * usable / (200 * (1 - usable)))
    c.steps = steps
    c.noprune[:] = noprune
    np.fill_diagonal(c.covered, np.asarray(noprune) - np.asarray(ideal))
    return c


def test_split_counters_predict_between_no_pruning_and_the_ideal():
    c = _counters([100, 90, 80, 70, 60], [100, 60, 40, 30, 30], usable=0.75)
    np.testing.assert_allclose(c.usable(), [0.75] * 5)
    np.testing.assert_array_equal(c.ideal, [100, 60, 40, 30, 30])
    np.testing.assert_allclose(c.predicted(), [100, 67.5, 50, 40, 37.5])
    assert not _counters([5] * 5, [1] * 5, usable=0.0).usable().any()  # never looked up
    np.testing.assert_array_equal(_counters([5] * 5, [1] * 5, 0.0).predicted(), [5] * 5)


def test_usable_share_follows_lookup_rate_staleness_lag_and_admission():
    c = SplitCounters(3, np.array([0, 10, 20, 40]), staleness=200, lag=4, admitted=0.9)
    c.steps = 100
    c.band_lookups[:] = [0, 1000, 200, 8]  # per node and step: 1, 0.1, 0.002
    p = np.array([0, 1.0, 0.1, 0.002])
    np.testing.assert_allclose(c.usable(), p * 196 / (p * 200 + 1 / 0.9))
    assert c.usable()[1] > 0.97 and c.usable()[3] < 0.3  # hot nodes hit, the tail mostly missed
    assert not SplitCounters(3, c.band_nodes, 3, 4, 0.9).usable().any()  # t < lag: never used
    c.covered[3, 1:] = [10, 20, 30]
    c.noprune[:] = 100
    np.testing.assert_allclose(c.predicted()[3], 100 - c.usable()[1:] @ [10, 20, 30])
    half = c.decayed(0.5)
    np.testing.assert_array_equal(half.covered[3], [0, 5, 10, 15])
    assert half.steps == 50 and half.band_lookups[1] == 500
    np.testing.assert_allclose(half.usable(), c.usable())  # rates survive the decay


def test_split_starts_at_the_initial_share_and_divides_the_whole_budget():
    for budget in (0, 1, 999, 1 << 20):
        s = BudgetSplit(budget)
        assert s.automatic and s.hist_fraction == INITIAL_HIST_FRACTION
        assert s.hist_bytes + s.raw_bytes == budget and s.hist_bytes >= 0 and s.raw_bytes >= 0
        f = BudgetSplit(budget, 0.4)
        assert not f.automatic and f.hist_bytes == int(budget * 0.4)
        assert f.hist_bytes + f.raw_bytes == budget
    np.testing.assert_allclose(BudgetSplit(1600, grid=4).candidates(), [0, 0.25, 0.5, 0.75, 1])


def test_split_moves_to_the_candidate_with_the_least_predicted_traffic():
    s = BudgetSplit(1600, grid=4)  # starts at 0.5
    # Every table node usable: the ideal counts decide; the best is 0.25.
    assert s.decide(_counters([100] * 5, [90, 20, 50, 60, 70]))
    assert s.hist_fraction == 0.25 and s.moves == [0.25]
    # Nothing usable: no pruning is predicted anywhere, so the fewest raw misses
    # win, but the table keeps one step's share, so that it can still be measured.
    s = BudgetSplit(1600, grid=4)
    assert s.decide(_counters([50, 60, 70, 80, 90], [0] * 5, usable=0.0))
    assert s.hist_fraction == 0.25
    assert s.hist_bytes + s.raw_bytes == 1600


@pytest.mark.parametrize(
    "counters",
    [
        pytest.param(_counters([100] * 5, [100, 100, 99, 100, 100]), id="best-is-current"),
        pytest.param(_counters([100] * 5, [100, 99, 100, 100, 100]), id="within-margin"),
        pytest.param(_counters([0] * 5, [0] * 5), id="nothing-measured"),
    ],
)
def test_split_stays_when_no_candidate_wins_by_the_margin(counters):
    s = BudgetSplit(1600, grid=4)
    assert not s.decide(counters)
    assert s.hist_fraction == INITIAL_HIST_FRACTION and s.moves == []


def test_a_fixed_split_never_moves():
    for fraction in (0.0, 0.3, 1.0):
        s = BudgetSplit(1600, fraction, grid=4)
        for c in (_counters([100, 0, 0, 0, 0], [0] * 5), _counters([0] * 5, [0] * 5)):
            assert not s.decide(c)
        assert s.hist_fraction == fraction


def test_split_stays_on_the_candidates_and_within_the_budget():
    rng = np.random.default_rng(2)
    s = BudgetSplit(10_000, grid=8)
    for _ in range(300):
        noprune = rng.integers(1, 100, 9)
        ideal = np.minimum(noprune, rng.integers(0, 100, 9))
        c = _counters(noprune, ideal, float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])), 8)
        before = s.hist_fraction
        moved = s.decide(c)
        assert s.hist_fraction in set(s.candidates().tolist()) and s.hist_fraction >= 1 / 8
        pred = c.predicted()
        if moved:
            assert pred[int(round(s.hist_fraction * 8))] == pred[1:].min()
            assert pred[1:].min() <= (1 - s.margin) * pred[int(round(before * 8))]
        assert s.hist_bytes + s.raw_bytes == 10_000


def test_split_state_round_trips():
    s = BudgetSplit(1600, grid=4)
    s.decide(_counters([100] * 5, [100, 0, 100, 100, 100]))
    t = BudgetSplit(1600, grid=4)
    t.load_state_dict(s.state_dict())
    assert t.hist_fraction == s.hist_fraction != INITIAL_HIST_FRACTION
    assert (t.hist_bytes, t.raw_bytes) == (s.hist_bytes, s.raw_bytes)
