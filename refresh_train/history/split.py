"""How ``--cache refresh`` divides one device budget between raw rows and embeddings.

Raw rows (the device tier's prefix ``[0, K)`` of the degree-ordered ids)
and history entries compete for the same bytes. Which is worth more
depends on the graph, the model width, the batch and the policy, so the
split is measured rather than guessed: over each epoch the refresh mode
counts, in raw rows fetched,

* ``raw_gain``: fetches of rows in ``[K, K + dK)``, which a device tier
  larger by one move (``dK`` rows) would have served;
* ``raw_loss``: fetches of rows in ``[K - dK, K)``, which one smaller would
  have had to fetch;
* ``hist_loss``: rows saved by hits on the table's last ``dH`` nodes
  ``[H - dH, H)``, which a table smaller by one move would not hold;
* ``hist_gain``: lookups of nodes ``[H, H + dH)``, which a table larger by
  one move would hold, times the hit rate of the band below them;

each hit valued at the epoch's raw rows saved per hit beyond the device
tier (measured exactly by sampling each batch once more without pruning).
A move is ``step_fraction`` of the budget. After the epoch the split moves
one step towards raw rows when ``raw_gain`` exceeds ``hist_loss`` by the
margin, or towards the table when ``hist_gain`` exceeds ``raw_loss`` by
the margin. Every count is deterministic for a seed, so the split is too.
The table keeps at least one move's share while the split is automatic,
so that its side can still be measured, and no decision is taken while
less than :data:`WARM_SHARE` of its last band holds usable entries. (Hits near the table's end are
valued at the average rows per hit, which favours the table a little:
colder nodes have smaller sub-trees.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BudgetSplit", "SplitCounters", "INITIAL_HIST_FRACTION", "WARM_SHARE"]

#: Share of the budget the table starts with when the split is automatic.
#: On a 1M-node power-law graph, treating the top-degree nodes' embeddings
#: as always cached, a 10 % budget split 25/75 between embeddings and raw
#: rows left 26-28 % of the no-cache traffic, against 34 % all embeddings
#: and 50 % all raw rows (the project's own measurement).
INITIAL_HIST_FRACTION = 0.25

#: No decision until this share of the table's last band holds usable
#: entries: a table still filling up (the first steps, a warm-up) would be
#: judged by rows it has not had the chance to use.
WARM_SHARE = 0.5


@dataclass
class SplitCounters:
    """What one epoch measured (see the module docstring); counts of raw rows and nodes."""

    steps: int = 0
    raw_gain_rows: int = 0
    raw_loss_rows: int = 0
    band_hits: int = 0
    band_lookups: int = 0
    above_lookups: int = 0
    hits: int = 0
    rows_saved_off_device: int = 0
    band_live_share: float = 1.0  # usable entries among the last band's rows at the end

    def rows_per_hit(self) -> float:
        """Raw rows beyond the device tier that one hit saved, on average."""
        return self.rows_saved_off_device / self.hits if self.hits else 0.0

    def hist_loss_rows(self) -> float:
        """Raw rows the table's last band of nodes saved."""
        return self.band_hits * self.rows_per_hit()

    def hist_gain_rows(self) -> float:
        """Raw rows a band more of nodes would have saved (at the last band's hit rate)."""
        if self.band_lookups == 0:
            return 0.0
        return self.above_lookups * self.band_hits / self.band_lookups * self.rows_per_hit()


@dataclass
class BudgetSplit:
    """The current division of ``budget_bytes``, and the rule that moves it.

    Parameters
    ----------
    budget_bytes
        Device bytes shared by raw rows and the history table.
    fixed_fraction
        Share of the table when fixed (``--hist-fraction``); ``None`` = automatic.
    step_fraction
        Share of the budget moved per decision.
    margin
        Relative advantage a side needs before the split moves.
    """

    budget_bytes: int
    fixed_fraction: float | None = None
    step_fraction: float = 1 / 16
    margin: float = 0.1
    hist_fraction: float = field(init=False)
    moves: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.hist_fraction = (
            INITIAL_HIST_FRACTION if self.fixed_fraction is None else float(self.fixed_fraction)
        )

    @property
    def hist_bytes(self) -> int:
        """Bytes of the history table (entries and their admission queue)."""
        return int(self.budget_bytes * self.hist_fraction)

    @property
    def raw_bytes(self) -> int:
        """Bytes of the device tier's raw rows."""
        return self.budget_bytes - self.hist_bytes

    @property
    def automatic(self) -> bool:
        """Whether :meth:`decide` may move the split."""
        return self.fixed_fraction is None

    def band_bytes(self) -> int:
        """Bytes of one move."""
        return int(self.budget_bytes * self.step_fraction)

    def decide(self, c: SplitCounters) -> bool:
        """Move the split one step if the epoch's counters say so; whether it moved."""
        if not self.automatic or c.steps == 0 or c.band_live_share < WARM_SHARE:
            return False
        step = self.step_fraction
        new = self.hist_fraction
        grow = 1 + self.margin
        if c.raw_gain_rows > grow * c.hist_loss_rows() and self.hist_fraction >= 2 * step:
            new = self.hist_fraction - step
        elif c.hist_gain_rows() > grow * c.raw_loss_rows and self.hist_fraction + step <= 1:
            new = self.hist_fraction + step
        if new == self.hist_fraction:
            return False
        self.hist_fraction = round(new, 9)
        self.moves.append(self.hist_fraction)
        return True

    def state_dict(self) -> dict[str, float]:
        """The current share (for checkpoints)."""
        return {"hist_fraction": self.hist_fraction}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s share."""
        self.hist_fraction = float(state["hist_fraction"])
