"""make_dataset: check the arguments, build the plan, write one layout in ``DST.partial/``, rename."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ._graph import (
    _DEFAULT_NAME,
    _DOM_PAPER,
    _OUT_SKEW_RATIO,
    _P_REPEAT,
    _P_SELF_LOOP,
    _REL_CITES,
    _SPECS,
    _active_slots,
    _make_domain,
    _min_nodes,
    _Plan,
    _Relation,
    _residue_classes,
    _Spec,
)
from ._mag240m import write_mag240m
from ._ogbn import write_ogbn
from ._papers100m import write_papers100m

LAYOUTS = ("ogbn", "papers100m", "mag240m")

INFO_FILE = "refresh_synthetic.json"  # parameters and counts of a generated dataset

_BLOCK_BYTES = 32 << 20  # 32 MiB of float32 features per block


_WRITERS = {"ogbn": write_ogbn, "papers100m": write_papers100m, "mag240m": write_mag240m}


def _spec_for(layout: str, name: str | None) -> _Spec:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; use one of {', '.join(LAYOUTS)}")
    if name is None:
        return _SPECS[_DEFAULT_NAME[layout]]
    allowed = [s.name for s in _SPECS.values() if s.layout == layout]
    if name not in allowed:
        raise ValueError(
            f"name={name!r} does not fit layout={layout!r}; use one of {', '.join(allowed)}"
        )
    return _SPECS[name]


def _check_int(arg: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg}={value!r} must be an integer")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{arg}={value!r} is out of range; it must be {allowed}")
    return int(value)


def _check_float(arg: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg}={value!r} must be a number")
    v = float(value)
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{arg}={value!r} is out of range; it must be in {bracket}{lo}, {hi}]")
    return v


def dataset_dir(layout: str, out: str | os.PathLike[str], name: str | None = None) -> Path:
    """Folder that :func:`make_dataset` writes for ``layout`` under ``out``.

    This is ``out/<dataset folder>``: ``ogbn_products``, ``ogbn_arxiv``,
    ``ogbn_papers100M`` or ``mag240m_kddcup2021``; ogb's loaders take ``out``
    itself as their ``root``.
    """
    return Path(out) / _spec_for(layout, name).dir_name


def make_dataset(
    layout: str,
    num_nodes: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    feature_dim: int | None = None,
    num_classes: int | None = None,
    avg_degree: float = 15.0,
    skew: float = 0.7,
    labelled_fraction: float | None = None,
    name: str | None = None,
    homophily: float = 0.3,
    feature_signal: float = 2.5,
    block_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic graph dataset in the on-disk layout of a real one.

    Parameters
    ----------
    layout
        ``"ogbn"`` (ogbn-* CSV files), ``"papers100m"`` (ogbn-papers100M's
        ``data.npz`` layout) or ``"mag240m"`` (MAG240M's ``ogb.lsc`` layout).
    num_nodes
        Number of nodes (papers for ``"mag240m"``). At least a few times
        ``num_classes`` (the error says how many).
    out
        Parent folder; the dataset goes to ``out/<dataset folder>`` (see
        Returns). Created if missing.
    seed
        Non-negative seed; equal arguments give byte-identical files.
    feature_dim
        Feature width; default as the real dataset: 100 (ogbn-products),
        128 (ogbn-arxiv, ogbn-papers100M), 768 (MAG240M).
    num_classes
        Number of planted communities (= classes); default as the real
        dataset: 47, 40, 172, 153. ogb's ``num_classes`` attribute still
        reports the real value from its own tables.
    avg_degree
        Expected number of raw edges per node (directed; ogbn-products' loader
        adds the reverse of each edge).
    skew
        Exponent of the popularity weights ``(rank + 10) ** -skew`` of
        edge destinations, in [0, 2]: 0 is a uniform random graph; the
        in-degree tail exponent is about ``1 + 1 / skew``. Out-degrees use
        half of it.
    labelled_fraction
        Fraction of nodes placed in a train/valid/test split (and, for
        papers100m and mag240m, given a label; others get NaN). Default: all
        nodes for ogbn, else the real fraction (1.39 %, 1.15 %) raised so that
        about 2000 nodes are labelled on small graphs.
    name
        Dataset name: ``"ogbn-products"`` (default) or ``"ogbn-arxiv"`` for
        ``"ogbn"`` (arxiv adds ``raw/node_year.csv.gz`` and a time split);
        ``"ogbn-papers100M"`` and ``"mag240m_kddcup2021"`` are the only names
        of the other layouts.
    homophily
        Probability that an edge stays inside its source's community.
    feature_signal
        Norm of the community centroids added to unit-variance Gaussian noise.
    block_rows
        Nodes per streaming block (default: ~32 MiB of float32 features).
        Bounds memory; does not change the output.
    overwrite
        Replace an existing dataset folder previously written by this
        function (a folder without its ``refresh_synthetic.json`` is never
        removed).
    progress
        Show tqdm progress bars on stderr.

    Returns
    -------
    Path
        The dataset folder ``out/<dir>``, with ``<dir>`` one of
        ``ogbn_products``, ``ogbn_arxiv``, ``ogbn_papers100M``,
        ``mag240m_kddcup2021``. Open it with
        ``NodePropPredDataset(name, root=out)`` or ``MAG240MDataset(out)``.
        It also holds ``refresh_synthetic.json`` (parameters and counts).

    Raises
    ------
    ValueError, TypeError
        An argument is out of range or of the wrong type.
    FileExistsError
        The dataset folder exists and ``overwrite`` is false, or it was not
        written by this function.

    Examples
    --------
    >>> path = make_dataset("papers100m", 10_000, "data", progress=False)  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ogbn_papers100M'
    """
    spec = _spec_for(layout, name)
    n = _check_int("num_nodes", num_nodes, 1, 1 << 40)
    seed = _check_int("seed", seed, 0)
    dim = _check_int("feature_dim", spec.feature_dim if feature_dim is None else feature_dim, 1, 1 << 16)  # fmt: skip
    classes = _check_int("num_classes", spec.num_classes if num_classes is None else num_classes, 2, 1 << 16)  # fmt: skip
    avg_degree = _check_float("avg_degree", avg_degree, 0.0, 1e5)
    skew = _check_float("skew", skew, 0.0, 2.0)
    homophily = _check_float("homophily", homophily, 0.0, 1.0)
    feature_signal = _check_float("feature_signal", feature_signal, 0.0, 1e3)
    if labelled_fraction is None:
        labelled_fraction = max(spec.labelled_fraction, min(1.0, 2000.0 / n))
    labelled_fraction = _check_float("labelled_fraction", labelled_fraction, 0.0, 1.0, lo_open=True)
    default_rows = max(1024, _BLOCK_BYTES // (dim * 4))
    rows = _check_int("block_rows", default_rows if block_rows is None else block_rows, 1)
    res_class = _residue_classes(classes)
    if _active_slots(n)[1] < res_class.shape[0]:
        raise ValueError(
            f"num_nodes={num_nodes!r} is too small for num_classes={classes}: "
            f"use at least {_min_nodes(res_class.shape[0])} nodes or fewer classes"
        )

    plan = _make_plan(
        spec, n, dim, classes, labelled_fraction, seed, avg_degree, skew, homophily,
        feature_signal, rows, progress, res_class,
    )  # fmt: skip
    out = Path(out)
    final = out / spec.dir_name
    _check_replaceable(final, overwrite)
    partial = out / (spec.dir_name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run of this function
    partial.mkdir(parents=True)
    try:
        _write_layout(plan, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def _make_plan(
    spec: _Spec,
    n: int,
    dim: int,
    classes: int,
    labelled_fraction: float,
    seed: int,
    avg_degree: float,
    skew: float,
    homophily: float,
    feature_signal: float,
    rows: int,
    progress: bool,
    res_class: NDArray[np.int64],
) -> _Plan:
    """The plan of a dataset from checked arguments: its papers and their citation relation."""
    papers = _make_domain(seed, _DOM_PAPER, n, res_class)
    out_active, in_active = _active_slots(n)
    cites = _Relation(
        papers, papers, out_active, in_active, skew * _OUT_SKEW_RATIO, skew, avg_degree * n,
        homophily, _P_SELF_LOOP, _P_REPEAT, seed, _REL_CITES,
    )  # fmt: skip
    return _Plan(
        spec, n, dim, classes, labelled_fraction, seed, avg_degree, skew, homophily,
        feature_signal, rows, progress, papers, cites,
    )  # fmt: skip


def _check_replaceable(final: Path, overwrite: bool) -> None:
    """Refuse an existing ``final`` unless ``overwrite`` and make_dataset wrote it."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(
                f"dataset folder '{final}' exists; remove it or pass overwrite=True (--overwrite)"
            )
        if not (final / INFO_FILE).is_file():
            raise FileExistsError(
                f"'{final}' has no {INFO_FILE}, so it was not written by make_dataset; "
                "refusing to replace it: remove it yourself"
            )


def _write_layout(plan: _Plan, partial: Path) -> None:
    """Write the dataset of ``plan`` into the empty folder ``partial``, :data:`INFO_FILE` last."""
    spec = plan.spec
    # ogb opens a local dataset without asking to download only when the
    # release marker and processed/ exist.
    (partial / "RELEASE_v1.txt").write_text(
        f"Synthetic {spec.name} written by refresh_store.synthetic (not the real data).\n"
    )
    (partial / "processed").mkdir()
    counts = _WRITERS[spec.layout](plan, partial)
    info = {
        "generator": "refresh_store.synthetic",
        "layout": spec.layout,
        "name": spec.name,
        "num_nodes": plan.n,
        **counts,
        "feature_dim": plan.feature_dim,
        "feature_dtype": spec.dtype.name,
        "num_classes": plan.num_classes,
        "seed": plan.seed,
        "avg_degree": plan.avg_degree,
        "skew": plan.skew,
        "homophily": plan.homophily,
        "feature_signal": plan.feature_signal,
        "labelled_fraction": plan.labelled_fraction,
    }
    with open(partial / INFO_FILE, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
