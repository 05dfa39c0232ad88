"""refresh_train: everything about learning.

Sampler, mini-batch blocks, models, raw-feature tiers, trainer, evaluation,
checkpoints and the ``refresh-train`` command line.
"""

from __future__ import annotations

from .batch import Block, MiniBatch
from .config import ConfigError, EvalConfig, LoaderConfig, TierConfig, TrainConfig
from .models import MODELS, build_model
from .sampler import NeighborSampler, epoch_batches
from .tiers import CACHE_MODES
from .trainer import Trainer, train

__all__ = [
    "CACHE_MODES",
    "MODELS",
    "Block",
    "ConfigError",
    "EvalConfig",
    "LoaderConfig",
    "MiniBatch",
    "NeighborSampler",
    "TierConfig",
    "TrainConfig",
    "Trainer",
    "build_model",
    "epoch_batches",
    "train",
]
