"""Predictions of a trained model for one split, written as an OGB submission file.

After training (``--predict-out DIR --predict-split test``), the model
predicts a class for every node of the split, through evaluation's exact
tiers and settings (``--eval``, ``--eval-fanouts``, ``--eval-batch-size``),
and the predictions are written in the source's numbering and order: entry
``i`` is the prediction for the ``i``-th node of the split as the source
dataset lists it (the store keeps each split in the source's order, in
reordered ids, and ``old_id`` maps back).

File format: that of ``ogb.lsc.MAG240MEvaluator.save_test_submission`` —
``np.savez_compressed(path, y_pred=int16 [n])`` — named as ogb names it for a
MAG240M store (``y_pred_mag240m_test-dev.npz``, ``y_pred_mag240m_test-challenge.npz``,
``y_pred_mag240m.npz`` for ``test-whole``), and ``y_pred_{split}.npz``
otherwise. ogb's own writer asserts the real dataset's test sizes (88,092
test-dev papers); this module writes the same file for any size, atomically
(``.partial``, fsync, rename), and never over an existing file.

A MAG240M store holds the one test split its conversion chose (``--split``,
by default ``test-dev``; the manifest records it): ``--predict-split
test`` means that split, and naming another one is refused before training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import PREDICT_SPLITS, ConfigError, TrainConfig
from .evaluate import (
    MAG240M_EVALUATOR,
    OGBN_EVALUATOR,
    accuracy,
    predict_layerwise,
    predict_sampled,
    store_source,
)
from .sampler import NeighborSampler

__all__ = ["PREDICT_SPLITS", "PredictTarget", "resolve_target", "predict_split", "write_y_pred"]

_MAG240M_TEST = ("test-dev", "test-challenge", "test-whole")


@dataclass(frozen=True)
class PredictTarget:
    """What ``--predict-split`` names in one store.

    Attributes
    ----------
    split
        The store's split array: ``"train"``, ``"valid"`` or ``"test"``.
    name
        The split's name in the source (``"test-dev"`` for a MAG240M store's
        default test split), as the file and messages call it.
    path
        The output file.
    evaluator
        ``"ogb.lsc.MAG240MEvaluator"`` for a MAG240M store, else
        ``"ogb.nodeproppred.Evaluator"``: what scores a labelled split.
    """

    split: str
    name: str
    path: Path
    evaluator: str


def resolve_target(config: TrainConfig, store: Any) -> PredictTarget | None:
    """Check ``--predict-out``/``--predict-split`` against the store; ``None`` if not asked.

    Called before anything is allocated or written, so a run that could not
    write its predictions stops before training.

    Raises
    ------
    ConfigError
        The split is not in the store (or is not the test split a MAG240M
        store was converted with), or the output file exists already.
    """
    out_dir, split = config.predict_out, config.predict_split
    if out_dir is None:
        return None
    source = store_source(store)
    mag240m = source.get("format") == "mag240m"
    store_test = source.get("test_split") if mag240m else None
    if split in _MAG240M_TEST:
        if not mag240m:
            raise ConfigError(
                f"--predict-split {split} names a MAG240M test split, but store "
                f"{str(config.store)!r} was converted from {source.get('format')!r}; "
                "use --predict-split test, valid or train"
            )
        if split != store_test:
            raise ConfigError(
                f"--predict-split {split}: store {str(config.store)!r} holds the test split "
                f"{store_test!r}; convert the dataset with --split {split} to predict "
                f"{split!r}, or use --predict-split test"
            )
        ours, name = "test", split
    else:
        ours = split
        name = store_test if (split == "test" and store_test) else split
    if len(getattr(store, f"{ours}_idx")) == 0:
        raise ConfigError(
            f"--predict-split {split}: store {str(config.store)!r} has no {ours!r} nodes"
        )
    if mag240m:
        file = "y_pred_mag240m.npz" if name == "test-whole" else f"y_pred_mag240m_{name}.npz"
    else:
        file = f"y_pred_{name}.npz"
    path = Path(out_dir) / file
    if path.exists() or Path(out_dir).is_file():
        what = path if path.exists() else Path(out_dir)
        raise ConfigError(
            f"--predict-out {str(out_dir)!r}: {str(what)!r} exists; remove it or choose "
            "another directory (predictions are never overwritten)"
        )
    evaluator = MAG240M_EVALUATOR if mag240m else OGBN_EVALUATOR
    return PredictTarget(split=ours, name=name, path=path, evaluator=evaluator)


def write_y_pred(y_pred: NDArray[np.integer], path: str | os.PathLike[str]) -> Path:
    """Write ``y_pred`` as ``MAG240MEvaluator.save_test_submission`` does, atomically.

    ``np.savez_compressed`` with one key ``y_pred`` of dtype ``int16`` (ogb's
    ``np.short``), to ``path + ".partial"``, fsynced, renamed to ``path``.
    The parent directory is created if missing.

    Raises
    ------
    FileExistsError
        ``path`` exists (nothing is written).
    ValueError
        ``y_pred`` is not one-dimensional or holds a class that int16 cannot.
    """
    path = Path(path)
    y = np.asarray(y_pred)
    if y.ndim != 1:
        raise ValueError(f"y_pred must be one-dimensional, got shape {y.shape}")
    if len(y) and (y.min() < np.iinfo(np.int16).min or y.max() > np.iinfo(np.int16).max):
        raise ValueError("y_pred holds classes outside int16, the submission format's dtype")
    if path.exists():
        raise FileExistsError(f"{str(path)!r} exists; predictions are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez_compressed(f, y_pred=y.astype(np.int16))
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)
    return path


def predict_split(trainer: Any, target: PredictTarget) -> dict[str, Any]:
    """Predict ``target``'s nodes with the trainer's model, write the file, report.

    Uses the trainer's exact evaluation tiers, topology and evaluation
    settings (sampled with the evaluation fanouts and the run's seed, or
    layer-wise). The split's accuracy (for labelled nodes) comes from
    ``target.evaluator``.

    Returns
    -------
    dict with ``predict_split``, ``predict_path``, ``predict_nodes``,
    ``predict_acc`` (None when no node of the split is labelled),
    ``predict_labelled`` and ``evaluator``.
    """
    cfg = trainer.config
    store = trainer.store
    nodes = np.asarray(getattr(store, f"{target.split}_idx"), dtype=np.int64)
    indptr, indices, edge_type = (
        trainer.sampler.indptr,
        trainer.sampler.indices,
        trainer.sampler.edge_type,
    )
    relations = {}
    if getattr(trainer.model, "num_relations", None) and edge_type is not None:
        relations = {"edge_type": edge_type, "num_relations": trainer.model.num_relations}
    tiers = trainer.cache.eval_tiers()
    prefetch = max(1, cfg.loader.prefetch_batches)
    try:
        if cfg.eval.mode == "layerwise":
            logits = predict_layerwise(
                trainer.model,
                indptr,
                indices,
                tiers,
                nodes,
                batch_size=cfg.eval.batch_size,
                device=trainer.device,
                tmp_dir=cfg.eval.tmp_dir,
                prefetch_batches=prefetch,
                edge_type=edge_type,
            )
        else:
            sampler = NeighborSampler(
                indptr, indices, list(trainer.eval_fanouts), seed=cfg.seed, **relations
            )
            try:
                logits = predict_sampled(
                    trainer.model,
                    sampler,
                    tiers,
                    nodes,
                    batch_size=cfg.eval.batch_size,
                    device=trainer.device,
                    prefetch_batches=prefetch,
                )
            finally:
                sampler.close()
    finally:
        trainer.model.train()
        trainer.cache.release_eval_tiers()
    y_pred = logits.argmax(dim=1).numpy()
    labels = np.asarray(store.labels[nodes], dtype=np.int64)
    known = labels >= 0
    acc = accuracy(labels[known], y_pred[known], evaluator=target.evaluator)
    path = write_y_pred(y_pred, target.path)
    return {
        "predict_split": target.name,
        "predict_path": str(path),
        "predict_nodes": int(len(nodes)),
        "predict_labelled": int(known.sum()),
        "predict_acc": acc,
        "evaluator": target.evaluator,
    }
