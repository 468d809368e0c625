"""PostgreSQL backend (asyncpg): several shim replicas share one database.

Work on one message id is serialized with a transaction-scoped advisory lock (so a callback and
the send record it belongs to can never miss each other), outbox rows are leased with
``FOR UPDATE SKIP LOCKED``, and migrations run under a transaction-scoped advisory lock so
replicas starting together do not race.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import asyncpg

from shim.clock import Clock, now_us

from ._base import Store
from ._ops import All, Exec, Op, Tx, step
from ._types import EventRules

T = TypeVar("T")

SCHEMA_LOCK = 7_240_311_001

_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (shim's SQL has no literal question marks)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


async def drive(conn: asyncpg.Connection, tx: Tx[T]) -> T:
    """Run a sans-io transaction generator on an asyncpg connection."""
    out = step(tx)
    while isinstance(out, Op):
        out = step(tx, await run(conn, out))
    return out.value


async def run(conn: asyncpg.Connection, op: Op) -> Any:
    sql = to_pg(op.sql)
    if op.kind == "exec":
        await conn.execute(sql, *op.args)
        return None
    if op.kind == "one":
        row = await conn.fetchrow(sql, *op.args)
        return tuple(row) if row is not None else None
    return [tuple(r) for r in await conn.fetch(sql, *op.args)]


class PostgresStore(Store):
    skip_locked = " FOR UPDATE SKIP LOCKED"
    column_types: ClassVar[Mapping[str, str]] = {"serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"}

    def __init__(self, url: str, rules: EventRules, min_size: int = 2, max_size: int = 20,
                 clock: Clock = now_us) -> None:
        super().__init__(rules, clock)
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size)
        await self.migrate()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _write(self, tx: Tx[T]) -> T:
        if self._pool is None:
            tx.close()
            raise RuntimeError("store is not open")
        async with self._pool.acquire() as conn, conn.transaction():
            return await drive(conn, tx)

    async def _read(self, tx: Tx[T]) -> T:
        if self._pool is None:
            tx.close()
            raise RuntimeError("store is not open")
        async with self._pool.acquire() as conn:
            return await drive(conn, tx)

    async def analyze(self) -> None:
        if self._pool is None:
            return
        async with self._pool.acquire() as conn:
            await conn.execute("ANALYZE outbox")

    async def take_back_orphaned_leases(self) -> None:
        """Nothing to do: other replicas may hold live leases; a dead one's leases expire."""

    def _lock_message(self, message_id: str) -> Tx[None]:
        yield Exec("SELECT pg_advisory_xact_lock(hashtext(?))", message_id)

    def _try_lock_messages(self, message_ids: Sequence[str]) -> Tx[set[str]]:
        if not message_ids:
            return set()
        rows = yield All("SELECT m FROM unnest(?::text[]) AS m WHERE pg_try_advisory_xact_lock(hashtext(m))",
                         list(message_ids))
        return {r[0] for r in rows}

    def _lock_schema(self) -> Tx[None]:
        yield Exec("SELECT pg_advisory_xact_lock(?)", SCHEMA_LOCK)
