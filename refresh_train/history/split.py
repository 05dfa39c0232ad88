"""How ``--cache refresh`` divides one device budget between raw rows and embeddings.

Raw rows (the device tier's prefix ``[0, K)`` of the degree-ordered ids)
and history entries (the table's prefix ``[0, H)`` of the cached layers)
compete for the same bytes. Which is worth more depends on the graph, the
model width, the batch and the policy, so the split is measured, not
guessed. Candidate splits give the table a share ``f_i = i / grid`` of the
budget, each with its own ``(K_i, H_i)``; the ``H_i`` cut the table's nodes
into bands ``j``: ``[H_{j-1}, H_j)``. Over an epoch the refresh mode counts,
exactly, from each batch sampled once more without pruning:

* ``noprune[i]``: input rows ``>= K_i`` the batch would fetch with no pruning;
* ``covered[i, j]``: of those, the rows a table growing into band ``j``
  would spare if every table node (not a seed) at a cached layer were
  served: a row is needed while some path from a seed reaches it through no
  such node, and band ``j`` holds the node that spares it last (see
  :func:`~refresh_train.history.cover.uncovered_rank`);

and, per band, how often its nodes are looked up. An entry serves only
while it is younger than the staleness bound ``t``, from ``lag`` steps after
its admission, so the share of lookups a node can be served follows from
how often it is looked up: a node looked up with probability ``p`` per step
is missed once when its entry has expired (then admitted, with probability
``a``, the policy's admitted share), missed for ``lag`` steps while the new
entry is not yet usable, and served the ``t - lag`` steps after:
``usable = p (t - lag) / (p t + 1 / a)`` (1 without a staleness bound). A
band of nodes looked up less often than once per ``t`` steps is mostly
missed: on a graph where a batch touches a few percent of the nodes, most of
a large table's tail. The traffic predicted for candidate ``i`` is
``noprune[i] - sum_{j <= i} usable[j] * covered[i, j]``, every band's
lookup rate measured whether or not the table holds it yet. After each
epoch the split moves to the candidate with the least predicted traffic
when that is at least ``margin`` below the current one's; the table keeps
at least ``1/grid`` of the budget. The counts carry over from epoch to
epoch at half weight. Every count is deterministic for a seed, so the split
is too.
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
    """What epochs measured, per candidate split and band (see the module docstring).

    ``band_nodes[j]`` is the number of (node, cached layer) pairs in band ``j``;
    ``staleness``, ``lag`` and ``admitted`` (the policy's admitted share ``a``)
    are the settings the usable shares follow from.
    """

    grid: int
    band_nodes: np.ndarray  # int64 [grid + 1]
    staleness: float
    lag: int
    admitted: float
    steps: int = 0
    noprune: np.ndarray = field(init=False)  # int64 [grid + 1]: per candidate
    covered: np.ndarray = field(init=False)  # int64 [grid + 1, grid + 1]: candidate, band
    band_lookups: np.ndarray = field(init=False)  # int64 [grid + 1]: non-seed lookups

    def __post_init__(self) -> None:
        n = self.grid + 1
        self.noprune = np.zeros(n, dtype=np.int64)
        self.covered = np.zeros((n, n), dtype=np.int64)
        self.band_lookups = np.zeros(n, dtype=np.int64)

    def decayed(self, weight: float) -> SplitCounters:
        """Fresh counters starting from these at ``weight`` (for the next epoch)."""
        out = SplitCounters(self.grid, self.band_nodes, self.staleness, self.lag, self.admitted)
        out.steps = round(self.steps * weight)
        for name in ("noprune", "covered", "band_lookups"):
            getattr(out, name)[...] = np.round(getattr(self, name) * weight)
        return out

    @property
    def ideal(self) -> np.ndarray:
        """Rows each candidate would fetch with every table node usable."""
        return self.noprune - np.tril(self.covered).sum(axis=1)

    def usable(self) -> np.ndarray:
        """Per band, the share of its lookups an entry can serve (see the module docstring)."""
        p = self.band_lookups / np.maximum(self.band_nodes * max(self.steps, 1), 1)
        t, lag = self.staleness, self.lag
        if t < lag or self.admitted <= 0:
            return np.zeros(self.grid + 1)
        if not np.isfinite(t):
            return (p > 0).astype(float)
        return p * (t - lag) / (p * t + 1.0 / self.admitted)

    def predicted(self) -> np.ndarray:
        """Predicted rows fetched beyond the device tier, per candidate."""
        return self.noprune - np.tril(self.covered * self.usable()[None, :]).sum(axis=1)


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
        if not self.automatic or c.noprune.sum() == 0:
            return False  # nothing measured
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

    def release(self) -> bool:
        """Give the whole budget to raw rows once the table is no longer used
        (``--hist-stop``), fixed split or not; whether that changed the split."""
        if self.hist_fraction == 0.0:
            return False
        self.hist_fraction = 0.0
        self.moves.append(0.0)
        return True

    def state_dict(self) -> dict[str, float]:
        """The current share (for checkpoints)."""
        return {"hist_fraction": self.hist_fraction}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s share."""
        self.hist_fraction = float(state["hist_fraction"])
