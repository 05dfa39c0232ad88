"""The OGB-LSC MAG240M layout (``mag240m_kddcup2021/``).

``meta.pt`` (node counts, num_classes) and ``split_dict.pt`` (numpy arrays of
paper ids) are torch pickles: they are loaded with ``weights_only=True`` and an
allowlist of the few numpy globals a pickled ``ndarray`` needs, so a file that
names any other global is refused instead of executed. Arrays are
memory-mapped ``.npy`` files under ``processed/``.

Two graphs can be built. ``papers``: the paper citation graph with the paper
features. ``full``: one homogeneous graph of papers ``[0, P)``, authors
``[P, P+A)`` and institutions ``[P+A, P+A+I)`` with the cites, writes and
affiliated_with edges, typed; as in the official MAG240M baselines, an author's
features are the mean of the features of the papers it wrote and an
institution's the mean of its authors' features. Those means are computed out
of core by :func:`mean_rows` before the feature pass.

The full graph's edges keep their relation (:data:`FULL_RELATIONS`), as the
OGB-LSC R-GNN baselines use it: ``cites`` (paper -> paper, made symmetric as
one relation, its reverse is itself), ``writes`` (author -> paper) and its
reverse ``written_by`` (paper -> author), ``affiliated_with`` (author ->
institution) and its reverse ``affiliation_of`` (institution -> author). Node
types decide the relation of a (source, destination) pair, so deduplication
never meets one pair under two relations here.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputDataError, SourceFormatError
from ..kernels import find_buckets, scatter_add_rows
from ._edges import ArrayEdges, ChainEdges, EdgeSource
from ._rows import ConcatRows, MappedRows, RowSource
from ._source import Source
from .npy import open_npy

__all__ = [
    "FULL_RELATIONS",
    "load_torch_pickle",
    "mean_rows",
    "read_mag240m",
    "find_mag240m_dir",
]

_DIR = "mag240m_kddcup2021"
_MAX_OPEN_FILES = 256  # bucket files open at once (per sweep over the edges)
_RELATIONS = {
    "cites": "paper___cites___paper",
    "writes": "author___writes___paper",
    "affiliated_with": "author___affiliated_with___institution",
}
#: Relations of the full graph's edges, by type id (a store's ``relations``).
FULL_RELATIONS = ["cites", "writes", "written_by", "affiliated_with", "affiliation_of"]
#: Type id of the reverse of each relation (what symmetrising gives).
_FULL_REVERSE = [0, 2, 1, 4, 3]


def _numpy_allowlist() -> list[Any]:
    """The globals a pickled numpy array needs, under their numpy 1.x and 2.x names."""
    from numpy._core import multiarray

    allow: list[Any] = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        allow += [fn, (fn, f"numpy.core.multiarray.{fn.__name__}")]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Int64DType, ...)
    for code in "?bBhHiIlLqQefdg":
        cls = type(np.dtype(code))
        allow += [cls, (cls, f"numpy.dtype[{np.dtype(code).name}]")]
    return allow


def load_torch_pickle(path: str | os.PathLike[str], name: str) -> Any:
    """Load a torch pickle of plain data and numpy arrays, executing nothing.

    Raises
    ------
    SourceFormatError
        Missing or unreadable, or it names a global outside the numpy allowlist.
    """
    import torch  # only MAG240M's pickles need torch; keep it out of import time

    try:
        with torch.serialization.safe_globals(_numpy_allowlist()):
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SourceFormatError(f"{str(path)!r} is missing") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.\[\]]+)", str(exc))
        what = repr(found.group(1)) if found else "a global"
        raise SourceFormatError(
            f"{name!r} refers to {what}, which is not a numpy array type; refusing to unpickle "
            "it (only plain data and numpy arrays are accepted)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise SourceFormatError(f"{name!r} cannot be read as a torch file ({exc})") from None
    # A damaged pickle stream makes the weights-only unpickler (which runs
    # nothing outside its allow-list) fail in its own bookkeeping: KeyError
    # for a missing memo entry, LookupError for a mangled encoding name, ...
    except Exception as exc:  # noqa: BLE001 - any of them means a damaged file
        raise SourceFormatError(
            f"{name!r} is damaged ({type(exc).__name__}: {str(exc)[:100]}); download it again"
        ) from None


def find_mag240m_dir(path: Path) -> Path | None:
    """``path`` itself or ``path/mag240m_kddcup2021`` when it holds ``meta.pt``."""
    for cand in (path, path / _DIR):
        if (cand / "meta.pt").is_file() and (cand / "processed").is_dir():
            return cand
    return None


class FillRows(RowSource):
    """``nrows`` rows of a constant (labels of node types that have none)."""

    random_access = True

    def __init__(self, nrows: int, value: float, dtype: np.dtype, name: str) -> None:
        self.shape, self.value, self.dtype, self.name = (nrows,), value, np.dtype(dtype), name

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.full(stop - start, self.value, dtype=self.dtype)

    def take(self, sorted_ids: NDArray[np.int64]) -> np.ndarray:
        return np.full(len(sorted_ids), self.value, dtype=self.dtype)


def _swap(edges: EdgeSource) -> EdgeSource:
    """The same edges read the other way round."""

    class _Swapped(EdgeSource):
        name, num_edges = edges.name, edges.num_edges

        def blocks(self, max_edges: int):  # type: ignore[no-untyped-def]
            for first, src, dst in edges.blocks(max_edges):
                yield first, dst, src

    return _Swapped()


def mean_rows(
    rows: RowSource,
    edges: EdgeSource,
    num_out: int,
    out_path: Path,
    out_dtype: np.dtype,
    work_bytes: int,
    tmp_dir: Path,
    progress: Callable[[int], None] | None = None,
    max_open_files: int = _MAX_OPEN_FILES,
) -> MappedRows:
    """Row ``t`` of the result = mean of ``rows[s]`` over edges ``s -> t`` (zeros when none).

    Sums accumulate in float32 over a window of output rows that fits in
    ``work_bytes``. When the output is larger than one window, the edges are
    first bucketed by window into files under ``tmp_dir`` (at most
    ``max_open_files`` windows per sweep over the edges). Input rows of each
    block of edges are read in ascending order, so reads move forward.

    Returns
    -------
    MappedRows
        The result, a raw ``[num_out, D]`` array of ``out_dtype`` at ``out_path``.

    Raises
    ------
    InputDataError
        An edge names a row outside ``[0, len(rows))`` or a target outside ``[0, num_out)``.
    """
    d = rows.shape[1]
    in_rb = max(1, rows.row_bytes)
    window = max(1, min(num_out, (work_bytes // 3) // (d * 6 + 8)))
    edge_block = max(1024, (work_bytes // 4) // (in_rb + d * 4 + 48))
    n_windows = max(1, -(-num_out // window))
    bounds = np.minimum(np.arange(n_windows + 1, dtype=np.int64) * window, num_out)
    out_rb = d * np.dtype(out_dtype).itemsize
    windows = _EdgeWindows(edges, len(rows), num_out, bounds, edge_block, tmp_dir)
    with open(out_path, "wb") as out:
        out.truncate(num_out * out_rb)
        for first in range(0, n_windows, max_open_files):
            last = min(n_windows, first + max_open_files)
            if n_windows > 1:
                windows.split(first, last)
            for k in range(first, last):
                lo, hi = int(bounds[k]), int(bounds[k + 1])
                acc = _window_mean(rows, windows.edges_of(k), lo, hi, progress)
                os.pwrite(out.fileno(), acc.astype(out_dtype).tobytes(), lo * out_rb)
                del acc  # one window of sums in memory: free it before the next is summed
        out.flush()
        os.fsync(out.fileno())
    return MappedRows(out_path, 0, (num_out, d), np.dtype(out_dtype), name=out_path.name)


class _EdgeWindows:
    """The edges of :func:`mean_rows` by window of targets ``[bounds[k], bounds[k + 1])``.

    With one window, :meth:`edges_of` reads the edges themselves; with more,
    :meth:`split` first writes each window's ``(source, target)`` pairs to
    ``tmp_dir/mean_<k>.i64``, which :meth:`edges_of` reads back and removes.
    """

    def __init__(
        self,
        edges: EdgeSource,
        num_rows: int,
        num_out: int,
        bounds: NDArray[np.int64],
        edge_block: int,
        tmp_dir: Path,
    ) -> None:
        self.edges, self.num_rows, self.num_out = edges, num_rows, num_out
        self.bounds, self.edge_block, self.tmp_dir = bounds, edge_block, tmp_dir
        self.n_windows = len(bounds) - 1

    def _checked(self, src: np.ndarray, dst: np.ndarray) -> None:
        if len(src) and (src.min() < 0 or src.max() >= self.num_rows):
            raise InputDataError(
                f"{self.edges.name!r} has a source id outside [0, {self.num_rows})"
            )
        if len(dst) and (dst.min() < 0 or dst.max() >= self.num_out):
            raise InputDataError(f"{self.edges.name!r} has a target id outside [0, {self.num_out})")

    def edges_of(self, k: int):  # type: ignore[no-untyped-def]
        """Yield ``(src, dst)`` blocks of the edges into window ``k``."""
        if self.n_windows == 1:
            for _, src, dst in self.edges.blocks(self.edge_block):
                self._checked(src, dst)
                yield src, dst
            return
        path = self.tmp_dir / f"mean_{k}.i64"
        pairs = np.empty((self.edge_block, 2), dtype=np.int64)
        with open(path, "rb") as f:
            while True:
                got = f.readinto(memoryview(pairs).cast("B")) // 16
                if not got:
                    break
                yield pairs[:got, 0], pairs[:got, 1]
        path.unlink()

    def split(self, first: int, last: int) -> None:
        """Bucket the edges of windows [first, last) into one file per window."""
        bounds = self.bounds
        files = {k: open(self.tmp_dir / f"mean_{k}.i64", "wb") for k in range(first, last)}
        lo, hi = bounds[first], bounds[last]
        try:
            for _, src, dst in self.edges.blocks(self.edge_block):
                self._checked(src, dst)
                inside = (dst >= lo) & (dst < hi)
                s, t = src[inside], dst[inside]
                b = np.empty(len(t), dtype=np.int64)
                find_buckets(t, bounds, b)
                order = np.argsort(b, kind="stable")
                counts = np.bincount(b - first, minlength=last - first)
                pairs = np.stack([s[order], t[order]], axis=1)
                ends = np.cumsum(counts)
                for j in np.flatnonzero(counts):
                    files[first + j].write(pairs[ends[j] - counts[j] : ends[j]].tobytes())
        finally:
            for f in files.values():
                f.close()


def _window_mean(
    rows: RowSource,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    lo: int,
    hi: int,
    progress: Callable[[int], None] | None,
) -> NDArray[np.float32]:
    """Float32 mean of ``rows[src]`` per target in ``[lo, hi)`` over edge ``blocks`` (0 if none)."""
    acc = np.zeros((hi - lo, rows.shape[1]), dtype=np.float32)
    cnt = np.zeros(hi - lo, dtype=np.int64)
    for src, dst in blocks:
        order = np.argsort(src, kind="stable")
        got = rows.take(np.ascontiguousarray(src[order]))
        got = np.ascontiguousarray(got, dtype=np.float32)  # kernels have no float16
        scatter_add_rows(acc, cnt, np.ascontiguousarray(dst[order] - lo), got)
        if progress is not None:
            progress(len(src))
    acc /= np.maximum(cnt, 1)[:, None]
    return acc


def read_mag240m(root: str | Path, graph: str = "papers", test_split: str | None = None) -> Source:
    """Open a MAG240M (ogb.lsc) folder.

    Parameters
    ----------
    root
        ``mag240m_kddcup2021/`` or the folder holding it.
    graph
        ``'papers'`` (citation graph) or ``'full'`` (papers + authors + institutions).
    test_split
        Key of ``split_dict.pt`` used as the test split (default: the first of
        ``test-dev``, ``test``, ``test-whole``, ``test-challenge`` present).

    Raises
    ------
    SourceFormatError
        Missing files, a refused pickle, or arrays of the wrong shape.
    """
    if graph not in ("papers", "full"):
        raise ValueError(f"graph must be 'papers' or 'full', got {graph!r}")
    found = find_mag240m_dir(Path(root))
    if found is None:
        raise SourceFormatError(
            f"{str(root)!r} holds no MAG240M dataset (meta.pt and processed/ not found)"
        )
    root = found
    counts = _read_meta(root)
    splits, test_key = _read_splits(root, test_split)
    proc = root / "processed"
    feat, labels = _open_papers(proc, counts["paper"])
    rel = _open_relations(proc, graph)
    files = [root / "meta.pt", root / "split_dict.pt", feat.path, Path(labels.path)]  # type: ignore[attr-defined]
    files += [e.edge_index.path for e in rel.values()]  # type: ignore[attr-defined]
    info: dict[str, Any] = {"graph": graph, "test_split": test_key}
    if graph == "full":
        return _full_graph(root, counts, splits, feat, labels, rel, files, info)
    return Source(
        format="mag240m",
        path=root,
        num_nodes=counts["paper"],
        features=feat,
        labels=labels,
        edges=rel["cites"],
        splits=splits,
        num_classes=counts["num_classes"],
        default_undirected=True,
        files=files,
        info=info,
    )


def _read_meta(root: Path) -> dict[str, int]:
    """The node counts and ``num_classes`` of ``meta.pt`` (0 for a missing count)."""
    meta = load_torch_pickle(root / "meta.pt", "meta.pt")
    if not isinstance(meta, dict) or not {"paper", "num_classes"} <= set(meta):
        raise SourceFormatError("'meta.pt' must be a dict with 'paper', ..., 'num_classes'")
    counts = {}
    for key in ("paper", "author", "institution", "num_classes"):
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SourceFormatError(
                f"'meta.pt'[{key!r}] is {value!r}; expected a count (an integer >= 0) — "
                "the file is damaged, download it again"
            )
        counts[key] = int(value)
    return counts


def _read_splits(
    root: Path, test_split: str | None
) -> tuple[dict[str, NDArray[np.int64]], str | None]:
    """The train/valid/test paper ids of ``split_dict.pt``, and the key used as test."""
    raw_split = load_torch_pickle(root / "split_dict.pt", "split_dict.pt")
    if not isinstance(raw_split, dict):
        raise SourceFormatError("'split_dict.pt' must be a dict of id arrays")
    keys = ["test-dev", "test", "test-whole", "test-challenge"]
    test_key = test_split or next((k for k in keys if k in raw_split), None)
    if test_split is not None and test_split not in raw_split:
        raise SourceFormatError(f"'split_dict.pt' has no split {test_split!r}: {sorted(raw_split)}")
    splits: dict[str, NDArray[np.int64]] = {}
    for ours, theirs in (("train", "train"), ("valid", "valid"), ("test", test_key)):
        value = raw_split.get(theirs) if theirs else None
        arr = np.empty(0, dtype=np.int64) if value is None else np.asarray(value).reshape(-1)
        if arr.dtype.kind not in "iu":
            raise SourceFormatError(
                f"'split_dict.pt'[{theirs!r}] has dtype {arr.dtype}; expected ids"
            )
        splits[ours] = arr.astype(np.int64)
    return splits, test_key


def _open_papers(proc: Path, p: int) -> tuple[MappedRows, RowSource]:
    """The paper features ``[p, D]`` and labels ``[p]`` of ``processed/paper/``, shapes checked."""
    feat = open_npy(proc / "paper" / "node_feat.npy", "processed/paper/node_feat.npy")
    if len(feat.shape) != 2 or feat.shape[0] != p or feat.dtype.kind != "f":
        raise SourceFormatError(
            f"'processed/paper/node_feat.npy' has shape {feat.shape} and dtype {feat.dtype}; "
            f"expected floats of shape [{p}, D] (meta.pt says {p} papers)"
        )
    labels: RowSource = open_npy(
        proc / "paper" / "node_label.npy", "processed/paper/node_label.npy"
    )
    if labels.shape not in ((p,), (p, 1)):
        raise SourceFormatError(
            f"'processed/paper/node_label.npy' has shape {labels.shape}; expected ({p},)"
        )
    return feat, labels


def _open_relations(proc: Path, graph: str) -> dict[str, ArrayEdges]:
    """The edge lists the ``graph`` needs (``cites`` only for ``'papers'``), by short name."""
    rel: dict[str, ArrayEdges] = {}
    for short, folder in _RELATIONS.items():
        if graph == "papers" and short != "cites":
            continue
        rel[short] = ArrayEdges(
            open_npy(proc / folder / "edge_index.npy", f"processed/{folder}/edge_index.npy")
        )
    return rel


def _full_graph(
    root: Path,
    counts: dict[str, int],
    splits: dict[str, NDArray[np.int64]],
    feat: MappedRows,
    labels: RowSource,
    rel: dict[str, ArrayEdges],
    files: list[Path],
    info: dict[str, Any],
) -> Source:
    """The ``full`` graph: papers, authors and institutions, typed edges, unlabelled non-papers."""
    p, a, i = counts["paper"], counts["author"], counts["institution"]
    info["node_types"] = {"paper": [0, p], "author": [p, p + a], "institution": [p + a, p + a + i]}
    edges = ChainEdges(
        [(rel["cites"], 0, 0), (rel["writes"], p, 0), (rel["affiliated_with"], p, p + a)],
        "mag240m full graph",
        types=[FULL_RELATIONS.index(r) for r in ("cites", "writes", "affiliated_with")],
        relations=list(FULL_RELATIONS),
        reverse=list(_FULL_REVERSE),
    )
    no_label = np.nan if labels.dtype.kind == "f" else -1
    labels = ConcatRows([labels, FillRows(a + i, no_label, labels.dtype, "no labels")], "labels")
    return Source(
        format="mag240m",
        path=root,
        num_nodes=p + a + i,
        features=feat,
        labels=labels,
        edges=edges,
        splits=splits,
        num_classes=counts["num_classes"],
        default_undirected=True,
        files=files,
        info=info,
        prepare=_full_features(feat, rel, a, i),
    )


def _full_features(
    feat: MappedRows, rel: dict[str, ArrayEdges], a: int, i: int
) -> Callable[..., RowSource]:
    """The full graph's ``Source.prepare``: paper features, then author and institution means."""

    def prepare(
        tmp_dir: Path,
        work_bytes: int,
        out_dtype: np.dtype,
        resume: bool,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
    ) -> RowSource:
        author_path, inst_path = tmp_dir / "author_feat.raw", tmp_dir / "institution_feat.raw"
        d = feat.shape[1]
        if resume:
            authors = MappedRows(author_path, 0, (a, d), out_dtype, name="author features")
            insts = MappedRows(inst_path, 0, (i, d), out_dtype, name="institution features")
        else:
            tick = progress("author features", rel["writes"].num_edges) if progress else None
            authors = mean_rows(
                feat, _swap(rel["writes"]), a, author_path, out_dtype, work_bytes, tmp_dir, tick
            )
            tick = (
                progress("institution features", rel["affiliated_with"].num_edges)
                if progress
                else None
            )
            insts = mean_rows(
                authors, rel["affiliated_with"], i, inst_path, out_dtype, work_bytes, tmp_dir, tick
            )
        return ConcatRows([feat, authors, insts], "paper + author + institution features")

    return prepare
