"""Admission policies: which freshly computed embeddings enter the history table.

After each optimiser step the refresh cache mode hands a policy, per cached
layer, the embeddings the step computed (never those it read from the
table) and the L2 norm of the loss gradient with respect to each. The policy
returns the positions to admit. Whether an entry is still usable later is
the staleness bound's business (:attr:`AdmissionPolicy.uses_staleness`).

=============  ==============================================================
name           admits
=============  ==============================================================
``grad+stale`` the ``floor(q * n)`` embeddings with the smallest gradient norm
               (those below the step's ``q``-quantile; the published rule),
               each usable for ``staleness_iters`` steps
``grad``       the same, with no staleness bound (an ablation)
``stale``      every computed embedding, usable for ``staleness_iters`` steps
``random``     a random ``floor(q * n)`` of them (an ablation of the gradient
               criterion), usable for ``staleness_iters`` steps
=============  ==============================================================

Ties between equal norms are broken by position (a stable sort), and the
random policy draws from a generator seeded by ``(seed, step, layer)``, so
admission is a function of the run's seed and the step.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from ..epoch import derive_seed

__all__ = ["AdmissionPolicy", "HIST_POLICIES", "make_policy"]


class AdmissionPolicy:
    """Base class; see the module docstring for the registered policies.

    Parameters
    ----------
    quantile
        ``q`` of the gradient and random policies.
    seed
        The run's seed (random policy).
    """

    name: ClassVar[str] = ""
    uses_staleness: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = True

    def __init__(self, quantile: float, seed: int = 0) -> None:
        self.quantile = float(quantile)
        self.seed = int(seed)

    @property
    def admitted_share(self) -> float:
        """The share of computed embeddings this policy admits."""
        return self.quantile

    def _count(self, n: int) -> int:
        # floor(q * n) with q as written (0.7 * 90 is 62.99... in binary floating point).
        return math.floor(Fraction(repr(self.quantile)) * n)

    def select(
        self, norms: torch.Tensor | None, n: int, step: int, layer: int
    ) -> NDArray[np.int64]:
        """Positions (into the ``n`` computed embeddings) to admit, in ascending order.

        ``norms`` are the ``[n]`` gradient norms (``None`` for policies that
        do not need them).
        """
        raise NotImplementedError


class GradStale(AdmissionPolicy):
    name = "grad+stale"

    def select(self, norms, n, step, layer):
        order = torch.sort(norms.detach().float().cpu(), stable=True).indices.numpy()
        return np.sort(order[: self._count(n)]).astype(np.int64)


class Grad(GradStale):
    name = "grad"
    uses_staleness = False


class Stale(AdmissionPolicy):
    name = "stale"
    needs_grad = False

    @property
    def admitted_share(self) -> float:
        return 1.0

    def select(self, norms, n, step, layer):
        return np.arange(n, dtype=np.int64)


class Random(AdmissionPolicy):
    name = "random"
    needs_grad = False

    def select(self, norms, n, step, layer):
        rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, step, layer, 0x4A11)))
        return np.sort(rng.permutation(n)[: self._count(n)]).astype(np.int64)


#: Admission policies by ``--hist-policy`` name.
HIST_POLICIES: dict[str, type[AdmissionPolicy]] = {
    cls.name: cls for cls in (GradStale, Grad, Stale, Random)
}


def make_policy(name: str, quantile: float, seed: int = 0) -> AdmissionPolicy:
    """The policy registered as ``name``.

    Raises
    ------
    ValueError
        ``name`` is not registered.
    """
    try:
        cls = HIST_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"hist_policy must be one of {sorted(HIST_POLICIES)}, got {name!r}"
        ) from None
    return cls(quantile, seed)
