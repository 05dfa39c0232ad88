"""The convert stage: a downloaded dataset into a store, out of core.

:func:`convert` (``_pipeline.py``) plans a conversion and runs its steps
(``_steps.py``) in ``DST.partial/``: edges are bucketed, sorted, deduplicated
and relabelled into the CSC topology (``_topology.py``), nodes are renumbered
by degree (:mod:`~refresh_store.convert.reorder`), rows are copied in the new
order (:mod:`~refresh_store.convert.permute`) through the O_DIRECT row writers
(``_row_writers.py``), and every pass is timed in the pass log
(``_pass_log.py``: seconds, MB/s, RSS). The Numba kernels are in
``_kernels.py``.
"""

from __future__ import annotations

from ._pipeline import CRASH_ENV, STEPS, ConvertOptions, ConvertSummary, convert, parse_size
from .permute import STRATEGIES, choose_strategy, permute_rows
from .reorder import degree_order

__all__ = [
    "CRASH_ENV",
    "STEPS",
    "STRATEGIES",
    "ConvertOptions",
    "ConvertSummary",
    "choose_strategy",
    "convert",
    "degree_order",
    "parse_size",
    "permute_rows",
]
