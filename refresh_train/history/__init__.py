"""The historical embedding cache: table, admission policies and the budget split.

``--cache refresh`` (:class:`refresh_train.modes.RefreshCache`) composes these
with the raw-feature tiers:

- :class:`HistoryTable` (:mod:`.table`) holds embeddings ``h^(l)`` of the
  cached layers with the exact step each was computed at, and answers
  O(1)-per-node lookups for the sampler's pruning hook;
- :class:`AdmissionPolicy` (:mod:`.policy`) picks which fresh embeddings
  enter it after each step (gradient criterion, staleness, ablations);
- :class:`SlotOrder` (:mod:`.slots`) decides which nodes get the table's
  slots: the ones the cached layers are expected to look up most;
- :class:`BudgetSplit` (:mod:`.split`) divides the device budget between
  raw rows and the table from what each measurably saves.
"""

from __future__ import annotations

from .policy import HIST_POLICIES, AdmissionPolicy, make_policy
from .slots import SlotOrder
from .split import INITIAL_HIST_FRACTION, BudgetSplit, SplitCounters
from .table import HistoryTable

__all__ = [
    "HistoryTable",
    "SlotOrder",
    "AdmissionPolicy",
    "HIST_POLICIES",
    "make_policy",
    "BudgetSplit",
    "SplitCounters",
    "INITIAL_HIST_FRACTION",
]
