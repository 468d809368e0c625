"""The reconcile run: lease, batches of messages not final, one paged search per account and
batch, repairs through the store, unresolvable marks; and the periodic loop of ``serve``.

One replica at a time (the store's lease row, renewed after every batch and before every wait);
a run records its cursor after each batch, so a run that crashed or stopped on an error resumes
where it was (filtered runs, ``--user``/``--since``, neither read nor move it). A 429 from the
search is waited out (``Retry-After``, the pure retry policy); when the waits run out the run
stops and the next one resumes. Every repair is idempotent (a final message is skipped, callback
ids are those of the real events), so a redone batch duplicates nothing: at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from shim.clock import Clock, now_us
from shim.config import Config, UserConfig
from shim.core import (
    MessageRecord,
    Repair,
    SearchItem,
    beyond_window,
    match_items,
    next_delay,
    parse_retry_after,
    reconcile_message,
    search_item,
    search_params,
)
from shim.ops import Metrics
from shim.store import Store
from shim.upstream import SearchFailed, SearchRateLimited, UpstreamClient

log = logging.getLogger("shim.reconcile")

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class RunReport:
    looked_up: int = 0
    final: int = 0  # repaired to a final state
    progress: int = 0  # repaired, not final yet (v2 says sending/sent)
    not_found: int = 0  # not in the search (yet): looked up again next run
    unresolvable: int = 0
    rate_limited: int = 0
    errors: int = 0
    batches: int = 0
    skipped: bool = False  # another replica holds the lease
    completed: bool = False
    dry_run: bool = False

    @property
    def repaired(self) -> int:
        return self.final + self.progress

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"repaired": self.repaired}


class LeaseLost(Exception):
    """Another replica took the reconcile lease (ours expired): stop at once."""


class Reconciler:
    def __init__(
        self, cfg: Config, store: Store, upstream: UpstreamClient, metrics: Metrics | None = None, *,
        clock: Clock = now_us, sleep: Sleep = asyncio.sleep, rng: Callable[[], float] = random.random,
        owner: str | None = None, on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.rc = cfg.reconcile
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self.on_enqueued = on_enqueued
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def lease_us(self) -> int:
        return int(self.rc.lease_s * 1_000_000)

    # -- one run ---------------------------------------------------------------------------------
    async def run(self, *, user_id: str | None = None, since_us: int | None = None, dry_run: bool = False) -> RunReport:
        """One pass over every message not final after ``reconcile.after_s`` (of ``user_id``,
        sent since ``since_us`` when given). ``dry_run`` reads and searches but writes nothing."""
        report = RunReport(dry_run=dry_run)
        resumable = user_id is None and since_us is None and not dry_run
        cursor = 0
        if not dry_run:
            got = await self.store.reconcile_acquire(self.owner, self.lease_us)
            if got is None:
                report.skipped = True
                return report
            cursor = got if resumable else 0
        try:
            while True:
                now = self.clock()
                batch = await self.store.reconcile_candidates(
                    cursor, now - int(self.rc.after_s * 1_000_000), self.rc.batch_size,
                    user_id=user_id, since_us=since_us)
                if not batch:
                    report.completed = True
                    break
                await self._batch(batch, now, report, dry_run)
                report.batches += 1
                cursor = max(rec.seq or 0 for rec, _ in batch)
                if not dry_run and not await self.store.reconcile_renew(
                        self.owner, self.lease_us, cursor if resumable else None):
                    raise LeaseLost()
        except (SearchFailed, LeaseLost) as e:
            report.errors += 1
            if self.metrics:
                self.metrics.reconcile_errors.inc()
            log.warning("reconcile run stopped (resumes at the next run)",
                        extra={"error": str(e) or type(e).__name__, "cursor": cursor})
        finally:
            if not dry_run:
                try:
                    await self.store.reconcile_release(self.owner, 0 if report.completed and resumable else None)
                except Exception:  # the lease expires anyway
                    log.exception("reconcile lease release failed")
        log.info("reconcile run", extra=report.as_dict())
        return report

    async def _batch(self, batch: list[tuple[MessageRecord, bool]], now: int, report: RunReport, dry_run: bool) -> None:
        too_old = [rec.seq or 0 for rec, _ in batch if beyond_window(rec, now)]
        if too_old:
            n = len(too_old) if dry_run else await self.store.mark_unresolvable(too_old)
            report.unresolvable += n
            if self.metrics:
                self.metrics.reconcile_unresolvable.inc(n)
        by_user: dict[str, list[tuple[MessageRecord, bool]]] = {}
        for rec, bound in batch:
            if not beyond_window(rec, now):
                by_user.setdefault(rec.user_id, []).append((rec, bound))
        enqueued = False
        for uid, group in by_user.items():
            user = self.cfg.user(uid)
            if user is None:
                log.warning("reconcile: messages of a user no longer configured", extra={"user_id": uid})
                continue
            recs = [r for r, _ in group]
            bounds = [b for _, b in group]
            matched = await self._search(user, recs, bounds, report)
            for i, rec in enumerate(recs):
                report.looked_up += 1
                if self.metrics:
                    self.metrics.reconcile_looked_up.inc()
                items = matched.get(i)
                if not items:
                    report.not_found += 1
                    continue
                outcome = await self._repair(rec, items, user, dry_run)
                if outcome in ("final", "progress"):
                    enqueued = True
                    if outcome == "final":
                        report.final += 1
                    else:
                        report.progress += 1
                    if self.metrics:
                        self.metrics.reconcile_repaired.labels(outcome).inc()
        if enqueued and not dry_run and self.on_enqueued is not None:
            self.on_enqueued()

    async def _repair(self, rec: MessageRecord, items: list[SearchItem], user: UserConfig, dry_run: bool) -> str:
        public_url = self.cfg.server.public_url

        def fix(current: MessageRecord) -> Repair:
            return reconcile_message(current, items, public_url, user.application_id)

        if dry_run:
            return fix(rec).outcome
        return await self.store.reconcile_apply(rec.seq or 0, items[0].message_id, fix)

    async def _search(self, user: UserConfig, recs: list[MessageRecord], bounds: list[bool],
                      report: RunReport) -> dict[int, list[SearchItem]]:
        params = search_params(recs, self.rc.page_size)
        items: list[SearchItem] = []
        token: str | None = None
        for _ in range(self.rc.max_pages):
            data = await self._page(user, params | ({"pageToken": token} if token else {}), report)
            items.extend(i for i in (search_item(raw) for raw in data.get("messages") or []) if i is not None)
            info = data.get("pageInfo")
            token = info.get("nextPageToken") if isinstance(info, dict) else None
            if not isinstance(token, str) or not token:
                break
            if len(match_items(recs, bounds, items)) == len(recs):
                break
        return match_items(recs, bounds, items)

    async def _page(self, user: UserConfig, params: dict[str, str], report: RunReport) -> dict[str, Any]:
        attempts = 0
        while True:
            try:
                return await self.upstream.search_messages(user, params)
            except SearchRateLimited as e:
                attempts += 1
                report.rate_limited += 1
                if self.metrics:
                    self.metrics.reconcile_rate_limited.inc()
                asked = parse_retry_after(e.retry_after, self.clock() / 1_000_000)
                delay = next_delay(self.rc.retry_schedule_s, attempts, asked, self.rng)
                if delay is None:
                    raise
                log.info("reconcile: v2 search rate limited, waiting", extra={"wait_s": round(delay, 3)})
                if not report.dry_run and not await self.store.reconcile_renew(
                        self.owner, self.lease_us + int(delay * 1_000_000)):
                    raise LeaseLost() from None
                await self.sleep(delay)

    # -- the periodic run in ``serve`` -------------------------------------------------------------
    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.metrics:
                    self.metrics.reconcile_errors.inc()
                log.exception("reconcile run failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.rc.interval_s)
            except TimeoutError:
                pass
