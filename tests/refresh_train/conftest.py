"""Set-up shared by the tests of refresh_train and of its subpackages.

``_planted.py`` (planted stores) lives in this folder and the tests in the
subfolders (``tiers/``, ``models/``, ``modes/``, ``history/``) import it by
name, so this folder goes on ``sys.path``: pytest's default ``prepend``
import mode puts there only each test file's own folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
