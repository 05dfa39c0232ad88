"""Timing, progress bars and memory figures of the converter's passes."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from tqdm import tqdm

__all__ = ["PassRecord", "PassLog", "peak_rss_bytes", "current_rss_bytes", "format_bytes"]


def peak_rss_bytes() -> int:
    """Highest resident set size of this process so far (Linux ``VmHWM``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(psutil.Process().memory_info().rss)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass
class PassRecord:
    """One pass of a conversion: what it moved and how long it took."""

    name: str
    seconds: float = 0.0
    rows: int = 0
    bytes: int = 0
    rss_after: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes) of the bytes the pass counted."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["mb_per_s"] = round(self.mb_per_s, 1)
        d["seconds"] = round(self.seconds, 3)
        return d


class PassLog:
    """Records passes and shows a tqdm bar for each (rows/s, and MB/s as postfix)."""

    def __init__(self, show: bool = True) -> None:
        self.show = show
        self.records: list[PassRecord] = []

    @contextmanager
    def run(self, name: str, total_rows: int | None) -> Iterator[Callable[[int, int], None]]:
        """Time a pass; yields ``tick(rows, nbytes)`` to report progress."""
        rec = PassRecord(name)
        bar = tqdm(
            total=total_rows,
            desc=name,
            unit="rows",
            unit_scale=True,
            # None: drawn only when stderr is a terminal, so a CI log or a script's
            # captured stderr holds the error line alone.
            disable=None if self.show else True,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        start = time.perf_counter()

        def tick(rows: int, nbytes: int) -> None:
            rec.rows += int(rows)
            rec.bytes += int(nbytes)
            bar.update(int(rows))
            elapsed = time.perf_counter() - start
            if elapsed > 0:
                bar.set_postfix_str(f"{rec.bytes / 1e6 / elapsed:.0f} MB/s", refresh=False)

        try:
            yield tick
        finally:
            rec.seconds = time.perf_counter() - start
            rec.rss_after = current_rss_bytes()
            bar.close()
            self.records.append(rec)

    def sub(self, prefix: str) -> Callable[[str, int], Callable[[int, int], None]]:
        """A ``tick(phase, total) -> callback`` factory that opens nested passes lazily.

        Each phase becomes its own record named ``prefix: phase``; a phase ends
        when the next one starts or when :meth:`close_sub` is called.
        """
        state: dict[str, Any] = {}

        def factory(phase: str, total: int) -> Callable[[int, int], None]:
            self.close_sub(state)
            cm = self.run(f"{prefix}: {phase}", total)
            state["cm"] = cm
            return cm.__enter__()

        self._subs = getattr(self, "_subs", [])
        self._subs.append(state)
        return factory

    def close_sub(self, state: dict[str, Any] | None = None) -> None:
        """End the open phase of one (or every) :meth:`sub` factory."""
        states = [state] if state is not None else getattr(self, "_subs", [])
        for st in states:
            cm = st.pop("cm", None)
            if cm is not None:
                cm.__exit__(None, None, None)
