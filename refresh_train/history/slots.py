"""Which nodes get the history table's slots: those the cached layers look up most.

The table has ``H`` slots per cached layer (the budget decides ``H``), and a
slot is worth the hits of its node. A node can hit only when a batch looks
it up, i.e. when sampling puts it at a cached layer, and which nodes those
are depends on where the training nodes are: at the published layer (the
input of the output layer: the seeds and their sampled in-neighbours) only
the neighbours of training nodes are ever looked up. On a graph with few
labelled nodes that is a small set that the degree order matches poorly. On
the memory-access benchmark's ``papers`` graph (2M nodes, 1 % labelled)
266,583 nodes are ever at layer 2; the 50,000 highest-degree nodes receive
22 % of its lookups, the 50,000 most looked-up ones 39 %, and 150,000 slots
hold 35 % against 84 %. A table of the prefix of degree-ordered ids (the
device tier's choice for raw rows, which are read at every layer) spends
most of its slots on nodes no batch looks up.

``order="lookups"`` (default) ranks nodes by their expected lookups per
epoch at each cached layer, from the topology and the training nodes alone:
every training node is a seed once per epoch, and block ``l`` draws
``min(1, f / deg(u))`` of each in-neighbour of each of its destinations
``u`` (``f`` its fanout), so with ``r_L`` = 1 on the training nodes

    r_l = r_{l+1} + spread(r_{l+1}, fanouts[L-1-l])

(a destination is also its own source), and a node's score at layer ``l`` is
``r_l`` less its own seed visits (seeds are never served). Slot ``i`` of
layer ``l`` belongs to the node of ``i``-th highest score (ties: lower id
first); nodes of score 0 get none. Overlaps within a batch (a node reached
twice counts once) are ignored: the order, not the count, is what matters.

A lookup maps a node to its slot through an open-addressing hash map per
cached layer (16 bytes per bucket, a power of two at least twice the
slots), O(1) per node with no array over all nodes kept: the scores take
4 bytes per node for each cached layer and two more while the order is
computed, at start only (:data:`SCORE_BYTES_PER_NODE`).

``order="degree"``: slot ``v`` is node ``v`` (the table is the prefix
``[0, H)`` of the degree-ordered ids), the earlier choice, kept as an
ablation (``--hist-order degree``).

Either way the table works on slots, and slot ``s`` of a table of ``H``
slots is usable only when ``s < H``: a node without a slot maps to
:data:`UNRANKED`, beyond every table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ._slot_kernels import build_map, find, spread

__all__ = [
    "SlotOrder",
    "UNRANKED",
    "lookup_scores",
    "score_bytes",
    "slot_map_bytes",
]

#: Slot of a node that has none: at least any table's size.
UNRANKED = np.iinfo(np.int64).max // 2
#: Bytes per node while :func:`lookup_scores` runs: two float32 arrays, plus
#: one per cached layer (:func:`score_bytes`).
SCORE_BYTES_PER_NODE = 8


def _map_bits(slots: int) -> int:
    """log2 of a map's buckets: a power of two at least twice the slots (16 at least)."""
    return max(4, int(2 * max(slots, 1) - 1).bit_length())


def slot_map_bytes(slots: int) -> int:
    """Host bytes of one layer's node list and hash map for ``slots`` slots."""
    return 8 * slots + 16 * (1 << _map_bits(slots))


def score_bytes(num_nodes: int, num_cached_layers: int) -> int:
    """Peak bytes of :func:`lookup_scores` over all nodes (the argsort of candidates aside)."""
    return num_nodes * (SCORE_BYTES_PER_NODE + 4 * num_cached_layers)


def lookup_scores(
    indptr: NDArray,
    indices: NDArray,
    train_idx: NDArray,
    fanouts: Sequence[int],
    layers: Sequence[int],
) -> dict[int, NDArray[np.float32]]:
    """Expected non-seed lookups per epoch of every node at each of ``layers``.

    ``fanouts`` from the seeds outward (block ``l`` of ``L`` uses
    ``fanouts[L-1-l]``); layers ``1 .. L-1``.
    """
    num_layers = len(fanouts)
    train = np.asarray(train_idx, dtype=np.int64)
    r = np.zeros(len(indptr) - 1, dtype=np.float32)
    r[train] = 1.0
    out: dict[int, NDArray[np.float32]] = {}
    for layer in range(num_layers - 1, min(layers) - 1, -1):
        nxt = r.copy()
        spread(indptr, indices, r, int(fanouts[num_layers - 1 - layer]), nxt)
        r = nxt
        if layer in layers:
            score = r.copy()
            score[train] -= 1.0  # each seed visit of a training node
            out[layer] = score
    return out


class SlotOrder:
    """Node -> slot per cached layer (see the module docstring).

    Build with :meth:`by_lookups` or :meth:`by_degree`.
    """

    def __init__(
        self, kind: str, nodes: dict[int, NDArray[np.int64]] | None = None, key: str = ""
    ) -> None:
        self.kind = kind
        self._key = key or kind
        self._nodes = nodes or {}
        self._maps: dict[int, tuple[NDArray[np.int64], NDArray[np.int64], int]] = {}
        for layer, ids in self._nodes.items():
            bits = _map_bits(len(ids))
            keys, vals = build_map(np.ascontiguousarray(ids, dtype=np.int64), bits)
            self._maps[layer] = (keys, vals, bits)

    @classmethod
    def by_degree(cls) -> SlotOrder:
        """Slot ``v`` is node ``v``."""
        return cls("degree")

    @classmethod
    def by_lookups(
        cls,
        indptr: NDArray,
        indices: NDArray,
        train_idx: NDArray,
        fanouts: Sequence[int],
        layers: Sequence[int],
        limit: int,
    ) -> SlotOrder:
        """The ``limit`` most looked-up nodes of each layer in ``layers``, most first.

        The order is a function of the topology, the training nodes, the
        fanouts and the layers; ``limit`` only cuts it (a smaller budget
        keeps a prefix of the same order).
        """
        h = hashlib.sha256(f"lookups {list(fanouts)} {sorted(layers)} {len(indptr)}".encode())
        h.update(np.ascontiguousarray(train_idx, dtype=np.int64).tobytes())
        h.update(np.asarray(indptr[-1:], dtype=np.int64).tobytes())
        nodes = {}
        for layer, score in lookup_scores(indptr, indices, train_idx, fanouts, layers).items():
            cand = np.flatnonzero(score > 0)
            # Descending score, ties by id (a stable sort of the ascending ids).
            order = cand[np.argsort(-score[cand], kind="stable")][: max(0, int(limit))]
            nodes[layer] = order.astype(np.int64)
        return cls("lookups", nodes, h.hexdigest()[:16])

    def ranked(self, layer: int) -> int | None:
        """How many nodes of ``layer`` have a slot (``None``: every node, degree order)."""
        return None if self.kind == "degree" else len(self._nodes[layer])

    def slots(self, layer: int, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """The slot of each of ``ids`` at ``layer``; :data:`UNRANKED` where it has none."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "degree":
            return ids
        keys, vals, bits = self._maps[layer]
        out = np.empty(len(ids), dtype=np.int64)
        find(keys, vals, bits, ids, UNRANKED, out)
        return out

    def nodes(self, layer: int, slots: NDArray[np.int64]) -> NDArray[np.int64]:
        """The node of each slot (the inverse of :meth:`slots` on slotted nodes)."""
        slots = np.asarray(slots, dtype=np.int64)
        return slots if self.kind == "degree" else self._nodes[layer][slots]

    @property
    def nbytes(self) -> int:
        """Host bytes of the node lists and maps."""
        return sum(ids.nbytes for ids in self._nodes.values()) + sum(
            k.nbytes + v.nbytes for k, v, _ in self._maps.values()
        )

    def fingerprint(self) -> str:
        """A digest of what the order follows from (checkpoints refuse a table ordered
        otherwise; the budget, which only cuts the order, may differ)."""
        return self._key
