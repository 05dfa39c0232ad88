"""Per-epoch metrics: JSON lines, the end-of-epoch table, peak RSS.

One record (a flat dict) per epoch. Keys every record has:

========================  ====================================================
``epoch``                 1-based epoch number
``epoch_time_s``          wall time of the training pass
``sample_s``, ``stage_s``, busy time of the sampling, staging (reading the
``fetch_s``               lookahead windows, ``--lookahead``) and fetching stages
                          (background threads that overlap with compute; with
                          ``--prefetch 0`` they run in turn)
``data_wait_s``           time compute waited for the next batch
``compute_s``             forward + backward + optimiser step
``train_loss``            mean cross-entropy over the epoch's seeds
``train_acc``             accuracy of the training predictions (with dropout)
``valid_acc``/``test_acc`` from evaluation (``None`` on epochs not evaluated)
``rows_X``/``bytes_X``    rows and bytes served by tier X (device, host, disk)
                          for training fetches; ``bytes_X = rows_X * row_bytes``;
                          a row a lookahead window read once counts once on
                          disk and as a host hit for every later batch using it
``disk_bytes_read``       bytes the I/O scheduler asked of the file (alignment
                          and coalescing included); ``disk_reads`` read calls
``peak_rss_bytes``        highest resident set size during the epoch (exact
                          on Linux: the kernel's VmHWM, reset per epoch)
``eval_*``                evaluation's own time and tier counters
``world_size``            processes of data-parallel training (only there);
                          its records are :func:`merge_records` of the ranks'
========================  ====================================================
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from refresh_store.errors import RefreshError

__all__ = [
    "RssMonitor",
    "JsonlWriter",
    "MetricsWriteError",
    "read_jsonl",
    "format_table",
    "hit_rates",
    "format_bytes",
    "TABLE_COLUMNS",
    "merge_records",
]


class MetricsWriteError(RefreshError):
    """The metrics file could not be written (a full disk, say); what it held is intact."""


class RssMonitor:
    """Highest resident set size of this process since the last :meth:`reset`.

    On Linux the kernel keeps the exact peak (``VmHWM`` in
    ``/proc/self/status``) and resets it when ``5`` is written to
    ``/proc/self/clear_refs`` (Linux 4.0 and later): no peak is missed. Where
    that is unavailable, a daemon thread samples
    ``psutil.Process().memory_info().rss`` every ``interval_s`` seconds
    (peaks between samples are missed; the value at :meth:`peak` is always
    included). :attr:`exact` says which is in use.
    """

    _STATUS = "/proc/self/status"
    _CLEAR = "/proc/self/clear_refs"

    def __init__(self, interval_s: float = 0.05) -> None:
        self._proc = psutil.Process(os.getpid())
        self._interval = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exact = self._clear_hwm() and self._hwm() is not None
        self._peak = self._rss()
        if not self.exact:
            self._thread = threading.Thread(target=self._run, name="refresh-rss", daemon=True)
            self._thread.start()

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _clear_hwm(self) -> bool:
        try:
            with open(self._CLEAR, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _hwm(self) -> int | None:
        try:
            with open(self._STATUS) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # reported in kB
        except (OSError, ValueError, IndexError):
            return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self._rss()
            with self._lock:
                self._peak = max(self._peak, rss)

    def reset(self) -> None:
        """Start a new measurement window from the current RSS."""
        with self._lock:
            if self.exact:
                self._clear_hwm()
            self._peak = self._rss()

    def peak(self) -> int:
        """Peak RSS in bytes of the current window."""
        rss = self._rss()
        with self._lock:
            hwm = self._hwm() if self.exact else None
            self._peak = max(self._peak, rss, hwm or 0)
            return self._peak

    def close(self) -> None:
        """Stop the sampling thread (if one runs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class JsonlWriter:
    """Append one JSON object per line to a file, flushed and fsynced per record.

    Parameters
    ----------
    path
        The file; created with its parent directory.
    records
        When given, the file is first rewritten atomically to hold exactly
        these records (a resumed run restores the lines of the epochs its
        checkpoint covers, dropping any written after it).
    """

    def __init__(self, path: str | Path, records: Iterable[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if records is not None:
            tmp = self.path.with_name(self.path.name + ".partial")
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    for r in records:
                        f.write(json.dumps(r, sort_keys=True) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise self._error(exc, "it is as it was") from exc
        else:
            self.path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line.

        Raises
        ------
        MetricsWriteError
            The line could not be written whole (a full disk, say); the file
            is cut back to the lines before it.
        """
        size = self.path.stat().st_size
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            # A partial line would make the whole file unreadable as JSON lines.
            kept = "its earlier lines are intact"
            try:
                os.truncate(self.path, size)
            except OSError:
                kept = f"its last line may be cut: keep its first {size} bytes"
            raise self._error(exc, kept) from exc

    def _error(self, exc: OSError, kept: str) -> MetricsWriteError:
        return MetricsWriteError(
            f"cannot write metrics file {str(self.path)!r}: {exc.strerror or exc}; {kept}"
        )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hit_rates(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Fraction of rows each tier served: ``{"device": .., "host": .., "disk": ..}``."""
    tiers = ("device", "host", "disk")
    rows = {t: float(stats.get(f"{prefix}rows_{t}", 0) or 0) for t in tiers}
    total = sum(rows.values())
    return {t: (rows[t] / total if total else 0.0) for t in tiers}


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"512 B"``, ``"1.5 MiB"``, ``"2.0 GiB"`` (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.startswith("bytes_") or key.endswith("_bytes") or key == "disk_bytes_read":
        return format_bytes(float(value))
    if key.endswith("_acc"):
        return f"{100 * value:.2f}"
    if key.endswith("_s"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


#: Columns of the end-of-epoch table: (record key, header).
TABLE_COLUMNS: Sequence[tuple[str, str]] = (
    ("epoch", "epoch"),
    ("epoch_time_s", "time s"),
    ("sample_s", "sample s"),
    ("stage_s", "stage s"),
    ("fetch_s", "fetch s"),
    ("data_wait_s", "wait s"),
    ("compute_s", "compute s"),
    ("train_loss", "loss"),
    ("train_acc", "train %"),
    ("valid_acc", "valid %"),
    ("test_acc", "test %"),
    ("bytes_device", "device"),
    ("bytes_host", "host"),
    ("bytes_disk", "disk"),
    ("disk_bytes_read", "disk read"),
    ("peak_rss_bytes", "peak RSS"),
)


def format_table(
    records: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS
) -> str:
    """A plain-text table with one row per record."""
    header = [h for _, h in columns]
    rows = [[_fmt(k, r.get(k)) for k, _ in columns] for r in records]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# ------------------------------------------------- data-parallel training
#: Integer keys of a record that are not summed over ranks.
_NOT_SUMMED = frozenset({"epoch", "batches", "hist_lag_steps"})
#: Keys whose largest value over the ranks is reported.
_MAXED = frozenset({"peak_rss_bytes", "loader_peak_bytes"})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def merge_records(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics record from every data-parallel rank's (rank order).

    Counters (every integer: rows, bytes, reads, hist hits, correct/labelled
    counts; also capacities such as ``hist_rows`` and ``host_capacity_rows``,
    which become the totals of all ranks' tiers) are summed; ``peak_rss_bytes`` and
    ``loader_peak_bytes`` are the largest rank's; times and other floats are
    rank 0's; hit rates, ``hist_occupancy``, the means over hits or probes
    (``hist_mean_age_of_hits``, ``hist_drift_rel_err``,
    ``hist_drift_mean_age``) and the accuracies are recomputed from the sums.
    Adds ``world_size``.
    """
    out = dict(parts[0])
    for key in parts[0]:
        values = [p.get(key) for p in parts]
        if key in _MAXED and all(_is_int(v) for v in values):
            out[key] = max(int(v) for v in values)  # type: ignore[arg-type]
        elif key not in _NOT_SUMMED and all(_is_int(v) for v in values):
            out[key] = sum(int(v) for v in values)  # type: ignore[arg-type]
    if any(k.startswith("hit_rate_") for k in out):
        out.update({f"hit_rate_{k}": v for k, v in hit_rates(out).items()})
    if any(k.startswith("eval_hit_rate_") for k in out):
        out.update({f"eval_hit_rate_{k}": v for k, v in hit_rates(out, "eval_").items()})
    for split in ("valid", "test"):
        if f"{split}_labelled" in out:
            n = out[f"{split}_labelled"]
            out[f"{split}_acc"] = float(out[f"{split}_correct"]) / n if n else None
    if "hist_occupancy" in out:
        layers = sum(1 for k in out if k.startswith("hist_lookups_l"))
        capacity = out.get("hist_rows", 0) * max(1, layers)
        out["hist_occupancy"] = out.get("hist_entries", 0) / capacity if capacity else 0.0
    for mean, count in (
        ("hist_mean_age_of_hits", "hist_hits"),
        ("hist_drift_rel_err", "hist_drift_probes"),
        ("hist_drift_mean_age", "hist_drift_probes"),
    ):
        if mean in out:
            weights = [p.get(count) or 0 for p in parts]
            means = [p.get(mean) for p in parts]
            total = sum(weights)
            out[mean] = (
                sum(a * w for a, w in zip(means, weights) if a is not None) / total
                if total
                else None
            )
    out["world_size"] = len(parts)
    return out
