"""Retention: clear old message text, purge old rows."""

from __future__ import annotations

from ._core import StoreCore
from ._messages import record, update_row
from ._ops import All, Exec, Tx


class RetentionTxs(StoreCore):
    async def apply_retention(self, clear_text_before_us: int, purge_before_us: int) -> int:
        return await self._timed_write(self._tx_retention(clear_text_before_us, purge_before_us))

    def _tx_retention(self, clear_text_before_us: int, purge_before_us: int) -> Tx[int]:
        yield Exec("DELETE FROM messages WHERE time_us < ?", purge_before_us)
        yield Exec("DELETE FROM events WHERE received_us < ?", purge_before_us)
        yield Exec("DELETE FROM outbox WHERE status = 'delivered' AND updated_us < ?", purge_before_us)
        rows = yield All(
            "SELECT seq, doc FROM messages WHERE time_us < ? AND text_cleared = 0 LIMIT 1000", clear_text_before_us)
        for row in rows:
            rec = record(row)
            rec.text = ""
            yield from update_row(rec, text_cleared=True)
        return len(rows)
