"""The history table: cached embeddings of the nodes with slots, with exact ages.

For each cached layer ``l`` the table has ``H`` rows, one per slot
``[0, H)``: row ``s`` holds ``h^(l)`` of the node whose slot is ``s`` (which
node that is, :class:`~refresh_train.history.slots.SlotOrder` decides: by
default the nodes the layer looks up most, most first) and the global step
``birth[s]`` at which it was computed (or nothing yet). The table itself
only sees slots. So

* a lookup is ``s < H`` and one read of ``birth[s]``, O(1) per node;
* nothing is ever evicted to make room: an entry is replaced by a newer
  embedding of the same node, and stops being usable once it is older than
  the staleness bound (ages are exact: ``step - birth``) or, with
  ``max_serves``, once it has been served that many times (``serves``,
  counted by :meth:`serve`, zero again at each commit);
* growing or shrinking the table keeps the entries of the slots that stay.

The birth stamps live in host memory, where the sampler looks them up; the
embeddings live on the compute device. The table has no locking: the
refresh cache mode calls :meth:`commit`, :meth:`lookup` and :meth:`gather`
from one thread only (the loader's sampling thread), in batch order, which
is what makes results independent of thread timing (see
:mod:`refresh_train.modes.refresh`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["HistoryTable", "EMPTY"]

#: ``birth`` of a row that holds no embedding: every age computed from it is
#: larger than any staleness bound.
EMPTY = np.iinfo(np.int64).min // 4


class HistoryTable:
    """Embeddings ``h^(l)`` of the nodes of slots ``[0, rows)`` for each cached layer ``l``.

    Below, "ids" are slots.

    Parameters
    ----------
    layers
        The cached layers ``l``.
    width
        Embedding width (the model's hidden width).
    rows
        Slots per layer (``[0, rows)``); 0 holds nothing.
    dtype
        Element type of the stored embeddings.
    device
        Where the embeddings live.
    max_serves
        An entry is usable for at most this many lookups (:meth:`serve`);
        ``inf``: no limit.
    """

    def __init__(
        self,
        layers: Sequence[int],
        width: int,
        rows: int,
        dtype: torch.dtype,
        device: torch.device,
        max_serves: float = math.inf,
    ) -> None:
        self.layers = tuple(int(v) for v in layers)
        self.max_serves = max_serves
        self.width = int(width)
        self.dtype = dtype
        self.device = torch.device(device)
        self.rows = 0
        self.birth: dict[int, NDArray[np.int64]] = {}
        self.serves: dict[int, NDArray[np.int64]] = {}  # lookups each entry has served
        self.emb: dict[int, torch.Tensor] = {}
        self.resize(rows)

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored embedding."""
        return self.width * torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of the embeddings on the device (all layers)."""
        return len(self.layers) * self.rows * self.row_bytes

    # ------------------------------------------------------------------ reads
    def lookup(
        self,
        layer: int,
        ids: NDArray[np.int64],
        step: int,
        staleness_iters: float,
        skip: int = 0,
    ) -> NDArray[np.int64]:
        """Rows of the entries of ``ids`` usable at ``step``; ``-1`` where none.

        An entry is usable when ``step - birth <= staleness_iters`` and it has
        served fewer than ``max_serves`` lookups. The first ``skip`` ids are
        never served (a batch's seeds are always computed).
        """
        out = np.full(len(ids), -1, dtype=np.int64)
        pos = np.flatnonzero(ids < self.rows)
        pos = pos[pos >= skip]
        if len(pos):
            node = ids[pos]
            age = step - self.birth[layer][node]
            ok = age <= staleness_iters if np.isfinite(staleness_iters) else age < -EMPTY // 2
            if math.isfinite(self.max_serves):
                ok &= self.serves[layer][node] < self.max_serves
            out[pos[ok]] = node[ok]
        return out

    def serve(self, layer: int, rows: NDArray[np.int64]) -> None:
        """Count one more lookup served by each of the distinct ``rows``."""
        self.serves[layer][rows] += 1

    def gather(self, layer: int, rows: NDArray[np.int64]) -> torch.Tensor:
        """Embeddings of ``rows`` of ``layer`` as a new ``[len(rows), width]`` tensor."""
        index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        return self.emb[layer].index_select(0, index.to(self.device, non_blocking=True))

    def live(self, step: int, staleness_iters: float, lo: int = 0, hi: int | None = None) -> int:
        """Entries of nodes ``[lo, hi)`` (all layers) usable at ``step``."""
        limit = staleness_iters if np.isfinite(staleness_iters) else -EMPTY // 2
        return sum(
            int(np.count_nonzero((step - self.birth[v][lo:hi] <= limit)
                                 & (self.serves[v][lo:hi] < self.max_serves)))
            for v in self.layers
        )  # fmt: skip

    # ----------------------------------------------------------------- writes
    def commit(
        self, layer: int, ids: NDArray[np.int64], emb: torch.Tensor | None, step: int
    ) -> None:
        """Make the embeddings of the distinct ``ids`` computed at ``step`` usable.

        ``emb`` holds their rows; ``None`` means :meth:`write` already put
        them in place. Ids the table does not hold (``>= rows``: it shrank
        since they were admitted) are dropped.
        """
        if len(ids) and int(ids.min()) < 0:
            raise IndexError(f"node ids must be >= 0, got {int(ids.min())!r}")
        inside = ids < self.rows
        if not inside.all():
            ids = ids[inside]
            if emb is not None:
                emb = emb[torch.from_numpy(inside).to(emb.device)]
        if len(ids) == 0:
            return
        if emb is not None:
            self.write(layer, ids, emb)
        self.birth[layer][ids] = step
        self.serves[layer][ids] = 0

    def write(self, layer: int, ids: NDArray[np.int64], emb: torch.Tensor) -> None:
        """Put ``emb`` in the rows of ``ids`` (all ``< rows``) without changing their birth.

        Only for rows no batch may read: empty, or :meth:`expired_for_good`.
        """
        index = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        self.emb[layer].index_copy_(0, index.to(self.device, non_blocking=True), emb.to(self.dtype))

    def expired_for_good(
        self, layer: int, ids: NDArray[np.int64], step: int, staleness_iters: float
    ) -> NDArray[np.bool_]:
        """Which rows of ``ids`` no step after ``step`` may use (empty or too old)."""
        birth = self.birth[layer][ids]
        free = birth == EMPTY
        if np.isfinite(staleness_iters):
            free |= birth + staleness_iters <= step
        return free

    def resize(self, rows: int) -> None:
        """Hold nodes ``[0, rows)`` from now on, keeping the entries of the nodes that stay."""
        rows = int(rows)
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows!r}")
        keep = min(rows, self.rows)
        for v in self.layers:
            birth = np.full(rows, EMPTY, dtype=np.int64)
            old = self.birth.get(v)
            if old is not None:
                birth[:keep] = old[:keep]
            self.birth[v] = birth
            serves = np.zeros(rows, dtype=np.int64)
            if v in self.serves:
                serves[:keep] = self.serves[v][:keep]
            self.serves[v] = serves
            emb = torch.zeros((rows, self.width), dtype=self.dtype, device=self.device)
            old_emb = self.emb.pop(v, None)
            if old_emb is not None:
                emb[:keep] = old_emb[:keep]
            self.emb[v] = emb
        self.rows = rows

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, object]:
        """The filled rows of every layer, as CPU tensors."""
        out: dict[str, object] = {"rows": self.rows}
        for v in self.layers:
            filled = np.flatnonzero(self.birth[v] != EMPTY)
            out[f"layer{v}"] = {
                "ids": torch.from_numpy(filled),
                "births": torch.from_numpy(self.birth[v][filled]),
                "serves": torch.from_numpy(self.serves[v][filled]),
                "emb": self.gather(v, filled).cpu(),
            }
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (the size included)."""
        missing = [v for v in self.layers if f"layer{v}" not in state]
        if missing:
            raise ValueError(f"the checkpoint's history table has no layer {missing[0]!r}")
        self.resize(0)
        self.resize(int(state["rows"]))
        for v in self.layers:
            part = state[f"layer{v}"]
            ids = part["ids"].numpy().astype(np.int64)
            if len(ids) and (ids.min() < 0 or ids.max() >= self.rows):
                raise ValueError("the checkpoint's history table holds node ids out of range")
            self.birth[v][ids] = part["births"].numpy()
            if "serves" in part:  # checkpoints before --hist-max-serves have none
                self.serves[v][ids] = part["serves"].numpy()
            self.emb[v][torch.from_numpy(ids).to(self.device)] = part["emb"].to(
                self.device, self.dtype
            )
