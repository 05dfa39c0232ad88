"""How ``--cache refresh`` divides one device budget between raw rows and embeddings.

Raw rows (the device tier's prefix ``[0, K)`` of the degree-ordered ids)
and history entries (the table's prefix ``[0, H)`` of the cached layers)
compete for the same bytes. Which is worth more depends on the graph, the
model width, the batch and the policy, so the split is measured, not
guessed. Candidate splits give the table a share ``f`` in steps of
``1/grid`` of the budget, each with its own ``(K, H)``. Over an epoch the
refresh mode counts, for every candidate and exactly from each batch
sampled once more without pruning:

* ``noprune[f]``: input rows ``>= K`` the batch would fetch with no pruning;
* ``ideal[f]``: input rows ``>= K`` it would fetch if every table node
  (``< H``, not a seed) at a cached layer were served from the table: a row
  is needed while some path from a seed reaches it through no such node
  (see :func:`~refresh_train.history.cover.uncovered_rank`);

and the share ``usable`` of lookups of table nodes holding an entry that
found it usable (staleness, lag and admission make it less than 1). The
traffic predicted for ``f`` is ``noprune - usable * (noprune - ideal)``.
After each epoch the split moves to the candidate with the least predicted
traffic when that is at least ``margin`` below the current one's; no
decision is taken before a table entry was looked up, and the table keeps
at least ``1/grid`` of the budget, so that its side stays measurable. The
counts carry over from epoch to epoch at half weight (entries admitted
together expire together, so one epoch's usable share swings with the
staleness cycle). Every count is deterministic for a seed, so the split is
too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BudgetSplit", "SplitCounters", "INITIAL_HIST_FRACTION"]

#: Share of the budget the table starts with when the split is automatic;
#: the first epoch's counts move it. On the memory-access benchmark's
#: papers-like graph (hidden 128, float16 entries) the best fixed split at
#: 1-20 % budgets gave the table 25-75 % of the bytes.
INITIAL_HIST_FRACTION = 0.5


@dataclass
class SplitCounters:
    """What one epoch measured, per candidate split (see the module docstring)."""

    grid: int
    noprune: np.ndarray = field(init=False)  # int64 [grid + 1]
    ideal: np.ndarray = field(init=False)  # int64 [grid + 1]
    eligible: int = 0  # lookups of table nodes (not seeds)
    hits: int = 0  # of those, usable entries

    def __post_init__(self) -> None:
        self.noprune = np.zeros(self.grid + 1, dtype=np.int64)
        self.ideal = np.zeros(self.grid + 1, dtype=np.int64)

    def decayed(self, weight: float) -> SplitCounters:
        """Fresh counters starting from these at ``weight`` (for the next epoch)."""
        out = SplitCounters(self.grid)
        out.noprune[:] = np.round(self.noprune * weight)
        out.ideal[:] = np.round(self.ideal * weight)
        out.eligible = round(self.eligible * weight)
        out.hits = round(self.hits * weight)
        return out

    @property
    def usable(self) -> float:
        """Share of table-node lookups that found a usable entry."""
        return self.hits / self.eligible if self.eligible else 0.0

    def predicted(self) -> np.ndarray:
        """Predicted rows fetched beyond the device tier, per candidate."""
        return self.noprune - self.usable * (self.noprune - self.ideal)


@dataclass
class BudgetSplit:
    """The current division of ``budget_bytes``, and the rule that moves it.

    Parameters
    ----------
    budget_bytes
        Device bytes shared by raw rows and the history table.
    fixed_fraction
        Share of the table when fixed (``--hist-fraction``); ``None`` = automatic.
    grid
        Candidate shares are ``i / grid``.
    margin
        Relative gain in predicted traffic a move needs.
    carry
        Weight of the previous epochs' counts in the next decision.
    """

    budget_bytes: int
    fixed_fraction: float | None = None
    grid: int = 16
    margin: float = 0.05
    carry: float = 0.5
    hist_fraction: float = field(init=False)
    moves: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.hist_fraction = (
            INITIAL_HIST_FRACTION if self.fixed_fraction is None else float(self.fixed_fraction)
        )

    @property
    def hist_bytes(self) -> int:
        """Bytes of the history table (entries and their admission queue)."""
        return self.hist_bytes_at(self.hist_fraction)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the device tier's raw rows."""
        return self.budget_bytes - self.hist_bytes

    def hist_bytes_at(self, fraction: float) -> int:
        """Table bytes at share ``fraction``."""
        return int(self.budget_bytes * fraction)

    @property
    def automatic(self) -> bool:
        """Whether :meth:`decide` may move the split."""
        return self.fixed_fraction is None

    def candidates(self) -> np.ndarray:
        """The shares the table may get: ``0, 1/grid, ..., 1``."""
        return np.arange(self.grid + 1) / self.grid

    def decide(self, c: SplitCounters) -> bool:
        """Move to the best candidate of an epoch's counts if it gains enough; whether it moved."""
        if not self.automatic or c.noprune.sum() == 0 or c.eligible == 0:
            return False  # nothing measured, or no entry was ever looked up
        pred = c.predicted()
        cand = self.candidates()
        now = int(np.argmin(np.abs(cand - self.hist_fraction)))
        # The table keeps one step's share, so that its side stays measurable.
        pred[0] = np.inf
        best = int(np.argmin(pred))  # the first of equals: the smallest table
        if best == now or not pred[best] < (1 - self.margin) * pred[now]:
            return False
        self.hist_fraction = float(cand[best])
        self.moves.append(self.hist_fraction)
        return True

    def state_dict(self) -> dict[str, float]:
        """The current share (for checkpoints)."""
        return {"hist_fraction": self.hist_fraction}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s share."""
        self.hist_fraction = float(state["hist_fraction"])
