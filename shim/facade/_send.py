"""The send use case, apart from HTTP: one v1 item → validated → intent recorded → v2 → bound to its
v2 id → Location. A single send and every item of a batch go through ``Sender.send``; the batch
adds only concurrency and per-item results.

No send is ever lost track of (SPEC §3): the intent is durable before v2 is called and carries a
correlation key that v2 echoes in every event (its ``tag``). Whatever happens after the request
leaves — a crash, a store failure, a timeout — the first event binds the message to its v2 id.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shim.clock import Clock, random_bytes
from shim.config import Config, UserConfig
from shim.core import (
    SendRequest,
    bind_v2,
    message_request_errors,
    parse_send_item,
    record_from_send,
    to_v2_request,
    v2_error_to_v1,
)
from shim.errors import CallbackInvalidUrl, MultiMessageLimit, OutcomeUnknown, ShimError, StoreUnavailable, error_body
from shim.sandbox.web_sandbox import segment_count, status_events
from shim.store import Store
from shim.upstream import UpstreamClient

if TYPE_CHECKING:
    from shim.ops import UsageTracker

log = logging.getLogger("shim.messages")
BATCH_LIMIT = 50
_ID_CHARS = string.ascii_lowercase + string.digits


# Base64url's digits, and the same digits in byte order (how SQLite compares text): a key's
# time, encoded in the second, sorts as the time does.
_TO_SORTED = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                             b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")


def new_send_key(now_us: int) -> str:
    """The correlation key of one send: 24 URL-safe characters, the time in milliseconds (8
    characters) and 96 random bits. Time first, so the indexes a send writes under it (its key,
    its pending id) take appends at their end instead of a random page each: fewer pages a commit
    writes to the WAL."""
    raw = (max(now_us, 0) // 1000).to_bytes(6, "big") + random_bytes(12)
    return base64.urlsafe_b64encode(raw).translate(_TO_SORTED).decode()


def dry_run_id(now_us: int) -> str:
    """29 characters like v2's ids (13-digit epoch millis + 16 random), for a dry-run message."""
    return f"{now_us // 1000:013d}" + "".join(secrets.choice(_ID_CHARS) for _ in range(16))


def message_path(user_id: str, message_id: str = "") -> str:
    base = f"/v1/users/{user_id}/messages"
    return f"{base}/{message_id}" if message_id else base


def batch_item_error(err: ShimError | None) -> ShimError:
    """The error a batch item reports. The C# SDK knows only the v1 categories (authentication,
    authorization, not-found, bad-request, conflict, unavailable, credit, limit, payment,
    forbidden): an internal failure of one item is a 503 ``unavailable``, never ``backend``."""
    if err is None or err.status == 500:
        return ShimError(
            err.message if err is not None else "An internal error occurred; the message may not have been sent",
            details=err.details if err is not None else None, status=503, category="unavailable",
            code="internal-error",
        )
    return err


class Sender:
    def __init__(
        self, cfg: Config, upstream: UpstreamClient, store: Store, clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None, new_key: Callable[[int], str] = new_send_key,
        url_refused: Callable[[str], bool] = lambda url: False, usage: UsageTracker | None = None,
    ) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.store = store
        self.clock = clock
        self.new_key = new_key
        # Called when storing a send enqueued callbacks (events that arrived before the record).
        self.on_enqueued = on_enqueued
        # The outbound address policy: a callback URL with a literal refused address is a 400.
        self.url_refused = url_refused
        # The migration report's counters (in memory: no store round trip on the send path).
        self.usage = usage

    async def send(self, user: UserConfig, item: Any, request_id: str = "") -> str:
        """Validate, record the intent, send to v2, bind; returns the absolute v1 Location."""
        req = parse_send_item(item)
        for prop, url in (("callbackUrl", req.callback_url), ("fallbackUrl", req.fallback_url)):
            if url is not None and self.url_refused(url):
                raise CallbackInvalidUrl(prop, url)
        received_us = self.clock()
        key = self.new_key(received_us)
        body = to_v2_request(req, user, self.cfg.server.public_url, self.upstream.base_url, key)
        if self.usage is not None:
            self.usage.send_fields(user.user_id, req.receipt_requested, req.callback_method, req.callback_timeout,
                                   req.fallback_url, bool(req.media) and body.get("media") != req.media)
        if user.mode == "dry-run":
            return await self._dry_run(user, req, body, key)
        intent = record_from_send(req, user, key, received_us)
        try:
            await self.store.record_intent(intent)
        except Exception:
            log.exception("could not record a send before calling v2", extra={"user_id": user.user_id})
            raise StoreUnavailable("The message could not be recorded; it was not sent") from None
        try:
            v2msg = await self.upstream.send_message(user, body, request_id)
        except OutcomeUnknown:
            # It may have been accepted: the intent stays, so its events (if any) still find it.
            raise OutcomeUnknown(key) from None
        except ShimError:
            # v2 answered no, or was never reached: nothing was sent, nothing to keep. (Anything
            # else, a cancellation included, leaves the intent: the send may be on its way.)
            await self._drop(key)
            raise
        record = bind_v2(intent, v2msg.id, v2msg.time, v2msg.segmentCount)
        try:
            enqueued = await self.store.bind_send(record, request_id or None)
        except Exception:
            log.exception("message sent on v2 but not bound", extra={"message_id": record.id, "user_id": user.user_id})
            raise StoreUnavailable(
                "The message was sent but could not be recorded; its callbacks will follow",
                details={"messageId": record.id},
            ) from None
        if enqueued:
            self.on_enqueued()
        return f"{self.cfg.server.public_url}{message_path(user.user_id, record.id)}"

    async def _dry_run(self, user: UserConfig, req: SendRequest, body: dict[str, Any], key: str) -> str:
        """Dry-run mode: the v2 request checked against v2's official spec, the message stored and
        answered as v1 would, nothing sent; its callbacks simulated as the sandbox would (sent,
        then delivered or failed, per ``receiptRequested``), so the app's callback handling runs."""
        errors = message_request_errors(body)
        if errors:
            where = ".".join(str(p) for p in errors[0].path) or "body"
            raise v2_error_to_v1(400, {"type": "request-validation", "description": f"{where}: {errors[0].message}"})
        now = self.clock()
        rec = bind_v2(record_from_send(req, user, key, now), dry_run_id(now)).model_copy(
            update={"dry_run": True, "send_key": None})
        v2msg = {"id": rec.id, "owner": rec.from_, "applicationId": user.application_id, "time": rec.time,
                 "segmentCount": segment_count(body.get("text", ""), body.get("media") or []), "direction": "out",
                 "to": body["to"], "from": body["from"], "text": body.get("text", ""), "media": body.get("media") or []}
        if "tag" in body:
            v2msg["tag"] = body["tag"]
        try:
            enqueued = await self.store.record_simulated(rec, status_events(v2msg))
        except Exception:
            log.exception("could not record a dry-run send", extra={"user_id": user.user_id})
            raise StoreUnavailable("The message could not be recorded") from None
        if self.usage is not None:
            self.usage.hit(user.user_id, "dry-run:message")
        if enqueued:
            self.on_enqueued()
        return f"{self.cfg.server.public_url}{message_path(user.user_id, rec.id)}"

    async def _drop(self, key: str) -> None:
        try:
            await self.store.drop_intent(key)
        except Exception:  # an unbound intent left behind is purged by retention
            log.exception("could not drop the intent of a send v2 refused", extra={"send_key": key})

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
