"""refresh_train: everything about learning.

Sampler, mini-batch blocks, models, raw-feature tiers, trainer, evaluation,
checkpoints and the ``refresh-train`` command line. Names are imported on
first use, so ``refresh-train --help`` does not pay for importing PyG.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "Block": "batch",
    "MiniBatch": "batch",
    "ConfigError": "config",
    "EvalConfig": "config",
    "LoaderConfig": "config",
    "TierConfig": "config",
    "TrainConfig": "config",
    "MODELS": "models",
    "RELATIONAL_MODELS": "models",
    "build_model": "models",
    "NeighborSampler": "sampler",
    "epoch_batches": "sampler",
    "CACHE_MODES": "modes",
    "HistoryConfig": "config",
    "Trainer": "trainer",
    "train": "trainer",
    "train_distributed": "distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'refresh_train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
