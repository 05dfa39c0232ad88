"""Checks that a store suits a run, made when the trainer opens it (before anything big).

A store may come from someone else: :func:`check_store` verifies it (fast
and bounded by default, whole with ``--verify-store``) and bounds the class
count the output layer is sized by; :func:`check_split_labels` checks the
labels the run will read; :func:`check_model_store` refuses a relational
model on a store without edge types. Each failure is one line naming the
store and what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import ConfigError, TrainConfig

__all__ = ["MAX_CLASSES", "check_model_store", "check_split_labels", "check_store"]

#: Most classes a store may have (the output layer is hidden x classes).
MAX_CLASSES = 1 << 16


def check_store(config: TrainConfig, store: Any) -> None:
    """Verify the store before training: fast (bounded) by default, full with ``verify_store``.

    Raises
    ------
    StoreFormatError
        One line naming the store and its first failure.
    """
    from refresh_store.errors import StoreFormatError
    from refresh_store.verify import verify_store, verify_store_fast

    report = (verify_store if config.verify_store else verify_store_fast)(config.store)
    # The output layer is sized by the manifest's class count: a damaged or
    # hostile manifest must not make the model allocate terabytes.
    if store.num_classes > MAX_CLASSES:
        report.failures.insert(
            0,
            f"its manifest says {store.num_classes:,} classes; the trainer takes at most "
            f"{MAX_CLASSES:,} (OGB's largest node task has 172)",
        )
    if not report.ok:
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise StoreFormatError(
            f"store {config.store!r} fails verification: {report.failures[0]}{more}; run "
            "`refresh-convert verify` on it for the full report, or reconvert it"
        )


def check_split_labels(config: TrainConfig, store: Any, labels: np.ndarray) -> None:
    """Refuse labels of split nodes outside ``[-1, num_classes)``.

    The fast verify samples checksums, which a hand-made store can recompute;
    a training label past the output layer would stop the run in the loss with
    a traceback, an evaluation label would score silently wrong. Split nodes
    only: that is what the run reads, and it is cheap at any scale.

    Raises
    ------
    StoreFormatError
        One line naming the store, the split, the node and its label.
    """
    from refresh_store.errors import StoreFormatError

    for split in ("train_idx", "valid_idx", "test_idx"):
        ids = np.asarray(getattr(store, split), dtype=np.int64)
        if not len(ids):
            continue
        got = labels[ids]
        bad = np.flatnonzero((got < -1) | (got >= store.num_classes))
        if len(bad):
            node, value = int(ids[bad[0]]), int(got[bad[0]])
            raise StoreFormatError(
                f"store {config.store!r}: labels[{node}] = {value} (a {split[:-4]} node) is "
                f"outside [-1, {store.num_classes}) ({len(bad):,} such {split[:-4]} labels); "
                "run `refresh-convert verify` on it, or reconvert it"
            )


def check_model_store(config: TrainConfig, store: Any) -> None:
    """Refuse a relational ``--model`` on a store without edge types.

    Raises
    ------
    ConfigError
        One line naming the model, the store and what to do.
    """
    from .models import RELATIONAL_MODELS

    if config.model in RELATIONAL_MODELS and not store.has_edge_types:
        raise ConfigError(
            f"--model {config.model} is relational but store {str(config.store)!r} has no edge "
            "types; convert MAG240M with --mag240m-graph full (a store with an edge_type "
            "array), or use --model sage, gcn or gat"
        )
