"""Parameter lists shared by the trainer's tests."""

from __future__ import annotations

import pytest
import torch

#: Every test that runs on a device runs on the CPU, and on CUDA where there is one.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]
