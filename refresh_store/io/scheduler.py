"""The disk tier's engine: gather rows of a store array by id, close to the SSD's IOPS.

Given a batch of row ids (any order, duplicates allowed), :class:`IOScheduler`
returns those rows in request order and reads only what it needs:

1. *Plan* (Numba, :func:`refresh_store.io._kernels.plan_reads`): map ids to
   byte offsets through the store's chunk table, sort and deduplicate them,
   widen each row to the aligned blocks it touches (a row may span two
   blocks), merge neighbours whose gap is at most ``max_gap_bytes`` into one
   read and cap a read at ``max_read_bytes``. In ``direct`` mode blocks are
   the device's logical blocks (often 512 bytes, so a 1536-byte row is one
   1536-byte read, not one or two 4 KiB blocks).
2. *Execute*: keep ``queue_depth`` reads in flight, as a fast SSD needs (its
   IOPS grow with queue depth up to 32-64): ``queue_depth`` threads each run
   a nogil Numba loop of blocking ``pread`` calls over their own segment of
   the reads (engine ``threads``), or one nogil Numba loop drives Linux native
   AIO through raw ``io_submit``/``io_getevents`` system calls (engine
   ``aio``, ``O_DIRECT`` only). The default, ``auto``, runs AIO at depths up
   to 4 and threads above, the faster of the two at each depth on the
   benchmark machine. With ``O_DIRECT`` the page cache is bypassed and
   buffers, offsets and lengths are block-aligned.
3. *Scatter* (Numba, in the same loops): each read's rows are copied into the
   output in request order, every duplicate filled.

Modes (:attr:`IOConfig.mode`): ``direct`` (``O_DIRECT``), ``buffered``
(``pread`` through the page cache, read-ahead turned off with
``POSIX_FADV_RANDOM``), ``mmap`` (the kernel copies rows out of a memory
map with ``MADV_RANDOM``, so that a file truncated under it is an error, not
SIGBUS; the threads give page faults in flight) and ``auto``, which
uses ``direct`` when the file system accepts an aligned ``O_DIRECT`` read and
``buffered`` otherwise (tmpfs, some network and overlay file systems).

Why threads, and AIO through raw system calls rather than a binding: Numba
cannot call the PyPI bindings (``liburing``, ``libaio``, ``caio``,
``pyaio``), so their submission and completion would run as Python code under
the GIL, once per read. ``liburing`` was tried (FINDINGS.md): it accepts only
``bytearray`` buffers, which cannot be aligned, so ``O_DIRECT`` reads fail with
EINVAL. The others were not tried. Both engines here were measured against
``fio`` (libaio) on the benchmark machine (see :class:`IOConfig`.engine and
``benchmarks/README_io.md``): AIO costs half the CPU per read, the threads
reached more IOPS at depths 32-64 and tied at lower depths. io_uring was tried
too, as a ring driven from one nogil Numba loop through raw
``io_uring_setup``/``io_uring_enter`` calls (about 5 us of CPU per read
against 9 us for the threads): in interleaved rounds it reached 0.87-0.95 of
fio's IOPS at depth 64 where the threads reached 1.0-1.02, and 8-11 % fewer
batches/s in the trainer's loader, so it was not kept.

Example
-------
>>> from refresh_store.store import open_store
>>> store = open_store("papers.refresh")                    # doctest: +SKIP
>>> with IOScheduler(store.region("features")) as io:       # doctest: +SKIP
...     rows = io.gather(np.array([7, 3, 7]))               # shape (3, D)
...     fut = io.submit(next_ids)                           # prefetch the next batch
...     print(io.stats()["bytes_read"])
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidIdsError, IOSchedulerError
from . import _kernels as kernels
from .config import (
    BUFFER_ALIGN,
    ENGINES,
    MODES,
    IOConfig,
    aligned_empty,
    check_mmap_copy,
    choose_engine,
    direct_alignment,
    fs_block_bytes,
    open_file,
)

if TYPE_CHECKING:
    from ..format import RowRegion

__all__ = ["ENGINES", "MODES", "IOConfig", "IOScheduler"]

_STAT_KEYS = (
    "batches",
    "rows_requested",
    "rows_unique",
    "bytes_read",
    "read_calls",
    "read_retries",
    "seconds",
)
# Read errors that may pass, so a batch's reads are tried again
# (IOConfig.read_retries); any other error, or the end of the file, is final.
_TRANSIENT_ERRNOS = frozenset((errno.EIO, errno.EINTR, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT))


def _is_torch_tensor(x: Any) -> bool:
    # Checked by name so that refresh_store never imports torch itself.
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _release(fd: int, *pools: ThreadPoolExecutor) -> None:
    for pool in pools:
        pool.shutdown(wait=False)
    os.close(fd)


class _Plan:
    """The arrays :func:`plan_reads` fills for one batch."""

    def __init__(self, n: int) -> None:
        self.order = np.empty(n, np.int64)
        self.group_start = np.empty(n + 1, np.int64)
        self.urow_off = np.empty(n, np.int64)
        self.read_start = np.empty(n, np.int64)
        self.read_len = np.empty(n, np.int64)
        self.read_need = np.empty(n, np.int64)
        self.read_first = np.empty(n + 1, np.int64)
        self.n_unique = 0
        self.n_reads = 0
        self.bytes_planned = 0

    def read_args(self) -> tuple:
        """The plan's arguments of the read-and-scatter kernels, in their order."""
        return (
            self.n_reads,
            self.read_start,
            self.read_len,
            self.read_need,
            self.read_first,
            self.urow_off,
            self.group_start,
            self.order,
        )


class IOScheduler:
    """Random-row gather from one store array on disk.

    Parameters
    ----------
    region
        Where the rows lie (:meth:`refresh_store.store.Store.region`).
    config
        How to read; see :class:`IOConfig`.

    Raises
    ------
    IOSchedulerError
        The file cannot be opened, is shorter than ``region`` says,
        ``mode="direct"`` was asked for on a file system that refuses
        ``O_DIRECT``, ``engine="aio"`` where Linux AIO is unavailable, or
        ``mode="mmap"`` where the kernel refuses ``process_vm_readv``.

    Notes
    -----
    Thread-safe: :meth:`gather` may be called from several threads and
    alongside batches started by :meth:`submit`. The scheduler holds a file
    descriptor and ``queue_depth`` threads until :meth:`close` (or the end of a
    ``with`` block).
    """

    def __init__(self, region: RowRegion, config: IOConfig | None = None) -> None:
        config = IOConfig() if config is None else config
        if not isinstance(config, IOConfig):
            raise TypeError(f"config must be an IOConfig, got {type(config).__name__}")
        self.region = region
        self.config = config
        self.path = str(region.path)
        self.nrows = int(region.nrows)
        self.row_shape = tuple(int(s) for s in region.row_shape)
        self.dtype = np.dtype(region.dtype)
        self.row_bytes = int(region.row_bytes)
        self.chunk_rows = int(region.chunk_rows)
        self._chunk_offsets = np.ascontiguousarray(region.chunk_offsets, dtype=np.int64)
        self._check_chunk_table()

        page_block = config.block_bytes or fs_block_bytes(self.path)
        self.mode, self._fd = open_file(self.path, config.mode, page_block)
        self._map: mmap.mmap | None = None
        self._mapped: NDArray[np.uint8] | None = None
        try:
            self.block_bytes = page_block
            if self.mode == "direct" and not config.block_bytes:
                self.block_bytes = direct_alignment(self._fd, page_block)
            # A thread's buffer must hold the longest read: the cap, or one
            # row that is larger than the cap plus the blocks it straddles.
            row_span = -(-self.row_bytes // self.block_bytes) * self.block_bytes
            self._buffer_bytes = max(config.max_read_bytes, row_span + self.block_bytes)
            self.engine, self._aio_sysno = choose_engine(
                config.engine, self.mode, self.path, config.queue_depth
            )
            self._check_file_size(self._region_end())
            if self.mode == "mmap" and self.nrows:
                self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
                if hasattr(self._map, "madvise"):
                    self._map.madvise(mmap.MADV_RANDOM)  # no read-around on random rows
                self._mapped = np.frombuffer(self._map, dtype=np.uint8)
                check_mmap_copy(self._mapped, self.path)
        except BaseException:
            self._mapped = None
            if self._map is not None:
                self._map.close()
            os.close(self._fd)
            raise

        self._aio_lock = threading.Lock()
        self._aio_bufs: NDArray[np.uint8] | None = None
        self._tls = threading.local()
        self._pool = ThreadPoolExecutor(config.queue_depth, thread_name_prefix="refresh-io")
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="refresh-io-prefetch")
        # A scheduler dropped without close() still frees its fd and threads.
        self._finalizer = weakref.finalize(self, _release, self._fd, self._pool, self._prefetcher)
        self._lock = threading.Lock()
        self._inflight = threading.Condition(threading.Lock())
        self._inflight_bytes = 0
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._stats["seconds"] = 0.0
        self._closed = False

    # ------------------------------------------------------------------ set-up
    def _check_chunk_table(self) -> None:
        n_used = -(-self.nrows // self.chunk_rows) if self.chunk_rows > 0 else -1
        table = self._chunk_offsets
        if self.chunk_rows <= 0 or table.ndim != 1 or len(table) < n_used:
            raise IOSchedulerError(
                f"region of {self.path!r} has chunk_rows={self.chunk_rows!r} and "
                f"{len(table)} chunk offsets; {max(n_used, 0)} chunk offsets of chunk_rows >= 1 "
                f"rows are needed for its {self.nrows} rows"
            )
        if self.row_bytes <= 0:
            raise IOSchedulerError(f"region of {self.path!r} has rows of {self.row_bytes} bytes")
        if n_used and table[:n_used].min() < 0:
            raise IOSchedulerError(
                f"region of {self.path!r} has a missing chunk (negative offset); "
                "the store is damaged — reconvert it"
            )

    def _region_end(self) -> int:
        """Bytes the file must have for every row to be readable."""
        if self.nrows == 0:
            return 0
        n_used = -(-self.nrows // self.chunk_rows)
        rows_in_chunk = np.full(n_used, self.chunk_rows, dtype=np.int64)
        rows_in_chunk[-1] = self.nrows - (n_used - 1) * self.chunk_rows
        return int((self._chunk_offsets[:n_used] + rows_in_chunk * self.row_bytes).max())

    def _check_file_size(self, needed: int) -> None:
        size = os.fstat(self._fd).st_size
        if size < needed:
            raise IOSchedulerError(
                f"{self.path!r} is {size} bytes but its rows need {needed} bytes: the file was "
                "truncated; the store is damaged — reconvert it"
            )

    # ------------------------------------------------------------------ public API
    def gather(self, ids: Any, out: Any = None) -> Any:
        """Read rows ``ids`` in request order.

        Parameters
        ----------
        ids
            1-D integer ids (numpy array, torch tensor or sequence), any order,
            duplicates allowed, each in ``[0, nrows)``.
        out
            Optional C-contiguous, writable destination of shape
            ``(len(ids), *row_shape)`` and the region's dtype: a numpy array
            or a CPU torch tensor (pinned or not).

        Returns
        -------
        ``out`` when given, else a new ``ndarray`` of shape ``(len(ids), *row_shape)``.

        Raises
        ------
        IndexError
            An id is outside ``[0, nrows)`` (the message names it).
        TypeError, ValueError
            ``ids`` is not 1-D integer, or ``out`` has the wrong shape, dtype,
            device or layout.
        IOSchedulerError
            A read returned fewer bytes than planned (the file was truncated
            or damaged under the scheduler) or failed; ``out`` must then be
            considered garbage.
        """
        ids64, arr, ret = self._prepare(ids, out)
        self._gather(ids64, arr)
        return ret

    def submit(self, ids: Any, out: Any = None) -> Future:
        """Start reading rows ``ids`` in the background (prefetch).

        Arguments are checked now (bad ids raise here, not in the future).
        Batches run one after another, each with ``queue_depth`` reads in
        flight. Blocks while the output bytes of unfinished submitted batches
        would exceed ``prefetch_bytes``.

        Returns
        -------
        concurrent.futures.Future
            Its ``result()`` is what :meth:`gather` would have returned.
        """
        ids64, arr, ret = self._prepare(ids, out, copy_ids=True)
        nbytes = len(ids64) * self.row_bytes
        with self._inflight:
            while (
                self._inflight_bytes and self._inflight_bytes + nbytes > self.config.prefetch_bytes
            ):
                self._inflight.wait()
            self._inflight_bytes += nbytes
        try:
            return self._prefetcher.submit(self._run_submitted, ids64, arr, ret, nbytes)
        except BaseException:
            self._release(nbytes)
            raise

    def stats(self) -> dict[str, int | float]:
        """Counters since creation or the last :meth:`reset_stats`.

        ``batches``, ``rows_requested``, ``rows_unique`` (after deduplication,
        per batch), ``bytes_read`` (bytes asked of the file, alignment and
        coalescing gaps included; in ``mmap`` mode the pages touched, an upper
        bound of what the kernel reads), ``read_calls`` (``pread`` calls
        planned; 0 in ``mmap`` mode) and ``seconds`` (wall time inside
        gathers, summed over batches, so overlapping batches count twice).
        """
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            for key in _STAT_KEYS:
                self._stats[key] = 0
            self._stats["seconds"] = 0.0

    def close(self) -> None:
        """Finish submitted batches, stop the threads and close the file."""
        if self._closed:
            return
        self._closed = True
        self._prefetcher.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self._mapped = None  # the map cannot close while numpy still exports it
        if self._map is not None:
            self._map.close()
        self._finalizer()

    def __enter__(self) -> IOScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"IOScheduler({self.path!r}, mode={self.mode!r}, nrows={self.nrows}, "
            f"engine={self.engine!r}, row_bytes={self.row_bytes}, "
            f"queue_depth={self.config.queue_depth})"
        )

    # ------------------------------------------------------------------ internals
    def _prepare(
        self, ids: Any, out: Any, copy_ids: bool = False
    ) -> tuple[NDArray[np.int64], NDArray[Any], Any]:
        if self._closed:
            raise ValueError(f"IOScheduler of {self.path!r} is closed")
        ids64 = self._check_ids(ids, copy_ids)
        arr, ret = self._check_out(out, len(ids64))
        return ids64, arr, ret

    def _check_ids(self, ids: Any, copy: bool) -> NDArray[np.int64]:
        if _is_torch_tensor(ids):
            ids = ids.detach().cpu().numpy()
        try:
            a = np.asarray(ids)
        except (ValueError, TypeError, OverflowError) as exc:  # ragged or odd sequences
            raise InvalidIdsError(f"ids must be a 1-D integer array ({exc})") from None
        if a.ndim != 1:
            raise InvalidIdsError(f"ids must be 1-D, got an array of shape {a.shape}")
        if a.size == 0:
            return np.empty(0, np.int64)
        if a.dtype.kind not in "iu":
            raise InvalidIdsError(f"ids must be integers, got dtype {a.dtype.name!r}")
        lo, hi = a.min(), a.max()
        if lo < 0 or hi >= self.nrows:
            bad = int(np.flatnonzero((a < 0) | (a >= self.nrows))[0])
            raise InvalidIdsError(
                f"ids[{bad}] = {int(a[bad])!r} is out of range for {self.path!r}, which has "
                f"{self.nrows} rows; allowed 0 <= id < {self.nrows}"
            )
        if copy:
            return np.array(a, dtype=np.int64, order="C", copy=True)
        return np.ascontiguousarray(a, dtype=np.int64)

    def _check_out(self, out: Any, n: int) -> tuple[NDArray[Any], Any]:
        shape = (n, *self.row_shape)
        if out is None:
            arr = np.empty(shape, dtype=self.dtype)
            return arr, arr
        if _is_torch_tensor(out):
            if out.device.type != "cpu":
                raise ValueError(
                    f"out must be a CPU tensor (pinned or not), got device {str(out.device)!r}; "
                    "gather to host memory and copy to the device asynchronously"
                )
            arr = out.detach().numpy()
        elif isinstance(out, np.ndarray):
            arr = out
        else:
            raise TypeError(
                f"out must be a numpy array or a torch tensor, got {type(out).__name__}"
            )
        if arr.shape != shape or arr.dtype != self.dtype:
            raise ValueError(
                f"out must have shape {shape} and dtype {self.dtype.name}, got shape "
                f"{arr.shape} and dtype {arr.dtype.name}"
            )
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            raise ValueError("out must be C-contiguous and writable")
        return arr, out

    def _run_submitted(
        self, ids64: NDArray[np.int64], arr: NDArray[Any], ret: Any, nbytes: int
    ) -> Any:
        try:
            self._gather(ids64, arr)
            return ret
        finally:
            self._release(nbytes)

    def _release(self, nbytes: int) -> None:
        with self._inflight:
            self._inflight_bytes -= nbytes
            self._inflight.notify_all()

    def _thread_buffer(self) -> NDArray[np.uint8]:
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = aligned_empty(self._buffer_bytes)
            self._tls.buf = buf
        return buf

    def _gather(self, ids64: NDArray[np.int64], arr: NDArray[Any]) -> None:
        t0 = time.perf_counter()
        n = len(ids64)
        plan = _Plan(n)
        if n:
            out_u8 = arr.reshape(-1).view(np.uint8).reshape(n, self.row_bytes)
            mapped = self.mode == "mmap"
            plan.n_unique, plan.n_reads, plan.bytes_planned = kernels.plan_reads(
                ids64,
                self._chunk_offsets,
                self.chunk_rows,
                self.row_bytes,
                self.block_bytes,
                0 if mapped else self.config.max_gap_bytes,
                self.config.max_read_bytes,
                plan.order,
                plan.group_start,
                plan.urow_off,
                plan.read_start,
                plan.read_len,
                plan.read_need,
                plan.read_first,
            )
            if mapped:
                self._run_mapped(plan, out_u8)
            else:
                self._run_reads(plan, out_u8)
        seconds = time.perf_counter() - t0
        with self._lock:
            s = self._stats
            s["batches"] += 1
            s["rows_requested"] += n
            s["rows_unique"] += plan.n_unique
            s["bytes_read"] += plan.bytes_planned
            s["read_calls"] += 0 if self.mode == "mmap" else plan.n_reads
            s["seconds"] += seconds

    def _run_reads(self, plan: _Plan, out_u8: NDArray[np.uint8]) -> None:
        # Reading a batch again is harmless: every row is scattered anew, so
        # rows a failed attempt left half-written are overwritten.
        retries = self.config.read_retries
        for attempt in range(retries + 1):
            err = self._try_reads(plan, out_u8)
            if err is None:
                return
            if attempt == retries or int(err[2]) not in _TRANSIENT_ERRNOS:
                self._raise_read_error(plan, err, attempt + 1)
            with self._lock:
                self._stats["read_retries"] += 1
            time.sleep(self.config.retry_backoff_s * (1 << attempt))

    def _try_reads(self, plan: _Plan, out_u8: NDArray[np.uint8]) -> NDArray[np.int64] | None:
        """One attempt at every read of ``plan``; the ``err`` of a failed read, or ``None``."""
        if self.engine == "aio":
            err = np.zeros(3, np.int64)
            with self._aio_lock:  # one set of AIO buffers
                status = kernels.aio_read_scatter(
                    self._aio_sysno, self._fd, self._aio_buffers(), *plan.read_args(), out_u8, err
                )
            if status == -1:
                return err
            if status == 0:
                return None
            # -2: no AIO context now (the system's aio-max-nr is shared by all
            # processes); this batch goes through the threads instead.
        args = plan.read_args()[1:]

        def task(first: int, end: int, err: NDArray[np.int64]) -> int:
            buf = self._thread_buffer()  # the worker thread's own
            return kernels.pread_scatter(self._fd, buf, first, end, *args, out_u8, err)

        return self._fan_out(plan.n_reads, task)

    def _fan_out(
        self, n_reads: int, task: Callable[[int, int, NDArray[np.int64]], int]
    ) -> NDArray[np.int64] | None:
        """Run ``task(first, end, err)`` on the pool, one contiguous segment of
        the sorted reads per thread; the ``err`` of a failed task, or ``None``.

        Segments spread the reads in flight over the batch's whole span in the
        file (threads taking every k-th read keep them within a few MiB; on
        the benchmark machine's virtual disk that reached 0.83-0.94 of fio's
        IOPS at depths 32-64 against 1.0-1.06 for segments).
        """
        n_tasks = min(self.config.queue_depth, n_reads)
        seg = -(-n_reads // n_tasks)
        errors = np.zeros((n_tasks, 3), np.int64)
        futures = [
            self._pool.submit(task, t * seg, min(n_reads, (t + 1) * seg), errors[t])
            for t in range(n_tasks)
        ]
        failed = [t for t, f in enumerate(futures) if f.result() != 0]
        return errors[failed[0]] if failed else None

    def _aio_buffers(self) -> NDArray[np.uint8]:
        if self._aio_bufs is None:
            # Every slot starts on a page, whatever the read alignment.
            align = max(self.block_bytes, BUFFER_ALIGN)
            slot = -(-self._buffer_bytes // align) * align
            depth = self.config.queue_depth
            flat = aligned_empty(depth * slot)
            self._aio_bufs = flat.reshape(depth, slot)
        return self._aio_bufs

    def _raise_read_error(self, plan: _Plan, err: NDArray[np.int64], attempts: int = 1) -> None:
        r, got, code = (int(v) for v in err)
        tries = f" (tried {attempts} times)" if attempts > 1 else ""
        offset = None
        if r < 0:  # waiting for completions failed
            exc = IOSchedulerError(f"reading {self.path!r} failed{tries}: {os.strerror(code)}")
        elif code:
            offset = int(plan.read_start[r])
            exc = IOSchedulerError(
                f"reading {self.path!r} failed at byte offset {offset} "
                f"({int(plan.read_need[r])} bytes){tries}: {os.strerror(code)} "
                f"[errno {code}]; check the disk (dmesg) — no rows were returned"
            )
        else:
            offset = int(plan.read_start[r])
            exc = IOSchedulerError(
                f"short read of {self.path!r}: expected at least {int(plan.read_need[r])} bytes "
                f"at offset {offset}, got {got} (end of file); the file was truncated or "
                "damaged while in use — no rows were returned"
            )
        exc.errno = code or None
        # Not OSError's filename: set after construction, it would replace the message.
        exc.path = self.path
        exc.offset = offset
        raise exc

    def _run_mapped(self, plan: _Plan, out_u8: NDArray[np.uint8]) -> None:
        # A truncation before the copy fails the size check (the clearest
        # message); one during it fails the kernel's copy (EFAULT, never
        # SIGBUS) or, for the zero-filled tail of the last page, which the map
        # still reads, the second size check after the copy.
        end = int(plan.urow_off[plan.n_unique - 1]) + self.row_bytes
        self._check_file_size(end)
        self._map_copy(plan, out_u8)
        self._check_file_size(end)

    def _map_copy(self, plan: _Plan, out_u8: NDArray[np.uint8]) -> None:
        # No local reference to the map's view: an exception's traceback keeps
        # this frame alive, and close() cannot unmap while a view exists.
        def task(first: int, end: int, err: NDArray[np.int64]) -> int:
            return kernels.map_scatter(
                self._mapped, first, end, plan.read_first, plan.urow_off, plan.group_start,
                plan.order, out_u8, err,
            )  # fmt: skip

        err = self._fan_out(plan.n_reads, task)
        if err is not None:
            r, _, errno = (int(v) for v in err)
            size = os.fstat(self._fd).st_size
            exc = IOSchedulerError(
                f"copying rows of {self.path!r} from its memory map failed "
                f"({os.strerror(errno) if errno else 'short copy'}): the file is now {size} "
                f"bytes and a row at offset {int(plan.urow_off[plan.read_first[r]])} needs "
                f"{self.row_bytes}; the file was truncated while in use — no rows were returned"
            )
            exc.errno = errno or None
            raise exc
