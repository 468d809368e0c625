"""What every group of store transactions builds on: the injected event rules and clock, the
backend's two ways to run a transaction (``_write``/``_read``), timing, and backend hooks."""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ParamSpec, TypeVar

from shim.clock import Clock, now_us

from ._ops import Lock, Op, Tx, TxFn
from ._types import EventRules

T = TypeVar("T")
P = ParamSpec("P")
# A hot path's transaction touching at most about this many rows is short (``_write``): a few ms
# of the loop at most. Bigger ones (a callback array of hundreds of events) are not.
SHORT_ROWS = 200


class StoreCore(abc.ABC):
    # Appended to row-locking selects where the backend supports it.
    skip_locked = ""
    # Statements returning the row they change run as two (``_ops.returning``) where that is cheaper.
    split_returning = False

    def __init__(self, rules: EventRules, clock: Clock = now_us) -> None:
        self.rules = rules
        self.clock = clock
        # Called with ("write"|"read", seconds) after each transaction (metrics).
        self.observer: Callable[[str, float], None] | None = None

    @abc.abstractmethod
    async def _write(self, make: TxFn[T], short: bool = False) -> T:
        """Run a transaction that writes (``make()`` makes it, maybe more than once: see
        ``_ops``); committed before this returns. ``short``: a hot path's transaction whose work
        its caller bounds (a few rows), which a backend may run on the event loop's thread."""

    @abc.abstractmethod
    async def _read(self, make: TxFn[T]) -> T:
        """Run a read-only transaction (made by ``make()``, like a write's)."""

    def _observe(self, op: str, started: float) -> None:
        if self.observer is not None:
            self.observer(op, time.perf_counter() - started)

    async def _timed_write(self, make: Callable[P, Tx[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``make(*args, **kwargs)``: the transaction, run as a write."""
        started = time.perf_counter()
        try:
            return await self._write(functools.partial(make, *args, **kwargs))
        finally:
            self._observe("write", started)

    async def _timed_short_write(self, make: Callable[P, Tx[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``_timed_write`` of a short transaction (see ``_write``)."""
        started = time.perf_counter()
        try:
            return await self._write(functools.partial(make, *args, **kwargs), short=True)
        finally:
            self._observe("write", started)

    async def _timed_read(self, make: Callable[P, Tx[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await self._read(functools.partial(make, *args, **kwargs))
        finally:
            self._observe("read", started)

    def _lock_message(self, message_id: str) -> Iterable[Op]:
        """Serialize work on one message id (nothing to do where the backend has one writer)."""
        yield Lock(message_id)

    def _lock_messages(self, message_ids: Sequence[str]) -> Iterable[Op]:
        """``_lock_message`` on each id, all at once (in one order: no deadlock between two)."""
        if message_ids:
            yield Lock(*message_ids)

    def _try_lock_messages(self, message_ids: Sequence[str]) -> Tx[set[str]]:
        """Take ``_lock_message``'s lock on each id that nobody else holds, without waiting:
        the ids taken (background work skips the others, so it never waits on a request)."""
        return set(message_ids)
        yield  # pragma: no cover - makes this a generator
