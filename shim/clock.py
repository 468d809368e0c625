"""The real clock and the real randomness, the only place shim reads them. Everything else takes
them as arguments (tests inject fixed clocks and seeded generators)."""

from __future__ import annotations

import base64
import os
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


class RandomBytes:
    """Cryptographic random bytes drawn from the OS in blocks: one ``getrandom`` call serves
    hundreds of ids (a system call per request id and per send key was a measurable part of a
    send where system calls are slow)."""

    def __init__(self, block: int = 4096) -> None:
        self.block = block
        self._buf = b""
        self._at = 0
        # A forked child must not hand out the bytes its parent will (the same ids, send keys).
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self._buf, self._at = b"", 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._buf):
            self._buf, self._at = os.urandom(max(self.block, n)), 0
        out = self._buf[self._at:self._at + n]
        self._at += n
        return out


_RANDOM = RandomBytes()


def random_bytes(n: int) -> bytes:
    """``n`` cryptographic random bytes (from the block)."""
    return _RANDOM.take(n)


def new_request_id() -> str:
    """24 hex characters (96 random bits)."""
    return _RANDOM.take(12).hex()


def new_token(n_bytes: int = 16) -> str:
    """URL-safe base64 of ``n_bytes`` random bytes, without padding."""
    return base64.urlsafe_b64encode(_RANDOM.take(n_bytes)).rstrip(b"=").decode()
