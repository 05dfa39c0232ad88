"""``python -m refresh_train``: the trainer's command line (see :mod:`refresh_train.cli`)."""

from __future__ import annotations

import sys

from refresh_train.cli import main

if __name__ == "__main__":
    sys.exit(main())
