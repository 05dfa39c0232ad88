"""Configuration of a training run: frozen dataclasses, size strings and TOML files.

The command line and TOML files only fill these dataclasses; every subsystem
reads its own part (:class:`TierConfig` for the feature tiers,
:class:`HistoryConfig` for the historical embedding cache, :class:`LoaderConfig`
for pipelining, :class:`EvalConfig` for evaluation).
Sizes are bytes and are named ``*_bytes``; at the edges they may be written
``"2GiB"``, ``"512MiB"``, ``"1.5GB"`` or a plain integer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refresh_store.byte_sizes import parse_size as _parse_size
from refresh_store.errors import RefreshError

__all__ = [
    "ConfigError",
    "PREDICT_SPLITS",
    "TierConfig",
    "LoaderConfig",
    "EvalConfig",
    "HistoryConfig",
    "TrainConfig",
    "parse_size",
    "parse_fanouts",
    "load_toml",
]


class ConfigError(RefreshError, ValueError):
    """A training option has a value this release does not accept."""


def parse_size(value: str | int, *, name: str = "size") -> int:
    """:func:`refresh_store.byte_sizes.parse_size` for training options.

    Raises
    ------
    ConfigError
        The string is not a non-negative number followed by a known unit.
    """
    try:
        return _parse_size(value, name=name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_fanouts(
    value: str | list[int] | tuple[int, ...], *, name: str = "fanouts"
) -> tuple[int, ...]:
    """Fanouts from a string such as ``"15,10,5"`` (seeds outward; ``-1`` = all, 0 = none).

    Raises
    ------
    ConfigError
        Empty, not integers, or an entry that is neither positive nor -1.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            fanouts = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated integers like '15,10,5', got {value!r}"
            ) from None
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        fanouts = tuple(value)
    else:
        raise ConfigError(f"{name} must be comma-separated integers like '15,10,5', got {value!r}")
    if not fanouts or any(f < -1 for f in fanouts):
        raise ConfigError(
            f"{name} must list one integer >= 0 (or -1 for all neighbours) per layer, got {value!r}"
        )
    return fanouts


@dataclass(frozen=True)
class TierConfig:
    """Raw-feature tiers.

    Attributes
    ----------
    cache
        Name of the cache mode in :data:`refresh_train.modes.CACHE_MODES`:
        ``"none"`` reads every row from disk, ``"raw"`` adds the device tier
        (hottest rows, a prefix of the reordered ids) and the host tier,
        ``"refresh"`` adds the historical embedding cache (:class:`HistoryConfig`).
    cache_budget_bytes
        Bytes of the device: the device tier's rows for ``"raw"``; rows and
        the history table together for ``"refresh"`` (ignored by ``"none"``).
    host_budget_bytes
        Bytes of the host tier's cache; 0 keeps only transfer staging.
    host_policy
        Replacement policy of the host tier, a key of
        :data:`refresh_train.tiers.POLICIES`.
    io_mode
        Disk read mode handed to the I/O scheduler (``"auto"``, ``"direct"``,
        ``"buffered"`` or ``"mmap"``).
    io_queue_depth
        Reads in flight in the I/O scheduler. 64 gave the trainer's loader
        15-18 % more batches/s than 32 at batch 128 and 11 % at batch 1024 on
        the benchmark machine (10M-node store, interleaved passes).
    io_engine
        How the I/O scheduler keeps reads in flight (``"auto"``, ``"threads"``
        or ``"aio"``; see :class:`refresh_store.io.IOConfig`).
    lookahead_batches
        ``"raw"`` reads the disk rows of up to this many upcoming batches in
        one pass (a lookahead window; 0 or 1 = each batch reads its own).
        Sorted together, a window's rows coalesce into far fewer and longer
        reads, and a row two batches need is read once.
    lookahead_budget_bytes
        Most bytes of rows one window holds; a window takes as many
        consecutive batches as fit. The loader keeps at most two
        windows (the one being fetched and the next one).
    """

    cache: str = "raw"
    cache_budget_bytes: int = 1 << 30  # 1 GiB
    host_budget_bytes: int = 4 << 30  # 4 GiB
    host_policy: str = "clock"
    io_mode: str = "auto"
    io_queue_depth: int = 64
    io_engine: str = "auto"
    lookahead_batches: int = 8
    lookahead_budget_bytes: int = 2 << 30  # 2 GiB

    def __post_init__(self) -> None:
        from .modes import CACHE_MODES
        from .tiers import POLICIES

        if self.cache not in CACHE_MODES:
            raise ConfigError(f"cache must be one of {sorted(CACHE_MODES)}, got {self.cache!r}")
        if self.host_policy not in POLICIES:
            raise ConfigError(
                f"host_policy must be one of {sorted(POLICIES)}, got {self.host_policy!r}"
            )
        for name in (
            "cache_budget_bytes",
            "host_budget_bytes",
            "lookahead_batches",
            "lookahead_budget_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.io_mode not in ("auto", "direct", "buffered", "mmap"):
            raise ConfigError(
                f"io_mode must be one of 'auto', 'direct', 'buffered', 'mmap', got {self.io_mode!r}"
            )
        if not isinstance(self.io_queue_depth, int) or self.io_queue_depth < 1:
            raise ConfigError(
                f"io_queue_depth must be an integer >= 1, got {self.io_queue_depth!r}"
            )
        from refresh_store.io import ENGINES

        if self.io_engine not in ENGINES:
            raise ConfigError(f"io_engine must be one of {ENGINES}, got {self.io_engine!r}")


#: ``--predict-split`` names: the store's splits, and MAG240M's test split names
#: (a MAG240M store holds the one its conversion chose; see :mod:`refresh_train.predict`).
PREDICT_SPLITS = ("train", "valid", "test", "test-dev", "test-challenge", "test-whole")

#: Admission policies of the history table (``--hist-policy``); see
#: :mod:`refresh_train.history.policy`.
HIST_POLICY_NAMES = ("grad+stale", "grad", "stale", "random")
HIST_DTYPES = ("float16", "float32")
HIST_ORDERS = ("lookups", "degree")
HIST_SHADOW_KINDS = ("values", "gradients")


@dataclass(frozen=True)
class HistoryConfig:
    """The historical embedding cache of ``--cache refresh``.

    Attributes
    ----------
    layers
        Cached layers ``l`` (the table holds ``h^(l)``, the input of block
        ``l``), each in ``1 .. num_layers-1``; ``None`` = ``(num_layers-1,)``,
        the embedding that feeds the output layer (the published choice).
    grad_quantile
        Gradient criterion: of the embeddings a step computed at a cached
        layer, those whose loss-gradient L2 norm is below this quantile of
        the step's norms are admitted (``q = 0.9`` published).
    staleness_iters
        An entry admitted at step ``j`` is used only by steps ``i`` with
        ``i - j <= staleness_iters`` (``t = 200`` published); 0 or anything
        below ``lag_steps`` means nothing is ever used.
    policy
        ``"grad+stale"`` (both criteria, the default), ``"grad"`` (no
        staleness bound), ``"stale"`` (admit every computed embedding) or
        ``"random"`` (a random ``grad_quantile`` share; an ablation).
    max_serves
        An entry serves at most this many lookups; then its row takes the
        node's next admitted embedding, as an expired one would (``None``:
        no limit, as published). An ablation: at equal bytes, does reusing
        one computation of a node many times cost more than using older
        ones? (The automatic split's model of the usable share does not
        know the limit.)
    shadow
        ``"values"`` or ``"gradients"``: a diagnostic that computes every node
        (no pruning, no bytes saved) and keeps one effect of each hit, the
        served value or the missing gradient below it
        (:mod:`refresh_train.history.shadow`); ``None``: a normal run.
    warmup_steps
        No admission before this global step (embeddings of a fresh model
        change fastest).
    stop_step
        From this global step on the table is neither read nor written: the
        remaining steps train exactly as ``--cache none`` would from the same
        model (``None``: never). At the first epoch end after it the table's
        bytes go to raw rows. Ending a run with an epoch like this trains
        the output layer on fresh embeddings only, as evaluation sees them
        (on the memory-access benchmark's papers graph that gained no
        measurable test accuracy; see the README).
    fraction
        Share of ``cache_budget_bytes`` given to the history table; ``None``
        chooses it from the measured bytes saved per byte of each side and
        re-evaluates it after every epoch.
    lag_steps
        The state a batch's pruning sees is the table after the admissions
        of steps ``<= i - lag_steps`` for the batch trained at step ``i``
        (sampling runs ahead of training); ``None`` = ``max(lookahead, 2) + 2``:
        a lookahead window of batches is sampled before any of them trains,
        and the next one is read while the last two batches of the current
        one train.
    dtype
        Element type of the table (``"float16"`` halves its bytes per entry).
    order
        Which nodes get the table's slots: ``"lookups"`` the ones the cached
        layers are expected to look up most, from the topology and the
        training nodes; ``"degree"`` the prefix of the degree-ordered ids
        (an ablation). See :mod:`refresh_train.history.slots`.
    count_saved
        Also sample each batch without pruning to count exactly the nodes and
        raw rows pruning saved (``nodes_pruned``, ``rows_saved``; they also
        steer the automatic split). Costs one more sampling per batch.
    """

    layers: tuple[int, ...] | None = None
    grad_quantile: float = 0.9
    staleness_iters: int = 200
    policy: str = "grad+stale"
    max_serves: int | None = None
    shadow: str | None = None
    warmup_steps: int = 0
    stop_step: int | None = None
    fraction: float | None = None
    lag_steps: int | None = None
    dtype: str = "float16"
    order: str = "lookups"
    count_saved: bool = True

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = self.layers
            if isinstance(layers, str):
                layers = parse_fanouts(layers, name="hist_layers")
            if (
                not isinstance(layers, (tuple, list))
                or not layers
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in layers)
            ):
                raise ConfigError(
                    f"hist_layers must list layers >= 1 like '2' or '2,1', got {self.layers!r}"
                )
            object.__setattr__(self, "layers", tuple(sorted(set(layers), reverse=True)))
        q = self.grad_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
            raise ConfigError(f"grad_quantile must be in (0, 1], got {q!r}")
        for name in ("staleness_iters", "warmup_steps", "stop_step"):
            value = getattr(self, name)
            if value is None and name == "stop_step":
                continue  # never stops
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name, shown in (("lag_steps", "lag_steps"), ("max_serves", "hist_max_serves")):
            value = getattr(self, name)  # None: the default / no limit
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigError(f"{shown} must be an integer >= 1, got {value!r}")
        if self.shadow is not None:
            if self.shadow not in HIST_SHADOW_KINDS:
                raise ConfigError(
                    f"hist_shadow must be one of {HIST_SHADOW_KINDS}, got {self.shadow!r}"
                )
            if self.layers is not None and len(self.layers) > 1:
                raise ConfigError(
                    f"hist_shadow needs one cached layer, got hist_layers {self.layers!r}"
                )
        if self.policy not in HIST_POLICY_NAMES:
            raise ConfigError(
                f"hist_policy must be one of {HIST_POLICY_NAMES}, got {self.policy!r}"
            )
        f = self.fraction
        if f is not None and (
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0
        ):
            raise ConfigError(f"hist_fraction must be in [0, 1], got {f!r}")
        if self.dtype not in HIST_DTYPES:
            raise ConfigError(f"hist_dtype must be one of {HIST_DTYPES}, got {self.dtype!r}")
        if self.order not in HIST_ORDERS:
            raise ConfigError(f"hist_order must be one of {HIST_ORDERS}, got {self.order!r}")

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """The cached layers of a ``num_layers``-layer model (highest first)."""
        return self.layers if self.layers is not None else (num_layers - 1,)

    def resolved_lag(self, lookahead_batches: int) -> int:
        """:attr:`lag_steps`, or its default for a loader staging this many batches."""
        if self.lag_steps is not None:
            return self.lag_steps
        return max(lookahead_batches, 2) + 2


@dataclass(frozen=True)
class LoaderConfig:
    """Pipelining of sampling and feature fetching.

    Attributes
    ----------
    prefetch_batches
        Batches that sampling and fetching may run ahead of compute (the
        bound of each queue between stages); 0 runs both stages in the
        calling thread, one batch at a time. Each fetched batch waiting in
        the queue holds its features (hundreds of MB for 1024 seeds with
        fanouts 15,10,5), so a small bound is enough to hide I/O jitter.
    prefetch_budget_bytes
        Most bytes of the batches in flight (features and blocks, from
        sampling until the step is done); the sampling stage holds a batch
        back until it fits. ``None`` derives it from the memory plan: the
        batches the queues may hold times the planned bytes of a batch, so
        only a batch larger than the plan measured waits.
    """

    prefetch_batches: int = 2
    prefetch_budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prefetch_batches, int) or self.prefetch_batches < 0:
            raise ConfigError(
                f"prefetch_batches must be an integer >= 0, got {self.prefetch_batches!r}"
            )
        b = self.prefetch_budget_bytes
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ConfigError(f"prefetch_budget_bytes must be an integer >= 1 or None, got {b!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation after each epoch.

    Attributes
    ----------
    mode
        ``"sampled"`` (mini-batches with ``fanouts``) or ``"layerwise"`` (exact
        full-neighbourhood inference, one layer at a time, out of core).
    fanouts
        Fanouts of sampled evaluation; ``None`` uses the training fanouts.
    batch_size
        Seeds per batch (sampled) or destination nodes per block (layer-wise).
    every_epochs
        Evaluate every this many epochs (and always after the last one).
    tmp_dir
        Directory of layer-wise inference's temporary per-layer files
        (``None``: the system's temporary directory).
    """

    mode: str = "sampled"
    fanouts: tuple[int, ...] | None = None
    batch_size: int = 4096
    every_epochs: int = 1
    tmp_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sampled", "layerwise"):
            raise ConfigError(f"eval must be 'sampled' or 'layerwise', got {self.mode!r}")
        if self.fanouts is not None:
            object.__setattr__(self, "fanouts", parse_fanouts(self.fanouts, name="eval_fanouts"))
        for name in ("batch_size", "every_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"eval {name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes
    ----------
    store
        Path of the store (see :func:`refresh_store.store.open_store`).
    model
        Model name in :data:`refresh_train.models.MODELS`.
    layers, hidden, dropout, norm
        Model shape and regularisation (``norm``: ``"none"``, ``"batch"`` or
        ``"layer"``); ``fanouts`` must have ``layers`` entries.
    fanouts
        Training fanouts, seeds outward; ``-1`` takes all neighbours.
    batch_size, epochs, lr
        Seeds per batch, epochs to reach, Adam learning rate.
    device
        ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` also accepted).
    seed
        Seed of everything random: model init, dropout, batch order, sampling.
    tiers, history, loader, eval
        Settings of the feature tiers, the historical embedding cache (used by
        ``tiers.cache == "refresh"``), the pipelined loader and evaluation.
    metrics_out
        JSON-lines file, one line per epoch (appended on resume).
    checkpoint_dir
        Directory of the checkpoint written after every epoch, or ``None``.
    resume
        Continue from the checkpoint in ``checkpoint_dir``.
    progress
        Show the memory plan at start, a tqdm bar per epoch and the table
        after each epoch.
    max_rss_bytes
        Most resident memory of the whole process (interpreter and libraries
        included) the memory plan may need; a run whose plan needs more is
        refused before it allocates anything big (see
        :mod:`refresh_train.memory_plan`). ``None`` = the memory available
        when the run starts; 0 = no check.
    device_memory_bytes
        The same for device memory (CUDA only; on the CPU the device's
        structures count in ``max_rss_bytes``). ``None`` = the device's free
        memory when the run starts; 0 = no check.
    predict_out
        After the last epoch, write the model's predictions for
        ``predict_split`` into this directory (an OGB submission file; see
        :mod:`refresh_train.predict`), or ``None``.
    predict_split
        One of :data:`PREDICT_SPLITS`; ``"test"`` is the store's test split.
    verify_store
        Before training, check every checksum and invariant of the store
        (:func:`refresh_store.verify.verify_store`, reads it all). Without it a
        fast check runs (:func:`refresh_store.verify.verify_store_fast`:
        manifest, sizes and at most 64 MiB of sampled checksums).
    fit_memory
        Settings the trainer may lower, one notch at a time, when the memory
        plan does not fit its limits (names of
        :data:`refresh_train.memory_fit.FIT_KNOBS`: ``"lookahead"``,
        ``"prefetch"``). The command line names the ones not given; ``()``
        (the default here) refuses a run that does not fit as configured.
    """

    store: str
    model: str = "sage"
    layers: int = 3
    hidden: int = 256
    fanouts: tuple[int, ...] = (15, 10, 5)
    batch_size: int = 1024
    epochs: int = 10
    lr: float = 0.003
    dropout: float = 0.5
    norm: str = "none"
    device: str = "cpu"
    seed: int = 0
    tiers: TierConfig = field(default_factory=TierConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics_out: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = True
    max_rss_bytes: int | None = None
    device_memory_bytes: int | None = None
    predict_out: str | None = None
    predict_split: str = "test"
    verify_store: bool = False
    fit_memory: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from .models import MODELS, NORMS, RELATIONAL_MODELS

        for name in ("max_rss_bytes", "device_memory_bytes"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ConfigError(f"{name} must be an integer >= 0 or None, got {value!r}")

        object.__setattr__(self, "store", str(self.store))
        object.__setattr__(self, "fanouts", parse_fanouts(self.fanouts))
        if self.model not in MODELS and self.model not in RELATIONAL_MODELS:
            names = sorted(MODELS) + sorted(RELATIONAL_MODELS)
            raise ConfigError(f"model must be one of {names}, got {self.model!r}")
        for name in ("layers", "hidden", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if len(self.fanouts) != self.layers:
            raise ConfigError(
                f"fanouts {','.join(map(str, self.fanouts))!r} has {len(self.fanouts)} entries "
                f"but layers is {self.layers}; give one fanout per layer"
            )
        if self.eval.fanouts is not None and len(self.eval.fanouts) != self.layers:
            raise ConfigError(
                f"eval_fanouts {','.join(map(str, self.eval.fanouts))!r} has "
                f"{len(self.eval.fanouts)} entries but layers is {self.layers}"
            )
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", str(self.device)):
            raise ConfigError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.tiers.cache == "refresh" and (self.model == "mlp" or self.layers < 2):
            raise ConfigError(
                "--cache refresh caches the hidden embeddings of a GNN: use --model sage, gcn "
                "or gat with --layers >= 2, or --cache raw"
            )
        layers = self.history.resolved_layers(self.layers) if self.tiers.cache == "refresh" else ()
        bad = [v for v in layers if not 1 <= v < self.layers]
        if bad:
            raise ConfigError(
                f"hist_layers {bad[0]!r} is not a hidden layer of a {self.layers}-layer model; "
                f"choose from 1..{self.layers - 1} (the input of block l)"
            )
        object.__setattr__(self, "fit_memory", tuple(self.fit_memory))
        bad = [k for k in self.fit_memory if k not in ("lookahead", "prefetch")]
        if bad:
            raise ConfigError(f"fit_memory names lookahead and prefetch only, got {bad[0]!r}")
        if self.predict_split not in PREDICT_SPLITS:
            raise ConfigError(
                f"predict_split must be one of {list(PREDICT_SPLITS)}, got {self.predict_split!r}"
            )
        if self.predict_out is not None:
            object.__setattr__(self, "predict_out", str(self.predict_out))
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume needs checkpoint_dir: say where the checkpoint is")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file whose keys are the command-line flag names.

    Keys may be written ``cache-budget`` or ``cache_budget``; they are
    returned with underscores. Nested tables are not used.

    Raises
    ------
    ConfigError
        The file is missing, is not valid TOML, or holds a table.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading --config needs Python >= 3.11 or the 'tomli' package"
            ) from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            raise ConfigError(
                f"config file {str(path)!r}: key {key!r} is a table; write flags as top-level keys"
            )
        out[key.replace("-", "_")] = value
    return out
