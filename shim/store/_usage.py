"""The migration report's counters: each replica adds the counts it gathered since its last flush,
to the totals (``migration_usage``) and to the day's counts (``migration_usage_daily``, per UTC day
of the row's last-seen time; purged with retention)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ._core import StoreCore
from ._ops import Exec, Tx, all_tx


def utc_day(us: int) -> str:
    """``YYYY-MM-DD``: the UTC day of an epoch-microseconds time (``migration_usage_daily.day``)."""
    return datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%d")


class UsageTxs(StoreCore):
    async def add_usage(self, rows: Sequence[tuple[str, str, int, int]]) -> None:
        """(user id, feature, count, last seen us) added to the stored counters, in one transaction:
        to the totals, and to the counts of the UTC day of each row's last seen time (rows in one
        order, totals then days: replicas flushing together cannot deadlock)."""
        if rows:
            await self._timed_write(self._tx_add_usage, sorted(rows))

    def _tx_add_usage(self, rows: Sequence[tuple[str, str, int, int]]) -> Tx[None]:
        daily: dict[tuple[str, str, str], int] = {}
        for user_id, feature, count, last_us in rows:
            yield Exec(
                "INSERT INTO migration_usage (user_id, feature, count, last_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, feature) DO UPDATE SET count = migration_usage.count + excluded.count,"
                " last_us = CASE WHEN excluded.last_us > migration_usage.last_us THEN excluded.last_us"
                " ELSE migration_usage.last_us END",
                user_id, feature, count, last_us,
            )
            day_key = (user_id, utc_day(last_us), feature)
            daily[day_key] = daily.get(day_key, 0) + count
        for (user_id, day, feature), count in sorted(daily.items()):
            yield Exec(
                "INSERT INTO migration_usage_daily (user_id, day, feature, count) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, day, feature) DO UPDATE"
                " SET count = migration_usage_daily.count + excluded.count",
                user_id, day, feature, count,
            )

    async def usage_daily(self, since_day: str) -> list[tuple[str, str, str, int]]:
        """(user id, day, feature, count) of every day from ``since_day`` (``YYYY-MM-DD``, UTC) on,
        ordered by user, day, feature. Days older than retention's purge horizon are gone."""
        rows = await self._timed_read(
            all_tx, "SELECT user_id, day, feature, count FROM migration_usage_daily WHERE day >= ?"
            " ORDER BY user_id, day, feature", since_day)
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def set_user_mode(self, user_id: str, mode: str) -> None:
        """A user's mode set at run time (``POST /admin/users/{userId}/mode``), for every replica."""
        await self._timed_write(self._tx_set_user_mode, user_id, mode)

    def _tx_set_user_mode(self, user_id: str, mode: str) -> Tx[None]:
        yield Exec("INSERT INTO user_modes (user_id, mode, updated_us) VALUES (?, ?, ?)"
                   " ON CONFLICT (user_id) DO UPDATE SET mode = excluded.mode, updated_us = excluded.updated_us",
                   user_id, mode, self.clock())

    async def user_modes(self) -> dict[str, str]:
        rows = await self._timed_read(all_tx, "SELECT user_id, mode FROM user_modes")
        return {r[0]: r[1] for r in rows}

    async def usage_rows(self) -> list[tuple[str, str, int, int]]:
        rows = await self._timed_read(all_tx, "SELECT user_id, feature, count, last_us FROM migration_usage")
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]
