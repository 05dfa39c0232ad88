"""Check a store: data checksums against its manifest, and the invariants of its arrays.

Every array is read front to back in blocks (with ``pread``, so memory stays
bounded); the permutation check keeps one window of ``old_id`` at a time.
Each failure is reported with the array, the position and the values found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from .checksums import array_checksums
from .errors import StoreFormatError
from .format import ARRAY_NAMES, OPTIONAL_ARRAY_NAMES, RowRegion
from .store import open_store

__all__ = ["VerifyReport", "verify_store", "verify_store_fast"]

_BLOCK_BYTES = 64 << 20  # 64 MiB per read
_WINDOW_ROWS = 16 << 20  # old_id entries per permutation window (128 MiB)
#: Bytes of checksum blocks :func:`verify_store_fast` reads: a small store is
#: checked whole, a big one by a seeded sample of its blocks (one 64 MiB block
#: is ~0.05 s from the page cache, ~0.1-0.5 s cold on an SSD).
FAST_SAMPLE_BYTES = 64 << 20  # 64 MiB


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_store`: ``ok`` when ``failures`` is empty.

    ``notes`` are facts worth telling that are not failures (NaN/inf kept by
    a conversion that allowed them).
    """

    path: str
    failures: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures


def _blocks(region: RowRegion, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, rows)`` blocks of an array, in row order."""
    rb = max(1, region.row_bytes)
    step = max(1, block_bytes // rb)
    base = int(region.chunk_offsets[0]) if len(region.chunk_offsets) else 0
    with open(region.path, "rb", buffering=0) as f:
        for a in range(0, region.nrows, step):
            b = min(region.nrows, a + step)
            if region.contiguous:
                raw = os.pread(f.fileno(), (b - a) * rb, base + a * rb)
            else:
                offs = region.row_offsets(np.arange(a, b))
                raw = b"".join(os.pread(f.fileno(), rb, int(o)) for o in offs)
            if len(raw) != (b - a) * rb:
                raise StoreFormatError(f"{region.path!r} is truncated near row {a}")
            yield a, np.frombuffer(raw, dtype=region.dtype).reshape(b - a, *region.row_shape)


class _FiniteScan:
    """Counts NaN/inf values in the pieces of a float array as they stream past."""

    def __init__(self, region: RowRegion) -> None:
        self.dtype = region.dtype
        self.width = max(1, int(np.prod(region.row_shape, dtype=np.int64)))
        self.count = 0
        self.first_row = -1
        self.done = False

    def __call__(self, offset: int, data: memoryview) -> None:
        values = np.frombuffer(data, dtype=self.dtype)
        finite = np.isfinite(values)
        if finite.all():
            return
        bad = np.flatnonzero(~finite)
        if self.first_row < 0:
            self.first_row = (offset // self.dtype.itemsize + int(bad[0])) // self.width
        self.count += len(bad)

    def scan(self, region: RowRegion) -> None:
        """Read the array for itself (when the checksum pass did not)."""
        for a, block in _blocks(region):
            self(a * region.row_bytes, memoryview(np.ascontiguousarray(block)).cast("B"))
        self.done = True

    def report(self, manifest: dict, report: VerifyReport) -> None:
        if self.count == 0:
            report.checked.append("features finite")
            return
        allowed = manifest.get("convert", {}).get("allow_nan")
        what = f"features: {self.count} NaN/inf values, the first in row {self.first_row}"
        if allowed is False:
            report.failures.append(
                f"{what}; the store was converted without --allow-nan, which refuses them: "
                "the data is damaged"
            )
        else:
            why = "--allow-nan" if allowed else "the manifest does not say they were refused"
            report.notes.append(f"{what} (kept: {why})")
            report.checked.append(f"features: {self.count} NaN/inf (allowed)")


def _recorded_checksums(manifest: dict, name: str, report: VerifyReport) -> dict | None:
    """The manifest's checksum entry of ``name``, checked (a failure is reported when bad)."""
    recorded = manifest.get("checksums")
    want = recorded.get(name) if isinstance(recorded, dict) else None
    if not isinstance(want, dict):
        report.failures.append(f"{name}: the manifest has no checksums for it")
        return None
    bb, nbytes, sums = want.get("block_bytes", 64 << 20), want.get("nbytes"), want.get("crc32c")
    if not (
        isinstance(bb, int)
        and 1 <= bb <= 1 << 40
        and (nbytes is None or isinstance(nbytes, int))
        and isinstance(sums, list)
        and all(isinstance(c, int) and 0 <= c < 1 << 32 for c in sums)
    ):
        report.failures.append(f"{name}: the manifest's checksum entry is malformed")
        return None
    return {"block_bytes": bb, "nbytes": nbytes, "crc32c": sums}


def _check_checksums(
    path: Path,
    manifest: dict,
    report: VerifyReport,
    visitors: dict[str, _FiniteScan] | None = None,
    names: tuple[str, ...] = ARRAY_NAMES,
) -> None:
    visitors = visitors or {}
    for name in names:
        want = _recorded_checksums(manifest, name, report)
        if want is None:
            continue
        visit = visitors.get(name)
        got = array_checksums(path, name, want["block_bytes"], visit)
        if visit is not None:
            visit.done = True
        if want["nbytes"] is not None and got["nbytes"] != want["nbytes"]:
            report.failures.append(
                f"{name}: holds {got['nbytes']} bytes, the manifest says {want['nbytes']}"
            )
        bb = got["block_bytes"]
        for i, (g, w) in enumerate(zip(got["crc32c"], want.get("crc32c", []))):
            if g != w:
                report.failures.append(
                    f"{name}: bytes [{i * bb}, {min((i + 1) * bb, got['nbytes'])}) fail their "
                    f"checksum (crc32c {g:#010x}, manifest {w:#010x})"
                )
        if len(got["crc32c"]) != len(want.get("crc32c", [])):
            report.failures.append(
                f"{name}: {len(got['crc32c'])} checksum blocks, the manifest has "
                f"{len(want.get('crc32c', []))}"
            )
    report.checked.append("checksums")


def _check_range(region: RowRegion, name: str, lo: int, hi: int, report: VerifyReport) -> None:
    for a, block in _blocks(region):
        flat = block.reshape(len(block))
        bad = np.flatnonzero((flat < lo) | (flat >= hi))
        if len(bad):
            i = int(bad[0])
            report.failures.append(
                f"{name}[{a + i}] = {int(flat[i])} is outside [{lo}, {hi}) "
                f"({len(bad)} such values in rows [{a}, {a + len(block)}))"
            )
            return


def _check_indptr(region: RowRegion, num_edges: int, report: VerifyReport) -> None:
    prev = None
    last = None
    for a, block in _blocks(region):
        v = block.reshape(len(block)).astype(np.int64)
        if a == 0 and len(v) and v[0] != 0:
            report.failures.append(f"indptr[0] = {int(v[0])}; it must be 0")
        joined = v if prev is None else np.concatenate([[prev], v])
        drops = np.flatnonzero(np.diff(joined) < 0)
        if len(drops):
            i = int(drops[0]) + a - (0 if prev is None else 1)
            report.failures.append(
                f"indptr decreases at node {i}: indptr[{i}] = {int(joined[drops[0]])} > "
                f"indptr[{i + 1}] = {int(joined[drops[0] + 1])}"
            )
            return
        if len(v):
            prev = last = int(v[-1])
    if last is not None and last != num_edges:
        report.failures.append(f"indptr ends at {last}; it must end at E = {num_edges}")


def _check_permutation(new: RowRegion, old: RowRegion, n: int, report: VerifyReport) -> None:
    if new.nrows != n or old.nrows != n:
        report.failures.append(f"new_id/old_id have {new.nrows}/{old.nrows} entries; expected {n}")
        return
    _check_range(new, "new_id", 0, n, report)
    _check_range(old, "old_id", 0, n, report)
    if report.failures and any(f.startswith(("new_id[", "old_id[")) for f in report.failures):
        return
    for lo in range(0, n, _WINDOW_ROWS):
        hi = min(n, lo + _WINDOW_ROWS)
        inverse = np.full(hi - lo, -1, dtype=np.int64)  # old id whose new id is j
        hits = np.zeros(hi - lo, dtype=np.int64)
        for a, block in _blocks(new):
            v = block.reshape(len(block)).astype(np.int64)
            inside = np.flatnonzero((v >= lo) & (v < hi))
            inverse[v[inside] - lo] = inside + a
            np.add.at(hits, v[inside] - lo, 1)
        if np.any(hits != 1):
            j = lo + int(np.flatnonzero(hits != 1)[0])
            report.failures.append(
                f"new_id is not a bijection: new id {j} is taken by {int(hits[j - lo])} nodes"
            )
            return
        for a, block in _blocks(old):
            if a + len(block) <= lo or a >= hi:
                continue
            s, e = max(a, lo), min(a + len(block), hi)
            got = block.reshape(len(block))[s - a : e - a].astype(np.int64)
            bad = np.flatnonzero(got != inverse[s - lo : e - lo])
            if len(bad):
                j = s + int(bad[0])
                report.failures.append(
                    f"old_id[{j}] = {int(got[bad[0]])} but new_id[{int(inverse[j - lo])}] = {j}: "
                    "old_id is not the inverse of new_id"
                )
                return


def _check_splits(
    store_path: Path, regions: dict[str, RowRegion], n: int, report: VerifyReport
) -> None:
    seen: dict[str, np.ndarray] = {}
    for split in ("train", "valid", "test"):
        region = regions[f"{split}_idx"]
        ids = np.concatenate([b.reshape(len(b)) for _, b in _blocks(region)] or [np.empty(0)])
        ids = ids.astype(np.int64)
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if len(bad):
            report.failures.append(
                f"{split}_idx[{int(bad[0])}] = {int(ids[bad[0]])} is outside [0, {n})"
            )
            continue
        uniq = np.unique(ids)
        if len(uniq) != len(ids):
            report.failures.append(f"{split}_idx lists {len(ids) - len(uniq)} nodes twice")
        for other, prev in seen.items():
            both = np.intersect1d(uniq, prev, assume_unique=True)
            if len(both):
                report.failures.append(
                    f"{other}_idx and {split}_idx share {len(both)} nodes (e.g. {int(both[0])})"
                )
        seen[split] = uniq


def verify_store(path: str | os.PathLike[str]) -> VerifyReport:
    """Recompute checksums and check the invariants of the store at ``path``.

    Checks: per-block crc32c of every array against the manifest; shapes and
    sizes against the manifest; ``indptr`` starts at 0, never decreases and
    ends at E; ``indices`` in ``[0, N)``; ``new_id``/``old_id`` are inverse
    permutations; labels in ``[-1, num_classes)``; splits in ``[0, N)``,
    without repeats and disjoint; for a typed store (format version 2),
    ``edge_type`` has E entries in ``[0, len(relations))``.

    Features are scanned for NaN and infinities in the same read as their
    checksums. Found in a store whose manifest records
    ``convert.allow_nan = false`` (the converter refused them), they are a
    failure: the data changed after conversion. Otherwise (``--allow-nan``,
    or a store written by :func:`refresh_store.writer.write_store`, which
    records no such promise) they are reported in ``notes`` and do not fail.

    Returns
    -------
    VerifyReport
        ``report.ok`` is False when anything failed; ``report.failures`` says what.

    Raises
    ------
    StoreFormatError
        ``path`` is not a complete store (missing, not a group, no manifest,
        unsupported version): nothing to verify.
    """
    store = open_store(path)
    report = VerifyReport(str(path))
    regions: dict[str, RowRegion] = {}
    names = ARRAY_NAMES + (OPTIONAL_ARRAY_NAMES if store.has_edge_types else ())
    for name in names:
        try:
            regions[name] = store.region(name)
        except StoreFormatError as exc:
            report.failures.append(f"{name}: {exc}")
    if report.failures:
        return report
    # Features are scanned for NaN/inf while the checksum pass reads them.
    scan = _FiniteScan(regions["features"]) if regions["features"].dtype.kind == "f" else None
    read_failed = False
    try:
        _check_checksums(
            store.path, store.manifest, report, {"features": scan} if scan else None, names
        )
    except StoreFormatError as exc:
        report.failures.append(str(exc))
        read_failed = True
    n, e = store.num_nodes, store.num_edges
    _check_shapes(store, regions, report)
    if report.failures and any("shape" in f for f in report.failures):
        return report
    if scan is not None and not (read_failed and not scan.done):
        try:
            if not scan.done:  # the manifest had no checksums for the features
                scan.scan(regions["features"])
            scan.report(store.manifest, report)
        except StoreFormatError as exc:
            report.failures.append(str(exc))
    _check_indptr(regions["indptr"], e, report)
    _check_range(regions["indices"], "indices", 0, n, report)
    report.checked.append("topology")
    if store.has_edge_types:
        _check_range(regions["edge_type"], "edge_type", 0, store.num_relations, report)
        report.checked.append("edge types")
    _check_permutation(regions["new_id"], regions["old_id"], n, report)
    report.checked.append("permutation")
    _check_range(regions["labels"], "labels", -1, max(store.num_classes, 0), report)
    report.checked.append("labels")
    _check_splits(store.path, regions, n, report)
    report.checked.append("splits")
    return report


def _block_crc(region: RowRegion, offset: int, nbytes: int) -> int:
    """crc32c of ``nbytes`` data bytes of ``region`` from data byte ``offset`` (pread)."""
    rb = region.row_bytes
    crc = 0
    with open(region.path, "rb", buffering=0) as f:
        if region.contiguous:
            pieces = [(int(region.chunk_offsets[0]) + offset, nbytes)]
        else:  # follow the chunk table (a zarr rewrite may have moved chunks)
            chunk_bytes = region.chunk_rows * rb
            pieces, pos = [], offset
            while pos < offset + nbytes:
                c, within = divmod(pos, chunk_bytes)
                take = min(chunk_bytes - within, offset + nbytes - pos)
                pieces.append((int(region.chunk_offsets[c]) + within, take))
                pos += take
        for start, n in pieces:
            data = os.pread(f.fileno(), n, start)
            if len(data) != n:
                raise StoreFormatError(f"{region.path!r} is truncated at byte {start + len(data)}")
            crc = crc32c.crc32c(data, crc)
    return crc


def verify_store_fast(
    path: str | os.PathLike[str], *, sample_bytes: int = FAST_SAMPLE_BYTES, seed: int = 0
) -> VerifyReport:
    """The checks that are cheap enough to run every time a store is opened.

    Opens the store (manifest, format version, every array's metadata, shard
    index and file size: see :func:`refresh_store.store.open_region`), checks
    every array's shape and dtype against the manifest, and recomputes the
    crc32c of a seeded sample of checksum blocks totalling at most
    ``sample_bytes`` (a store smaller than that is checksummed whole). Time is
    bounded by ``sample_bytes`` of reads whatever the store's size;
    :func:`verify_store` checks everything.

    Returns
    -------
    VerifyReport
        ``report.ok`` is False when anything failed.

    Raises
    ------
    StoreFormatError
        ``path`` is not a complete store: nothing to verify.
    """
    store = open_store(path)
    report = VerifyReport(str(path))
    names = ARRAY_NAMES + (OPTIONAL_ARRAY_NAMES if store.has_edge_types else ())
    regions: dict[str, RowRegion] = {}
    for name in names:
        try:
            regions[name] = store.region(name)
        except StoreFormatError as exc:
            report.failures.append(f"{name}: {exc}")
    if report.failures:
        return report
    _check_shapes(store, regions, report)
    if report.failures:
        return report
    candidates: list[tuple[str, int, int, int]] = []  # (array, offset, nbytes, crc)
    for name in names:
        want = _recorded_checksums(store.manifest, name, report)
        if want is None:
            continue
        total = regions[name].nrows * regions[name].row_bytes
        bb, sums = want["block_bytes"], want["crc32c"]
        nbytes = total if want["nbytes"] is None else want["nbytes"]
        if bb < 1 or nbytes != total or len(sums) != -(-total // bb):
            report.failures.append(
                f"{name}: holds {total} bytes, the manifest's checksums cover {nbytes} bytes "
                f"in {len(sums)} blocks"
            )
            continue
        candidates += [(name, i * bb, min(bb, total - i * bb), c) for i, c in enumerate(sums)]
    rng = np.random.default_rng(seed)
    budget = int(sample_bytes)
    checked = 0
    for k in rng.permutation(len(candidates)):
        name, offset, nbytes, want_crc = candidates[k]
        if nbytes > budget:
            continue
        budget -= nbytes
        checked += 1
        try:
            got = _block_crc(regions[name], offset, nbytes)
        except StoreFormatError as exc:
            report.failures.append(f"{name}: {exc}")
            continue
        if got != want_crc:
            report.failures.append(
                f"{name}: bytes [{offset}, {offset + nbytes}) fail their checksum "
                f"(crc32c {got:#010x}, manifest {want_crc:#010x}); the store is damaged"
            )
    report.checked.append(f"checksums of {checked} of {len(candidates)} blocks")
    return report


def _check_shapes(store: Any, regions: dict[str, RowRegion], report: VerifyReport) -> None:
    n, e, d = store.num_nodes, store.num_edges, store.feature_dim
    expect = {
        "features": (n, d),
        "indptr": (n + 1,),
        "indices": (e,),
        "labels": (n,),
        "new_id": (n,),
        "old_id": (n,),
    }
    if store.has_edge_types:
        expect["edge_type"] = (e,)
    for name, shape in expect.items():
        got = (regions[name].nrows, *regions[name].row_shape)
        if got != shape:
            report.failures.append(f"{name} has shape {got}; the manifest implies {shape}")
    if regions["features"].dtype != store.dtype:
        report.failures.append(
            f"features have dtype {regions['features'].dtype}; the manifest says {store.dtype}"
        )
    report.checked.append("shapes")
