"""Tests of refresh_store.io.scheduler against numpy fancy indexing."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time

import numpy as np
import pytest

from refresh_store.errors import IOSchedulerError
from refresh_store.format import RowRegion
from refresh_store.io import IOConfig, IOScheduler
from refresh_store.io import _kernels as kernels

# mode[-engine]: direct mode runs with either engine.
MODES = ["auto", "direct-aio", "direct-threads", "buffered", "mmap"]


def make_region(
    tmp_path,
    nrows=3000,
    row_shape=(100,),
    dtype=np.float32,
    chunk_rows=64,
    shuffled=False,
    header_bytes=0,
    seed=0,
    name="rows.bin",
):
    """Write an array's chunks into a file and describe them with a RowRegion.

    ``shuffled`` lays the chunks out of order with unaligned gaps between
    them, as a zarr rewrite of a shard may; ``header_bytes`` puts the data
    region at a non-zero, unaligned offset.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        data = rng.standard_normal((nrows, *row_shape)).astype(dtype)
    else:
        data = rng.integers(-(2**40), 2**40, size=(nrows, *row_shape)).astype(dtype)
    row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    n_chunks = -(-nrows // chunk_rows)
    chunk_bytes = chunk_rows * row_bytes
    slots = rng.permutation(n_chunks) if shuffled else np.arange(n_chunks)
    gap = 777 if shuffled else 0
    offsets = header_bytes + slots.astype(np.int64) * (chunk_bytes + gap)
    path = tmp_path / name
    with open(path, "wb") as f:
        f.write(rng.integers(0, 256, header_bytes, dtype=np.uint8).tobytes())
        f.truncate(int(offsets.max()) + chunk_bytes + 100)  # trailing bytes, as a shard index
        flat = np.ascontiguousarray(data).reshape(nrows, -1).view(np.uint8)
        for c in range(n_chunks):
            f.seek(int(offsets[c]))
            f.write(flat[c * chunk_rows : (c + 1) * chunk_rows].tobytes())
    region = RowRegion(
        path=str(path),
        nrows=nrows,
        row_shape=tuple(row_shape),
        dtype=dtype,
        chunk_rows=chunk_rows,
        chunk_offsets=offsets,
    )
    return region, data


def open_scheduler(region, mode, **kw):
    """An IOScheduler in ``mode`` (e.g. ``"direct-aio"``); skips when the
    file system refuses O_DIRECT or the kernel offers no AIO."""
    mode, _, engine = mode.partition("-")
    try:
        io = IOScheduler(region, IOConfig(mode=mode, engine=engine or "threads", **kw))
    except IOSchedulerError as exc:
        if "not possible" in str(exc):
            pytest.skip(f"{mode}/{engine} unavailable here: {exc}")
        raise
    assert io.mode == mode or mode == "auto"
    assert io.engine == engine or not engine
    return io


def requests(kind, nrows, rng):
    if kind == "random":
        return rng.integers(0, nrows, 700)
    if kind == "sorted":
        return np.sort(rng.choice(nrows, 500, replace=False))
    if kind == "duplicated":
        base = rng.integers(0, nrows, 50)
        return rng.permutation(np.repeat(base, 7))
    if kind == "empty":
        return np.empty(0, np.int64)
    if kind == "last_row":
        return np.array([nrows - 1, 0, nrows - 1])
    if kind == "all_rows_reversed":
        return np.arange(nrows)[::-1].copy()
    raise AssertionError(kind)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind", ["random", "sorted", "duplicated", "empty", "last_row", "all_rows_reversed"]
)
def test_gather_matches_numpy(tmp_path, mode, kind):
    region, data = make_region(tmp_path)
    ids = requests(kind, region.nrows, np.random.default_rng(1))
    with open_scheduler(region, mode) as io:
        rows = io.gather(ids)
    assert rows.shape == (len(ids), 100) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, data[ids])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("dtype", "row_shape"),
    [
        pytest.param(np.float16, (768,), id="fp16-1536B"),  # MAG240M rows: span blocks
        pytest.param(np.float32, (128,), id="fp32-512B"),  # papers100M rows: divide 4 KiB
        pytest.param(np.float32, (1000,), id="fp32-4000B"),
        pytest.param(np.float32, (2500,), id="fp32-10000B"),  # spans three blocks
        pytest.param(np.float16, (3,), id="fp16-6B"),
        pytest.param(np.int64, (), id="int64-1d"),
    ],
)
def test_dtypes_and_row_sizes(tmp_path, mode, dtype, row_shape):
    region, data = make_region(
        tmp_path, nrows=1500, row_shape=row_shape, dtype=dtype, chunk_rows=32
    )
    ids = np.random.default_rng(2).integers(0, region.nrows, 400)
    with open_scheduler(region, mode) as io:
        rows = io.gather(ids.astype(np.int32))
    assert rows.dtype == np.dtype(dtype) and rows.shape == (400, *row_shape)
    np.testing.assert_array_equal(rows, data[ids])


@pytest.mark.parametrize("mode", MODES)
def test_chunks_out_of_order_at_unaligned_offsets(tmp_path, mode):
    region, data = make_region(tmp_path, row_shape=(37,), shuffled=True, header_bytes=1000)
    assert not region.contiguous
    rng = np.random.default_rng(3)
    with open_scheduler(region, mode) as io:
        for ids in (rng.integers(0, region.nrows, 900), np.arange(region.nrows)):
            np.testing.assert_array_equal(io.gather(ids), data[ids])


@pytest.mark.parametrize("mode", ["direct-aio", "direct-threads", "buffered"])
@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"max_gap_bytes": 0}, id="no-gap"),
        pytest.param({"max_gap_bytes": 1 << 20, "max_read_bytes": 8192}, id="small-reads"),
        pytest.param({"max_read_bytes": 1, "block_bytes": 512}, id="row-above-cap"),
        pytest.param({"queue_depth": 1}, id="qd1"),
        pytest.param({"queue_depth": 64, "block_bytes": 8192}, id="qd64-8k"),
    ],
)
def test_configs_give_same_rows(tmp_path, mode, config):
    region, data = make_region(tmp_path, row_shape=(300,), header_bytes=512 * 3)
    ids = np.random.default_rng(4).integers(0, region.nrows, 800)
    with open_scheduler(region, mode, **config) as io:
        np.testing.assert_array_equal(io.gather(ids), data[ids])
        st = io.stats()
    max_read = config.get("max_read_bytes", 1 << 20)
    block = io.block_bytes
    row_span = -(-1200 // block) * block + block
    # No read exceeds the cap unless a single row needs more.
    assert st["bytes_read"] <= st["read_calls"] * max(max_read, row_span)


@pytest.mark.parametrize("mode", ["direct-aio", "direct-threads", "buffered", "mmap"])
def test_counters(tmp_path, mode):
    region, data = make_region(tmp_path, nrows=4000, row_shape=(128,))  # 512 B rows
    rng = np.random.default_rng(5)
    ids = rng.integers(0, region.nrows, 1000)
    with open_scheduler(region, mode, max_gap_bytes=0) as io:
        io.gather(ids)
        io.gather(ids[:10])
        st = io.stats()
        n_unique = len(np.unique(ids)) + len(np.unique(ids[:10]))
        assert st["batches"] == 2
        assert st["rows_requested"] == 1010
        assert st["rows_unique"] == n_unique <= st["rows_requested"]
        assert st["bytes_read"] % io.block_bytes == 0
        assert st["bytes_read"] >= n_unique * region.row_bytes
        # Exactly the distinct blocks touched: 512 B rows never straddle blocks.
        blocks = (
            np.unique(ids * 512 // io.block_bytes).size
            + np.unique(ids[:10] * 512 // io.block_bytes).size
        )
        assert st["bytes_read"] == blocks * io.block_bytes
        if mode == "mmap":
            assert st["read_calls"] == 0
        else:
            assert 0 < st["read_calls"] <= blocks
        assert st["seconds"] > 0
        io.reset_stats()
        assert all(v == 0 for v in io.stats().values())


def test_plan_coalesces_and_caps():
    # Rows of 100 bytes; blocks of 4096 bytes.
    ids = np.array([0, 1, 40, 41, 81, 500, 500, 0], np.int64)
    offsets = np.zeros(1, np.int64)
    n = len(ids)
    order, urow, rstart, rlen, rneed = (np.empty(n, np.int64) for _ in range(5))
    group, first = np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)

    def plan(gap, cap):
        return kernels.plan_reads(
            ids, offsets, 1000, 100, 4096, gap, cap, order, group, urow, rstart, rlen, rneed, first
        )

    # Bytes: row 0 [0, 100), 1 [100, 200), 40 [4000, 4100) straddles blocks 0-1,
    # 41 [4100, 4200) in block 1, 81 [8100, 8200) straddles blocks 1-2, 500 in block 12.
    nu, nr, planned = plan(0, 1 << 20)
    assert nu == 6
    assert nr == 2
    assert list(rstart[:nr]) == [0, 12 * 4096]
    assert list(rlen[:nr]) == [3 * 4096, 4096]
    assert list(rneed[:nr]) == [8200, 50000 + 100 - 12 * 4096]
    assert planned == 4 * 4096
    assert list(first[: nr + 1]) == [0, 5, 6]
    assert list(group[: nu + 1]) == [0, 2, 3, 4, 5, 6, 8]
    # A gap of 9 blocks or more merges everything.
    nu, nr, planned = plan(9 * 4096, 1 << 20)
    assert (nr, planned) == (1, 13 * 4096)
    # A cap of two blocks splits the first run; row 81 needs block 1 again.
    nu, nr, planned = plan(0, 2 * 4096)
    assert list(rstart[:nr]) == [0, 4096, 12 * 4096]
    assert list(rlen[:nr]) == [2 * 4096, 2 * 4096, 4096]


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(np.random.default_rng(9).integers(0, 2**62, 9000), id="wide"),
        pytest.param(np.random.default_rng(9).integers(0, 7, 9000), id="many-equal"),
        pytest.param(np.arange(9000)[::-1].copy(), id="reversed"),
        pytest.param(np.zeros(5000, np.int64), id="zeros"),
        pytest.param(np.random.default_rng(9).integers(0, 1000, 50), id="small"),
    ],
)
def test_argsort_keys(keys):
    order = np.full(len(keys), -1, np.int64)
    kernels.argsort_keys(keys, order)
    np.testing.assert_array_equal(keys[order], np.sort(keys))
    np.testing.assert_array_equal(np.sort(order), np.arange(len(keys)))


def test_large_batch_on_shuffled_chunks(tmp_path):
    # Large enough for the radix sort; chunks out of order so that sorting by
    # offset differs from sorting by id.
    region, data = make_region(tmp_path, nrows=20000, row_shape=(6,), chunk_rows=50, shuffled=True)
    ids = np.random.default_rng(10).integers(0, region.nrows, 30000)
    with IOScheduler(region) as io:
        np.testing.assert_array_equal(io.gather(ids), data[ids])
        assert io.stats()["rows_unique"] == len(np.unique(ids))


def test_out_buffers_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    region, data = make_region(tmp_path, row_shape=(768,), dtype=np.float16)
    ids = np.random.default_rng(6).integers(0, region.nrows, 300)
    with IOScheduler(region) as io:
        out = np.full((300, 768), np.nan, np.float16)
        assert io.gather(ids, out=out) is out
        np.testing.assert_array_equal(out, data[ids])
        tout = torch.empty(300, 768, dtype=torch.float16)
        if torch.cuda.is_available():
            tout = tout.pin_memory()
        got = io.gather(torch.from_numpy(ids.astype(np.int32)), out=tout)
        assert got is tout
        np.testing.assert_array_equal(tout.numpy(), data[ids])
        with pytest.raises(ValueError, match=r"out must have shape \(300, 768\)"):
            io.gather(ids, out=np.empty((300, 768), np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            io.gather(ids, out=np.empty((768, 300), np.float16).T)


@pytest.mark.parametrize("mode", MODES)
def test_bad_ids(tmp_path, mode):
    region, _ = make_region(tmp_path, nrows=100)
    with open_scheduler(region, mode) as io:
        with pytest.raises(IndexError, match=r"ids\[2\] = 100 is out of range.*0 <= id < 100"):
            io.gather(np.array([5, 99, 100, 7]))
        with pytest.raises(IndexError, match=r"ids\[0\] = -1"):
            io.gather(np.array([-1, 3]))
        with pytest.raises(IndexError, match=r"ids\[1\] = 100"):
            io.submit(np.array([0, 100]))
        with pytest.raises(TypeError, match="integers"):
            io.gather(np.array([1.0, 2.0]))
        with pytest.raises(ValueError, match="1-D"):
            io.gather(np.zeros((2, 2), np.int64))
        assert io.stats()["batches"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_file_truncated_under_it(tmp_path, mode):
    region, data = make_region(tmp_path, nrows=2000, row_shape=(100,))
    io = open_scheduler(region, mode)
    with io:
        np.testing.assert_array_equal(io.gather(np.array([1999])), data[[1999]])
        os.truncate(region.path, 1000 * 400 + 10)
        with pytest.raises(IOSchedulerError, match=r"rows\.bin") as info:
            io.gather(np.array([3, 1500, 4]))
        msg = str(info.value)
        if mode == "mmap":  # checked before touching the map (SIGBUS otherwise)
            assert "is 400010 bytes" in msg and "truncated" in msg
        else:
            # The message names the offset and the bytes the read needed.
            assert "offset" in msg and "expected at least" in msg
        # Rows still on disk keep working.
        np.testing.assert_array_equal(io.gather(np.array([3, 999])), data[[3, 999]])
    # Opening a truncated file fails at once.
    with pytest.raises(IOSchedulerError, match="truncated"):
        IOScheduler(region, IOConfig(mode="buffered"))


@pytest.mark.parametrize(
    ("size", "ids", "message"),
    [
        # Rows on pages the file no longer has: the kernel's copy fails.
        pytest.param(4096 * 10, [3, 1500, 4], r"memory map failed \(Bad address\)", id="gone"),
        # A row in the zero-filled tail of the last page: the map reads it
        # without a fault, so the size check after the copy must catch it.
        pytest.param(1000 * 400 + 10, [1000], "is 400010 bytes.*truncated", id="tail"),
    ],
)
def test_mmap_truncated_after_the_size_check(tmp_path, size, ids, message):
    # Truncation between the size check and the copy used to kill the
    # process with SIGBUS; it must be a clean error, and later rows still work.
    region, data = make_region(tmp_path, nrows=2000, row_shape=(100,))
    with open_scheduler(region, "mmap") as io:
        real_check = io._check_file_size
        truncated = []

        def check_then_truncate(needed):
            real_check(needed)
            if not truncated:
                os.truncate(region.path, size)
                truncated.append(True)

        io._check_file_size = check_then_truncate
        with pytest.raises(IOSchedulerError, match=message) as info:
            io.gather(np.array(ids))
        assert "rows.bin" in str(info.value) and "truncated" in str(info.value)
        np.testing.assert_array_equal(io.gather(np.array([3, 99])), data[[3, 99]])


def test_truncated_error_names_offset_and_bytes(tmp_path):
    region, _ = make_region(tmp_path, nrows=2000, row_shape=(100,))
    with IOScheduler(region, IOConfig(mode="buffered", max_gap_bytes=0, block_bytes=4096)) as io:
        os.truncate(region.path, 4096 * 10)
        with pytest.raises(IOSchedulerError) as info:
            io.gather(np.array([1500]))  # bytes 600000..600400, block at 598016
    assert "offset 598016" in str(info.value)
    assert "expected at least 2384 bytes" in str(info.value)
    assert "got 0" in str(info.value)


@pytest.mark.parametrize("mode", ["direct-aio", "direct-threads", "buffered"])
def test_truncated_inside_a_read(tmp_path, mode):
    # The file ends in the middle of the block a row needs: the read returns
    # a partial block, which must be reported, not retried at an odd offset.
    region, _ = make_region(tmp_path, nrows=2000, row_shape=(100,))
    with open_scheduler(region, mode, max_gap_bytes=0, block_bytes=4096) as io:
        os.truncate(region.path, 598016 + 1000)
        with pytest.raises(IOSchedulerError, match="got 1000 .end of file."):
            io.gather(np.array([1500]))


@pytest.mark.parametrize("mode", ["direct-aio", "direct-threads", "mmap"])
def test_submit_matches_gather(tmp_path, mode):
    region, data = make_region(tmp_path, row_shape=(50,))
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, region.nrows, int(rng.integers(0, 400))) for _ in range(12)]
    # A bound of about one batch forces submit to wait for earlier batches.
    with open_scheduler(region, mode, prefetch_bytes=400 * 200) as io:
        futures = [io.submit(ids) for ids in batches]
        for ids, fut in zip(batches, futures):
            np.testing.assert_array_equal(fut.result(timeout=30), data[ids])
        assert io.stats()["batches"] == len(batches)
        # The ids were copied at submit: changing them afterwards changes nothing.
        ids = batches[0].copy()
        fut = io.submit(ids)
        ids[:] = 0
        np.testing.assert_array_equal(fut.result(timeout=30), data[batches[0]])


def test_submit_blocks_beyond_prefetch_bytes(tmp_path, monkeypatch):
    region, data = make_region(tmp_path, row_shape=(25,))  # 100 B rows
    with IOScheduler(region, IOConfig(prefetch_bytes=1000)) as io:
        release = threading.Event()
        real_gather = io._gather

        def slow_gather(ids, arr):
            release.wait(10)
            real_gather(ids, arr)

        monkeypatch.setattr(io, "_gather", slow_gather)
        first = io.submit(np.arange(8))  # 800 bytes in flight
        second_done = threading.Event()
        holder = {}

        def submit_second():
            holder["fut"] = io.submit(np.arange(8, 11))  # 300 more: over the bound
            second_done.set()

        t = threading.Thread(target=submit_second)
        t.start()
        time.sleep(0.2)
        assert not second_done.is_set()
        release.set()
        t.join(10)
        assert second_done.is_set()
        np.testing.assert_array_equal(first.result(10), data[:8])
        np.testing.assert_array_equal(holder["fut"].result(10), data[8:11])
        # A single batch above the bound still runs when nothing else is in flight.
        np.testing.assert_array_equal(io.submit(np.arange(20)).result(10), data[:20])


def test_direct_refused_falls_back(tmp_path, monkeypatch):
    region, data = make_region(tmp_path)
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    with IOScheduler(region) as io:
        assert io.mode == "buffered"
        np.testing.assert_array_equal(io.gather(np.array([5, 2])), data[[5, 2]])
    with pytest.raises(IOSchedulerError, match="mode='direct' is not possible.*mode='buffered'"):
        IOScheduler(region, IOConfig(mode="direct"))


def test_engines(tmp_path, monkeypatch):
    region, data = make_region(tmp_path)
    ids = np.random.default_rng(11).integers(0, region.nrows, 500)
    with IOScheduler(region, IOConfig(mode="buffered", queue_depth=2)) as io:
        assert io.engine == "threads"  # AIO blocks on buffered files
    with pytest.raises(IOSchedulerError, match="engine='aio' is not possible.*buffered"):
        IOScheduler(region, IOConfig(mode="buffered", engine="aio"))
    with pytest.raises(ValueError, match=r"IOConfig.engine must be one of .*'aio'"):
        IOConfig(engine="uring")
    io = open_scheduler(region, "direct-aio")
    with io:
        assert io.engine == "aio"

        # With no AIO context to be had at run time the batch goes to the threads.
        def no_context(*args):
            return -2

        monkeypatch.setattr(kernels, "aio_read_scatter", no_context)
        np.testing.assert_array_equal(io.gather(ids), data[ids])


def test_auto_engine_by_depth(tmp_path, monkeypatch):
    """``auto``: AIO at shallow depths in direct mode, threads deeper or where AIO is refused."""
    from refresh_store.io import config as _io_config

    region, data = make_region(tmp_path)
    ids = np.random.default_rng(12).integers(0, region.nrows, 300)
    with open_scheduler(region, "direct", queue_depth=_io_config.AUTO_AIO_MAX_DEPTH + 1) as io:
        assert io.engine == "threads"
    try:
        aio = IOScheduler(region, IOConfig(mode="direct", engine="aio", queue_depth=1))
    except IOSchedulerError as exc:
        pytest.skip(f"direct mode or Linux AIO unavailable here: {exc}")
    aio.close()
    for depth in range(1, _io_config.AUTO_AIO_MAX_DEPTH + 1):
        with IOScheduler(region, IOConfig(mode="direct", queue_depth=depth)) as io:
            assert io.config.engine == "auto" and io.engine == "aio"
            np.testing.assert_array_equal(io.gather(ids), data[ids])
    # A kernel that refuses AIO contexts: auto falls back to the threads, no error.
    monkeypatch.setattr(kernels, "aio_probe", lambda setup, destroy: errno.EAGAIN)
    with IOScheduler(region, IOConfig(mode="direct", queue_depth=1)) as io:
        assert io.engine == "threads"
        np.testing.assert_array_equal(io.gather(ids), data[ids])


def test_direct_alignment_detected(tmp_path, monkeypatch):
    from refresh_store.io import config as _io_config

    # 1536 B rows: at 4 KiB blocks one row in four needs an 8 KiB read.
    region, data = make_region(tmp_path, nrows=2000, row_shape=(768,), dtype=np.float16)
    ids = np.array([0, 2, 5, 1999])  # rows 0-2 lie in one 4 KiB block
    with open_scheduler(region, "direct", max_gap_bytes=0) as io:
        lbs = _io_config._device_logical_block(io._fd)
        # The device's logical block size when it is finer than a page, else a page.
        assert io.block_bytes == (lbs if 512 <= lbs < 4096 else 4096)
        np.testing.assert_array_equal(io.gather(ids), data[ids])
        if io.block_bytes == 512:  # every row is one read of exactly its bytes
            assert io.stats()["bytes_read"] == 3 * 1536 + 1536
    monkeypatch.setattr(_io_config, "_device_logical_block", lambda fd: 512)
    real_preadv = os.preadv

    def refuse_unaligned(fd, buffers, offset):
        if offset % 4096:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", refuse_unaligned)
    # A device that claims 512 B but refuses the probe: a page.
    with open_scheduler(region, "direct") as io:
        assert io.block_bytes == 4096
        np.testing.assert_array_equal(io.gather(ids), data[ids])
    # No block device known (network, overlay): a page.
    monkeypatch.setattr(_io_config, "_device_logical_block", lambda fd: 0)
    monkeypatch.setattr(os, "preadv", real_preadv)
    with open_scheduler(region, "direct") as io:
        assert io.block_bytes == 4096
    # An explicit block size is kept.
    with open_scheduler(region, "direct", block_bytes=8192) as io:
        assert io.block_bytes == 8192
        np.testing.assert_array_equal(io.gather(ids), data[ids])


def test_direct_reads_refused_falls_back(tmp_path, monkeypatch):
    region, _ = make_region(tmp_path)

    def refuse(fd, buffers, offset):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "preadv", refuse)
    with IOScheduler(region) as io:
        assert io.mode == "buffered"


def test_store_written_by_store_writer(tmp_path):
    store_mod = pytest.importorskip("refresh_store.writer")
    rng = np.random.default_rng(8)
    n = 5000
    feats = rng.standard_normal((n, 96)).astype(np.float16)  # 192 B rows
    store = store_mod.write_store(
        tmp_path / "s.refresh",
        features=feats,
        indptr=np.zeros(n + 1, np.int64),
        indices=np.zeros(0, np.int64),
        labels=np.zeros(n, np.int64),
        train_idx=np.arange(10),
        valid_idx=np.arange(10, 20),
        test_idx=np.arange(20, 30),
        chunk_rows=256,
    )
    ids = rng.integers(0, n, 2000)
    with IOScheduler(store.region("features")) as io:
        np.testing.assert_array_equal(io.gather(ids), feats[ids])
    with IOScheduler(store.region("labels"), IOConfig(mode="mmap")) as io:
        np.testing.assert_array_equal(io.gather(ids[:5]), np.zeros(5, np.int64))


def test_dropped_scheduler_releases_its_file(tmp_path):
    region, _ = make_region(tmp_path, nrows=10)
    io = IOScheduler(region)
    io.gather(np.array([1, 2]))
    fd = io._fd
    del io
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_closed_and_config_errors(tmp_path):
    region, _ = make_region(tmp_path, nrows=10)
    io = IOScheduler(region)
    io.close()
    io.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        io.gather(np.array([1]))
    with pytest.raises(ValueError, match=r"IOConfig.mode must be one of .*'ssd'"):
        IOConfig(mode="ssd")
    with pytest.raises(ValueError, match=r"IOConfig.queue_depth must be an integer >= 1, got 0"):
        IOConfig(queue_depth=0)
    with pytest.raises(ValueError, match="power of two"):
        IOConfig(block_bytes=1000)
    with pytest.raises(IOSchedulerError, match="cannot open"):
        IOScheduler(
            RowRegion(
                str(tmp_path / "missing"), 1, (1,), np.dtype(np.float32), 1, np.zeros(1, np.int64)
            )
        )
