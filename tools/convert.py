#!/usr/bin/env python
"""Convert a dataset into a ReFresh store, or verify a store.

    python tools/convert.py SRC DST [--format ...] [--memory-budget 2GiB] ...
    python tools/convert.py verify DST

See ``python tools/convert.py --help``; the code is in :mod:`refresh_store.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from refresh_store.cli import main
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from refresh_store.cli import main

if __name__ == "__main__":
    sys.exit(main())
