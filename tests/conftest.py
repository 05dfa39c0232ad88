"""Hypothesis profiles: a bounded example count for ``make test``, more for ``make test-all``.

``REFRESH_HYPOTHESIS_PROFILE=thorough`` (set by ``make test-all``) raises the
count of the fuzz tests that take it from the profile (those that pin
``max_examples`` themselves keep theirs).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_GENERATION = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "fast", max_examples=25, deadline=None, suppress_health_check=_SLOW_GENERATION
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=_SLOW_GENERATION
)
settings.load_profile(os.environ.get("REFRESH_HYPOTHESIS_PROFILE", "fast"))
