"""What every group of store transactions builds on: the injected event rules and clock, the
backend's two ways to run a transaction (``_write``/``_read``), timing, and backend hooks."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from shim.clock import Clock, now_us

from ._ops import Tx
from ._types import EventRules

T = TypeVar("T")


class StoreCore(abc.ABC):
    # Appended to row-locking selects where the backend supports it.
    skip_locked = ""

    def __init__(self, rules: EventRules, clock: Clock = now_us) -> None:
        self.rules = rules
        self.clock = clock
        # Called with ("write"|"read", seconds) after each transaction (metrics).
        self.observer: Callable[[str, float], None] | None = None

    @abc.abstractmethod
    async def _write(self, tx: Tx[T]) -> T:
        """Run a transaction that writes; committed before this returns."""

    @abc.abstractmethod
    async def _read(self, tx: Tx[T]) -> T:
        """Run a read-only transaction."""

    async def _timed(self, op: Literal["write", "read"], tx: Tx[T]) -> T:
        started = time.perf_counter()
        try:
            return await (self._write(tx) if op == "write" else self._read(tx))
        finally:
            if self.observer is not None:
                self.observer(op, time.perf_counter() - started)

    async def _timed_write(self, tx: Tx[T]) -> T:
        return await self._timed("write", tx)

    async def _timed_read(self, tx: Tx[T]) -> T:
        return await self._timed("read", tx)

    def _lock_message(self, message_id: str) -> Tx[None]:
        """Serialize work on one message id (nothing to do where the backend has one writer)."""
        return
        yield  # pragma: no cover - makes this a generator

    def _try_lock_messages(self, message_ids: Sequence[str]) -> Tx[set[str]]:
        """Take ``_lock_message``'s lock on each id that nobody else holds, without waiting:
        the ids taken (background work skips the others, so it never waits on a request)."""
        return set(message_ids)
        yield  # pragma: no cover - makes this a generator
