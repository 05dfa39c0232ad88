"""Hypothesis profiles: a bounded example count for ``make test``, more for ``make test-all``.

``REFRESH_HYPOTHESIS_PROFILE=thorough`` (set by ``make test-all``) raises the
count of the fuzz tests that take it from the profile (those that pin
``max_examples`` themselves keep theirs).

``one_torch_thread`` (one test) and ``one_torch_thread_per_module`` run torch
on one thread, for tests of tiny tensors.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_SLOW_GENERATION = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "fast", max_examples=25, deadline=None, suppress_health_check=_SLOW_GENERATION
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=_SLOW_GENERATION
)
settings.load_profile(os.environ.get("REFRESH_HYPOTHESIS_PROFILE", "fast"))


def _serial_torch():
    # Tiny tensors: on a loaded 2-core machine a second OpenMP thread only
    # spins (measured 20-40x slower steps), so torch runs on one thread.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test that asks."""
    yield from _serial_torch()


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """torch on one thread for a whole module: ``pytestmark = pytest.mark.usefixtures(...)``."""
    yield from _serial_torch()
