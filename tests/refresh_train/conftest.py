"""Fixtures shared by the tests of refresh_train and of its subpackages.

``_planted.py`` (planted stores) lives in this folder and the tests in the
subfolders (``tiers/``, ``models/``, ``modes/``, ``history/``) import it by
name, so this folder goes on ``sys.path``: pytest's default ``prepend``
import mode puts there only each test file's own folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import refresh_train.sampler as sampler_mod

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(params=[pytest.param(True, id="dense_map"), pytest.param(False, id="hash_map")])
def relabel(request, monkeypatch):
    """Run a test with both relabelling paths (dense id map and hash table)."""
    if not request.param:
        monkeypatch.setattr(sampler_mod, "DENSE_MAP_MAX_NODES", 0)
    return request.param
