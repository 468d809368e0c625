"""The real clock and the real randomness, the only place shim reads them. Everything else takes
them as arguments (tests inject fixed clocks and seeded generators)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

# Epoch microseconds: what the store sorts and schedules by.
Clock = Callable[[], int]
# A uniform draw in [0, 1): the jitter of retry delays.
Rng = Callable[[], float]


def now_us() -> int:
    return time.time_ns() // 1000


def system_rng() -> Rng:
    return random.SystemRandom().random
