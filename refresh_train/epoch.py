"""Epoch order: which seeds form each batch, and the seeds of the random streams.

Random streams are keyed by integers hashed with :func:`derive_seed`: the
shuffle of an epoch by ``(seed, epoch)``, a batch's neighbour draws by
``(seed, batch_seed(epoch, batch))``. A resumed run therefore sees the same
batches and draws as an uninterrupted one, whatever the threads' timing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from numpy.typing import NDArray

from refresh_store.splitmix import mix64

__all__ = ["batch_seed", "derive_seed", "epoch_batches", "num_batches"]

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """Hash integers into one non-negative 63-bit seed.

    Different tuples give unrelated seeds; the same tuple always the same seed
    (on every platform and Python version).
    """
    z = np.uint64(0x243F6A8885A308D3)
    for p in parts:
        p = int(p)
        if p < 0:
            raise ValueError(f"seed parts must be non-negative integers; got {p!r}")
        while True:
            z = np.uint64(mix64(z ^ np.uint64(mix64(np.uint64(p & 0xFFFFFFFFFFFFFFFF)))))
            p >>= 64
            if p == 0:
                break
    return int(z) & _MASK63


def batch_seed(epoch: int, batch_index: int) -> int:
    """The ``batch_seed`` the trainer passes for batch ``batch_index`` of ``epoch``.

    Combined with the sampler's own ``seed``, so two runs with different seeds
    sample differently at the same (epoch, batch).
    """
    return derive_seed(epoch, batch_index)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`epoch_batches` yields for ``n`` training nodes."""
    if drop_last:
        return n // batch_size
    return -(-n // batch_size)


def epoch_batches(
    train_idx: NDArray[np.integer] | torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = False,
) -> Iterator[NDArray[np.int64]]:
    """Shuffle ``train_idx`` for ``(seed, epoch)`` and cut it into batches.

    Parameters
    ----------
    train_idx : array of int, shape [n]
        Global ids of the training nodes (a memmap is read once, not kept).
    batch_size : int
        Seeds per batch, >= 1.
    seed, epoch : int
        The permutation is a pure function of ``(seed, epoch)``, so a resumed
        run sees the same batches as an uninterrupted one.
    drop_last : bool
        The last partial batch (``n % batch_size`` seeds) is yielded unless
        this is true. Default False: every training node is seen each epoch.

    Yields
    ------
    numpy.ndarray of int64, shape [<= batch_size]
        The seeds of each batch, in order.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(train_idx, torch.Tensor):
        train_idx = train_idx.numpy()
    idx = np.asarray(train_idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"train_idx must be a 1-D integer array; got dtype {idx.dtype!s} shape {idx.shape!r}"
        )
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, epoch, 0x7EA1)))
    perm = idx[rng.permutation(idx.shape[0])].astype(np.int64, copy=False)
    n = num_batches(perm.shape[0], int(batch_size), drop_last)
    for b in range(n):
        yield perm[b * batch_size : (b + 1) * batch_size]
