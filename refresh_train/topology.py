"""The sampler's CSC topology: checked views of the store's arrays, and whether to copy them to RAM.

:class:`~refresh_train.sampler.NeighborSampler` reads ``indptr``, ``indices``
(and ``edge_type`` for typed stores) in place; ``in_memory="auto"`` copies
them to RAM when they take at most :data:`IN_MEMORY_AUTO_FRACTION` of the
available memory (:func:`topology_fits_in_ram`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "IN_MEMORY_AUTO_FRACTION",
    "as_edge_type",
    "as_topology",
    "copy_to_ram",
    "topology_fits_in_ram",
]


def as_topology(indptr, indices) -> tuple[np.ndarray, np.ndarray]:
    arrs = []
    for name, a, allowed in (
        ("indptr", indptr, (np.int64, np.int32)),
        ("indices", indices, (np.int32, np.int64)),
    ):
        if isinstance(a, torch.Tensor):
            a = a.numpy()
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a numpy array or memmap; got {type(a).__name__!r}")
        if a.ndim != 1 or a.dtype not in allowed:
            raise ValueError(
                f"{name} must be 1-D of dtype {' or '.join(np.dtype(t).name for t in allowed)}; "
                f"got dtype {a.dtype!s} shape {a.shape!r}"
            )
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (a store memmap is); got a strided view")
        # A plain ndarray view of a memmap: no copy, and Numba types it as an array.
        arrs.append(a.view(np.ndarray))
    ip, ix = arrs
    if ip.shape[0] < 1:
        raise ValueError("indptr must have at least one element (num_nodes + 1)")
    if int(ip[0]) != 0 or int(ip[-1]) > ix.shape[0]:
        raise ValueError(
            f"indptr must start at 0 and end at most at len(indices)={ix.shape[0]!r}; "
            f"got indptr[0]={int(ip[0])!r}, indptr[-1]={int(ip[-1])!r}"
        )
    return ip, ix


def as_edge_type(edge_type, indices: np.ndarray) -> np.ndarray | None:
    if edge_type is None:
        return None
    if isinstance(edge_type, torch.Tensor):
        edge_type = edge_type.numpy()
    if (
        not isinstance(edge_type, np.ndarray)
        or edge_type.dtype != np.int8
        or edge_type.shape != indices.shape
        or not edge_type.flags.c_contiguous
    ):
        raise ValueError(
            f"edge_type must be a C-contiguous int8 array of shape {indices.shape!r} (the "
            f"store's edge_type); got {getattr(edge_type, 'dtype', type(edge_type).__name__)!s} "
            f"{getattr(edge_type, 'shape', '')!r}"
        )
    return edge_type.view(np.ndarray)


IN_MEMORY_AUTO_FRACTION = 0.25
"""``in_memory="auto"`` copies a topology of at most this share of available RAM."""


def topology_fits_in_ram(
    indptr: np.ndarray, indices: np.ndarray, edge_type: np.ndarray | None = None
) -> bool:
    """Whether ``in_memory="auto"`` copies this topology (see :class:`NeighborSampler`)."""
    import psutil

    need = indptr.nbytes + indices.nbytes + (0 if edge_type is None else edge_type.nbytes)
    return need <= IN_MEMORY_AUTO_FRACTION * psutil.virtual_memory().available


def copy_to_ram(a: np.ndarray) -> np.ndarray:
    # np.empty of >= 4 MiB is madvise'd for transparent huge pages by numpy;
    # copying in slices keeps a memmap source from being read all at once
    # into a temporary.
    out = np.empty(a.shape, dtype=a.dtype)
    step = 1 << 24
    for lo in range(0, a.shape[0], step):
        out[lo : lo + step] = a[lo : lo + step]
    return out
