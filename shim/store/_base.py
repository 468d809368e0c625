"""The store: messages, ingested v2 events and the callback outbox, behind one interface.

Every transaction is written once, as a sans-io generator that yields SQL operations (``_ops``)
and receives their results, grouped by concern: ``_messages``, ``_events``, ``_outbox``,
``_retention``, ``_reconcile``, ``_deliveries``, ``_usage``, ``_console``, and the schema in
``migrations``. Backends only drive generators, and both group
commit: SQLite runs a whole batch of them in its writer thread in one hop and one commit;
PostgreSQL runs the writes submitted in one turn of the event loop in one database transaction
on one connection. Either runs a failed batch's transactions again apart, so one failing
transaction fails alone. Both pass the same contract suite (``tests/store/test_contract.py``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from . import migrations
from ._console import ConsoleTxs
from ._deliveries import DeliveryLogTxs
from ._events import EventTxs
from ._messages import MessageTxs
from ._ops import Tx, all_tx, exec_tx, one_tx
from ._outbox import OutboxTxs
from ._reconcile import ReconcileTxs
from ._retention import RetentionTxs
from ._usage import UsageTxs

log = logging.getLogger("shim.store")


class Store(ReconcileTxs, MessageTxs, EventTxs, OutboxTxs, RetentionTxs, UsageTxs, DeliveryLogTxs,
            ConsoleTxs):
    """Every transaction; subclasses drive them (``_write``/``_read``) and open the database."""

    # The backend's column types for ``{serial}`` and ``{bigint}`` in migrations.
    column_types: ClassVar[Mapping[str, str]]

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (``migrate``)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply the migrations the database lacks, each in its own transaction under the schema
        lock. Returns the versions applied (none when another replica got there first)."""
        applied: list[int] = []
        while (m := await self._write(self._tx_migrate_step)) is not None:
            log.info("schema migration applied", extra={"version": m.version, "migration": m.name})
            applied.append(m.version)
        return applied

    def _tx_migrate_step(self) -> Tx[migrations.Migration | None]:
        yield from self._lock_schema()
        return (yield from migrations.apply_next(self.column_types, self.clock))

    def _lock_schema(self) -> Tx[None]:
        """Serialize migrations across processes (SQLite's write transaction already does)."""
        return
        yield  # pragma: no cover - makes this a generator

    async def applied_migrations(self) -> list[tuple[int, str, int]]:
        """(version, name, applied_us) of every recorded migration, in order."""
        rows = await self._timed_read(all_tx, "SELECT version, name, applied_us FROM schema_migrations ORDER BY version")
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    async def ping(self) -> None:
        await self._timed_read(one_tx, "SELECT 1")

    async def analyze(self) -> None:
        """Refresh planner statistics (the outbox changes fast; a stale plan sorts the whole
        backlog on every claim). A no-op where the planner does not need it."""

    async def run_sql(self, sql: str, *args: Any) -> None:
        """Maintenance hook (and tests): one statement in its own transaction."""
        await self._timed_write(exec_tx, sql, *args)

    async def query(self, sql: str, *args: Any) -> list[Any]:
        """Read-only inspection (``?`` placeholders, any backend): tests and operators' tools."""
        return list(await self._timed_read(all_tx, sql, *args))
