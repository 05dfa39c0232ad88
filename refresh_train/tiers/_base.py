"""The contract every raw-feature tier keeps (see :class:`FeatureTier`)."""

from __future__ import annotations

import sys
import threading
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = [
    "BATCH_BUFFERS",
    "LOWER_BATCH_BUFFERS",
    "BufferPool",
    "FeatureTier",
    "check_ids",
    "resolve_device",
    "row_words",
    "torch_dtype",
]

#: Batch buffers a tier keeps for reuse unless told otherwise
#: (:meth:`FeatureTier.keep_batch_buffers`).
BATCH_BUFFERS = 6
#: What the trainer lets each tier below the top one keep: their buffers
#: live only until the top tier has copied them.
LOWER_BATCH_BUFFERS = 2


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy feature dtype."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> ``cuda:N``, the current one).

    Tensors always report an indexed CUDA device, and ``torch.device('cuda')
    != torch.device('cuda:0')``, so tiers compare against the resolved form.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def row_words(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's rows as a 2-D numpy view of 8-byte words (or bytes).

    The copy kernels of :mod:`._copy_kernels` move whole rows through this
    view whatever the feature dtype; it shares memory with ``t``.
    """
    rows = t.reshape(t.shape[0], -1)
    width = rows.shape[1] * rows.element_size()
    word = torch.int64 if width % 8 == 0 else torch.uint8
    return rows.view(torch.uint8).view(word).numpy()


def check_ids(ids: object, num_rows: int, *, name: str = "ids") -> NDArray[np.int64]:
    """Row ids as a contiguous int64 array, checked against ``[0, num_rows)``.

    Raises
    ------
    TypeError
        ``ids`` is not a 1-D integer array or tensor.
    IndexError
        An id lies outside ``[0, num_rows)``.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(
            f"{name} must be a 1-D array of integer row ids, got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} holds row {bad!r}; rows are 0..{num_rows - 1}")
    return arr


class BufferPool:
    """Reuses large host buffers once nothing refers to them any more.

    A buffer handed out as a tensor stays referenced (through the tensor's
    storage) until every tensor and view of it is gone; only then is its
    reference count back to what it was when the pool created it, and only
    then is it handed out again. Nothing is ever reused while in use.

    Parameters
    ----------
    max_buffers
        Buffers kept; beyond that the smallest idle one is dropped.
    """

    def __init__(self, max_buffers: int = 6) -> None:
        self.max_buffers = int(max_buffers)
        self._bufs: list[np.ndarray] = []
        self._idle_refs: list[int] = []
        self._lock = threading.Lock()
        self.reused = 0
        #: Buffers handed out while every kept one was in use: allocated, not kept.
        #: More batches were alive at once than the pool was sized for.
        self.overflow = 0

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._bufs[i])

    def rows(self, n: int, row_shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """A tensor of ``n`` rows of ``row_shape`` and ``dtype``, contents undefined."""
        dtype = np.dtype(dtype)
        nbytes = n * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        with self._lock:
            pick = -1
            for i in range(len(self._bufs)):
                fits = self._bufs[i].nbytes >= nbytes
                if fits and self._refs(i) == self._idle_refs[i]:
                    if pick < 0 or self._bufs[i].nbytes < self._bufs[pick].nbytes:
                        pick = i
            if pick >= 0:
                self.reused += 1
            else:
                idle = [i for i in range(len(self._bufs)) if self._refs(i) == self._idle_refs[i]]
                if len(self._bufs) >= self.max_buffers:
                    if not idle:  # all in use: a plain allocation the pool does not keep
                        self.overflow += 1
                        return torch.from_numpy(np.empty((n, *row_shape), dtype=dtype))
                    drop = min(idle, key=lambda i: self._bufs[i].nbytes)
                    del self._bufs[drop], self._idle_refs[drop]
                # 1/8 headroom so that the next, slightly larger batch fits too.
                self._bufs.append(np.empty(max(1, nbytes + nbytes // 8), dtype=np.uint8))
                pick = len(self._bufs) - 1
                self._idle_refs.append(self._refs(pick))
            view = self._bufs[pick][:nbytes].view(dtype).reshape(n, *row_shape)
        return torch.from_numpy(view)


class FeatureTier(ABC):
    """One level of the raw-feature hierarchy (GraphBolt-style composition).

    A tier serves the rows it holds and hands only the misses to ``below``.
    It counts what it served itself: ``rows_<name>`` rows (every requested
    position, duplicates included) and ``bytes_<name> = rows_<name> *
    row_bytes``. Over a chain the ``rows_*`` of all tiers add up to the rows
    requested from the top.

    Subclasses implement :meth:`_read` (trusted, checked ids) and may add
    counters in :meth:`_own_stats`.

    Attributes
    ----------
    name
        ``"device"``, ``"host"`` or ``"disk"``: the suffix of its counters.
    num_rows, row_shape, dtype
        The feature array this tier serves (numpy dtype).
    device
        Where :meth:`read` returns rows.
    below
        The next tier, or ``None`` for the last one.
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        num_rows: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        device: torch.device,
        below: FeatureTier | None,
    ) -> None:
        self.num_rows = int(num_rows)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.dtype = np.dtype(dtype)
        self.torch_dtype = torch_dtype(self.dtype)
        self.device = resolve_device(device)
        self.below = below
        self.row_bytes = int(self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        self._rows = 0
        self._pool: BufferPool | None = None
        self.batch_buffers = BATCH_BUFFERS

    def read(self, ids: object, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``ids`` in request order, as a tensor on :attr:`device`.

        Parameters
        ----------
        ids
            1-D integer row ids (numpy array, list or CPU tensor), any order,
            duplicates allowed.
        out
            Optional tensor of shape ``(len(ids), *row_shape)``, dtype and
            device of this tier, to fill instead of allocating.

        Returns
        -------
        torch.Tensor of shape ``(len(ids), *row_shape)``.
        """
        arr = check_ids(ids, self.num_rows)
        if out is not None:
            want = (len(arr), *self.row_shape)
            if (
                tuple(out.shape) != want
                or out.dtype != self.torch_dtype
                or out.device != self.device
                or not out.is_contiguous()
            ):
                raise ValueError(
                    f"out must be a contiguous {self.torch_dtype} tensor of shape {want} on "
                    f"{self.device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
                )
        return self._read(arr, out)

    def read_trusted(self, ids: NDArray[np.int64], out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`read` without its checks, for the tier above this one.

        The top tier's :meth:`read` checks the ids once; the tiers below are
        handed the same (or fewer) ids and would only repeat a pass over
        them. ``ids`` must be a contiguous int64 array within
        ``[0, num_rows)`` and ``out``, when given, a contiguous CPU or
        :attr:`device` tensor of this tier's dtype and row shape. Counters
        are kept by :meth:`_read`, so they are the same as through
        :meth:`read`.
        """
        return self._read(ids, out)

    @abstractmethod
    def _read(self, ids: NDArray[np.int64], out: torch.Tensor | None) -> torch.Tensor:
        """Rows of checked ids; fill ``out`` when given."""

    def _empty(self, n: int, *, pin: bool = False) -> torch.Tensor:
        return torch.empty(
            (n, *self.row_shape), dtype=self.torch_dtype, device=self.device, pin_memory=pin
        )

    def _batch_rows(self, n: int, *, pin: bool = False) -> torch.Tensor:
        """A tensor for ``n`` rows that :meth:`read` hands to its caller.

        CPU batches come from a :class:`BufferPool`: a fresh allocation of a
        batch (hundreds of MB) page-faults on every first touch, which cost
        0.1-0.9 s per batch here. Pinned memory is already cached by torch.
        """
        if self.device.type != "cpu" or pin:
            return self._empty(n, pin=pin)
        if self._pool is None:
            self._pool = BufferPool(self.batch_buffers)
        return self._pool.rows(n, self.row_shape, self.dtype)

    def keep_batch_buffers(self, top: int, below: int = LOWER_BATCH_BUFFERS) -> None:
        """Keep at most ``top`` batch buffers for reuse here and ``below`` in each tier under it.

        Idle buffers stay resident, so these caps bound what the pools hold.
        The top tier's buffers hold the batches it returns, as many as the
        loader keeps fetched at once; a tier below fills a buffer per read
        that lives only until the tier above has copied its rows. Call
        before the first read.
        """
        for i, tier in enumerate(self.chain()):
            tier.batch_buffers = max(1, int(top if i == 0 else below))
            if tier._pool is not None:
                tier._pool.max_buffers = tier.batch_buffers

    def _own_stats(self) -> dict[str, float | int]:
        return {}

    def stats(self) -> dict[str, float | int]:
        """Counters of this tier and every tier below it."""
        out: dict[str, float | int] = {
            f"rows_{self.name}": self._rows,
            f"bytes_{self.name}": self._rows * self.row_bytes,
        }
        out.update(self._own_stats())
        if self.below is not None:
            out.update(self.below.stats())
        return out

    def reset_stats(self) -> None:
        """Zero the counters of this tier and every tier below it."""
        self._rows = 0
        self._reset_own_stats()
        if self.below is not None:
            self.below.reset_stats()

    def _reset_own_stats(self) -> None:  # noqa: B027  # optional hook, no-op by default
        """Zero counters a subclass adds in :meth:`_own_stats`."""

    def close(self) -> None:
        """Release buffers and files of this tier and every tier below it."""
        if self.below is not None:
            self.below.close()

    def chain(self) -> list[FeatureTier]:
        """This tier and the tiers below it, top first."""
        tiers: list[FeatureTier] = []
        tier: FeatureTier | None = self
        while tier is not None:
            tiers.append(tier)
            tier = tier.below
        return tiers
