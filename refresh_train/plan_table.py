"""What a memory plan is: its items, per-batch figures, totals, the check and the table.

:func:`refresh_train.memory_plan.plan_memory` builds a :class:`MemoryPlan`;
this module holds the plain data it returns and what a plan does with it:
totals per phase (:meth:`MemoryPlan.total`), the refusal of a run that does
not fit (:meth:`MemoryPlan.check`), the table the trainer prints
(:meth:`MemoryPlan.format_table`) and the record the metrics keep
(:meth:`MemoryPlan.to_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError
from .metrics import format_bytes
from .tiers import LOWER_BATCH_BUFFERS

__all__ = ["BASES", "PHASES", "BatchShape", "MemoryPlan", "MemoryPlanError", "PlanItem"]

PHASES = ("always", "train", "eval", "epoch end")
BASES = ("exact", "measured", "bound", "estimate")


class MemoryPlanError(ConfigError):
    """A run's memory plan does not fit ``--max-rss``, ``--device-memory`` or the machine."""


@dataclass(frozen=True)
class PlanItem:
    """One structure of the plan.

    Attributes
    ----------
    name
        What it is, as the table shows it.
    ram_bytes, device_bytes
        Host RAM (resident, as RSS counts it) and device memory. With
        ``--device cpu`` the device's structures are in RAM and count there.
    phase
        When it is held: ``"always"`` (from start to end), ``"train"``
        (during an epoch's training pass), ``"eval"`` or ``"epoch end"``
        (the split's resize and the checkpoint).
    basis
        ``"exact"``, ``"measured"``, ``"bound"`` or ``"estimate"``.
    note
        How the figure is made up.
    flags
        Flags that shrink it (named by a refusal).
    """

    name: str
    ram_bytes: int
    device_bytes: int
    phase: str
    basis: str
    note: str = ""
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchShape:
    """Per-batch figures: measured on probe batches, with the margin applied.

    Attributes
    ----------
    blocks
        ``(num_src, num_dst, num_edges)`` per block, block 0 (the input side) first.
    input_rows
        Raw feature rows a batch reads (``num_src`` of block 0).
    rows_beyond_device
        Of those, rows at or above the device tier's smallest ``K`` (what the
        host tier, windows and disk serve).
    features_bytes
        ``input_rows * row_bytes``.
    blocks_bytes
        Edge indices, node ids, seeds and labels (and refresh's pruning
        arrays and cached embeddings): a batch's bytes besides its features.
    probed
        Batches sampled to measure these.
    """

    blocks: tuple[tuple[int, int, int], ...]
    input_rows: int
    rows_beyond_device: int
    features_bytes: int
    blocks_bytes: int
    probed: int

    @property
    def nbytes(self) -> int:
        """Bytes of one batch once fetched (the loader's unit)."""
        return self.features_bytes + self.blocks_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Every structure's memory, and the totals a run is checked against.

    Attributes
    ----------
    items
        The structures.
    device
        ``"cpu"`` or a CUDA device name.
    batch, eval_batch
        Per-batch figures of training and (sampled or layer-wise) evaluation.
    topology_in_ram
        Whether the sampler copies the topology into RAM (the trainer passes
        this decision on, so the plan and the run agree).
    loader_budget_bytes
        The loader's byte budget (``--prefetch-budget``, or derived: the
        batches its queues may hold times :attr:`batch`'s bytes).
    batch_buffers, eval_batch_buffers
        Batch buffers the top tier keeps for training and evaluation.
    lower_batch_buffers
        Batch buffers each training tier below the top keeps.
    max_rss_bytes, device_memory_bytes
        What :meth:`check` compares the totals with (0 = no check) and where
        the figure comes from (:attr:`limits_from`).
    """

    items: tuple[PlanItem, ...]
    device: str
    batch: BatchShape
    eval_batch: BatchShape | None
    topology_in_ram: bool
    loader_budget_bytes: int
    batch_buffers: int
    eval_batch_buffers: int
    lower_batch_buffers: int = LOWER_BATCH_BUFFERS
    max_rss_bytes: int = 0
    device_memory_bytes: int = 0
    limits_from: dict[str, str] = field(default_factory=dict)

    @property
    def on_cpu(self) -> bool:
        """Whether the device is the CPU (device structures live in RAM)."""
        return self.device == "cpu"

    def _column(self, item: PlanItem, where: str) -> int:
        if where == "ram":
            return item.ram_bytes + (item.device_bytes if self.on_cpu else 0)
        return 0 if self.on_cpu else item.device_bytes

    def phase_bytes(self, where: str = "ram") -> dict[str, int]:
        """Bytes per phase in RAM (``where="ram"``) or on the device."""
        out = dict.fromkeys(PHASES, 0)
        for item in self.items:
            out[item.phase] += self._column(item, where)
        return out

    def total(self, where: str = "ram") -> int:
        """What the run holds at most: always-held structures plus the largest phase."""
        p = self.phase_bytes(where)
        return p["always"] + max(p["train"], p["eval"], p["epoch end"])

    def _largest(self, where: str, n: int = 4) -> list[PlanItem]:
        phases = self.phase_bytes(where)
        worst = max(("train", "eval", "epoch end"), key=lambda k: phases[k])
        counted = [i for i in self.items if i.phase in ("always", worst)]
        counted = [i for i in counted if self._column(i, where) > 0]
        return sorted(counted, key=lambda i: -self._column(i, where))[:n]

    def check(self) -> None:
        """Raise :class:`MemoryPlanError` when a total exceeds its limit.

        The message is one line: the figure needed, the largest structures,
        the limit and the flag that sets it, and the flags that shrink the
        largest structures.
        """
        for where, limit, flag, what in (
            ("ram", self.max_rss_bytes, "--max-rss", "RAM"),
            ("device", self.device_memory_bytes, "--device-memory", "device memory"),
        ):
            need = self.total(where)
            if limit <= 0 or need <= limit:
                continue
            top = self._largest(where)
            parts = ", ".join(f"{i.name} {format_bytes(self._column(i, where))}" for i in top)
            flags: list[str] = []
            for i in top:
                flags += [f for f in i.flags if f not in flags]
            lower = f" or lower {'/'.join(flags)}" if flags else ""
            if self.limits_from.get(where) == "machine":
                have = (
                    f"the machine has {format_bytes(limit)} available ({flag} not given): "
                    f"free memory, give {flag}{lower}"
                )
            else:
                have = f"{flag} is {format_bytes(limit)}: raise it{lower}"
            raise MemoryPlanError(
                f"the plan needs {format_bytes(need)} of {what} ({parts}); {have}"
            )

    def format_table(self) -> str:
        """The plan as a plain-text table (the trainer prints it at start)."""
        cpu = self.on_cpu
        head = ["structure", "RAM"] + ([] if cpu else ["device"]) + ["when", "basis", "note"]
        rows = []
        for i in self.items:
            ram = format_bytes(self._column(i, "ram"))
            row = [i.name, ram] + ([] if cpu else [format_bytes(i.device_bytes)])
            rows.append(row + [i.phase, i.basis, i.note])
        total = ["total", format_bytes(self.total("ram"))]
        total += [] if cpu else [format_bytes(self.total("device"))]
        phases = self.phase_bytes("ram")
        worst = max(("train", "eval", "epoch end"), key=lambda k: phases[k])
        rows.append(total + ["", "", f"always + {worst} (the largest phase)"])
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head) - 1)]

        def line(r: list[str]) -> str:
            cells = [
                r[c].ljust(widths[c]) if c == 0 or c >= len(head) - 3 else r[c].rjust(widths[c])
                for c in range(len(head) - 1)
            ]
            return "  ".join(cells + [r[-1]]).rstrip()

        where = "device = cpu: the device tier, table, model and step are in RAM" if cpu else ""
        limits = []
        for key, flag, value in (
            ("ram", "--max-rss", self.max_rss_bytes),
            ("device", "--device-memory", self.device_memory_bytes),
        ):
            if key == "device" and cpu:
                continue
            if value <= 0:
                limits.append(f"{flag}: no check")
            elif self.limits_from.get(key) == "machine":
                limits.append(f"{flag}: {format_bytes(value)} (available now)")
            else:
                limits.append(f"{flag} {format_bytes(value)}")
        title = "memory plan (" + "; ".join([s for s in [where, *limits] if s]) + ")"
        sep = "  ".join("-" * w for w in widths) + "  " + "-" * 4
        return "\n".join([title, line(head), sep, *map(line, rows[:-1]), sep, line(rows[-1])])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and checkpoint-safe): totals, limits, items, per-batch figures."""
        return {
            "device": self.device,
            "ram_total_bytes": self.total("ram"),
            "device_total_bytes": self.total("device"),
            "ram_phase_bytes": self.phase_bytes("ram"),
            "max_rss_bytes": self.max_rss_bytes,
            "device_memory_bytes": self.device_memory_bytes,
            "limits_from": dict(self.limits_from),
            "topology_in_ram": self.topology_in_ram,
            "loader_budget_bytes": self.loader_budget_bytes,
            "batch_buffers": self.batch_buffers,
            "eval_batch_buffers": self.eval_batch_buffers,
            "lower_batch_buffers": self.lower_batch_buffers,
            "batch": _shape_dict(self.batch),
            "eval_batch": None if self.eval_batch is None else _shape_dict(self.eval_batch),
            "items": [dataclasses.asdict(i) | {"flags": list(i.flags)} for i in self.items],
        }


def _shape_dict(s: BatchShape) -> dict[str, Any]:
    return dataclasses.asdict(s) | {"blocks": [list(b) for b in s.blocks]}
