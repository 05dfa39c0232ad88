"""The benchmarks' plain-torch reference sampler (``benchmarks/_reference_sampler.py``).

It must draw valid uniform neighbourhoods in the same block structure as
:class:`refresh_train.sampler.NeighborSampler`, or the sampler benchmarks
would compare against a baseline that does other work.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS.parent / "benchmarks"))
sys.path.insert(0, str(_TESTS / "refresh_train"))

from _reference_sampler import ReferenceNeighborSampler  # noqa: E402
from test_sampler import check_structure, corner_graph  # noqa: E402

from refresh_train.sampler import NeighborSampler  # noqa: E402


@pytest.mark.parametrize(
    "fanouts", [pytest.param([-1, -1], id="all"), pytest.param([5, 3], id="53")]
)
def test_reference_sampler_valid(fanouts):
    indptr, indices = corner_graph(np.int32)
    seeds = np.array([0, 1, 5, 7, 195, 42])
    ref = ReferenceNeighborSampler(indptr, indices, fanouts, seed=1)
    mb = ref.sample(seeds, 3)
    check_structure(mb, seeds, indptr, indices, fanouts)
    if fanouts[0] == -1:
        # Full neighbourhoods are the same node sets for both samplers.
        ours = NeighborSampler(indptr, indices, fanouts).sample(seeds, 0)
        for x, y in zip(mb.layer_nodes, ours.layer_nodes):
            assert set(x.tolist()) == set(y.tolist())
    with pytest.raises(ValueError, match="distinct"):
        ref.sample(np.array([1, 1]), 0)


def test_reference_sampler_uniform():
    indptr, indices = corner_graph()
    ref = ReferenceNeighborSampler(indptr, indices, [5])
    picks = Counter()
    for b in range(1000):
        mb = ref.sample(np.array([1]), b)
        picks.update(mb.layer_nodes[0][1:].tolist())
    assert sorted(picks) == list(range(30, 50))
    assert stats.chisquare([picks[u] for u in range(30, 50)]).pvalue > 1e-3
