"""SQLite backend: the embedded default. WAL mode, one writer connection, one reader.

``synchronous=NORMAL`` in WAL mode keeps every committed transaction across a process crash
(``kill -9``); only an OS crash or power loss can lose the last commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .store import Store, Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    state TEXT NOT NULL,
    delivery_state TEXT,
    time_us INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    text_cleared INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_user_seq ON messages (user_id, seq);
CREATE INDEX IF NOT EXISTS messages_time ON messages (time_us);
CREATE TABLE IF NOT EXISTS events (
    dedupe_key TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    received_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (message_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_received ON events (received_us);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    order_key TEXT NOT NULL,
    user_id TEXT,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until_us INTEGER,
    last_error TEXT,
    created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_us);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (order_key, id);
"""


class _SqliteTx(Tx):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(sql, args)

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        async with self.conn.execute(sql, args) as cur:
            row = await cur.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self.conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return [tuple(r) for r in rows]


def sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite:").removeprefix("//")
    if path.startswith("/./") or path == "/:memory:":
        path = path[1:]
    return path


class SqliteStore(Store):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.path = sqlite_path(url)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._writer.executescript(SCHEMA)
        self._reader = self._writer if self.path == ":memory:" else await self._connect()

    async def close(self) -> None:
        for conn in {id(c): c for c in (self._reader, self._writer) if c}.values():
            await conn.close()
        self._writer = self._reader = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        conn = self._writer
        if conn is None:
            raise RuntimeError("store is not open")
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        conn = self._reader
        if conn is None:
            raise RuntimeError("store is not open")
        if conn is self._writer:
            async with self._write_lock:
                yield _SqliteTx(conn)
            return
        async with self._read_lock:
            yield _SqliteTx(conn)
