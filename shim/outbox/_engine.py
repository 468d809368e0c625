"""Durable callback delivery: workers lease outbox rows, try the URL then the fallback, and
reschedule failures with backoff + jitter (honouring ``Retry-After``) until dead-lettered.

Fairness: each host gets at most ``per_host_concurrency`` attempts in flight, and the claim
query skips hosts that are already at their limit, so a slow or dead endpoint holds at most its
own slots and never the work of healthy ones.

Leases: every delivery this engine holds (in flight, waiting locally behind its host's slots, or
delivered and not yet recorded) has its lease renewed every ``lease_s / 3``, so no other claim
round or replica starts it while it is held however slow the receiver; a replica that dies stops
renewing and its work is taken over once its leases run out.

Endpoint health: every attempt is recorded (in memory, O(1)) in a per-host ``HealthBook``; a
host whose breaker is open is added to the claim's skip list, so its deliveries stay pending and
unattempted (no retry budget spent) until one probe is let through. Deliveries of such a host
already claimed and waiting locally are released (lease dropped, attempts unchanged).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import time
import uuid
from collections import Counter as Tally
from collections import defaultdict, deque

from shim.clock import Clock, Rng, now_us, system_rng
from shim.config import Config
from shim.core import STATE_VALUE, BreakerPolicy, Delivery, HealthBook, health_outcome, next_delay
from shim.ops import AccessLog, Metrics, scrub
from shim.store import Attempt, Store, host_key

from ._url_safety import policy_from_config
from .client_callbacks import AttemptResult, CallbackClient

log = logging.getLogger("shim.delivery")
FLUSH_GATHER_S = 0.01
# Retry times the delivery loop keeps to wake at (beyond these, its poll finds them).
MAX_DUE_TRACKED = 10_000
# After a claim that skipped busy hosts found nothing, the same claim waits this long (doubling
# up to the max) before it runs again, unless a host stops being busy: each such claim reads
# every due row of the skipped hosts, and every ingest wakes the loop. The price: deliveries
# for another host enqueued meanwhile wait up to the max for their first claim.
SKIP_QUIET_MIN_US = 10_000
SKIP_QUIET_MAX_US = 100_000


def attempt_outcome(result: AttemptResult) -> str:
    """``shim_callback_attempts_total{outcome}`` and the attempt log line's ``outcome``."""
    if result.ok:
        return "ok"
    if result.permanent:
        return "refused"
    if result.status is not None:
        return "http-error"
    if result.error.startswith("timeout"):
        return "timeout"
    return "network-error"


class DeliveryEngine:
    def __init__(
        self, cfg: Config, store: Store, metrics: Metrics, *, clock: Clock = now_us,
        rng: Rng | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rng = rng or system_rng()
        self.store = store
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.policy = policy_from_config(cfg)
        self.schedule = list(cfg.callbacks.retry_schedule_s)
        self.client = CallbackClient(
            self.policy, concurrency=cfg.callbacks.concurrency, per_host=cfg.callbacks.per_host_concurrency,
            signing_secrets=cfg.callbacks.secrets(), http_client=cfg.callbacks.http_client,
        )
        b = cfg.callbacks.breaker
        self.health = HealthBook(BreakerPolicy(
            enabled=b.enabled, failure_threshold=b.failure_threshold, failure_rate=b.failure_rate,
            min_attempts=b.min_attempts, window=b.window, open_s=b.open_s, max_open_s=b.max_open_s,
        ), b.max_hosts)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: Tally[str] = Tally()
        self._waiting: dict[str, deque[Delivery]] = defaultdict(deque)
        # Ids of the deliveries whose leases this engine keeps alive.
        self._held: set[int] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._delivered: list[int] = []
        # Each held delivery's attempts, written (delivery log) with its outcome.
        self._attempts: dict[int, list[Attempt]] = defaultdict(list)
        self._flush = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.poll_s = 0.5
        # When the retries this engine scheduled come due (epoch µs, a heap): the loop wakes then,
        # not at its next poll. Retries scheduled elsewhere (another replica, before a restart)
        # are found by the poll. Bounded: past the bound, the poll finds the rest.
        self._due: list[int] = []
        # The last claim that skipped hosts found nothing: until when it is not repeated, for
        # which busy hosts (a claim skipping fewer runs at once), and the current wait.
        self._quiet_until = 0
        self._quiet_busy: frozenset[str] = frozenset()
        self._quiet_us = 0
        self.rounds = 0  # of the delivery loop (for tests: a wake has been acted on)
        # One buffered JSON line per attempt (``build_app`` shares the access log's writer).
        self.attempt_log: AccessLog | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.start()
        await self.store.take_back_orphaned_leases()
        self._stopping = False
        self._loops = [
            asyncio.create_task(self._run(), name="delivery-loop"),
            asyncio.create_task(self._sweep(), name="delivery-sweeper"),
            asyncio.create_task(self._retention_loop(), name="retention"),
        ]
        self._flusher = asyncio.create_task(self._flush_loop(), name="delivery-flusher")
        self._renewer = asyncio.create_task(self._renew_loop(), name="delivery-lease-renewer")

    async def stop(self, grace_s: float = 5.0) -> None:
        log.info("delivery draining", extra={"in_flight": len(self._tasks), "held": len(self._held),
                                             "grace_s": grace_s})
        self._stopping = True
        self._wake.set()
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._renewer is not None:  # kept renewing while the last attempts finished
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self._flush_delivered()
        held = len(self._held)
        try:
            await self.store.release_all(self.owner)
            log.info("delivery stopped, leases released", extra={"owner": self.owner, "released": held})
        except Exception:
            log.exception("could not release delivery leases")
        await self.client.close()

    def wake(self) -> None:
        self._wake.set()

    @property
    def lease_us(self) -> int:
        return int(self.cfg.callbacks.lease_s * 1_000_000)

    # -- loops -----------------------------------------------------------------------------
    async def _run(self) -> None:
        limit = self.cfg.callbacks.concurrency
        cap = self.cfg.callbacks.per_host_concurrency
        while not self._stopping:
            self.rounds += 1
            try:
                waiting = sum(len(q) for q in self._waiting.values())
                free = limit - len(self._tasks) - waiting
                claimed: list[Delivery] = []
                self._wake.clear()  # work enqueued while we claim wakes the next round
                claimed_at = self.clock()
                if free > 0:
                    # Busy: more held than its slots (some wait locally). A host whose last
                    # local one just started is claimed for (its pipeline woke this round).
                    busy = [h for h, n in self._in_flight.items() if n + len(self._waiting.get(h, ())) > cap]
                    busy += self.health.skip_hosts(self.clock())  # open breakers
                    if not (busy and claimed_at < self._quiet_until and self._quiet_busy.issubset(busy)):
                        # Up to two slots' worth per host: the second half waits locally, so a
                        # claim round trip is never what keeps a healthy host idle.
                        claimed = await self.store.claim(self.owner, free, self.lease_us, 2 * cap, busy)
                        self._quiet_after(claimed, busy)
                    for d in claimed:
                        self._dispatch(d)
                if len(claimed) < free or free <= 0:
                    # Drained what is due (or full): sleep until new work, a host's pipeline
                    # running low, a retry of ours coming due, or the poll interval.
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._sleep_s(claimed_at))
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery loop error")
                await asyncio.sleep(1)

    def _quiet_after(self, claimed: list[Delivery], busy: list[str]) -> None:
        # (A claim that skipped nothing says nothing of the next one that will: the wait stays.)
        if busy and not claimed:
            self._quiet_us = min(SKIP_QUIET_MAX_US, max(SKIP_QUIET_MIN_US, 2 * self._quiet_us))
            self._quiet_until = self.clock() + self._quiet_us
            self._quiet_busy = frozenset(busy)
        elif busy:
            self._quiet_us = self._quiet_until = 0

    def _sleep_s(self, claimed_at: int) -> float:
        """Until the next retry of ours comes due (due by ``claimed_at``: that round's claim saw
        it) or a quiet claim may run again, at most the poll interval."""
        while self._due and self._due[0] <= claimed_at:
            heapq.heappop(self._due)
        wake_at = [t for t in (self._due[0] if self._due else 0, self._quiet_until) if t > claimed_at]
        if not wake_at:
            return self.poll_s
        return max(0.0, min(self.poll_s, (min(wake_at) - self.clock()) / 1_000_000))

    def _retry_at(self, due_us: int) -> None:
        if len(self._due) < MAX_DUE_TRACKED:
            heapq.heappush(self._due, due_us)

    async def _retention_loop(self) -> None:
        """Retention on its own schedule: a long pass (a backlog) never delays lease expiry."""
        day_us = 86_400 * 1_000_000
        while not self._stopping:
            ret = self.cfg.retention
            try:
                now = self.clock()
                await self.store.apply_retention(now - int(ret.text_days * day_us), now - int(ret.purge_days * day_us))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention pass failed")
            await asyncio.sleep(ret.interval_s)

    async def _sweep(self) -> None:
        """Route legacy unmatched events, free expired leases, refresh queue gauges."""
        grace_us = int(self.cfg.callbacks.unmatched_grace_s * 1_000_000)
        analyzed_at = 0
        while not self._stopping:
            try:
                routed = await self.store.route_unmatched(self.clock() - grace_us)
                if routed or await self.store.expire_leases():
                    self.wake()
                # Cheap (partial indexes); /metrics serves these gauges without querying.
                gauges = await self.store.outbox_gauges()
                self.metrics.queue_depth.set(gauges["pending"])
                self.metrics.dead_letters.set(gauges["dead"])
                oldest = gauges["oldest_us"]
                self.metrics.oldest_pending_age.set(max(0, self.clock() - oldest) / 1e6 if oldest else 0)
                rows = gauges["max_id"]  # rows ever enqueued
                if rows > max(1000, 2 * analyzed_at):
                    await self.store.analyze()
                    analyzed_at = rows
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery sweeper error")
            await asyncio.sleep(min(5.0, self.cfg.callbacks.unmatched_grace_s / 2))

    async def _renew_loop(self) -> None:
        """Keep the leases of everything held alive (see the module docstring)."""
        while True:
            await asyncio.sleep(self.cfg.callbacks.lease_s / 3)
            if not self._held:
                continue
            try:
                await self.store.renew_leases(self.owner, self.lease_us, sorted(self._held))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not renew delivery leases")

    def _dispatch(self, d: Delivery) -> None:
        self._held.add(d.id)
        host = host_key(d.spec.url)
        if self._in_flight[host] >= self.cfg.callbacks.per_host_concurrency:
            self._waiting[host].append(d)  # bounded: a host holding more than its slots is not claimed for
            return
        if not self._admit(host):  # the breaker opened since the claim, or a probe is out
            if self._in_flight[host]:
                self._waiting[host].append(d)  # decided when the host's attempts finish
            else:
                self._hold_back([d])
            return
        self._start(d, host)

    def _admit(self, host: str) -> bool:
        allowed, entered = self.health.admit(host, self.clock())
        if entered is not None:
            self._transition(host, entered)
        return allowed

    def _transition(self, host: str, state: str) -> None:
        self.metrics.count_transition(state)
        self.metrics.set_host_state(host, STATE_VALUE[state])
        log.warning("callback host breaker " + state, extra={"host": host})

    def _hold_back(self, held: list[Delivery]) -> None:
        """Give back claimed deliveries of a host whose breaker is open, unattempted: their leases
        are released (attempts and schedule unchanged) and the claim skips them until a probe."""
        ids = [d.id for d in held]
        self._held.difference_update(ids)

        async def release() -> None:
            for i in ids:
                try:
                    await self.store.release(i, self.owner)
                except Exception:
                    log.exception("could not release a held-back delivery; its lease will expire")

        task = asyncio.create_task(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, d: Delivery, host: str) -> None:
        self._in_flight[host] += 1
        task = asyncio.create_task(self._deliver(d, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, d: Delivery, host: str) -> None:
        recorded_later = False  # a success stays held until the flusher records it
        try:
            result = await self._attempt(d, d.spec.url, host, "primary")
            if not result.ok and d.spec.fallback_url:
                fallback = await self._attempt(d, d.spec.fallback_url, host_key(d.spec.fallback_url), "fallback")
                if fallback.ok:
                    result = fallback
                else:
                    result = AttemptResult(
                        False, f"{result.error}; fallback: {fallback.error}",
                        fallback.retry_after_s or result.retry_after_s, result.permanent and fallback.permanent,
                    )
            if result.ok:
                # Successes are recorded in batches; a later event of the same message stays
                # unclaimable until this one is, so order holds.
                self._delivered.append(d.id)
                recorded_later = True
                self._flush.set()
                self.metrics.count_delivery("delivered")
                if d.created_us:
                    self.metrics.delivery_latency.observe(max(0, self.clock() - d.created_us) / 1e6)
                return
            # A refused target is dead-lettered at once: no retry can make it reachable.
            delay = None if result.permanent else next_delay(self.schedule, d.attempts + 1, result.retry_after_s, self.rng)
            next_us = self.clock() + int(delay * 1_000_000) if delay is not None else None
            await self.store.mark_failed(d.id, self.owner, result.error, next_us, self._attempts.pop(d.id, []))
            outcome = "retry" if next_us is not None else "dead"
            self.metrics.count_delivery(outcome)
            log.warning(
                "callback delivery failed",
                extra={"event_id": d.spec.event_id, "request_id": d.spec.request_id, "attempt": d.attempts + 1,
                       "outcome": outcome, "error": scrub(result.error)},
            )
            if next_us is not None:
                self._retry_at(next_us)
                self.wake()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery error", extra={"event_id": d.spec.event_id})
        finally:
            if not recorded_later:  # recorded as failed, or left to expire after an error
                self._held.discard(d.id)
                self._attempts.pop(d.id, None)
            self._in_flight[host] -= 1
            if self._in_flight[host] <= 0:
                del self._in_flight[host]
            queue = self._waiting.get(host)
            if queue:
                if self._stopping:
                    queue.popleft()
                    if not queue:
                        del self._waiting[host]
                elif self._admit(host):
                    # Usually one slot came free; after a successful probe, all of them did.
                    while queue and self._in_flight[host] < self.cfg.callbacks.per_host_concurrency:
                        self._start(queue.popleft(), host)
                    if not queue:
                        del self._waiting[host]
                elif not self._in_flight[host]:  # breaker open: nothing left to decide for them
                    del self._waiting[host]
                    self._hold_back(list(queue))
            # Claim again once this host's pipeline is down to its slots, not after every completion.
            pipeline = self._in_flight[host] + len(self._waiting.get(host, ()))
            if pipeline <= self.cfg.callbacks.per_host_concurrency:
                self._wake.set()

    async def _attempt(self, d: Delivery, url: str, host: str, target: str) -> AttemptResult:
        """One HTTP attempt, counted by target and outcome and logged (one line each)."""
        started, at_us = time.perf_counter(), self.clock()
        result = await self.client.attempt(d.spec, url)
        seconds = time.perf_counter() - started
        entered, forgotten = self.health.record(
            host, health_outcome(result.ok, result.status, result.permanent), seconds, self.clock())
        if forgotten is not None:
            self.metrics.forget_host(forgotten)
        if entered is not None:
            self._transition(host, entered)
        elif not self.metrics.knows_host(host):
            self.metrics.set_host_state(host, STATE_VALUE[self.health.state(host)])
        outcome = attempt_outcome(result)
        self._attempts[d.id].append(Attempt(
            at_us, d.id, d.spec.event_id, d.spec.order_key, d.spec.user_id, target, host, result.status,
            int((time.perf_counter() - started) * 1e6), outcome, result.error,
            scrub(result.response.decode("utf-8", "replace")).replace("\x00", "") if result.response else "",
        ))
        self.metrics.count_attempt(target, outcome)
        out = self.attempt_log
        if out is not None and log.isEnabledFor(logging.INFO):
            out.line("shim.delivery", "callback attempt", {
                "event_id": d.spec.event_id, "delivery_id": d.id, "order_key": d.spec.order_key,
                "user_id": d.spec.user_id, "request_id": d.spec.request_id, "attempt": d.attempts + 1,
                "target": target, "host": host, "status": result.status,
                "ms": round(seconds * 1000, 2), "outcome": outcome,
                **({"error": result.error} if result.error else {}),
            }, "info" if result.ok else "warning")
        return result

    async def _flush_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await self._flush_delivered()
            self._wake.set()  # later callbacks of the same messages may be claimed now
            # Successes gather for a moment: one write (and one claim) per batch, not per callback.
            await asyncio.sleep(FLUSH_GATHER_S)

    async def _flush_delivered(self) -> None:
        while self._delivered:
            batch, self._delivered = self._delivered[:500], self._delivered[500:]
            attempts = [a for i in batch for a in self._attempts.get(i, ())]
            try:
                await self.store.mark_delivered_many(batch, self.owner, attempts)
            except asyncio.CancelledError:
                self._delivered[:0] = batch
                raise
            except Exception:
                log.exception("could not record deliveries; they will be retried when their leases expire")
            self._held.difference_update(batch)
            for i in batch:
                self._attempts.pop(i, None)
