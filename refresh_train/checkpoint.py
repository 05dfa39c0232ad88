"""Checkpoints: everything a run needs to continue as if never interrupted.

A checkpoint holds the model and optimiser state, the number of finished
epochs, every global random number generator's state (torch CPU and CUDA,
Python's ``random``; this project's numpy randomness is always seeded
explicitly, never global) and the metric records so far. It is written
atomically after every epoch (``checkpoint.pt.partial``, fsync, rename,
fsync of the directory), so a crash leaves the previous checkpoint intact.

It is read with ``torch.load(weights_only=True)``: only tensors and plain
containers, never arbitrary pickled objects. Everything else is stored as
tensors, numbers, strings, or JSON text.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from refresh_store.errors import RefreshError

__all__ = [
    "CHECKPOINT_NAME",
    "RESUME_KEYS",
    "check_resume_config",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_torch_save",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class CheckpointError(RefreshError, ValueError):
    """A checkpoint is missing, damaged, or belongs to a different run."""


class CheckpointWriteError(RefreshError):
    """A checkpoint could not be written (a full disk, say); the previous one is intact."""


class _Writes:
    """The file ``torch.save`` writes to, keeping the first write error:
    torch reports it as a ``RuntimeError`` that no longer says why."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._f.flush()


def capture_rng_state() -> dict[str, Any]:
    """States of the global generators, as tensors and plain values."""
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global generators to a state from :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    *,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    records: list[dict[str, Any]],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of a run that has finished ``epoch`` epochs.

    Parameters
    ----------
    directory
        Created if missing; holds ``checkpoint.pt``.
    epoch
        Number of finished epochs.
    model, optimizer
        Their ``state_dict()`` is saved.
    records
        Metric records of the finished epochs (JSON-serialisable).
    config
        The run's configuration (JSON-serialisable), checked on resume.
    extra
        More tensors / plain values (a cache mode's state, say).

    Returns
    -------
    Path of the checkpoint file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(),
        "records_json": json.dumps(records),
        "config_json": json.dumps(config, sort_keys=True),
        "extra": extra or {},
    }
    return atomic_torch_save(directory / CHECKPOINT_NAME, payload)


def atomic_torch_save(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` to ``path.partial``, fsync, rename over ``path``, fsync the directory.

    A crash at any moment leaves either the old file or the new one.

    Raises
    ------
    CheckpointWriteError
        Writing failed (``ENOSPC``, ``EIO``, ...): ``path.partial`` is removed
        (it would hold the space a retry needs) and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    writes = None
    try:
        with open(tmp, "wb") as f:
            writes = _Writes(f)
            torch.save(payload, writes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        cause = writes.error if writes is not None and writes.error is not None else exc
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        kept = "the previous one is intact" if final.exists() else "there was none before"
        raise CheckpointWriteError(
            f"cannot write checkpoint {str(final)!r}: {why}; {kept} — free space on its disk "
            "and continue with --resume"
        ) from exc
    _fsync_dir(final.parent)
    return final


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read ``directory/checkpoint.pt`` safely.

    Returns
    -------
    dict with ``epoch``, ``model``, ``optimizer``, ``rng``, ``records``
    (list of dicts), ``config`` (dict) and ``extra``.

    Raises
    ------
    CheckpointError
        No checkpoint, an unreadable one, or one of another format.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; run without --resume to start a new run"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else None
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {fmt!r}; this release reads "
            f"{CHECKPOINT_FORMAT} — start a new run"
        )
    payload["records"] = json.loads(payload.pop("records_json"))
    payload["config"] = json.loads(payload.pop("config_json"))
    return payload


# ------------------------------------------------- data-parallel training
# Each rank of data-parallel training whose cache mode keeps state (its own
# history table) saves it in a file of its own, named by epoch, next to rank
# 0's checkpoint (see refresh_train.distributed.save_checkpoint_ranks).


def rank_state_path(directory: str | Path, rank: int, epoch: int) -> Path:
    """Where rank ``rank`` keeps its cache state of the checkpoint of epoch ``epoch``."""
    return Path(directory) / f"cache-rank{rank}.epoch{epoch}.pt"


def save_rank_state(directory: str | Path, rank: int, epoch: int, state: dict[str, Any]) -> Path:
    """Write rank ``rank``'s cache state for the checkpoint of epoch ``epoch``, atomically."""
    return atomic_torch_save(rank_state_path(directory, rank, epoch), {"epoch": epoch, **state})


def load_rank_state(
    directory: str | Path, rank: int, epoch: int, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Rank ``rank``'s cache state of the checkpoint of epoch ``epoch``.

    Raises
    ------
    CheckpointError
        Missing or unreadable.
    """
    path = rank_state_path(directory, rank, epoch)
    if not path.is_file():
        raise CheckpointError(
            f"rank {rank} has no cache state {str(path)!r} for the checkpoint of epoch {epoch} "
            "(each rank keeps its own next to its checkpoint); start a new run without --resume"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read cache state {str(path)!r}: {exc}") from exc
    state.pop("epoch", None)
    return state


def prune_rank_states(directory: str | Path, rank: int, keep_epoch: int) -> None:
    """Remove rank ``rank``'s cache states of checkpoints older than ``keep_epoch``."""
    prefix = f"cache-rank{rank}.epoch"
    for path in Path(directory).glob(f"{prefix}*.pt"):
        epoch = path.name[len(prefix) : -len(".pt")]
        if epoch.isdigit() and int(epoch) < keep_epoch:
            path.unlink(missing_ok=True)


#: Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = (
    "model",
    "layers",
    "hidden",
    "fanouts",
    "batch_size",
    "lr",
    "dropout",
    "norm",
    "seed",
)


def check_resume_config(saved: dict[str, Any], mine: dict[str, Any], directory: str) -> None:
    """Refuse to resume a checkpoint written with other :data:`RESUME_KEYS` settings.

    Raises
    ------
    CheckpointError
        One line naming each setting that differs, then and now.
    """

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    diff = [
        f"{k}={saved.get(k)!r} (now {mine[k]!r})"
        for k in RESUME_KEYS
        if plain(saved.get(k)) != plain(mine[k])
    ]
    if diff:
        raise CheckpointError(
            f"checkpoint in {directory!r} was written with "
            f"{', '.join(diff)}; resume with the same settings or start a new run"
        )
