"""The send use case, apart from HTTP: one v1 item → validated → v2 → stored → Location. A single
send and every item of a batch go through ``Sender.send``; the batch adds only concurrency and
per-item results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from shim.clock import Clock
from shim.config import Config, UserConfig
from shim.core import parse_send_item, record_from_send, to_v2_request
from shim.errors import MultiMessageLimit, ShimError, StoreUnavailable, error_body
from shim.store import Store
from shim.upstream import UpstreamClient

log = logging.getLogger("shim.messages")
BATCH_LIMIT = 50


def message_path(user_id: str, message_id: str = "") -> str:
    base = f"/v1/users/{user_id}/messages"
    return f"{base}/{message_id}" if message_id else base


def batch_item_error(err: ShimError | None) -> ShimError:
    """The error a batch item reports. The C# SDK knows only the v1 categories (authentication,
    authorization, not-found, bad-request, conflict, unavailable, credit, limit, payment,
    forbidden): an internal failure of one item is ``unavailable``, never ``backend``."""
    if err is None or err.category == "backend":
        return ShimError(
            err.message if err is not None else "An internal error occurred; the message may not have been sent",
            details=err.details if err is not None else None, status=503, category="unavailable",
            code="internal-error",
        )
    return err


class Sender:
    def __init__(
        self, cfg: Config, upstream: UpstreamClient, store: Store, clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.store = store
        self.clock = clock
        # Called when storing a send enqueued callbacks (events that arrived before the record).
        self.on_enqueued = on_enqueued

    async def send(self, user: UserConfig, item: Any, request_id: str = "") -> str:
        """Validate, send to v2, store; returns the absolute v1 Location."""
        req = parse_send_item(item)
        body = to_v2_request(req, user, self.cfg.server.public_url, self.upstream.base_url)
        received = self.clock()
        v2msg = await self.upstream.send_message(user, body, request_id)
        record = record_from_send(req, v2msg, user, received)
        try:
            enqueued = await self.store.insert_message(record, request_id or None)
        except Exception:
            log.exception("message sent on v2 but not stored", extra={"message_id": record.id, "user_id": user.user_id})
            raise StoreUnavailable(
                "The message was sent but could not be recorded", details={"messageId": record.id}
            ) from None
        if enqueued:
            self.on_enqueued()
        return f"{self.cfg.server.public_url}{message_path(user.user_id, record.id)}"

    async def send_batch(self, user: UserConfig, items: list[Any], request_id: str = "") -> list[dict[str, Any]]:
        """Each item sent concurrently (bounded); results in request order, a bad item never
        failing the others."""
        if len(items) > BATCH_LIMIT:
            raise MultiMessageLimit(len(items), BATCH_LIMIT)
        gate = asyncio.Semaphore(self.cfg.upstream.batch_concurrency)

        async def one(item: Any) -> dict[str, Any]:
            async with gate:
                try:
                    return {"result": "accepted", "location": await self.send(user, item, request_id)}
                except ShimError as err:
                    return {"result": "error", "error": error_body(batch_item_error(err))}
                except Exception:
                    log.exception("batch item failed")
                    return {"result": "error", "error": error_body(batch_item_error(None))}

        return list(await asyncio.gather(*(one(item) for item in items)))
