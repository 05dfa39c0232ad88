"""SplitMix64, the counter-based hash behind every random stream of the project.

The synthetic generator and the neighbour sampler key their draws by
``(key, id)`` through this one finaliser, so a draw depends only on the seed
and the entity, never on threads or block sizes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["GOLDEN", "mix64"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: the sequence's step
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@njit(cache=True, nogil=True, inline="always")
def mix64(z):
    """SplitMix64 finaliser: a bijection on uint64 with full avalanche."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)
