"""The I/O stage: gathering random feature rows from a store's files.

:mod:`~refresh_store.io.scheduler` plans a batch's reads (sort, dedupe, align,
coalesce) and issues them from nogil threads or Linux AIO;
:mod:`~refresh_store.io.config` holds what a user sets (:class:`IOConfig`) and
the probes that turn it into an open file, an alignment and an engine; the
Numba kernels are in ``_kernels.py``.
"""

from __future__ import annotations

from .config import AUTO_AIO_MAX_DEPTH, ENGINES, MODES, IOConfig, aligned_empty
from .scheduler import IOScheduler

__all__ = ["AUTO_AIO_MAX_DEPTH", "ENGINES", "MODES", "IOConfig", "IOScheduler", "aligned_empty"]
