"""The migration report's counters (SPEC §8): per user, which v1 features the app still uses.

Counting is a dict update on the request path (no store round trip): each replica keeps the
counts since its last flush and writes them to the store in one transaction every
``FLUSH_S`` seconds (and at shutdown, and before a report), adding to what every replica wrote:
to each feature's total and last-seen time, and to its count for the UTC day of that last-seen
time (the store's ``usage_daily``; retention purges the days past ``retention.purge_days``).
The report is the store's totals plus what this replica has not flushed yet. ``/metrics`` shows
this process's counts since start (``shim_migration_usage_total{user,feature}``), read at scrape
time.

Features are named ``kind:detail``:

- ``endpoint:<METHOD> <route>``: every authenticated v1 request; ``native:<METHOD> <route>``: every
  ``/api/v2`` passthrough request;
- ``v1:message``: each message sent through v1 (a single send or a batch item);
  ``native:message``: each send accepted through the v2 passthrough;
- ``list:filter:<name>``, ``list:page`` (legacy page numbers);
- ``field:<name>[=<value>]``: v1 fields with no v2 twin (``receiptRequested`` values,
  ``callbackHttpMethod=GET``, ``callbackTimeout``, ``fallbackUrl``, ``media=v1-url``);
- ``unsupported:<METHOD> <path shape>``: v1 endpoints shim does not serve (e.g.
  ``GET /v1/users/{userId}/calls/{id}``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shim.clock import Clock, now_us
from shim.core import iso_from_us

log = logging.getLogger("shim.usage")
FLUSH_S = 30.0
# Distinct unsupported path shapes counted per user (any more are counted as one "other" shape):
# they come from the caller's paths, so they must not grow without bound.
MAX_SHAPES = 50
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def path_shape(method: str, path: str) -> str:
    """``/v1/users/u-1/calls/c-9/events`` → ``/v1/users/{userId}/calls/{id}/events``: resource names
    kept (when they look like names), ids masked, at most 8 segments."""
    parts = path.strip("/").split("/")[:8]
    out = []
    for i, part in enumerate(parts):
        if i == 2 and parts[:2] == ["v1", "users"]:
            out.append("{userId}")
        elif i >= 4 and i % 2 == 0:
            out.append("{id}")
        else:
            out.append(part if _NAME.match(part) else "{other}")
    return f"{method} /" + "/".join(out)


@dataclass
class Count:
    count: int = 0
    last_us: int = 0


class UsageTracker:
    def __init__(self, clock: Clock = now_us) -> None:
        self.clock = clock
        # Since the last flush (what the store has not got yet), and since start (metrics).
        self._delta: dict[tuple[str, str], Count] = {}
        self._total: dict[tuple[str, str], int] = {}
        self._shapes: dict[str, set[str]] = {}
        self._names: dict[tuple[str, str], str] = {}
        self._task: asyncio.Task[None] | None = None
        self._store: Any = None
        self._lock = asyncio.Lock()

    # -- counting (the request path) --------------------------------------------------------
    def hit(self, user_id: str, feature: str, n: int = 1) -> None:
        key = (user_id, feature)
        c = self._delta.get(key)
        if c is None:
            c = self._delta[key] = Count()
        c.count += n
        c.last_us = self.clock()
        self._total[key] = self._total.get(key, 0) + n

    def endpoint(self, user_id: str, method: str, route: str) -> None:
        """An authenticated request: ``endpoint:`` for v1 routes, ``native:`` for the v2 passthrough."""
        name = self._names.get((method, route))
        if name is None:
            kind = "endpoint" if route.startswith("/v1/") else "native" if route.startswith("/api/v2/") else ""
            name = self._names[(method, route)] = f"{kind}:{method} {route}" if kind else ""
        if name:
            self.hit(user_id, name)

    def unsupported(self, user_id: str, method: str, path: str) -> str:
        shape = path_shape(method, path)
        seen = self._shapes.setdefault(user_id, set())
        if shape not in seen:
            if len(seen) >= MAX_SHAPES:
                shape = f"{method} {{other}}"
            seen.add(shape)
        self.hit(user_id, f"unsupported:{shape}")
        return shape

    def send_fields(self, user_id: str, receipt: str | None, method: str, timeout: int | None, fallback: str | None,
                    v1_media: bool) -> None:
        """The fields of one v1 message with no v2 twin."""
        self.hit(user_id, "v1:message")
        if receipt is not None:
            self.hit(user_id, f"field:receiptRequested={receipt}")
        if method == "GET":
            self.hit(user_id, "field:callbackHttpMethod=GET")
        if timeout is not None:
            self.hit(user_id, "field:callbackTimeout")
        if fallback is not None:
            self.hit(user_id, "field:fallbackUrl")
        if v1_media:
            self.hit(user_id, "field:media=v1-url")

    # -- flushing ---------------------------------------------------------------------------
    async def start(self, store: Any, interval_s: float = FLUSH_S) -> None:
        self._store = store

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()

        self._task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Hand the counts since the last flush to the store, in one write; kept for the next
        flush if the store fails."""
        if self._store is None:
            return
        async with self._lock:
            delta, self._delta = self._delta, {}
            if not delta:
                return
            rows = sorted((u, f, c.count, c.last_us) for (u, f), c in delta.items())
            try:
                await self._store.add_usage(rows)
            except Exception:
                log.exception("could not store the migration counters (kept for the next flush)")
                for (u, f), c in delta.items():
                    mine = self._delta.setdefault((u, f), Count())
                    mine.count += c.count
                    mine.last_us = max(mine.last_us, c.last_us)

    def unflushed(self) -> dict[tuple[str, str], Count]:
        return dict(self._delta)

    # -- metrics ----------------------------------------------------------------------------
    def collector(self) -> Collector:
        tracker = self

        class _Collector(Collector):
            def collect(self) -> Iterator[CounterMetricFamily]:
                family = CounterMetricFamily(
                    "shim_migration_usage", "v1 features (and v2 passthrough calls) used, per user, since start",
                    labels=["user", "feature"])
                for (user, feature), n in sorted(tracker._total.items()):
                    family.add_metric([user, feature], n)
                yield family

        return _Collector()


def report(rows: list[tuple[str, str, int, int]], unflushed: dict[tuple[str, str], Count],
           user_ids: list[str]) -> dict[str, Any]:
    """The migration report: per user, each feature's count and last-seen time, and the share of
    messages sent natively on v2. An app is ready to leave shim when its ``v1Calls`` read zero."""
    merged: dict[tuple[str, str], Count] = {}
    for user, feature, count, last_us in rows:
        merged[(user, feature)] = Count(int(count), int(last_us))
    for key, c in unflushed.items():
        m = merged.setdefault(key, Count())
        m.count += c.count
        m.last_us = max(m.last_us, c.last_us)
    users = []
    for user_id in sorted(set(user_ids) | {u for u, _ in merged}):
        features = sorted((f, c) for (u, f), c in merged.items() if u == user_id)
        v1_messages = next((c.count for f, c in features if f == "v1:message"), 0)
        native_messages = next((c.count for f, c in features if f == "native:message"), 0)
        sends = v1_messages + native_messages
        v1_calls = sum(c.count for f, c in features if f.startswith(("endpoint:", "unsupported:")))
        users.append({
            "userId": user_id,
            "v1Calls": v1_calls,
            "v1Messages": v1_messages,
            "nativeMessages": native_messages,
            "nativeShare": round(native_messages / sends, 4) if sends else None,
            "features": [{"feature": f, "count": c.count, "lastSeen": iso_from_us(c.last_us) if c.last_us else None}
                         for f, c in features],
        })
    return {"users": users}
