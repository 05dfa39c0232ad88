"""Numba kernels of the I/O scheduler (see :mod:`refresh_store.io.scheduler`).

Plain kernels: contiguous arrays in, caller-allocated arrays out, no checks.
The wrapper validates everything before calling them.

``pread`` and ``__errno_location`` are declared as external C functions
(``numba.types.ExternalFunction``) rather than ctypes objects because only the
former keeps ``cache=True`` working: the symbol is resolved from the process
when the cached machine code is loaded. Pointers and ``size_t`` travel as
64-bit integers, which is the same register ABI on every 64-bit Linux.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

# ssize_t pread(int fd, void *buf, size_t count, off_t offset)
_pread = types.ExternalFunction(
    "pread", types.intp(types.int32, types.intp, types.intp, types.int64)
)
# int *__errno_location(void): glibc's and musl's per-thread errno.
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.int32)())
# pid_t getpid(void); ssize_t process_vm_readv(pid_t, const struct iovec *local,
# unsigned long, const struct iovec *remote, unsigned long, unsigned long flags).
# An iovec is (address, length): two int64 words.
_getpid = types.ExternalFunction("getpid", types.int32())
_process_vm_readv = types.ExternalFunction(
    "process_vm_readv",
    types.intp(types.int32, types.intp, types.intp, types.intp, types.intp, types.intp),
)
# long syscall(long number, ...): Linux AIO has no glibc wrapper. Declared with
# fixed integer arguments, which x86-64 and aarch64 pass in the same registers
# as variadic ones (glibc's syscall is an assembly stub that reads registers).
_syscall = types.ExternalFunction(
    "syscall",
    types.int64(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64),
)


@njit(cache=True, nogil=True)
def _errno():
    return numba.carray(_errno_location(), (1,))[0]


_RADIX_BITS = 8  # 256 counters: the scatter's write streams stay in L1
_RADIX_MIN_N = 4096  # below this a comparison sort is as fast


@njit(cache=True, nogil=True)
def argsort_keys(keys, order):
    """Write into ``order`` a permutation that sorts ``keys`` (int64 >= 0).

    LSD radix sort on (key, position) pairs: O(n) per pass, a few passes for
    the key range of a feature file, about 10x faster than a comparison
    argsort on a batch of a million ids.
    """
    n = keys.shape[0]
    if n < _RADIX_MIN_N:
        order[:] = np.argsort(keys, kind="mergesort")
        return
    mask = (1 << _RADIX_BITS) - 1
    ka = keys.copy()
    ia = np.arange(n)
    kb = np.empty_like(ka)
    ib = np.empty_like(ia)
    count = np.empty(mask + 2, np.int64)
    top = ka.max()
    shift = 0
    while True:
        count[:] = 0
        for i in range(n):
            count[((ka[i] >> shift) & mask) + 1] += 1
        for d in range(mask + 1):
            count[d + 1] += count[d]
        for i in range(n):
            d = (ka[i] >> shift) & mask
            j = count[d]
            count[d] = j + 1
            kb[j] = ka[i]
            ib[j] = ia[i]
        ka, kb = kb, ka
        ia, ib = ib, ia
        shift += _RADIX_BITS
        if shift >= 63 or (top >> shift) == 0:
            break
    order[:] = ia


@njit(cache=True, nogil=True)
def plan_reads(
    ids,  # int64 [n], all in range
    chunk_offsets,  # int64 [n_chunks]
    chunk_rows,
    row_bytes,
    block_bytes,
    max_gap_bytes,
    max_read_bytes,
    order,  # out int64 [n]: request positions sorted by file offset
    group_start,  # out int64 [n + 1]: requests of unique row u are order[group_start[u]:group_start[u+1]]
    urow_off,  # out int64 [n]: file offset of unique row u (increasing)
    read_start,  # out int64 [n]: block-aligned file offset of read r
    read_len,  # out int64 [n]: bytes asked for by read r (multiple of block_bytes)
    read_need,  # out int64 [n]: bytes read r must return (end of its last row)
    read_first,  # out int64 [n + 1]: unique rows of read r are read_first[r]:read_first[r+1]
):
    """Sort and deduplicate ``ids`` by file offset and group them into aligned reads.

    Rows are sorted by their byte offset, not by id, so that a store whose
    chunks were moved by a rewrite still yields ascending, coalescable reads.
    A row's read covers every block it touches (a row may span two or more
    blocks). The next row joins the current read when the gap between their
    aligned ranges is at most ``max_gap_bytes`` and the read stays within
    ``max_read_bytes``; a single row larger than the cap gets a read of its own.

    Returns ``(n_unique, n_reads, bytes_planned)``.
    """
    n = ids.shape[0]
    offs = np.empty(n, np.int64)
    keys = np.empty(n, np.int64)
    for i in range(n):
        r = ids[i]
        offs[i] = chunk_offsets[r // chunk_rows] + (r % chunk_rows) * row_bytes
        # Distinct rows lie >= row_bytes apart, so offset // row_bytes orders
        # them strictly and needs far fewer radix passes than the offset.
        keys[i] = offs[i] // row_bytes
    argsort_keys(keys, order)

    n_unique = 0
    n_reads = 0
    planned = 0
    cur_s = np.int64(0)
    cur_e = np.int64(0)
    prev = np.int64(-1)
    for k in range(n):
        off = offs[order[k]]
        if k > 0 and off == prev:
            continue  # a duplicate joins the group of the previous unique row
        prev = off
        group_start[n_unique] = k
        urow_off[n_unique] = off
        s = off - off % block_bytes
        e = off + row_bytes
        e = e + (block_bytes - e % block_bytes) % block_bytes
        end = e if e > cur_e else cur_e
        if n_reads > 0 and s - cur_e <= max_gap_bytes and end - cur_s <= max_read_bytes:
            cur_e = end
            read_need[n_reads - 1] = off + row_bytes - cur_s
        else:
            if n_reads > 0:
                read_len[n_reads - 1] = cur_e - cur_s
                planned += cur_e - cur_s
            read_start[n_reads] = s
            read_need[n_reads] = off + row_bytes - s
            read_first[n_reads] = n_unique
            cur_s = s
            cur_e = e
            n_reads += 1
        n_unique += 1
    if n_reads > 0:
        read_len[n_reads - 1] = cur_e - cur_s
        planned += cur_e - cur_s
    group_start[n_unique] = n
    read_first[n_reads] = n_unique
    return n_unique, n_reads, planned


@njit(cache=True, nogil=True)
def _scatter_read(buf, buf_start, r, read_first, urow_off, group_start, order, out):
    row_bytes = out.shape[1]
    for u in range(read_first[r], read_first[r + 1]):
        p = urow_off[u] - buf_start
        for g in range(group_start[u], group_start[u + 1]):
            dst = order[g]
            for j in range(row_bytes):
                out[dst, j] = buf[p + j]


@njit(cache=True, nogil=True)
def pread_scatter(
    fd,
    buf,  # uint8 scratch of at least max(read_len), aligned for O_DIRECT
    first,
    end,
    read_start,
    read_len,
    read_need,
    read_first,
    urow_off,
    group_start,
    order,
    out,  # uint8 [n, row_bytes]
    err,  # out int64 [3]: failed read, bytes it returned, errno (0 = end of file)
):
    """Run reads ``first .. end - 1`` with ``pread`` and scatter their rows.

    Each thread of the scheduler runs one call on its own contiguous segment
    of the plan (``IOScheduler._fan_out`` says why). A read returning fewer
    than ``read_need`` bytes (end of file, or an error) stops the call and returns
    -1 with ``err`` filled; rows already scattered are not to be used.
    """
    base = buf.ctypes.data
    for r in range(first, end):
        start = read_start[r]
        length = read_len[r]
        need = read_need[r]
        got = 0
        k = 0
        while got < need:
            # pread may legitimately return less than asked (signals); only 0
            # (end of file) or -1 (error) ends the attempt.
            k = _pread(fd, base + got, length - got, start + got)
            if k <= 0:
                break
            got += k
            if got < need and k & 511:
                # Only the end of the file gives a partial block; asking for
                # the rest at an unaligned offset would fail under O_DIRECT.
                k = 0
                break
        if got < need:
            err[0] = r
            err[1] = got
            err[2] = 0
            if k < 0:
                err[2] = _errno()
            return -1
        _scatter_read(buf, start, r, read_first, urow_off, group_start, order, out)
    return 0


# Rows copied per process_vm_readv call: the kernel's limit of iovecs (UIO_MAXIOV).
_IOV_BATCH = 1024


@njit(cache=True, nogil=True)
def _map_copy(pid, local, remote, iov_read, k, row_bytes, err):
    want = k * row_bytes
    got = _process_vm_readv(pid, local.ctypes.data, k, remote.ctypes.data, k, 0)
    if got == want:
        return 0
    # The kernel stops at the first iovec it cannot fill; earlier ones are whole.
    done = got if got > 0 else 0
    err[0] = iov_read[done // row_bytes]
    err[1] = done - (done // row_bytes) * row_bytes
    err[2] = _errno() if got < 0 else 0
    return -1


@njit(cache=True, nogil=True)
def map_scatter(
    mapped,  # uint8 view of the whole file's memory map
    first,
    end,
    read_first,
    urow_off,
    group_start,
    order,
    out,  # uint8 [n, row_bytes]
    err,  # out int64 [3]: read of the failed row, bytes of it copied, errno
):
    """Copy the rows of reads ``first .. end - 1`` out of a memory map.

    The kernel copies (``process_vm_readv`` from this process to itself, up
    to 1024 rows a call): touching a page that a truncation removed raises
    SIGBUS in user code, which kills the process, but makes this call fail
    with EFAULT. Page faults block the calling thread, so the scheduler's
    threads, one call each on their own segment of the reads, give as many
    faults in flight. Returns 0, or -1 with ``err`` filled.
    """
    row_bytes = out.shape[1]
    pid = _getpid()
    base = mapped.ctypes.data
    dst = out.ctypes.data
    local = np.empty((_IOV_BATCH, 2), np.int64)
    remote = np.empty((_IOV_BATCH, 2), np.int64)
    iov_read = np.empty(_IOV_BATCH, np.int64)
    k = 0
    for r in range(first, end):
        for u in range(read_first[r], read_first[r + 1]):
            src = base + urow_off[u]
            for g in range(group_start[u], group_start[u + 1]):
                local[k, 0] = dst + order[g] * row_bytes
                local[k, 1] = row_bytes
                remote[k, 0] = src
                remote[k, 1] = row_bytes
                iov_read[k] = r
                k += 1
                if k == _IOV_BATCH:
                    if _map_copy(pid, local, remote, iov_read, k, row_bytes, err) != 0:
                        return -1
                    k = 0
    if k > 0 and _map_copy(pid, local, remote, iov_read, k, row_bytes, err) != 0:
        return -1
    return 0


@njit(cache=True, nogil=True)
def map_probe(mapped):
    """0 when ``process_vm_readv`` copies the first byte of ``mapped``, else errno."""
    one = np.zeros(1, np.uint8)
    local = np.array([one.ctypes.data, 1], np.int64)
    remote = np.array([mapped.ctypes.data, 1], np.int64)
    if _process_vm_readv(_getpid(), local.ctypes.data, 1, remote.ctypes.data, 1, 0) == 1:
        return 0
    return _errno()


# Layout of the kernel's ``struct iocb`` (linux/aio_abi.h) as eight
# little-endian u64 words: 0 aio_data, 1 aio_key | aio_rw_flags << 32,
# 2 aio_lio_opcode | aio_reqprio << 16 | aio_fildes << 32, 3 aio_buf,
# 4 aio_nbytes, 5 aio_offset, 6 aio_reserved2, 7 aio_flags | aio_resfd << 32.
# IOCB_CMD_PREAD is opcode 0. ``struct io_event`` is (data, obj, res, res2).
_EINTR = 4


@njit(cache=True, nogil=True)
def _aio_prep(iocbs, slot, fd, buf_addr, nbytes, offset):
    iocbs[slot, 0] = slot
    iocbs[slot, 1] = 0
    iocbs[slot, 2] = np.int64(fd) << 32
    iocbs[slot, 3] = buf_addr
    iocbs[slot, 4] = nbytes
    iocbs[slot, 5] = offset
    iocbs[slot, 6] = 0
    iocbs[slot, 7] = 0


@njit(cache=True, nogil=True)
def aio_probe(sys_setup, sys_destroy):
    """0 when this kernel lets us create (and destroy) an AIO context, else errno."""
    ctx = np.zeros(1, np.int64)
    if _syscall(sys_setup, 1, ctx.ctypes.data, 0, 0, 0) < 0:
        return _errno()
    _syscall(sys_destroy, ctx[0], 0, 0, 0, 0)
    return 0


@njit(cache=True, nogil=True)
def aio_read_scatter(
    sysno,  # int64 [4]: io_setup, io_destroy, io_submit, io_getevents of this architecture
    fd,
    bufs,  # uint8 [depth, >= max(read_len)], every row aligned for O_DIRECT
    n_reads,
    read_start,
    read_len,
    read_need,
    read_first,
    urow_off,
    group_start,
    order,
    out,  # uint8 [n, row_bytes]
    err,  # out int64 [3]: failed read, bytes it returned, errno (0 = end of file)
):
    """Run every read with Linux native AIO, ``bufs.shape[0]`` in flight, and
    scatter their rows.

    The calling thread keeps its queue full: it submits reads in file order
    into free slots and reaps completions in batches, so a read costs a share
    of a system call instead of a thread wake-up. Returns 0, -1 after a failed or
    short read (``err`` filled), or -2 when no AIO context could be created
    (``err[2]`` = errno; nothing was read).
    """
    depth = bufs.shape[0]
    ctx = np.zeros(1, np.int64)
    if _syscall(sysno[0], depth, ctx.ctypes.data, 0, 0, 0) < 0:
        err[2] = _errno()
        return -2
    iocbs = np.zeros((depth, 8), np.int64)
    ptrs = np.empty(depth, np.int64)
    events = np.zeros((depth, 4), np.int64)
    slot_read = np.full(depth, -1, np.int64)
    slot_got = np.zeros(depth, np.int64)
    free = np.arange(depth)
    n_free = depth
    base = iocbs.ctypes.data
    buf0 = bufs.ctypes.data
    stride = bufs.strides[0]
    status = 0
    next_read = 0
    done = 0
    while done < n_reads and status == 0:
        n_sub = 0
        while n_free > 0 and next_read < n_reads:
            n_free -= 1
            slot = free[n_free]
            _aio_prep(
                iocbs, slot, fd, buf0 + slot * stride, read_len[next_read], read_start[next_read]
            )
            slot_read[slot] = next_read
            slot_got[slot] = 0
            ptrs[n_sub] = base + slot * 64
            n_sub += 1
            next_read += 1
        sent = 0
        while sent < n_sub:
            k = _syscall(sysno[2], ctx[0], n_sub - sent, ptrs.ctypes.data + sent * 8, 0, 0)
            if k < 0:
                e = _errno()
                if e == _EINTR:
                    continue
                err[0] = slot_read[(ptrs[sent] - base) // 64]
                err[1] = 0
                err[2] = e
                status = -1
                break
            sent += k
        if status != 0:
            break
        k = _syscall(sysno[3], ctx[0], 1, depth, events.ctypes.data, 0)
        if k < 0:
            e = _errno()
            if e == _EINTR:
                continue
            err[0] = -1
            err[1] = 0
            err[2] = e
            status = -1
            break
        for j in range(k):
            slot = events[j, 0]
            res = events[j, 2]
            r = slot_read[slot]
            if res < 0:
                err[0] = r
                err[1] = slot_got[slot]
                err[2] = -res
                status = -1
                break
            got = slot_got[slot] + res
            if got < read_need[r]:
                # O_DIRECT returns a partial block only at the end of the file.
                if res == 0 or res & 511:  # the file is shorter than planned
                    err[0] = r
                    err[1] = got
                    err[2] = 0
                    status = -1
                    break
                # A short read before the end: ask for the rest in the same slot.
                slot_got[slot] = got
                _aio_prep(
                    iocbs,
                    slot,
                    fd,
                    buf0 + slot * stride + got,
                    read_len[r] - got,
                    read_start[r] + got,
                )
                ptrs[0] = base + slot * 64
                while True:
                    k2 = _syscall(sysno[2], ctx[0], 1, ptrs.ctypes.data, 0, 0)
                    if k2 >= 0 or _errno() != _EINTR:
                        break
                if k2 != 1:
                    err[0] = r
                    err[1] = got
                    err[2] = _errno()
                    status = -1
                    break
                continue
            _scatter_read(
                bufs[slot], read_start[r], r, read_first, urow_off, group_start, order, out
            )
            free[n_free] = slot
            n_free += 1
            done += 1
    # io_destroy cancels or waits for reads still in flight, so the buffers
    # are ours again when it returns, also after an error.
    _syscall(sysno[1], ctx[0], 0, 0, 0, 0)
    return status
