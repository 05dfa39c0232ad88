"""Stopping a run early without losing it: Ctrl-C, failed reads, full disks.

A run stops early for three reasons, each reported in one line that says
what the checkpoint directory now holds:

- **SIGINT** (Ctrl-C): :class:`SigintLatch` turns the first one into a
  request that the trainer honours at the end of the current batch (never
  half-way through an optimiser step); it saves a mid-epoch checkpoint and
  raises :class:`TrainingInterrupted` (the command line exits with 130). A
  second Ctrl-C stops at once, keeping the last checkpoint as it was.
- **A read of the store fails** for good (the I/O scheduler retried the
  errors that may pass) or comes back short: the trainer saves the steps
  done so far and raises :class:`TrainingStopped` (exit status 2), whose
  message starts with the scheduler's, naming the file and byte offset.
- **A disk fills up** (or another write error) while writing the metrics
  file or a checkpoint: :class:`TrainingStopped` again; what was written
  before stays whole (see :class:`~refresh_train.metrics.JsonlWriter` and
  :func:`~refresh_train.checkpoint.atomic_torch_save`).

A mid-epoch checkpoint holds, besides what an epoch-end one holds, an
:class:`EpochProgress`: the batches of the epoch done and the sums its
training loss and accuracy are made of. Batches and their random draws are
pure functions of ``(seed, epoch, batch)`` and the global generators are
saved between two steps, so ``--resume`` continues with the next batch and
ends with the same model and metrics as an uninterrupted run (timings, and
counters of the resumed epoch, cover only the part run after the resume).
Cache modes whose state moves ahead of training between steps
(:attr:`~refresh_train.modes.CacheMode.resumes_mid_epoch` false: ``--cache
refresh``) keep the last epoch-end checkpoint instead, and ``--resume``
repeats the interrupted epoch from its start.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict, dataclass
from typing import Any

from refresh_store.errors import RefreshError

__all__ = ["EpochProgress", "SigintLatch", "TrainingInterrupted", "TrainingStopped"]


class TrainingStopped(RefreshError):
    """Training stopped before its end: a read of the store failed or a write
    failed (a full disk); the message names the cause and what was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT stopped training at the end of a batch; the message says what was saved.

    A :class:`KeyboardInterrupt`, so code that stops on Ctrl-C still does.
    """


@dataclass(frozen=True)
class EpochProgress:
    """How far an epoch got: saved in a mid-epoch checkpoint.

    Attributes
    ----------
    epoch
        The epoch, 0-based.
    batches_done
        Its batches trained (the next one to train, 0-based).
    loss_sum
        Sum over its trained seeds of the training loss (float64, exact).
    correct, seen
        Its trained seeds predicted right, and trained.
    """

    epoch: int
    batches_done: int
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def to_state(self) -> dict[str, Any]:
        """Plain values (a checkpoint holds them under ``extra["mid_epoch"]``)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        """The progress :meth:`to_state` saved."""
        return cls(
            epoch=int(state["epoch"]),
            batches_done=int(state["batches_done"]),
            loss_sum=float(state["loss_sum"]),
            correct=int(state["correct"]),
            seen=int(state["seen"]),
        )


class SigintLatch:
    """While active (a ``with`` block), the first SIGINT only sets :attr:`requested`.

    The trainer checks it after every step and stops there. A second SIGINT
    restores Python's handler and raises :class:`KeyboardInterrupt` at once
    (for a batch that never comes). Nothing is installed outside the main
    thread or when a program has its own SIGINT handler: there
    :attr:`requested` stays false and SIGINT behaves as before.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> SigintLatch:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False
