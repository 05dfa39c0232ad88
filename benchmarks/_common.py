"""Helpers the benchmark scripts share (they run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def drop_cache(path: str) -> None:
    """Evict ``path`` from the page cache (pages mapped right now stay; close maps first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages survive DONTNEED
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cpu_kind() -> str:
    """The CPU model and the instruction set PyTorch's kernels use, e.g. ``"Xeon ..., AVX512"``.

    Training is reproducible bit for bit on one kind of CPU only: kernels for
    other instruction sets round differently, and a run's path through
    training moves away from another's as it would with another seed's. So
    records carry it, and a difference between two runs is exactly paired
    only when they share it.
    """
    import torch

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def preload(arrays: Iterable[np.ndarray]) -> None:
    """Read arrays once through their own memmaps (warm page cache, mapped pages)."""
    for arr in arrays:
        step = 1 << 24
        for lo in range(0, len(arr), step):
            np.asarray(arr[lo : lo + step]).sum()


def ensure_store(name: str, spec: dict[str, Any], data_dir: Path) -> Path:
    """Generate and convert a dataset once (under ``data_dir``, named by ``name`` and
    ``spec``: layout, nodes, classes, avg_degree, labelled); reuse it afterwards."""
    from refresh_store.convert import convert
    from refresh_store.store import open_store
    from refresh_store.synthetic import make_dataset

    key = "_".join(f"{k}{v}" for k, v in sorted(spec.items()))
    dst = data_dir / f"{name}_{key}" / "store"
    if (dst / "zarr.json").exists():
        try:
            open_store(dst)
            return dst
        except Exception:  # a damaged cache: rebuild it
            pass
    src_root = data_dir / f"{name}_{key}" / "src"
    print(f"generating {name} ({spec['nodes']:,} nodes) ...", flush=True)
    src = make_dataset(
        spec["layout"],
        spec["nodes"],
        src_root,
        seed=0,
        num_classes=spec["classes"],
        avg_degree=spec["avg_degree"],
        labelled_fraction=spec["labelled"],
        progress=False,
        overwrite=True,
    )
    convert(src, dst, progress=False, overwrite=True)
    return dst


def report_saved(out: Path, report: Callable[[dict[str, Any], Path], int]) -> int:
    """``--report``: redraw the tables and plots from the records in ``out``
    (exit 2, one line, when there are none yet)."""
    if not out.exists():
        print(f"error: {str(out)!r} does not exist; run the benchmark first", file=sys.stderr)
        return 2
    return report(json.loads(out.read_text()), out)


def previous_results(
    out: Path,
    settings: str,
    adopt: Callable[[dict[str, Any], str], bool] = lambda old, s: old.get("settings") == s,
) -> dict[str, Any] | None:
    """The results saved in ``out`` by an earlier run with ``settings`` (``{}`` when
    there is no file), so finished runs can be kept and skipped.

    ``adopt(old, settings)`` says whether ``old`` was measured with ``settings``
    (it may migrate older records in place). A file holding runs of other
    settings is never overwritten: the one-line error is printed and ``None``
    returned, for the caller to exit with status 2.
    """
    if not out.exists():
        return {}
    old = json.loads(out.read_text())
    if old.get("records") and not adopt(old, settings):
        print(f"error: {out} holds runs with other settings ({old.get('settings')!r}); "
              "give another --out or move that file away", file=sys.stderr)  # fmt: skip
        return None
    return old


def save_results(out: Path, result: dict[str, Any], md: str) -> None:
    """Write ``result`` to ``out`` (JSON) and ``md`` beside it (``.md``), and print ``md``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(md)
    print(md)
