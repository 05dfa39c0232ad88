"""Peak RSS per epoch (``refresh_train.metrics.RssMonitor``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from refresh_train.metrics import RssMonitor


@pytest.mark.parametrize("exact", [True, False], ids=["kernel-peak", "sampled"])
def test_peak_counts_an_allocation_and_reset_forgets_it(exact, monkeypatch):
    if not exact:
        # Without /proc/self/clear_refs the monitor falls back to sampling.
        monkeypatch.setattr(RssMonitor, "_CLEAR", "/nonexistent/clear_refs")
    mon = RssMonitor(interval_s=0.01)
    try:
        if exact and not mon.exact:
            pytest.skip("this kernel does not reset VmHWM through /proc/self/clear_refs")
        assert mon.exact == exact
        base = mon.peak()
        size = 256 << 20  # 256 MiB
        a = np.ones(size // 8)  # written: every page resident
        # The kernel's peak sees even an allocation freed at once; sampling needs time.
        time.sleep(0 if exact else 0.2)
        del a
        assert mon.peak() >= base + size * 0.9
        mon.reset()
        # After the reset the freed block is no longer part of the peak.
        assert mon.peak() < base + size * 0.5
    finally:
        mon.close()
