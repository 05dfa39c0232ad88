"""Fit a run into its memory limit by lowering the settings its user left at their defaults.

A stated ``--max-rss`` (or ``--device-memory``, or the memory the machine
has) is a promise about the whole process. When the plan of the settings as
given does not fit, the trainer does not refuse at once: the pipelining
depths the user did not choose (:data:`FIT_KNOBS`, named in
:attr:`~refresh_train.config.TrainConfig.fit_memory`) are lowered one
notch at a time, in the order of :func:`smaller_settings`, until the plan
fits. Only when the smallest of them still does not fit is the run refused,
with the error of that smallest plan.

Lowering them changes speed (and how the disk rows a window needs are
counted between the host and disk tiers), never results: the batches, their
order and sampling do not depend on either depth, and under ``--cache
refresh`` the lag between a batch's pruning and its step is pinned to what
the settings as given would use (:func:`pin_history_lag`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from .memory_plan import MemoryPlan, MemoryPlanError, plan_memory

if TYPE_CHECKING:
    from refresh_store.store import Store

    from .config import TrainConfig
    from .models import BlockGNN

__all__ = ["FIT_KNOBS", "FitResult", "fit_memory", "pin_history_lag", "smaller_settings"]

#: Settings the fit may lower, by their flag names without dashes, in the order it lowers them:
#: the lookahead windows first (two of them, the largest structure of a raw run from disk),
#: then the batches fetched ahead (each holds a batch's features).
FIT_KNOBS = ("lookahead", "prefetch")


class FitResult:
    """The settings a run uses, their plan, and what the fit changed (one phrase each)."""

    def __init__(self, config: TrainConfig, plan: MemoryPlan, changes: list[str]) -> None:
        self.config = config
        self.plan = plan
        self.changes = changes

    def describe(self) -> str:
        """One line for the log, or "" when nothing was lowered."""
        if not self.changes:
            return ""
        return (
            f"memory plan: lowered {', '.join(self.changes)} (not given) to fit "
            f"{_limits(self.plan)}"
        )


def _limits(plan: MemoryPlan) -> str:
    out = []
    if plan.max_rss_bytes > 0:
        source = plan.limits_from.get("ram")
        out.append("the RAM available" if source == "machine" else "--max-rss")
    if plan.device_memory_bytes > 0 and not plan.on_cpu:
        source = plan.limits_from.get("device")
        out.append("the device's free memory" if source == "machine" else "--device-memory")
    return " and ".join(out) or "the limits"


def _effective_lookahead(config: TrainConfig, row_bytes: int) -> int:
    """Batches per lookahead window the cache mode uses (0 = no windows)."""
    tiers = config.tiers
    fits = tiers.lookahead_budget_bytes >= row_bytes and tiers.lookahead_batches > 1
    return tiers.lookahead_batches if tiers.cache != "none" and fits else 0


def pin_history_lag(config: TrainConfig, row_bytes: int) -> TrainConfig:
    """``config`` with ``--hist-lag`` fixed at the value its lookahead gives it.

    Under ``--cache refresh`` the default lag follows the lookahead depth; a
    fit that lowers the depth must not move it, or results would depend on
    the memory of the machine.
    """
    hist = config.history
    if config.tiers.cache != "refresh" or hist.lag_steps is not None:
        return config
    lag = hist.resolved_lag(_effective_lookahead(config, row_bytes))
    return replace(config, history=replace(hist, lag_steps=lag))


def smaller_settings(config: TrainConfig, row_bytes: int) -> Iterator[tuple[str, TrainConfig]]:
    """Each next smaller setting of the knobs ``config.fit_memory`` names, with a phrase.

    Lookahead halves (8, 4, 2) and then stops (0); prefetch goes down by one
    to 0 (serial loading).
    """
    if "lookahead" in config.fit_memory:
        start = _effective_lookahead(config, row_bytes)
        depth = start
        while depth > 0:
            depth = depth // 2 if depth > 2 else 0
            config = replace(config, tiers=replace(config.tiers, lookahead_batches=depth))
            yield f"--lookahead {start} -> {depth}", config
    if "prefetch" in config.fit_memory:
        start = config.loader.prefetch_batches
        for depth in range(start - 1, -1, -1):
            config = replace(config, loader=replace(config.loader, prefetch_batches=depth))
            yield f"--prefetch {start} -> {depth}", config


def fit_memory(
    config: TrainConfig,
    store: Store,
    *,
    model: BlockGNN,
    available_bytes: int | None = None,
) -> FitResult:
    """The first settings, from ``config`` down :func:`smaller_settings`, whose plan fits.

    Raises
    ------
    MemoryPlanError
        Not even the smallest settings fit; the message is the smallest
        plan's, and says which defaults were lowered first.
    """
    row_bytes = store.region("features").row_bytes
    if config.fit_memory:
        config = pin_history_lag(config, row_bytes)
    plan = plan_memory(config, store, model=model, available_bytes=available_bytes)
    changes: dict[str, str] = {}
    candidates = smaller_settings(config, row_bytes)
    while True:
        try:
            plan.check()
        except MemoryPlanError as exc:
            step = next(candidates, None)
            if step is None:
                if not changes:
                    raise
                raise MemoryPlanError(
                    f"{exc} (after lowering {', '.join(changes.values())}, not given)"
                ) from None
            phrase, config = step
            changes[phrase.split()[0]] = phrase  # one phrase per flag: the last step's
            plan = plan_memory(config, store, model=model, available_bytes=available_bytes)
            continue
        return FitResult(config, plan, list(changes.values()))
