"""Hypothesis profiles: a bounded example count for ``make test``, more for the slow runs.

``fast`` (``make test``) and ``ci`` (``make test-slow``, which CI runs after
``make test``) draw the same examples on every run (``derandomize``), so CI's
verdict is a function of the code; ``thorough`` (``make test-all``) draws as
many as ``ci`` but new ones each run, to explore. Fuzz tests that pin
``max_examples`` themselves keep theirs. A case ``thorough`` finds becomes an
explicit ``@example``.

``one_torch_thread`` (one test) and ``one_torch_thread_per_module`` run torch
on one thread, for tests of tiny tensors.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_SLOW_GENERATION = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
_COMMON = dict(deadline=None, suppress_health_check=_SLOW_GENERATION)
settings.register_profile("fast", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("ci", max_examples=400, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=400, **_COMMON)
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
