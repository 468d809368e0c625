"""The schema, as numbered migrations applied once each, on SQLite and PostgreSQL.

``MIGRATIONS`` is append-only: a migration that may have run anywhere is never edited; a change
is a new migration with the next version. ``schema_migrations`` records what a database has.
At open, each missing migration runs in its own write transaction together with its record,
under the schema lock (PostgreSQL: ``pg_advisory_xact_lock``; SQLite: the ``BEGIN IMMEDIATE`` write
lock), so replicas starting together apply it once and the others find it recorded. Migration 1
is the schema that earlier versions created at every open, kept with ``IF NOT EXISTS`` so a
database they created (tables, no ``schema_migrations``) is adopted as is.

A small runner rather than a migration tool: Alembic and yoyo-migrations bring their own database
layers (SQLAlchemy; DB-API drivers) and run synchronously beside shim's asyncpg pool and sqlite3
writer thread, while the runner here is one sans-io transaction driven by the same code as every
other store transaction, with the locking shim needs. Templates use ``{serial}`` and ``{bigint}``
for the backends' column types; statements are separated by ``;`` (no ``;`` inside them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shim.clock import Clock

from ._ops import All, Exec, Tx


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, types: Mapping[str, str]) -> list[str]:
        return [s.strip() for s in self.sql.format(**types).split(";") if s.strip()]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "messages, events and outbox", """
CREATE TABLE IF NOT EXISTS messages (
    seq {serial},
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    state TEXT NOT NULL,
    delivery_state TEXT,
    time_us {bigint} NOT NULL,
    created_us {bigint} NOT NULL,
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
    received_us {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (message_id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_received ON events (received_us);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial},
    event_id TEXT NOT NULL UNIQUE,
    order_key TEXT NOT NULL,
    user_id TEXT,
    host TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us {bigint} NOT NULL,
    lease_owner TEXT,
    lease_until_us {bigint},
    last_error TEXT,
    created_us {bigint} NOT NULL,
    updated_us {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_us, id) WHERE status = 'pending' AND lease_owner IS NULL;
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (order_key, id);
"""),
    Migration(2, "send intents and correlation keys", """
ALTER TABLE messages ADD COLUMN send_key TEXT;
ALTER TABLE messages ADD COLUMN bound INTEGER NOT NULL DEFAULT 1;
CREATE UNIQUE INDEX IF NOT EXISTS messages_send_key ON messages (send_key) WHERE send_key IS NOT NULL;
ALTER TABLE events ADD COLUMN send_key TEXT;
CREATE INDEX IF NOT EXISTS events_pending_key ON events (send_key) WHERE status = 'pending' AND send_key IS NOT NULL
"""),
    # Retention works in bounded batches whose cost does not grow with history: rows whose text
    # is still to clear are found through partial indexes (cleared rows drop out of them), rows to
    # purge through time indexes, a message's events by its id.
    Migration(3, "retention: text marks and purge indexes", """
ALTER TABLE events ADD COLUMN text_cleared INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN text_cleared INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS messages_text_due ON messages (time_us) WHERE text_cleared = 0;
CREATE INDEX IF NOT EXISTS events_text_due ON events (received_us) WHERE text_cleared = 0;
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE INDEX IF NOT EXISTS outbox_text_due ON outbox (created_us) WHERE text_cleared = 0;
CREATE INDEX IF NOT EXISTS outbox_updated ON outbox (updated_us)
"""),
    # Periodic work reads only what is live (leased, pending, dead, unmatched), never the history:
    # lease expiry and renewal, the queue gauges, the unmatched sweep each have a partial index.
    Migration(4, "partial indexes for periodic work", """
CREATE INDEX IF NOT EXISTS outbox_lease_until ON outbox (lease_until_us) WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_lease_owner ON outbox (lease_owner) WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (order_key, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS events_unmatched ON events (received_us) WHERE status = 'pending' AND send_key IS NULL
"""),
    # A malformed v2 event is kept for inspection (its array's valid events are stored as usual).
    Migration(5, "rejected events kept for inspection", """
CREATE TABLE IF NOT EXISTS rejected_events (
    id {serial},
    received_us {bigint} NOT NULL,
    reason TEXT NOT NULL,
    request_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_events_received ON rejected_events (received_us)
"""),
    # Reconciliation (SPEC §9): outbound messages not final yet are found through a partial index
    # (final and unresolvable ones drop out of it); one lease row says which replica reconciles
    # and where its run is (the cursor, a message seq), so a crashed run resumes.
    Migration(6, "reconciliation: unresolvable marks, candidates index, lease and cursor", """
ALTER TABLE messages ADD COLUMN reconcile TEXT;
CREATE INDEX IF NOT EXISTS messages_unfinal ON messages (seq)
    WHERE direction = 'out' AND state <> 'error' AND delivery_state IS NULL AND reconcile IS NULL;
CREATE TABLE IF NOT EXISTS reconcile_lease (
    name TEXT PRIMARY KEY,
    owner TEXT,
    lease_until_us {bigint},
    cursor_seq {bigint} NOT NULL DEFAULT 0,
    run_started_us {bigint},
    updated_us {bigint} NOT NULL DEFAULT 0
);
INSERT INTO reconcile_lease (name, cursor_seq, updated_us) VALUES ('reconcile', 0, 0)
    ON CONFLICT (name) DO NOTHING
"""),
    # The migration report (SPEC §8): per user and v1 feature, a count and when it was last seen,
    # summed over every replica's periodic flushes.
    Migration(7, "migration report counters", """
CREATE TABLE IF NOT EXISTS migration_usage (
    user_id TEXT NOT NULL,
    feature TEXT NOT NULL,
    count {bigint} NOT NULL,
    last_us {bigint} NOT NULL,
    PRIMARY KEY (user_id, feature)
)
"""),
    # Per-user mode (live | dry-run) set at run time by the admin API: every replica applies it.
    Migration(8, "per-user modes set at run time", """
CREATE TABLE IF NOT EXISTS user_modes (
    user_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    updated_us {bigint} NOT NULL
)
"""),
    # The delivery log (issue 12): one row per callback attempt, written with the outcome it led
    # to (same transaction, batched like the outcomes), found by message, delivery, host or age.
    Migration(9, "delivery log: every callback attempt", """
CREATE TABLE IF NOT EXISTS delivery_log (
    id {serial},
    at_us {bigint} NOT NULL,
    outbox_id {bigint} NOT NULL,
    event_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    user_id TEXT,
    target TEXT NOT NULL,
    host TEXT NOT NULL,
    status INTEGER,
    latency_us {bigint} NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    response TEXT
);
CREATE INDEX IF NOT EXISTS delivery_log_at ON delivery_log (at_us);
CREATE INDEX IF NOT EXISTS delivery_log_outbox ON delivery_log (outbox_id);
CREATE INDEX IF NOT EXISTS delivery_log_order ON delivery_log (order_key);
CREATE INDEX IF NOT EXISTS delivery_log_host ON delivery_log (host, at_us);
CREATE INDEX IF NOT EXISTS outbox_user ON outbox (user_id, id);
CREATE INDEX IF NOT EXISTS outbox_host ON outbox (host, id)
"""),
    # The operator console: messages found by number across users (either side, through one
    # index each, newest first), and the migration report's counters per UTC day (``day`` is
    # ``YYYY-MM-DD``), added by the same flushes as ``migration_usage``, purged with retention.
    Migration(10, "console: message search by number, pending callbacks by age, daily migration usage", """
CREATE INDEX IF NOT EXISTS messages_from_time ON messages (from_number, time_us);
CREATE INDEX IF NOT EXISTS messages_to_time ON messages (to_number, time_us);
CREATE INDEX IF NOT EXISTS outbox_pending_id ON outbox (id) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS migration_usage_daily (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    feature TEXT NOT NULL,
    count {bigint} NOT NULL,
    PRIMARY KEY (user_id, day, feature)
)
"""),
)

LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us {bigint} NOT NULL
)"""


def apply_next(types: Mapping[str, str], clock: Clock) -> Tx[Migration | None]:
    """Apply the first migration the database lacks and record it; None when it has them all.
    Runs inside the caller's write transaction, which holds the schema lock."""
    yield Exec(LEDGER.format(**types))
    rows = yield All("SELECT version FROM schema_migrations")
    applied = {int(r[0]) for r in rows}
    for m in MIGRATIONS:
        if m.version in applied:
            continue
        for statement in m.statements(types):
            yield Exec(statement)
        yield Exec("INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
                   m.version, m.name, clock())
        return m
    return None
