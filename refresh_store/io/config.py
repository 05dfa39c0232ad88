"""How the I/O scheduler reads: its configuration and the choices made at open.

:class:`IOConfig` is what a user sets; the functions below turn it into an
open file descriptor, a read alignment and an engine for one file, probing what
the file system and the kernel accept. :mod:`refresh_store.io`
re-exports the public names.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import IOSchedulerError
from . import _kernels as kernels

__all__ = ["AUTO_AIO_MAX_DEPTH", "ENGINES", "MODES", "IOConfig", "aligned_empty"]

#: Values accepted by :attr:`IOConfig.mode`.
MODES = ("auto", "direct", "buffered", "mmap")
#: Values accepted by :attr:`IOConfig.engine`.
ENGINES = ("auto", "threads", "aio")
#: Engine ``auto`` runs AIO at queue depths up to this, threads above.
AUTO_AIO_MAX_DEPTH = 4
# io_setup, io_destroy, io_submit, io_getevents: Linux AIO has no glibc
# wrapper, so the kernels call syscall() with these numbers.
AIO_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4)}
# Buffers are aligned to this whatever the read alignment: O_DIRECT's memory
# alignment can exceed its offset alignment, and a page never costs more.
BUFFER_ALIGN = 4096


@dataclass(frozen=True)
class IOConfig:
    """How an :class:`~refresh_store.io.scheduler.IOScheduler` reads.

    Attributes
    ----------
    mode
        ``"auto"`` (``direct`` where the file system accepts ``O_DIRECT``,
        else ``buffered``), ``"direct"``, ``"buffered"`` or ``"mmap"``.
    engine
        How reads are kept in flight: ``"auto"`` (the default: ``aio`` at
        queue depths up to 4 in ``direct`` mode where Linux AIO is available,
        ``threads`` otherwise), ``"threads"`` (``queue_depth`` threads
        of blocking ``pread``, each on its own contiguous segment of the
        batch's sorted reads; about 8 us of CPU per read at depth 64, two
        context switches per read included) or ``"aio"`` (``direct`` mode
        only: Linux native AIO from one nogil Numba loop; about 3.5 us of CPU
        per read at depth 64, fio's libaio 2.3 us). Threads are the default:
        on the benchmark machine (a virtual disk, 2 shared cores;
        ``benchmarks/README_io.md``) they reached more IOPS at depths 32-64
        in most runs (1536 B rows, depth 64: 0.96-1.05 of fio against
        0.81-0.87 in interleaved runs), at depths 2 and 8-16 the two engines
        were within run-to-run noise of each other, and at depth 4 AIO was
        ahead (0.84-0.92 of fio against 0.76-0.86 in every full run and A/B
        round of 2026-11-26): one thread woken per batch of completions beats
        four threads each woken per read when so few reads are in flight.
    queue_depth
        Reads in flight: AIO requests kept queued by one thread (``aio``
        engine), or threads each running a nogil ``pread`` loop (``threads``
        engine; page faults in flight in ``mmap`` mode).
    block_bytes
        Alignment of reads; 0 detects it. In ``direct`` mode that is the
        device's logical block size (what ``O_DIRECT`` requires, often 512
        bytes), confirmed by a probe read; else the file system's block size,
        at least 4096 (the page cache reads whole pages). A finer alignment
        reads less: a 1536-byte row is one 1536-byte read at 512 bytes, and
        one or two 4 KiB blocks at 4096.
    max_gap_bytes
        Two rows go into one read when the gap between their aligned ranges is
        at most this many bytes: reading a small gap costs less than one more
        random read. 8 KiB was ahead of 0 and 32 KiB, in interleaved cold
        rounds of 64K and 256K random rows on an 8.6 GB file of the
        benchmark machine (a virtual disk): larger gaps pay in bandwidth
        more than they save in reads there.
    max_read_bytes
        Cap of one read (a row larger than the cap is read whole). Each thread
        holds one buffer of this size.
    prefetch_bytes
        Bound on the output bytes of batches :meth:`IOScheduler.submit` has
        accepted and not finished; ``submit`` blocks beyond it (a single
        larger batch is still accepted when nothing else is in flight).
    read_retries
        How many more times a batch's reads are tried after a read failed
        with an error that may pass (``EIO``, ``EINTR``, ``EAGAIN``,
        ``EBUSY``, ``ETIMEDOUT``: a disk or a network file system that
        hiccups). A read that hits the end of the file (a truncated store) or
        fails with any other error is not retried. 0 = never retry.
    retry_backoff_s
        Wait before the first retry; it doubles at each further one
        (10 + 20 + 40 ms by default), so a persistent error stops a run
        within a fraction of a second.
    """

    mode: str = "auto"
    engine: str = "auto"
    queue_depth: int = 32
    block_bytes: int = 0
    max_gap_bytes: int = 8 << 10  # 8 KiB
    max_read_bytes: int = 1 << 20  # 1 MiB
    prefetch_bytes: int = 256 << 20  # 256 MiB
    read_retries: int = 3
    retry_backoff_s: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"IOConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"IOConfig.engine must be one of {ENGINES}, got {self.engine!r}")
        for name, low in (
            ("queue_depth", 1),
            ("block_bytes", 0),
            ("max_gap_bytes", 0),
            ("max_read_bytes", 1),
            ("prefetch_bytes", 1),
            ("read_retries", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"IOConfig.{name} must be an integer >= {low}, got {value!r}")
        backoff = self.retry_backoff_s
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, (int, float))
            or not (0 <= backoff <= 60)
        ):
            raise ValueError(
                f"IOConfig.retry_backoff_s must be a number of seconds in [0, 60], got {backoff!r}"
            )
        b = self.block_bytes
        if b and (b < 512 or b & (b - 1)):
            raise ValueError(
                f"IOConfig.block_bytes must be 0 (detect) or a power of two >= 512, got {b!r}"
            )


def aligned_empty(nbytes: int, align: int = BUFFER_ALIGN) -> NDArray[np.uint8]:
    """An uninitialised uint8 array of ``nbytes`` whose address is a multiple of ``align``."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip : skip + nbytes]


def fs_block_bytes(path: str) -> int:
    """The file system's block size when it is a larger power of two, else 4096."""
    try:
        fs_block = os.statvfs(path).f_bsize
    except OSError:
        fs_block = 0
    if 4096 < fs_block <= (64 << 10) and not fs_block & (fs_block - 1):
        return int(fs_block)
    return 4096  # the page size: every O_DIRECT implementation accepts it


def _device_logical_block(fd: int) -> int:
    """The logical block size of the block device under ``fd``; 0 when unknown
    (network, overlay and other file systems without one)."""
    try:
        dev = os.fstat(fd).st_dev
        node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
        queue = node / "queue"
        if not queue.is_dir():  # a partition: the queue belongs to its disk
            queue = node.parent / "queue"
        return int((queue / "logical_block_size").read_text())
    except (OSError, ValueError):
        return 0


def direct_alignment(fd: int, fallback: int) -> int:
    """The finest alignment ``O_DIRECT`` reads of ``fd`` accept, or ``fallback``.

    The device's logical block size, kept only when an ``O_DIRECT`` read of
    that size at that offset returns it whole; a file too short to probe, or
    a refused probe, keeps ``fallback``.
    """
    lbs = _device_logical_block(fd)
    if not 512 <= lbs < fallback or lbs & (lbs - 1):
        return fallback
    probe = aligned_empty(lbs)
    try:
        got = os.preadv(fd, [memoryview(probe)], lbs)
    except OSError:
        return fallback
    return lbs if got == lbs else fallback


def open_file(path: str, mode: str, block_bytes: int) -> tuple[str, int]:
    """Open ``path`` for ``mode``: the mode actually used and a descriptor.

    ``auto`` and ``direct`` try ``O_DIRECT`` with a probe read of
    ``block_bytes``; ``auto`` falls back to ``buffered``.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if mode in ("auto", "direct"):
        reason = _try_direct(path, flags, block_bytes)
        if isinstance(reason, int):
            return "direct", reason
        if mode == "direct":
            raise IOSchedulerError(
                f"mode='direct' is not possible on {path!r}: {reason}; "
                "use mode='buffered' or mode='auto'"
            )
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise IOSchedulerError(f"cannot open {path!r}: {exc.strerror}") from exc
    if mode != "mmap" and hasattr(os, "posix_fadvise"):
        # Read-ahead only wastes bandwidth on random rows.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return ("mmap" if mode == "mmap" else "buffered"), fd


def _try_direct(path: str, flags: int, block_bytes: int) -> int | str:
    """Open with ``O_DIRECT`` and probe one aligned read: an fd, or why not."""
    if not hasattr(os, "O_DIRECT"):
        return "this platform has no O_DIRECT"
    try:
        fd = os.open(path, flags | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == 2:  # a missing file is an error in every mode
            raise IOSchedulerError(f"cannot open {path!r}: {exc.strerror}") from exc
        return f"the file system refuses O_DIRECT ({exc.strerror})"
    # Some file systems accept the flag at open and refuse the reads.
    probe = aligned_empty(block_bytes, max(block_bytes, BUFFER_ALIGN))
    try:
        os.preadv(fd, [memoryview(probe)], 0)
    except OSError as exc:
        os.close(fd)
        return f"an aligned O_DIRECT read of {block_bytes} bytes failed ({exc.strerror})"
    return fd


def choose_engine(
    engine: str, mode: str, path: str, queue_depth: int = 1
) -> tuple[str, NDArray[np.int64] | None]:
    """The engine to run and, for ``aio``, its system call numbers.

    ``auto`` resolves to ``aio`` when ``queue_depth`` is at most
    :data:`AUTO_AIO_MAX_DEPTH`, the mode is ``direct`` and the kernel grants an
    AIO context, and to ``threads`` otherwise.

    Raises
    ------
    IOSchedulerError
        ``engine="aio"`` where Linux AIO cannot run asynchronously.
    """
    if engine == "auto":
        if mode != "direct" or queue_depth > AUTO_AIO_MAX_DEPTH:
            return "threads", None
        try:
            return choose_engine("aio", mode, path)
        except IOSchedulerError:
            return "threads", None
    if engine == "threads":
        return "threads", None
    machine = platform.machine()
    why = ""
    if mode != "direct":
        why = f"mode is {mode!r} (Linux AIO is asynchronous with O_DIRECT only)"
    elif machine not in AIO_SYSCALLS:
        why = f"no Linux AIO system call numbers for {machine!r}"
    else:
        sysno = AIO_SYSCALLS[machine]
        errno = kernels.aio_probe(sysno[0], sysno[1])
        if errno:
            why = f"io_setup failed: {os.strerror(errno)}"
    if why:
        raise IOSchedulerError(
            f"engine='aio' is not possible for {path!r}: {why}; use engine='threads'"
        )
    return "aio", np.array(AIO_SYSCALLS[machine], np.int64)


def check_mmap_copy(mapped: NDArray[np.uint8], path: str) -> None:
    """Raise unless the kernel copies out of ``mapped`` for us.

    ``mmap`` mode copies rows with ``process_vm_readv`` on this process, so
    that a page the file no longer has fails the call (EFAULT) instead of
    killing the process with SIGBUS; a kernel or sandbox that forbids the
    call rules the mode out.
    """
    errno = kernels.map_probe(mapped)
    if errno:
        raise IOSchedulerError(
            f"mode='mmap' is not possible on {path!r}: copying from the map with "
            f"process_vm_readv failed ({os.strerror(errno)}); use mode='buffered'"
        )
