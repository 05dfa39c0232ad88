"""Numba kernel of :mod:`refresh_train.history.cover`."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def push_max(
    src: np.ndarray, dst: np.ndarray, value_dst: np.ndarray, value_src: np.ndarray
) -> None:
    """``value_src[src[e]] = max(value_src[src[e]], value_dst[dst[e]])`` for every edge ``e``."""
    for e in range(src.shape[0]):
        v = value_dst[dst[e]]
        s = src[e]
        if v > value_src[s]:
            value_src[s] = v
