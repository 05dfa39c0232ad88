"""Replacement policies of the host tier: CLOCK, S3-FIFO and LRU.

A policy is an index from keys (reordered node ids in ``[0, num_keys)``) to
the slots of a buffer of ``capacity`` rows, plus the rule that picks victims
when new keys arrive. The host tier owns the buffer; the policy only says
which slot holds what. The work happens in Numba kernels
(:mod:`._policy_kernels`); these classes allocate state and check inputs.

Memory: ``slot_of`` is a dense array of one int64 per key (8 bytes per node,
1.6% of a 512-byte papers100M row), so a lookup is one indexed load.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from . import _policy_kernels as _k

__all__ = ["ReplacementPolicy", "ClockPolicy", "LruPolicy", "S3FifoPolicy"]


class ReplacementPolicy(ABC):
    """Key -> slot index with a replacement rule.

    Parameters
    ----------
    capacity
        Slots in the buffer (>= 0; 0 caches nothing).
    num_keys
        Keys are integers in ``[0, num_keys)``.

    Notes
    -----
    Methods are thread-safe (one lock per policy); kernels release the GIL.
    """

    name: ClassVar[str]

    def __init__(self, capacity: int, num_keys: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        if num_keys < 0:
            raise ValueError(f"num_keys must be >= 0, got {num_keys!r}")
        self.capacity = int(capacity)
        self.num_keys = int(num_keys)
        self.slot_of: NDArray[np.int64] = np.full(self.num_keys, -1, dtype=np.int64)  # [num_keys]
        self.slot_key: NDArray[np.int64] = np.full(self.capacity, -1, dtype=np.int64)  # [capacity]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(np.count_nonzero(self.slot_key >= 0))

    def lookup(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """Slot of each key (-1 = not cached); records an access for every hit.

        Duplicated keys count one access each.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        with self._lock:
            slots = self.slot_of[keys]
            hits = slots[slots >= 0]
            if len(hits):
                self._hit(hits)
        return slots

    def admit(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """Insert keys that are not cached; return the slot each one ended in.

        Parameters
        ----------
        keys
            Unique keys, none of them cached. When there are more keys than
            slots only the first ``capacity`` are admitted.

        Returns
        -------
        ndarray of int64, same length as ``keys``: the slot of each key, or
        -1 when it was not admitted (or evicted again within this call).
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self.capacity == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        with self._lock:
            if np.any(self.slot_of[keys] >= 0):
                raise ValueError("admit() got keys that are already cached")
            self._admit(keys[: self.capacity])
            return self.slot_of[keys]

    @abstractmethod
    def _hit(self, slots: NDArray[np.int64]) -> None: ...

    @abstractmethod
    def _admit(self, keys: NDArray[np.int64]) -> None: ...


class ClockPolicy(ReplacementPolicy):
    """CLOCK (second chance): a hand sweeps the slots, sparing those referenced since."""

    name = "clock"

    def __init__(self, capacity: int, num_keys: int) -> None:
        super().__init__(capacity, num_keys)
        self._ref = np.zeros(self.capacity, dtype=np.uint8)
        self._stamp = np.zeros(self.capacity, dtype=np.int64)
        self._state = np.zeros(3, dtype=np.int64)  # hand, used, call counter

    def _hit(self, slots: NDArray[np.int64]) -> None:
        _k.clock_hit(slots, self._ref)

    def _admit(self, keys: NDArray[np.int64]) -> None:
        _k.clock_admit(keys, self.slot_of, self.slot_key, self._ref, self._stamp, self._state)


class LruPolicy(ReplacementPolicy):
    """Least recently used, as a doubly linked list over slots (O(1) per access)."""

    name = "lru"

    def __init__(self, capacity: int, num_keys: int) -> None:
        super().__init__(capacity, num_keys)
        self._prev = np.full(self.capacity, -1, dtype=np.int64)
        self._next = np.full(self.capacity, -1, dtype=np.int64)
        self._ends = np.array([-1, -1, 0], dtype=np.int64)  # head, tail, used

    def _hit(self, slots: NDArray[np.int64]) -> None:
        _k.lru_hit(slots, self._prev, self._next, self._ends)

    def _admit(self, keys: NDArray[np.int64]) -> None:
        _k.lru_admit(keys, self.slot_of, self.slot_key, self._prev, self._next, self._ends)


class S3FifoPolicy(ReplacementPolicy):
    """S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO, a main FIFO, a ghost set.

    New keys enter the small queue (10% of the slots); those accessed again
    before they leave it move to the main queue, the others leave a ghost
    entry so that their next miss admits them straight to main. The ghost set
    is a direct-mapped table of keys (a newer key may overwrite an older one),
    as bounded as the paper's fingerprint table.
    """

    name = "s3fifo"

    def __init__(self, capacity: int, num_keys: int) -> None:
        super().__init__(capacity, num_keys)
        self._freq = np.zeros(self.capacity, dtype=np.uint8)
        self._ring = np.zeros((2, max(1, self.capacity)), dtype=np.int64)
        self._st = np.zeros(5, dtype=np.int64)  # small head/len, main head/len, used
        self._ghost_bits = max(1, int(self.capacity).bit_length())
        self._ghost = np.full(1 << self._ghost_bits, -1, dtype=np.int64)
        self._small_cap = max(1, self.capacity // 10)

    def _hit(self, slots: NDArray[np.int64]) -> None:
        _k.s3fifo_hit(slots, self._freq)

    def _admit(self, keys: NDArray[np.int64]) -> None:
        _k.s3fifo_admit(
            keys,
            self.slot_of,
            self.slot_key,
            self._freq,
            self._ring,
            self._st,
            self._ghost,
            self._ghost_bits,
            self._small_cap,
        )
