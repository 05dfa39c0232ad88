"""Command line of the trainer: ``refresh-train`` / ``python -m refresh_train``.

Example::

    python -m refresh_train --store papers.refresh --model sage --layers 3 \\
        --hidden 256 --fanouts 15,10,5 --batch-size 1024 --epochs 10 --lr 0.003 \\
        --cache refresh --cache-budget 1GiB --host-budget 4GiB --device cpu --seed 0 \\
        --staleness 200 --grad-quantile 0.9 \\
        --eval sampled --metrics-out run.jsonl --checkpoint-dir ckpt

``--config FILE.toml`` reads the same options from a TOML file whose keys are
the flag names (``cache-budget = "1GiB"``, ``fanouts = "15,10,5"`` or
``[15, 10, 5]``, ``resume = true``); flags given on the command line win over
the file. Bad input prints one line on stderr and exits with status 2.

Launched by torchrun (``torchrun --nproc_per_node 2 -m refresh_train ...``),
each process is one rank of data-parallel training
(:mod:`refresh_train.distributed`); bad input is then reported once, by
rank 0 (or by the rank that alone met it), and every process exits with 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from refresh_store.errors import RefreshError

from .config import (
    ConfigError,
    EvalConfig,
    HistoryConfig,
    LoaderConfig,
    TierConfig,
    TrainConfig,
    load_toml,
    parse_fanouts,
    parse_size,
)

__all__ = ["main", "build_parser", "config_from_args"]

PROG = "refresh-train"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, and main() decides the exit status (argparse would sys.exit).
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every default is ``None``: unset flags fall back to
    the TOML file, then to :class:`~refresh_train.config.TrainConfig`)."""
    p = _Parser(
        prog=PROG,
        description="Train a GNN out of core on a ReFresh store, reading features from SSD.",
        argument_default=None,
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML file whose keys are these flag names"
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--store", metavar="DST", help="store written by tools/convert.py")
    g.add_argument(
        "--model",
        help="sage | gcn | gat | mlp | rsage | rgat (relational: a store with edge types; "
        "default sage)",
    )
    g.add_argument("--layers", type=int, help="number of GNN layers (default 3)")
    g.add_argument("--hidden", type=int, help="hidden width (default 256)")
    g.add_argument("--dropout", type=float, help="dropout between layers (default 0.5)")
    g.add_argument("--norm", help="none | batch | layer (default none)")
    g.add_argument(
        "--fanouts", help="per layer, from the seeds outward; -1 = all (default 15,10,5)"
    )
    g.add_argument("--batch-size", type=int, help="seeds per batch (default 1024)")
    g.add_argument("--epochs", type=int, help="epochs to reach (default 10)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 0.003)")
    g.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    g.add_argument("--device", help="cpu | cuda (default cpu)")
    t = p.add_argument_group("feature tiers")
    t.add_argument("--cache", help="none | raw | refresh (default raw)")
    t.add_argument(
        "--cache-budget",
        help="device bytes: raw rows (raw), or rows + history table (refresh); e.g. 1GiB",
    )
    t.add_argument(
        "--host-budget", help="host tier size, e.g. 4GiB; 0 = staging only (default 4GiB)"
    )
    t.add_argument("--host-policy", help="clock | s3fifo | lru (default clock)")
    t.add_argument("--io-mode", help="auto | direct | buffered | mmap (default auto)")
    t.add_argument("--io-queue-depth", type=int, help="disk reads in flight (default 64)")
    t.add_argument(
        "--io-engine", help="auto | threads | aio: how disk reads are kept in flight (default auto)"
    )
    t.add_argument(
        "--lookahead",
        type=int,
        help="upcoming batches whose disk rows --cache raw reads in one pass; 0 = off (default 8)",
    )
    t.add_argument(
        "--lookahead-budget", help="most bytes of one lookahead window, e.g. 2GiB (default 2GiB)"
    )
    t.add_argument(
        "--prefetch", type=int, help="batches sampled/fetched ahead; 0 = serial (default 2)"
    )
    t.add_argument(
        "--prefetch-budget",
        help="most bytes of batches in flight, e.g. 1GiB (default: from the memory plan)",
    )
    r = p.add_argument_group("memory")
    r.add_argument(
        "--max-rss",
        help="refuse a run whose memory plan needs more RAM than this (whole process), "
        "e.g. 4GiB; 0 = no check (default: the memory available at start)",
    )
    r.add_argument(
        "--device-memory",
        help="refuse a run whose plan needs more device memory (CUDA); 0 = no check "
        "(default: the device's free memory)",
    )
    h = p.add_argument_group("historical embedding cache (--cache refresh)")
    h.add_argument(
        "--hist-layers", help="cached layers l (h^(l) feeds block l), e.g. 2 or 2,1 (default L-1)"
    )
    h.add_argument(
        "--grad-quantile", type=float, help="admit embeddings below this gradient quantile (0.9)"
    )
    h.add_argument("--staleness", type=int, help="use an entry for at most N steps (default 200)")
    h.add_argument("--hist-policy", help="grad+stale | grad | stale | random (default grad+stale)")
    h.add_argument(
        "--hist-max-serves",
        type=int,
        help="serve each entry at most N times, then renew it (default: no limit)",
    )
    h.add_argument(
        "--hist-shadow",
        help="values | gradients: a diagnostic run that computes every node and keeps one "
        "effect of each hit (the served value, or the missing gradient below it)",
    )
    h.add_argument("--hist-warmup", type=int, help="admit nothing before this step (default 0)")
    h.add_argument(
        "--hist-stop",
        type=int,
        help="from this step on, train exactly: no lookups, no admissions (default: never)",
    )
    h.add_argument(
        "--hist-fraction",
        type=float,
        help="share of --cache-budget for the table (default: chosen from measurements)",
    )
    h.add_argument(
        "--hist-lag",
        type=int,
        help="steps between admission and use (default max(lookahead,2)+2)",
    )
    h.add_argument("--hist-dtype", help="float16 | float32: element type of the table (float16)")
    h.add_argument(
        "--hist-order",
        help="lookups | degree: which nodes get table slots (default lookups: the most looked up)",
    )
    h.add_argument("--no-hist-count-saved", dest="hist_count_saved", action="store_false",
                   default=None, help="do not sample unpruned batches to count what pruning saved")  # fmt: skip
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval", help="sampled | layerwise (default sampled)")
    e.add_argument("--eval-fanouts", help="fanouts of sampled evaluation (default: --fanouts)")
    e.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default 4096)")
    e.add_argument(
        "--eval-every", type=int, help="evaluate every N epochs and after the last (default 1)"
    )
    e.add_argument("--eval-tmp-dir", help="where layer-wise inference puts its per-layer files")
    o = p.add_argument_group("output")
    o.add_argument("--metrics-out", metavar="FILE.jsonl", help="one JSON line per epoch")
    o.add_argument(
        "--checkpoint-dir",
        metavar="D",
        help="checkpoint written after every epoch (and mid-epoch when a run is stopped)",
    )
    o.add_argument(
        "--resume", action="store_true", default=None, help="continue from --checkpoint-dir"
    )
    o.add_argument(
        "--predict-out",
        metavar="DIR",
        help="after training, write predictions for --predict-split here (OGB submission file)",
    )
    o.add_argument(
        "--predict-split",
        help="test | valid | train, or MAG240M's test-dev | test-challenge | test-whole "
        "(default test: the store's test split)",
    )
    o.add_argument(
        "--verify-store",
        action="store_true",
        default=None,
        help="check every checksum and invariant of the store before training (a fast "
        "check of its manifest, sizes and a sample of checksums always runs)",
    )
    o.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar and no per-epoch table")  # fmt: skip
    return p


# Option name (argparse dest) -> how to turn a flag or TOML value into a config value.
_KEYS = {
    "store", "model", "layers", "hidden", "dropout", "norm", "fanouts", "batch_size", "epochs",
    "lr", "seed", "device", "cache", "cache_budget", "host_budget", "host_policy", "io_mode",
    "io_queue_depth", "io_engine", "lookahead", "lookahead_budget", "prefetch", "eval",
    "eval_fanouts", "eval_batch_size", "eval_every", "eval_tmp_dir", "metrics_out", "checkpoint_dir", "resume", "progress",
    "hist_layers", "grad_quantile", "staleness", "hist_policy", "hist_max_serves", "hist_shadow", "hist_warmup", "hist_stop", "hist_fraction",
    "hist_lag", "hist_dtype", "hist_order", "hist_count_saved", "prefetch_budget", "max_rss", "device_memory",
    "predict_out", "predict_split", "verify_store",
}  # fmt: skip


_FANOUT_FLAGS = ("--fanouts", "--eval-fanouts")
_FANOUT_VALUE = re.compile(r"^-?[0-9]+(,\s*-?[0-9]+)*$")


def _join_fanout_values(argv: Sequence[str]) -> list[str]:
    # argparse takes "-1,-1" for an option; "--fanouts -1,5" means the value.
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _FANOUT_FLAGS:
            nxt = next(it, None)
            if nxt is not None and _FANOUT_VALUE.match(nxt):
                out.append(f"{arg}={nxt}")
                continue
            out.append(arg)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(arg)
    return out


def _pick(values: dict[str, Any], key: str, default: Any) -> Any:
    value = values.get(key)
    return default if value is None else value


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse command-line arguments (and ``--config``) into a :class:`TrainConfig`.

    Raises
    ------
    ConfigError
        A value is invalid, a key of the TOML file is unknown, or ``--store``
        is missing.
    """
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(_join_fanout_values(argv))
    except _UsageError as exc:
        raise ConfigError(str(exc)) from None
    values: dict[str, Any] = {}
    if args.config is not None:
        values = load_toml(args.config)
        for flag, key in (("no_progress", "progress"), ("no_hist_count_saved", "hist_count_saved")):
            if flag in values:
                values[key] = not values.pop(flag)
        unknown = sorted(set(values) - _KEYS)
        if unknown:
            raise ConfigError(
                f"config file {args.config!r} has unknown key {unknown[0].replace('_', '-')!r}; "
                "keys are the command-line flag names (see --help)"
            )
    values.update({k: v for k, v in vars(args).items() if k in _KEYS and v is not None})
    if values.get("store") is None:
        raise ConfigError("--store is required (or 'store' in the --config file)")
    tiers = TierConfig(
        cache=_pick(values, "cache", "raw"),
        cache_budget_bytes=parse_size(_pick(values, "cache_budget", "1GiB"), name="--cache-budget"),
        host_budget_bytes=parse_size(_pick(values, "host_budget", "4GiB"), name="--host-budget"),
        host_policy=_pick(values, "host_policy", "clock"),
        io_mode=_pick(values, "io_mode", "auto"),
        io_queue_depth=_pick(values, "io_queue_depth", 64),
        io_engine=_pick(values, "io_engine", "auto"),
        lookahead_batches=_pick(values, "lookahead", 8),
        lookahead_budget_bytes=parse_size(
            _pick(values, "lookahead_budget", "2GiB"), name="--lookahead-budget"
        ),
    )
    hist_layers = values.get("hist_layers")
    if isinstance(hist_layers, int) and not isinstance(hist_layers, bool):
        hist_layers = (hist_layers,)
    history = HistoryConfig(
        layers=None if hist_layers is None else parse_fanouts(hist_layers, name="--hist-layers"),
        grad_quantile=_pick(values, "grad_quantile", 0.9),
        staleness_iters=_pick(values, "staleness", 200),
        policy=_pick(values, "hist_policy", "grad+stale"),
        max_serves=values.get("hist_max_serves"),
        shadow=values.get("hist_shadow"),
        warmup_steps=_pick(values, "hist_warmup", 0),
        stop_step=values.get("hist_stop"),
        fraction=values.get("hist_fraction"),
        lag_steps=values.get("hist_lag"),
        dtype=_pick(values, "hist_dtype", "float16"),
        order=_pick(values, "hist_order", "lookups"),
        count_saved=bool(_pick(values, "hist_count_saved", True)),
    )
    eval_fanouts = values.get("eval_fanouts")
    evaluation = EvalConfig(
        mode=_pick(values, "eval", "sampled"),
        fanouts=None
        if eval_fanouts is None
        else parse_fanouts(eval_fanouts, name="--eval-fanouts"),
        batch_size=_pick(values, "eval_batch_size", 4096),
        every_epochs=_pick(values, "eval_every", 1),
        tmp_dir=values.get("eval_tmp_dir"),
    )
    fanouts = parse_fanouts(_pick(values, "fanouts", "15,10,5"), name="--fanouts")
    return TrainConfig(
        store=values["store"],
        model=_pick(values, "model", "sage"),
        layers=_pick(values, "layers", len(fanouts)),
        hidden=_pick(values, "hidden", 256),
        fanouts=fanouts,
        batch_size=_pick(values, "batch_size", 1024),
        epochs=_pick(values, "epochs", 10),
        lr=_pick(values, "lr", 0.003),
        dropout=_pick(values, "dropout", 0.5),
        norm=_pick(values, "norm", "none"),
        device=_pick(values, "device", "cpu"),
        seed=_pick(values, "seed", 0),
        tiers=tiers,
        history=history,
        loader=LoaderConfig(
            prefetch_batches=_pick(values, "prefetch", 2),
            prefetch_budget_bytes=_optional_size(values, "prefetch_budget"),
        ),
        eval=evaluation,
        metrics_out=values.get("metrics_out"),
        checkpoint_dir=values.get("checkpoint_dir"),
        resume=bool(_pick(values, "resume", False)),
        progress=bool(_pick(values, "progress", True)),
        max_rss_bytes=_optional_size(values, "max_rss"),
        device_memory_bytes=_optional_size(values, "device_memory"),
        predict_out=values.get("predict_out"),
        predict_split=_pick(values, "predict_split", "test"),
        verify_store=bool(_pick(values, "verify_store", False)),
        # Depths left at their defaults shrink to fit the memory limit (memory_fit.py).
        fit_memory=tuple(k for k in ("lookahead", "prefetch") if values.get(k) is None),
    )


def _optional_size(values: dict[str, Any], key: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    return parse_size(value, name="--" + key.replace("_", "-"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer from the command line; the process exit status.

    0 on success, 2 on bad input or a store/checkpoint problem (one line on
    stderr; also a failed read of the store or a full disk, after saving
    what can resume), 130 when interrupted (one line saying what was
    saved). ``refresh-train report ...`` draws the figures of finished runs
    instead (:mod:`refresh_train.report`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from .report import main as report_main

        return report_main(args[1:])
    from .distributed import DistContext, DistributedAbort

    launch = None
    try:
        launch = DistContext.from_env()
        config = config_from_args(argv)
    except RefreshError as exc:
        # The flags are the same on every rank: under torchrun, rank 0 speaks for them.
        if launch is None or launch.is_main:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if launch is None:
            from .trainer import train  # after parsing: --help and usage errors stay fast

            train(config)
        else:
            from .distributed import train_distributed

            train_distributed(config, launch)
    except DistributedAbort:
        return 2  # another rank failed, and rank 0 said why
    except RefreshError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # The trainer's TrainingInterrupted says what it saved for --resume.
        print(f"{PROG}: interrupted" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    return 0
