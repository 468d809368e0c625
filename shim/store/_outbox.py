"""The callback outbox: enqueueing deliveries, leasing them (claims), outcomes, dead letters."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import orjson

from shim.clock import Clock
from shim.core import Delivery, DeliverySpec, stored_fields
from shim.core._message import built_model

from ._core import SHORT_ROWS, StoreCore
from ._deliveries import log_attempts
from ._ops import All, Exec, One, Tx, all_tx, exec_tx
from ._types import Attempt, DeadLetter, PendingCallback, host_key

# Rows per outbox insert (8 parameters each: well under any backend's limit).
ENQUEUE_CHUNK = 200


def spec_json(spec: DeliverySpec, request_id: str | None) -> str:
    """The stored spec: ``spec.model_copy(update={"request_id": request_id}).model_dump_json()``,
    byte for byte (``tests/store/test_store_json.py``), without the copy. orjson for the common
    case; pydantic for what orjson refuses (an integer past 64 bits, a lone surrogate)."""
    values = dict(spec.__dict__)
    values["request_id"] = request_id
    try:
        return orjson.dumps(values).decode()
    except (TypeError, orjson.JSONEncodeError):
        return spec.model_copy(update={"request_id": request_id}).model_dump_json()


_SPEC_FIELDS = tuple(DeliverySpec.model_fields)
_SPEC_SET = frozenset(_SPEC_FIELDS)


def spec_from_json(text: str) -> DeliverySpec:
    """A stored spec read back: ``DeliverySpec.model_validate_json(text)``. Rows ``spec_json`` wrote
    (every field, each of its type, from a validated spec) are rebuilt without validating them
    again (~4 µs a claimed callback); anything else (an older row lacking later fields, JSON
    orjson refuses or would read differently) is validated, as before."""
    values = stored_fields(text, _SPEC_FIELDS)
    if values is not None:
        return built_model(DeliverySpec, values, set(_SPEC_SET))
    return DeliverySpec.model_validate_json(text)


def enqueue_rows(specs: Sequence[DeliverySpec], clock: Clock, request_id: str | None = None) -> Tx[int]:
    """Insert deliveries, many rows per statement."""
    now = clock()
    for start in range(0, len(specs), ENQUEUE_CHUNK):
        args: list[Any] = []
        chunk = specs[start:start + ENQUEUE_CHUNK]
        for spec in chunk:
            rid = request_id if request_id and spec.request_id is None else spec.request_id
            args += (spec.event_id, spec.order_key, spec.user_id, host_key(spec.url), spec_json(spec, rid), now, now, now)
        yield Exec(
            "INSERT INTO outbox (event_id, order_key, user_id, host, status, spec, attempts,"
            " next_attempt_us, created_us, updated_us) VALUES "
            + ", ".join("(?, ?, ?, ?, 'pending', ?, 0, ?, ?, ?)" for _ in chunk)
            + " ON CONFLICT (event_id) DO NOTHING", *args,
        )
    return len(specs)


class OutboxTxs(StoreCore):
    async def enqueue(self, specs: Sequence[DeliverySpec]) -> int:
        return await self._timed_write(enqueue_rows, specs, self.clock)

    async def claim(self, owner: str, limit: int, lease_us: int, per_host: int = 1_000_000,
                    skip_hosts: Sequence[str] = ()) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (at most ``per_host`` per host, none for
        ``skip_hosts``) whose earlier siblings of the same message are all done."""
        # With hosts skipped, the candidate scan may pass many of their due rows: not for the loop.
        write = self._timed_short_write if limit <= SHORT_ROWS and not skip_hosts else self._timed_write
        rows = await write(self._tx_claim, owner, limit, lease_us, per_host, skip_hosts)
        out = [Delivery(id=r[0], spec=spec_from_json(r[1]), attempts=r[2], created_us=r[3])
               for r in rows]
        out.sort(key=lambda d: d.id)
        return out

    def _tx_claim(self, owner: str, limit: int, lease_us: int, per_host: int,
                  skip_hosts: Sequence[str]) -> Tx[list[Any]]:
        now = self.clock()
        skip = f" AND o.host NOT IN ({', '.join('?' for _ in skip_hosts)})" if skip_hosts else ""
        # Lock a few more candidates than needed (other replicas skip them), keep per_host each;
        # never many more than a few hosts' worth: each candidate costs an ordering check, and a
        # claim returning few rows is simply repeated by the engine.
        fetch = min(limit * 2, limit + 500, 4 * per_host + 32)
        candidates = yield All(
            "SELECT o.id, o.host FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_us <= ?"
            " AND o.lease_owner IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.order_key = o.order_key"
            f"  AND p.status = 'pending' AND p.id < o.id){skip}"
            f" ORDER BY o.next_attempt_us, o.id LIMIT ?{self.skip_locked}",
            now, *skip_hosts, fetch,
        )
        taken: dict[str, int] = {}
        chosen: list[int] = []
        for row_id, host in candidates:
            if taken.get(host, 0) < per_host and len(chosen) < limit:
                taken[host] = taken.get(host, 0) + 1
                chosen.append(row_id)
        if not chosen:
            return []
        marks = ", ".join("?" for _ in chosen)
        rows: list[Any] = yield All(
            f"UPDATE outbox SET lease_owner = ?, lease_until_us = ? WHERE id IN ({marks})"
            " RETURNING id, spec, attempts, created_us",
            owner, now + lease_us, *chosen,
        )
        return rows

    async def expire_leases(self) -> int:
        """Free the work of replicas that died holding it (their leases ran out); claims only
        look at unleased rows, which keeps them cheap however much is in flight."""
        rows = await self._timed_write(all_tx,
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL"
            " WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_until_us < ? RETURNING id",
            self.clock(),
        )
        return len(rows)

    async def renew_leases(self, owner: str, lease_us: int, ids: Sequence[int] | None = None) -> int:
        """Keep the leases ``owner`` holds alive (all of them, or just ``ids``) for another
        ``lease_us``: work in flight or waiting locally is never taken over by another claim.
        Indexed by owner (or by id): the cost follows what is held, not the outbox's history."""
        return await self._timed_write(self._tx_renew, owner, lease_us, ids)

    def _tx_renew(self, owner: str, lease_us: int, ids: Sequence[int] | None) -> Tx[int]:
        until = self.clock() + lease_us
        if ids is None:
            rows = yield All(
                "UPDATE outbox SET lease_until_us = ? WHERE lease_owner = ? AND status = 'pending' RETURNING id",
                until, owner,
            )
            return len(rows)
        count = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = yield All(
                f"UPDATE outbox SET lease_until_us = ? WHERE id IN ({marks}) AND lease_owner = ?"
                " AND status = 'pending' RETURNING id",
                until, *chunk, owner,
            )
            count += len(rows)
        return count

    @abc.abstractmethod
    async def take_back_orphaned_leases(self) -> None:
        """At delivery start: take back leases that no live process can hold any more (SQLite is
        single-process, so all of them; where replicas share the store, leases expire instead)."""

    async def release(self, delivery_id: int, owner: str) -> None:
        await self._timed_short_write(exec_tx,
            "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL WHERE id = ? AND lease_owner = ?",
            delivery_id, owner,
        )

    async def release_all(self, owner: str | None = None) -> None:
        if owner is None:
            await self._timed_write(exec_tx,
                "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL"
                " WHERE status = 'pending' AND lease_owner IS NOT NULL")
        else:
            await self._timed_write(exec_tx,
                "UPDATE outbox SET lease_owner = NULL, lease_until_us = NULL"
                " WHERE lease_owner = ? AND status = 'pending'", owner,
            )

    async def mark_delivered(self, delivery_id: int, owner: str) -> bool:
        return await self.mark_delivered_many([delivery_id], owner) == 1

    async def mark_delivered_many(self, delivery_ids: Sequence[int], owner: str,
                                  attempts: Sequence[Attempt] = ()) -> int:
        """Record several successes in one transaction (the delivery engine batches them), with
        the attempts that led to them (the delivery log)."""
        if not delivery_ids and not attempts:
            return 0
        write = self._timed_short_write if len(delivery_ids) + len(attempts) <= SHORT_ROWS else self._timed_write
        return await write(self._tx_delivered, delivery_ids, owner, attempts)

    def _tx_delivered(self, delivery_ids: Sequence[int], owner: str, attempts: Sequence[Attempt]) -> Tx[int]:
        count = 0
        if delivery_ids:
            marks = ", ".join("?" for _ in delivery_ids)
            rows = yield All(
                "UPDATE outbox SET status = 'delivered', lease_owner = NULL, lease_until_us = NULL,"
                f" attempts = attempts + 1, updated_us = ? WHERE id IN ({marks}) AND lease_owner = ? RETURNING id",
                self.clock(), *delivery_ids, owner,
            )
            count = len(rows)
        yield from log_attempts(attempts)
        return count

    async def mark_failed(self, delivery_id: int, owner: str, error: str, next_attempt_us: int | None,
                          attempts: Sequence[Attempt] = ()) -> bool:
        """Schedule a retry, or dead-letter when ``next_attempt_us`` is None; the attempts that
        failed go to the delivery log in the same transaction."""
        return await self._timed_short_write(self._tx_failed, delivery_id, owner, error, next_attempt_us, attempts)

    def _tx_failed(self, delivery_id: int, owner: str, error: str, next_attempt_us: int | None,
                   attempts: Sequence[Attempt]) -> Tx[bool]:
        status = "pending" if next_attempt_us is not None else "dead"
        row = yield One(
            "UPDATE outbox SET status = ?, lease_owner = NULL, lease_until_us = NULL,"
            " attempts = attempts + 1, next_attempt_us = ?, last_error = ?, updated_us = ?"
            " WHERE id = ? AND lease_owner = ? RETURNING id",
            status, next_attempt_us or 0, error[:1000], self.clock(), delivery_id, owner,
        )
        yield from log_attempts(attempts)
        return row is not None

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self._timed_read(all_tx,
            "SELECT id, event_id, spec, attempts, last_error, updated_us, order_key, user_id, host FROM outbox"
            " WHERE status = 'dead' ORDER BY id LIMIT ?", limit,
        )
        return [
            DeadLetter(id=r[0], event_id=r[1], url=spec_from_json(r[2]).url,
                       attempts=r[3], last_error=r[4], updated_us=r[5], message_id=r[6], user_id=r[7], host=r[8])
            for r in rows
        ]

    async def pending_callbacks(self, limit: int = 100) -> list[PendingCallback]:
        """The oldest ``limit`` callbacks still to deliver (by id), leased ones (in flight)
        included. Read in order from the partial index of pending ids (``outbox_pending_id``):
        ``limit`` rows, however long the queue (an outage is when operators look) or the history."""
        if limit <= 0:
            return []
        rows = await self._timed_read(all_tx,
            "SELECT id, event_id, order_key, user_id, host, spec, attempts, next_attempt_us, created_us,"
            " last_error, lease_owner FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?", limit,
        )
        return [
            PendingCallback(id=int(r[0]), event_id=r[1], message_id=r[2], user_id=r[3], host=r[4],
                            url=spec_from_json(r[5]).url, attempts=int(r[6]),
                            next_attempt_us=int(r[7]), created_us=int(r[8]), last_error=r[9],
                            leased=r[10] is not None)
            for r in rows
        ]

    async def replay(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or the given ids) back in the queue for a fresh schedule."""
        return await self._timed_write(self._tx_replay, ids)

    def _tx_replay(self, ids: Sequence[int] | None) -> Tx[int]:
        now = self.clock()
        if ids is None:
            rows = yield All(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?, updated_us = ?"
                " WHERE status = 'dead' RETURNING id", now, now,
            )
            return len(rows)
        count = 0
        for i in ids:
            row = yield One(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_us = ?, updated_us = ?"
                " WHERE status = 'dead' AND id = ? RETURNING id", now, now, i,
            )
            count += row is not None
        return count

    async def outbox_gauges(self) -> dict[str, int]:
        """What the sweeper publishes, at a cost that follows the live queue, not the history:
        ``pending`` and ``dead`` counted on their partial indexes, ``oldest_us`` (when the oldest
        pending row was enqueued, 0 when none: its id comes from the same pass over the pending
        index as the count, then one primary-key lookup) and ``max_id`` (primary key) for how many
        rows were ever enqueued. Delivered rows are never counted."""
        return await self._timed_read(self._tx_gauges)

    def _tx_gauges(self) -> Tx[dict[str, int]]:
        # COUNT beside MIN keeps the planner on the partial index (a lone MIN(id) may be planned
        # as a primary-key walk from the first row ever enqueued).
        pending = yield One("SELECT COUNT(*), MIN(id) FROM outbox WHERE status = 'pending'")
        oldest = None
        if pending[1] is not None:
            oldest = yield One("SELECT created_us FROM outbox WHERE id = ?", pending[1])
        dead = yield One("SELECT COUNT(*) FROM outbox WHERE status = 'dead'")
        top = yield One("SELECT MAX(id) FROM outbox")
        return {"pending": int(pending[0]), "dead": int(dead[0]), "max_id": int(top[0] or 0),
                "oldest_us": int(oldest[0]) if oldest else 0}

    async def outbox_counts(self) -> dict[str, int]:
        """Every row by status: a scan of the whole outbox, for inspection (tests, operators),
        never for periodic work (see ``outbox_gauges``)."""
        rows = await self._timed_read(all_tx, "SELECT status, COUNT(*) FROM outbox GROUP BY status")
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts
