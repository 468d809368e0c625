"""What the operator console reads beside the other groups' queries: recent activity counts."""

from __future__ import annotations

from ._core import StoreCore
from ._ops import One, Tx


class ConsoleTxs(StoreCore):
    async def activity(self, since_us: int) -> dict[str, int]:
        """What happened since ``since_us``: ``events`` (v2 events stored, by ``received_us``),
        ``attempts_ok`` (callback attempts the receiver accepted: the delivery log's outcome
        ``ok``) and ``attempts_failed`` (every other outcome: ``http-error``, ``timeout``,
        ``network-error``, ``refused``), by the attempt's ``at_us``. Attempts, not callbacks: a
        callback retried three times before it was delivered counts three failed and one ok.

        Each count is an index range scan over the window (``events_received``,
        ``delivery_log_at``): its cost follows the rows in the window, not the history, so keep
        the window short (minutes, hours) on a busy shim. Purged rows are not counted."""
        return await self._timed_read(self._tx_activity, since_us)

    def _tx_activity(self, since_us: int) -> Tx[dict[str, int]]:
        events = yield One("SELECT COUNT(*) FROM events WHERE received_us >= ?", since_us)
        attempts = yield One(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), 0)"
            " FROM delivery_log WHERE at_us >= ?", since_us)
        total, ok = int(attempts[0]), int(attempts[1])
        return {"events": int(events[0]), "attempts_ok": ok, "attempts_failed": total - ok}
