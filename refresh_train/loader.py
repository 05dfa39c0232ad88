"""Pipelined mini-batch loading: sampling and feature fetching run ahead of compute.

:class:`BatchLoader` turns a list of seed batches into ready
:class:`~refresh_train.batch.MiniBatch` objects through two stages:

    sample(seeds, batch_seed) -> MiniBatch      (thread "refresh-sample")
    fetch(batch) -> MiniBatch                   (thread "refresh-fetch")

With a ``stage`` hook a third stage sits between them::

    stage(batches) -> n                         (thread "refresh-stage")

It hands the hook up to ``stage_batches`` sampled batches; the hook prepares
the fetch of the first ``n`` of them together (a lookahead window, e.g. their
disk rows read in one pass) and the rest wait for the next call. At most
two windows are staged and not yet fully fetched, so what windows hold stays
bounded.

Each stage runs in its own background thread and hands its output to the
next through a queue of at most ``prefetch_batches`` batches, so that while
the model computes batch ``i`` the fetch thread reads the features of batch
``i+1`` (its I/O scheduler keeping many reads in flight) and the sample
thread draws batch ``i+2``. Numba kernels and ``pread`` release the GIL, so
the stages overlap for real. The bounded queues cap the memory of batches in
flight. With ``prefetch_batches=0`` both stages run in the caller's thread,
one batch (or, with staging, one window) at a time: the serial path the tests
compare against.

Batches come out in order and are a pure function of their seeds and batch
seeds, so the pipelined and the serial path yield identical batches.

``max_ahead=m`` bounds the run-ahead itself: batch ``i`` is sampled only
once the consumer has finished batch ``i - m`` (asked for the batch after
it). A sampler whose output depends on what training did (the historical
embedding cache prunes with the table the steps so far filled) then sees
the same state at prefetch 0 as at any depth, whatever the threads' timing.
Windows are capped at ``m`` batches so that the bound cannot stall them.

``budget_bytes`` bounds the batches in flight in bytes as well as in count:
a batch counts ``batch_bytes(batch)`` (its features and blocks,
:meth:`~refresh_train.batch.MiniBatch.nbytes`) from the moment the sampling
stage hands it on until the consumer has finished it, and the sampling
stage holds a sampled batch back until it fits beside those in flight (a
batch alone is always let through, however large: waiting would never make
room). Batches larger than the rest do not pile up, and the queues'
memory is known before the first batch. Bytes only delay sampling, never
reorder or change a batch, so the output is identical with any budget; a
lookahead window closes early only when its batches and the next one would
not fit together, which depends on the batches alone, not on timing, so
serial and pipelined windows stay the same too.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .batch import MiniBatch

__all__ = ["BatchLoader", "LoaderTimes", "batches_in_flight"]

SampleFn = Callable[[np.ndarray, int], MiniBatch]
FetchFn = Callable[[MiniBatch], MiniBatch]
StageFn = Callable[[list[MiniBatch]], "int | None"]
SizeFn = Callable[[MiniBatch], int]

# How often a blocked worker checks whether the consumer went away.
_POLL_S = 0.1


@dataclass
class LoaderTimes:
    """Seconds spent per stage over one pass.

    ``sample_s``, ``stage_s`` and ``fetch_s`` are busy times of the stages
    (in background threads they overlap with compute); ``wait_s`` is the
    time the consumer spent blocked waiting for the next ready batch (the
    data stall).
    """

    sample_s: float = 0.0
    stage_s: float = 0.0
    fetch_s: float = 0.0
    wait_s: float = 0.0
    batches: int = 0


def batches_in_flight(
    prefetch_batches: int, stage_batches: int = 0, max_ahead: int | None = None
) -> tuple[int, int]:
    """``(admitted, fetched)``: most batches a :class:`BatchLoader` holds at once.

    ``admitted`` counts batches the sampling stage has handed on and the
    consumer has not finished (the batches :attr:`BatchLoader.budget_bytes`
    bounds); ``fetched`` those of them whose features exist, plus the one the
    consumer still refers to while it waits for the next (a ``for`` loop's
    variable), which is what their buffers take in memory. ``stage_batches``
    is the loader's effective window size (0 without staging).

    The serial path (``prefetch_batches == 0``) keeps no reference to a batch
    it has yielded, so for a consumer that drops its batch before asking for
    the next (the trainer does) one batch's features exist at a time.
    """
    p = int(prefetch_batches)
    s = int(stage_batches) if stage_batches > 1 else 0
    if max_ahead is not None:
        s = min(s, max_ahead)
    if p == 0:
        admitted = max(1, s)
        # One batch at a time, fetched after the consumer dropped the last one.
        return admitted, 1
    # sampler's hand, sampled queue, (stager's pending and staged queue,)
    # fetcher's hand, ready queue, the consumer's batch
    admitted = 1 + p + (s + max(p, s) if s else 0) + 1 + p + 1
    if max_ahead is not None:
        admitted = min(admitted, max_ahead)
    fetched = min(admitted, p + 2) + 1
    return admitted, fetched


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Blocked:
    """Sampling stage -> stager: the next batch (``nbytes``) waits for room."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


_DONE = object()
# Key of ``MiniBatch.extra`` marking the last batch of a staged window.
_WINDOW_END = "loader_window_end"


class BatchLoader:
    """One pass over a list of seed batches, sampled and fetched ahead of use.

    Parameters
    ----------
    seed_batches
        Seeds of each batch, in order.
    batch_seeds
        The sampler's ``batch_seed`` of each batch (same length).
    sample
        ``sample(seeds, batch_seed) -> MiniBatch``; must be thread-safe
        (:class:`~refresh_train.sampler.NeighborSampler` is).
    fetch
        ``fetch(batch) -> MiniBatch`` fills features (and whatever else the
        consumer needs) and may move the batch to the device.
    prefetch_batches
        Bound of each inter-stage queue; 0 runs serially in the caller.
    stage
        Optional ``stage(batches) -> n``: given the next ``stage_batches``
        sampled batches (fewer at the end), prepares the first ``n >= 1`` of
        them as one window before any of them is fetched (``None`` = all).
    stage_batches
        Most batches per window; with 0 or 1, or no ``stage``, there is no
        staging stage.
    max_ahead
        Sample batch ``i`` only after the consumer has finished batch
        ``i - max_ahead`` (``None`` = no bound beyond the queues).
    budget_bytes
        Most bytes of batches in flight, by ``batch_bytes`` (``None`` = no
        bound beyond the queues' counts); see the module docstring.
    batch_bytes
        ``batch_bytes(batch) -> int`` for a sampled batch: its bytes once
        fetched. Required with ``budget_bytes``.

    Notes
    -----
    Iterate once. Each yielded batch carries ``extra["sample_s"]``,
    ``extra["fetch_s"]`` and ``extra["index"]``; :attr:`times` sums them.
    Leaving the loop early (``break``, an exception) stops the threads; an
    exception raised in a stage is re-raised by the iterator.
    :attr:`peak_bytes_in_flight` is the most bytes in flight seen (counted
    whenever ``batch_bytes`` is given).
    """

    def __init__(
        self,
        seed_batches: Sequence[np.ndarray],
        batch_seeds: Sequence[int],
        sample: SampleFn,
        fetch: FetchFn,
        prefetch_batches: int = 4,
        stage: StageFn | None = None,
        stage_batches: int = 0,
        max_ahead: int | None = None,
        budget_bytes: int | None = None,
        batch_bytes: SizeFn | None = None,
    ) -> None:
        if len(seed_batches) != len(batch_seeds):
            raise ValueError(
                f"seed_batches has {len(seed_batches)} batches but batch_seeds has "
                f"{len(batch_seeds)}; give one batch seed per batch"
            )
        if prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {prefetch_batches!r}")
        if max_ahead is not None and max_ahead < 1:
            raise ValueError(f"max_ahead must be >= 1 or None, got {max_ahead!r}")
        if budget_bytes is not None:
            if budget_bytes < 1:
                raise ValueError(f"budget_bytes must be >= 1 or None, got {budget_bytes!r}")
            if batch_bytes is None:
                raise ValueError("budget_bytes needs batch_bytes: say how many bytes a batch holds")
        self.seed_batches = list(seed_batches)
        self.batch_seeds = [int(s) for s in batch_seeds]
        self._sample = sample
        self._fetch = fetch
        self.prefetch_batches = int(prefetch_batches)
        self.max_ahead = max_ahead
        if max_ahead is not None:
            stage_batches = min(stage_batches, max_ahead)
        self._stage = stage if stage is not None and stage_batches > 1 else None
        self.stage_batches = int(stage_batches) if self._stage is not None else 0
        self.budget_bytes = budget_bytes
        self._batch_bytes = batch_bytes
        self.times = LoaderTimes()
        self._started = False
        # Batches the consumer has finished (it asked for the one after them).
        self._finished = 0
        self._progress = threading.Condition()
        # Bytes of the batches handed on and not finished, by batch index
        # (guarded by _progress, like _finished).
        self._sizes: dict[int, int] = {}
        self._in_flight = 0
        self.peak_bytes_in_flight = 0

    def __len__(self) -> int:
        return len(self.seed_batches)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of the batches handed on by the sampling stage and not yet finished."""
        with self._progress:
            return self._in_flight

    def __iter__(self) -> Iterator[MiniBatch]:
        if self._started:
            raise RuntimeError("a BatchLoader is iterated once; make a new one per epoch")
        self._started = True
        if self.prefetch_batches == 0:
            return self._serial()
        return self._pipelined()

    # ------------------------------------------------------------------ serial
    def _sample_one(self, i: int) -> MiniBatch:
        t0 = time.perf_counter()
        batch = self._sample(self.seed_batches[i], self.batch_seeds[i])
        dt = time.perf_counter() - t0
        batch.extra["index"] = i
        batch.extra["sample_s"] = dt
        self.times.sample_s += dt
        return batch

    def _fetch_one(self, batch: MiniBatch) -> MiniBatch:
        t0 = time.perf_counter()
        batch = self._fetch(batch)
        dt = time.perf_counter() - t0
        batch.extra["fetch_s"] = dt
        self.times.fetch_s += dt
        return batch

    def _stage_window(self, pending: list[MiniBatch]) -> int:
        """Stage the leading batches of ``pending``; how many (marks the last one)."""
        t0 = time.perf_counter()
        n = self._stage(pending)  # type: ignore[misc]  # only called with a stage hook
        self.times.stage_s += time.perf_counter() - t0
        n = len(pending) if n is None else int(n)
        if not 1 <= n <= len(pending):
            raise ValueError(f"stage() must take 1..{len(pending)} batches, it returned {n!r}")
        pending[n - 1].extra[_WINDOW_END] = True
        return n

    def _may_sample(self, i: int) -> bool:
        return self.max_ahead is None or self._finished >= i - self.max_ahead + 1

    def _finish_one(self) -> None:
        with self._progress:
            self._in_flight -= self._sizes.pop(self._finished, 0)
            self._finished += 1
            self._progress.notify_all()

    def _nbytes(self, batch: MiniBatch) -> int:
        return 0 if self._batch_bytes is None else int(self._batch_bytes(batch))

    def _fits(self, nbytes: int) -> bool:
        # A batch alone always fits: holding it back would never make room.
        return (
            self.budget_bytes is None
            or self._in_flight == 0
            or self._in_flight + nbytes <= self.budget_bytes
        )

    def _reserve(self, i: int, nbytes: int) -> None:
        """Count batch ``i`` in flight (the caller holds ``_progress`` and checked :meth:`_fits`)."""
        self._sizes[i] = nbytes
        self._in_flight += nbytes
        self.peak_bytes_in_flight = max(self.peak_bytes_in_flight, self._in_flight)

    def _closes_window(self, pending: list[MiniBatch], nbytes: int) -> bool:
        """Whether the window of ``pending`` must be staged before a batch of ``nbytes``.

        True when they would not fit the budget together: the sampling
        stage could not hand that batch on before these are consumed.
        """
        if self.budget_bytes is None or not pending:
            return False
        with self._progress:
            held = sum(self._sizes.get(b.extra["index"], 0) for b in pending)
        return held + nbytes > self.budget_bytes

    def _serial_fetched(self, batch: MiniBatch) -> MiniBatch:
        batch = self._fetch_one(batch)
        self.times.batches += 1
        return batch

    def _serial_reserved(self, i: int) -> MiniBatch:
        batch = self._sample_one(i)
        with self._progress:
            self._reserve(i, self._nbytes(batch))
        return batch

    def _serial(self) -> Iterator[MiniBatch]:
        # Yielded batches are never bound to a name here: while the next one is
        # fetched, this frame holds no reference to the last one, so a consumer
        # that drops its own holds one batch's features, not two.
        if self._stage is None:
            for i in range(len(self)):
                yield self._serial_fetched(self._serial_reserved(i))
                self._finish_one()
            return
        pending: list[MiniBatch] = []
        held: MiniBatch | None = None  # sampled, waiting for the window before it
        flush = False
        i = 0
        while i < len(self) or pending or held is not None:
            if held is not None and not pending:
                with self._progress:
                    self._reserve(held.extra["index"], self._nbytes(held))
                pending.append(held)
                held = None
            # Never empty: with nothing pending, i == finished, which may be sampled.
            while (
                held is None
                and i < len(self)
                and len(pending) < self.stage_batches
                and self._may_sample(i)
            ):
                batch = self._sample_one(i)
                i += 1
                nbytes = self._nbytes(batch)
                if self._closes_window(pending, nbytes):
                    held, flush = batch, True
                    break
                with self._progress:
                    self._reserve(batch.extra["index"], nbytes)
                pending.append(batch)
            batch = None  # fetched in place later: no name here may outlive its yield
            while pending:
                n = self._stage_window(pending)
                window, pending = pending[:n], pending[n:]
                for j in range(n):
                    window[j].extra.pop(_WINDOW_END, None)
                window.reverse()
                while window:
                    # Popped, not iterated: a fetched batch is in no list once yielded.
                    yield self._serial_fetched(window.pop())
                    self._finish_one()
                if not flush:
                    break
            flush = False

    # --------------------------------------------------------------- pipelined
    def _pipelined(self) -> Iterator[MiniBatch]:
        stop = threading.Event()
        sampled: queue.Queue = queue.Queue(self.prefetch_batches)
        # A whole window fits behind the stager, so it reads the next window
        # while the fetcher works through this one (sampled batches are small;
        # their features are not fetched yet). At most two windows are staged
        # and not yet fetched: what a window holds (its rows) stays bounded.
        staged: queue.Queue = (
            queue.Queue(max(self.prefetch_batches, self.stage_batches)) if self._stage else sampled
        )
        windows_open = threading.Semaphore(2)
        ready: queue.Queue = queue.Queue(self.prefetch_batches)

        def put(q: queue.Queue, item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue) -> object:
            while not stop.is_set():
                try:
                    return q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
            return _DONE

        def wait_turn(i: int) -> bool:
            with self._progress:
                while not self._may_sample(i):
                    if stop.is_set():
                        return False
                    self._progress.wait(_POLL_S)
            return not stop.is_set()

        def admit(i: int, batch: MiniBatch) -> bool:
            # Hold the batch until it fits beside those in flight; tell the
            # stager once, so that it can close a window this batch cannot join.
            nbytes = self._nbytes(batch)
            told = self._stage is None
            while True:
                with self._progress:
                    if self._fits(nbytes):
                        self._reserve(i, nbytes)
                        return True
                    if stop.is_set():
                        return False
                    if told:
                        self._progress.wait(_POLL_S)
                        continue
                if not put(sampled, _Blocked(nbytes)):
                    return False
                told = True

        def sampler() -> None:
            try:
                for i in range(len(self.seed_batches)):
                    if not wait_turn(i):
                        return
                    batch = self._sample_one(i)
                    if not admit(i, batch) or not put(sampled, batch):
                        return
                put(sampled, _DONE)
            except BaseException as exc:  # handed to the consumer, which re-raises
                put(sampled, _Failure(exc))

        def stager() -> None:
            pending: list[MiniBatch] = []
            while True:
                item = get(sampled)
                last = item is _DONE or isinstance(item, _Failure)
                flush = False
                if isinstance(item, _Blocked):
                    flush = self._closes_window(pending, item.nbytes)
                elif not last:
                    pending.append(item)  # type: ignore[arg-type]
                while pending and (last or flush or len(pending) == self.stage_batches):
                    while not windows_open.acquire(timeout=_POLL_S):
                        if stop.is_set():
                            return
                    try:
                        n = self._stage_window(pending)
                    except BaseException as exc:
                        put(staged, _Failure(exc))
                        return
                    for batch in pending[:n]:
                        if not put(staged, batch):
                            return
                    pending = pending[n:]
                if last:
                    put(staged, item)
                    return

        def fetcher() -> None:
            while True:
                item = get(staged)
                if item is _DONE or isinstance(item, _Failure):
                    put(ready, item)
                    return
                window_end = item.extra.pop(_WINDOW_END, False)  # type: ignore[union-attr]
                try:
                    out = self._fetch_one(item)  # type: ignore[arg-type]
                except BaseException as exc:
                    put(ready, _Failure(exc))
                    return
                if window_end:
                    windows_open.release()
                if not put(ready, out):
                    return

        threads = [
            threading.Thread(target=sampler, name="refresh-sample", daemon=True),
            threading.Thread(target=fetcher, name="refresh-fetch", daemon=True),
        ]
        if self._stage is not None:
            threads.append(threading.Thread(target=stager, name="refresh-stage", daemon=True))
        for t in threads:
            t.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = ready.get()
                self.times.wait_s += time.perf_counter() - t0
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                self.times.batches += 1
                yield item  # type: ignore[misc]
                self._finish_one()
        finally:
            stop.set()
            for t in threads:
                t.join()
