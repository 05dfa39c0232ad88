"""refresh_store: everything about data at rest.

The store format, the converter, the synthetic dataset generator, the Numba
I/O scheduler, verification and export back to ``.npy``. Importing it never imports torch.
"""

from __future__ import annotations

from .convert import ConvertOptions, ConvertSummary, convert
from .errors import (
    ConvertError,
    InputDataError,
    InvalidIdsError,
    IOSchedulerError,
    RefreshError,
    SourceFormatError,
    StoreFormatError,
    StoreIncompleteError,
)
from .export import ExportError, ExportSummary, export_store
from .format import FORMAT_VERSION, RowRegion
from .io import IOConfig, IOScheduler
from .store import Store, open_store
from .synthetic import make_dataset
from .verify import VerifyReport, verify_store, verify_store_fast
from .writer import StoreWriter, write_store

__all__ = [
    "FORMAT_VERSION",
    "ConvertError",
    "ConvertOptions",
    "ConvertSummary",
    "ExportError",
    "ExportSummary",
    "IOConfig",
    "IOScheduler",
    "IOSchedulerError",
    "InputDataError",
    "InvalidIdsError",
    "RefreshError",
    "RowRegion",
    "SourceFormatError",
    "Store",
    "StoreFormatError",
    "StoreIncompleteError",
    "StoreWriter",
    "VerifyReport",
    "convert",
    "export_store",
    "make_dataset",
    "open_store",
    "verify_store",
    "verify_store_fast",
    "write_store",
]
