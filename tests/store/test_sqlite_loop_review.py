"""store.sqlite_writer: loop — what the loop's thread must never do, and must never leave undone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from shim.store import SqliteStore

from .test_contract import GW, msg, opened, recording


def wal_salt(wal: Path) -> bytes | None:
    """The WAL header's salts: new ones each time the WAL starts over."""
    try:
        with wal.open("rb") as f:
            return f.read(24)[16:24]
    except FileNotFoundError:
        return None


async def test_sqlite_the_wal_never_starts_over_on_the_loops_thread(tmp_path: Path) -> None:
    # The first write into a WAL started over writes its new header and syncs it (fdatasync)
    # before any frame: under a light load, every time the checkpointer caught up. On the loop's
    # thread, that sync stalls every request; the writer thread starts the WAL over instead.
    db = tmp_path / "restart.db"
    wal = Path(f"{db}-wal")
    store: Any = SqliteStore(f"sqlite:///{db}", GW)
    on_loop: list[bool] = []  # per batch run on the loop: whether it started the WAL over
    run_on_loop = store._run_on_loop

    def watched(conn: sqlite3.Connection, batch: list[Any], *args: Any) -> Any:
        before = wal_salt(wal)
        outcomes = run_on_loop(conn, batch, *args)
        on_loop.append(wal_salt(wal) != before)
        return outcomes

    store._run_on_loop = watched
    await store.open()
    try:
        salts = {wal_salt(wal)}
        deadline = asyncio.get_running_loop().time() + 10
        i = 0
        while len(salts) < 4 and asyncio.get_running_loop().time() < deadline:
            await store.insert_message(msg(i))
            i += 1
            salts.add(wal_salt(wal))
            await asyncio.sleep(0.01)  # light load: the checkpointer catches up between writes
        assert len(salts) >= 4, "the WAL never started over"
        assert on_loop.count(False) > 0  # (the loop does run writes)
        assert not any(on_loop), f"{on_loop.count(True)} of {len(on_loop)} loop batches started the WAL over"
    finally:
        await store.close()


class FailingBegin:
    """A connection whose BEGIN fails with an error other than busy (a corrupt file, say)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE":
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self.conn.execute(sql, *args)


async def test_sqlite_a_short_write_whose_begin_fails_is_answered(tmp_path: Path) -> None:
    # Only "busy" was caught around the loop's BEGIN: any other error escaped the loop's callback,
    # its writes never answered (their callers waiting forever) and their queue slots never freed.
    async with opened(f"sqlite:///{tmp_path}/begin.db") as s:
        store: Any = s
        real = store._loop_conn
        store._loop_conn = FailingBegin(real)
        threads: list[int] = []
        try:
            # The writer thread runs it instead (its own connection is fine).
            await asyncio.wait_for(store._write(recording(threads, 1), short=True), 5)
        finally:
            store._loop_conn = real
        assert threads and threads[-1] != threading.get_ident()
        assert store._slots._value == store.max_queued
        assert await store.query("SELECT body FROM rejected_events") == [("b1",)]
