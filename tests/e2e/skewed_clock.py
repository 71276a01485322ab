"""Run the loom CLI with this process's wall clock shifted by LOOM_TEST_CLOCK_SKEW seconds.

An injected clock for the clock-skew tests: `time.time` and `time.time_ns` are what a skewed
host's wall clock looks like to Python; the kernel's monotonic clocks stay shared, as they are
on a real host.
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ["LOOM_TEST_CLOCK_SKEW"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _SKEW
time.time_ns = lambda: _time_ns() + int(_SKEW * 1e9)

if __name__ == "__main__":
    from loom.cli import main

    main()
