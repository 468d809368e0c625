"""PostgreSQL backend (asyncpg): several shim replicas share one database.

Work on one message id is serialized with a transaction-scoped advisory lock (so a callback and
the send record it belongs to can never miss each other), outbox rows are leased with
``FOR UPDATE SKIP LOCKED``, and the schema is created under a session advisory lock so
replicas starting together do not race.
"""

from __future__ import annotations

import functools
import re
from typing import Any, TypeVar

import asyncpg

from ._base import SCHEMA_TEMPLATE, Exec, Op, Store, Tx

T = TypeVar("T")

SCHEMA_LOCK = 7_240_311_001

SCHEMA = SCHEMA_TEMPLATE.format(serial="BIGSERIAL PRIMARY KEY", bigint="BIGINT")

_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (shim's SQL has no literal question marks)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


async def drive(conn: asyncpg.Connection, tx: Tx[T]) -> T:
    """Run a sans-io transaction generator on an asyncpg connection."""
    result: Any = None
    while True:
        try:
            op: Op = tx.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        sql = to_pg(op.sql)
        if op.kind == "exec":
            await conn.execute(sql, *op.args)
            result = None
        elif op.kind == "one":
            row = await conn.fetchrow(sql, *op.args)
            result = tuple(row) if row is not None else None
        else:
            result = [tuple(r) for r in await conn.fetch(sql, *op.args)]


class PostgresStore(Store):
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, min_size: int = 2, max_size: int = 20) -> None:
        super().__init__()
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=self.min_size, max_size=self.max_size)
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
            try:
                await conn.execute(SCHEMA)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)

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

    def _lock_message(self, message_id: str) -> Tx[None]:
        yield Exec("SELECT pg_advisory_xact_lock(hashtext(?))", message_id)
