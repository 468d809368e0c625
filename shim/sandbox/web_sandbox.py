"""The sandbox upstream: a built-in v2 simulator (a development aid, not Bandwidth).

Serves ``POST /users/{accountId}/messages`` with the official spec's validation and the v2 media
API, then posts realistic callback arrays to shim's callback URL (RFC 7235 challenge first,
as Bandwidth does).

Test numbers (the ``to`` of a send):
  ``+1555000XXXX`` where XXXX is a v2 error code (4000–5999, 9902, 9999): the message
  is accepted, then fails with ``message-failed`` errorCode XXXX (e.g. ``+15550004432``).
  ``+15550000429`` → the send is answered 429; ``+15550000500`` → 500;
  ``+15550000408`` → the send hangs for 60 s (upstream timeout).
  ``+15550000504`` → the message is accepted (its callbacks posted), then the answer hangs for
  60 s: a send whose outcome shim cannot know (found again by reconciliation through its tag).
Message search: ``GET /users/{accountId}/messages`` (``listMessages``) serves what the sandbox
was sent, in the spec's ``messagesList`` shape (``totalCount``, ``pageInfo`` with page tokens,
one ``listMessageItem`` per recipient with its final status, ``errorCode``, ``tag``…), with
the filters reconciliation uses and a 14-day range limit.
Admin: ``POST /sandbox/lose`` ``{"to":[...]}`` (``"clear": true`` to forget them) drops every
callback of messages to those numbers (as if Bandwidth gave up); ``POST /sandbox/search-rate-limit``
``{"count": n, "retryAfter": "1"}`` answers the next n searches 429 with that ``Retry-After``;
``POST /sandbox/inbound`` ``{"accountId","applicationId","from","to":[...],"text",
"media":[{"name","contentType","base64"}]}`` injects an inbound message (media stored and served).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import string
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from shim.basic_auth import basic_credentials, basic_header
from shim.core import message_request_errors, parse_time_us
from shim.keys import SANDBOX, SANDBOX_SESSION, SANDBOX_TASKS

log = logging.getLogger("shim.sandbox")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_ID_CHARS = string.ascii_lowercase + string.digits
TEST_PREFIX = "+1555000"
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


def message_id() -> str:
    """29 characters, like v2's: 13-digit epoch millis + 16 random."""
    return f"{int(time.time() * 1000):013d}" + "".join(random.choices(_ID_CHARS, k=16))


def segment_count(text: str, media: list[str]) -> int:
    if media:
        return 1
    if all(c in GSM7 for c in text):
        return 1 if len(text) <= 160 else -(-len(text) // 153)
    return 1 if len(text) <= 70 else -(-len(text) // 67)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def v2_error(status: int, type_: str, description: str, **extra: Any) -> web.Response:
    return web.json_response({"type": type_, "description": description, **extra}, status=status)


@dataclass
class CallbackTarget:
    url: str
    username: str | None = None
    password: str | None = None


# What the sandbox keeps of what it is sent (it runs for as long as a demo does): the latest
# messages, and media up to a count and a size, the oldest written dropped first.
MAX_SENT = 1000
MAX_MEDIA_ITEMS = 256
MAX_MEDIA_BYTES = 64 * 1024 * 1024


class BoundedMedia(OrderedDict[tuple[str, str], tuple[bytes, str]]):
    """(account, media name) → (content, content type), at most ``max_items`` and ``max_bytes``
    (the newest item is always kept); writing an item makes it the newest."""

    def __init__(self, max_items: int = MAX_MEDIA_ITEMS, max_bytes: int = MAX_MEDIA_BYTES) -> None:
        super().__init__()
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __setitem__(self, key: tuple[str, str], value: tuple[bytes, str]) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        total = sum(len(data) for data, _ in self.values())
        while len(self) > 1 and (len(self) > self.max_items or total > self.max_bytes):
            _, (data, _) = self.popitem(last=False)
            total -= len(data)


@dataclass
class SandboxState:
    credentials: set[tuple[str, str]] | None
    target: CallbackTarget | None
    delay_s: float = 0.05
    media: BoundedMedia = field(default_factory=BoundedMedia)
    sent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_SENT))
    callbacks_posted: int = 0
    # Message search: every item by message id (oldest dropped first), and the test controls.
    searchable: OrderedDict[str, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    lose_to: set[str] = field(default_factory=set)
    callbacks_lost: int = 0
    searches: int = 0
    search_limit: int = 0
    search_retry_after: str = "1"
    # Seconds each search takes (tests: a run slow enough to be interrupted).
    search_delay_s: float = 0.0



def _authorized(request: web.Request) -> bool:
    creds = request.app[SANDBOX].credentials
    given = basic_credentials(request.headers.get("Authorization"))
    return given is not None and (creds is None or given in creds)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/users/") and not _authorized(request):
        return v2_error(401, "unauthorized", "Authentication Failed")
    return await handler(request)


async def create_message(request: web.Request) -> web.StreamResponse:
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("application/json"):
        return v2_error(
            415, "unsupported-content-type",
            f"Content type '{ctype}' not supported. Please use 'application/json'",
        )
    try:
        body = json.loads(await request.read())
    except ValueError:
        return v2_error(400, "request-validation", "Your request could not be accepted")
    field_errors = [
        {"fieldName": ".".join(str(p) for p in e.path) or "body", "description": e.message}
        for e in message_request_errors(body)
    ]
    if not field_errors and isinstance(body, dict):
        for key, value in [("from", body["from"])] + [("to", t) for t in body["to"]]:
            if not E164.match(value):
                field_errors.append({
                    "fieldName": key,
                    "description": f"'{value}' must be replaced with a valid E164 formatted telephone number",
                })
        if not body.get("text") and not body.get("media"):
            field_errors.append({"fieldName": "text", "description": "text or media is required"})
    if field_errors:
        return v2_error(400, "request-validation", "Your request could not be accepted",
                        fieldErrors=field_errors)
    to: list[str] = body["to"]
    if "+15550000429" in to:
        return v2_error(429, "max-message-queue-size-exceeded", "The SMS queue for your account is full")
    if "+15550000500" in to:
        return v2_error(500, "internal-server-error", "Internal error")
    if "+15550000408" in to:
        await asyncio.sleep(60)
    media = body.get("media") or []
    msg = {
        "id": message_id(),
        "owner": body["from"],
        "applicationId": body["applicationId"],
        "time": now_iso(),
        "segmentCount": segment_count(body.get("text", ""), media),
        "direction": "out",
        "to": to,
        "from": body["from"],
        "text": body.get("text", ""),
        "media": media,
        "priority": body.get("priority", "default"),
    }
    if "tag" in body:
        msg["tag"] = body["tag"]
    state = request.app[SANDBOX]
    state.sent.append(msg)
    remember(state, request.match_info["accountId"], msg)
    if state.target is not None:
        _spawn(request.app, _emit_status(request.app, msg))
    if "+15550000504" in to:
        await asyncio.sleep(60)
    return web.json_response(msg, status=202)


def status_events(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The callbacks Bandwidth would send for a message: one per recipient."""
    out: list[dict[str, Any]] = []
    cb_msg = {k: v for k, v in msg.items() if k != "priority"} | {"text": ""}
    mms = bool(msg["media"])
    for to in msg["to"]:
        code = _failure_code(to)
        if mms:
            out.append({"type": "message-sending", "time": now_iso(), "to": to,
                        "description": "Message is sending to carrier", "message": cb_msg})
        if code is not None:
            out.append({"type": "message-failed", "time": now_iso(), "to": to, "errorCode": code,
                        "description": "rejected by sandbox test number", "message": cb_msg})
        else:
            out.append({"type": "message-delivered", "time": now_iso(), "to": to,
                        "description": "Message delivered to carrier", "message": cb_msg})
    return out


def _failure_code(to: str) -> int | None:
    if to.startswith(TEST_PREFIX) and len(to) == len(TEST_PREFIX) + 4:
        code = int(to[-4:])
        if 4000 <= code <= 5999 or code in (9902, 9999):
            return code
    return None


def _spawn(app: web.Application, coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    app[SANDBOX_TASKS].add(task)
    task.add_done_callback(app[SANDBOX_TASKS].discard)


async def _emit_status(app: web.Application, msg: dict[str, Any]) -> None:
    state = app[SANDBOX]
    await asyncio.sleep(state.delay_s)
    for event in status_events(msg):
        if event["to"] in state.lose_to:
            state.callbacks_lost += 1
            continue
        await post_callback(app, [event])


async def post_callback(app: web.Application, events: list[dict[str, Any]]) -> bool:
    """POST like Bandwidth: first without credentials, then answer the Basic challenge;
    retry a few times on failure (Bandwidth retries for 24 h)."""
    state = app[SANDBOX]
    target = state.target
    if target is None:
        return False
    data = json.dumps(events).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "BandwidthAPI/v2"}
    for attempt in range(12):
        try:
            async with app[SANDBOX_SESSION].post(target.url, data=data, headers=headers) as resp:
                await resp.read()
                if resp.status == 401 and "WWW-Authenticate" in resp.headers and target.username:
                    authed = headers | {"Authorization": basic_header(target.username, target.password or "")}
                    async with app[SANDBOX_SESSION].post(target.url, data=data, headers=authed) as r2:
                        await r2.read()
                        status = r2.status
                else:
                    status = resp.status
            if 200 <= status < 300:
                state.callbacks_posted += len(events)
                return True
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("sandbox callback failed", extra={"error": type(e).__name__})
        await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
    return False


# -- message search ----------------------------------------------------------------------------
MAX_SEARCHABLE = 200_000
SEARCH_WINDOW_US = 14 * 24 * 3600 * 1_000_000
STATUSES = {"RECEIVED", "QUEUED", "SENDING", "SENT", "FAILED", "DELIVERED", "ACCEPTED", "UNDELIVERED"}


def remember(state: SandboxState, account: str, msg: dict[str, Any]) -> None:
    """The ``listMessageItem`` of each recipient, with the status its callbacks end in."""
    items = []
    for to in msg["to"]:
        code = _failure_code(to)
        item: dict[str, Any] = {
            "messageId": msg["id"], "accountId": account, "sourceTn": msg["from"], "destinationTn": to,
            "messageStatus": "FAILED" if code is not None else "DELIVERED", "messageDirection": "OUTBOUND",
            "messageType": "mms" if msg["media"] else "sms", "segmentCount": msg["segmentCount"],
            "errorCode": code or 0, "receiveTime": msg["time"], "carrierName": None,
            "messageSize": len(msg["text"].encode()), "messageLength": len(msg["text"]),
            "attachmentCount": len(msg["media"]), "recipientCount": len(msg["to"]), "campaignClass": None,
            "campaignId": None, "bwLatency": None, "media": list(msg["media"]), "priority": msg["priority"],
        }
        if "tag" in msg:
            item["tag"] = msg["tag"]
        items.append(item)
    state.searchable[msg["id"]] = items
    while len(state.searchable) > MAX_SEARCHABLE:
        state.searchable.popitem(last=False)


def _numbers_match(value: str, number: str) -> bool:
    """``sourceTn``/``destinationTn``: a full number, a comma-separated list, or a partial number."""
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if len(wanted) == 1 and len(wanted[0]) < 12:
        return wanted[0] in number
    return number in wanted


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def _offset(token: str) -> int | None:
    try:
        value = int(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return value if value >= 0 else None


async def search_messages(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX]
    state.searches += 1
    if state.search_delay_s:
        await asyncio.sleep(state.search_delay_s)
    if state.search_limit > 0:
        state.search_limit -= 1
        resp = v2_error(429, "rate_limit_exceeded", "Too many requests: retry later")
        resp.headers["Retry-After"] = state.search_retry_after
        return resp
    q = request.query
    if not q:
        return v2_error(400, "request-validation", "You must include at least one query parameter")
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        return v2_error(400, "request-validation", "limit must be an integer")
    offset = _offset(q["pageToken"]) if "pageToken" in q else 0
    if not 1 <= limit <= 10000 or offset is None or offset + limit > 10000:
        return v2_error(400, "request-validation", "limit and pageToken must stay within 10000 results")
    status = q.get("messageStatus")
    if status is not None and status not in STATUSES:
        return v2_error(400, "request-validation", f"messageStatus must be one of {' '.join(sorted(STATUSES))}")
    bounds = []
    for key in ("fromDateTime", "toDateTime"):
        value = parse_time_us(q[key]) if key in q else None
        if key in q and value is None:
            return v2_error(400, "request-validation", f"{key} must be an ISO 8601 date-time")
        bounds.append(value)
    lo, hi = bounds
    if lo is not None and hi is not None and hi - lo > SEARCH_WINDOW_US:
        return v2_error(400, "request-validation", "The date range to search in is at most 14 days")
    account = request.match_info["accountId"]
    found = []
    for items in state.searchable.values():
        for item in items:
            t = parse_time_us(item["receiveTime"]) or 0
            if (item["accountId"] == account
                    and q.get("messageId", item["messageId"]) == item["messageId"]
                    and ("sourceTn" not in q or _numbers_match(q["sourceTn"], item["sourceTn"]))
                    and ("destinationTn" not in q or _numbers_match(q["destinationTn"], item["destinationTn"]))
                    and status in (None, item["messageStatus"])
                    and q.get("messageDirection", item["messageDirection"]) == item["messageDirection"]
                    and q.get("messageType", item["messageType"]) == item["messageType"]
                    and q.get("errorCode", str(item["errorCode"])) == str(item["errorCode"])
                    and (lo is None or t >= lo) and (hi is None or t <= hi)):
                found.append((t, item))
    found.sort(key=lambda f: (f[0], f[1]["messageId"], f[1]["destinationTn"]))
    page = [item for _, item in found[offset:offset + limit]]
    info: dict[str, str] = {}
    base = request.url.with_scheme(request.url.scheme)
    if offset + limit < len(found):
        info["nextPageToken"] = _token(offset + limit)
        info["nextPage"] = str(base.update_query(pageToken=info["nextPageToken"]))
    if offset > 0:
        info["prevPageToken"] = _token(max(0, offset - limit))
        info["prevPage"] = str(base.update_query(pageToken=info["prevPageToken"]))
    return web.json_response({"totalCount": len(found), "pageInfo": info, "messages": page})


async def lose_callbacks(request: web.Request) -> web.StreamResponse:
    """Drop every callback of messages sent to the given numbers (``clear`` forgets them)."""
    body = await request.json()
    numbers = set(body.get("to") or [])
    state = request.app[SANDBOX]
    if body.get("clear"):
        state.lose_to -= numbers if numbers else set(state.lose_to)
    else:
        state.lose_to |= numbers
    return web.json_response({"lose_to": sorted(state.lose_to), "callbacks_lost": state.callbacks_lost})


async def search_rate_limit(request: web.Request) -> web.StreamResponse:
    """Answer the next ``count`` searches 429 with ``Retry-After: retryAfter``."""
    body = await request.json()
    state = request.app[SANDBOX]
    state.search_limit = int(body.get("count", 1))
    state.search_retry_after = str(body.get("retryAfter", "1"))
    return web.json_response({"count": state.search_limit, "retryAfter": state.search_retry_after})


# -- media ------------------------------------------------------------------------------------
async def list_media(request: web.Request) -> web.StreamResponse:
    account = request.match_info["accountId"]
    base = f"{request.url.origin()}/users/{account}/media"
    items = [
        {"content": f"{base}/{name}", "contentLength": len(data), "mediaName": name}
        for (acct, name), (data, _) in sorted(request.app[SANDBOX].media.items())
        if acct == account
    ]
    return web.json_response(items)


async def put_media(request: web.Request) -> web.StreamResponse:
    key = (request.match_info["accountId"], request.match_info["mediaId"])
    data = await request.read()
    request.app[SANDBOX].media[key] = (data, request.headers.get("Content-Type", "application/octet-stream"))
    return web.Response(status=204)


async def get_media(request: web.Request) -> web.StreamResponse:
    key = (request.match_info["accountId"], request.match_info["mediaId"])
    found = request.app[SANDBOX].media.get(key)
    if found is None:
        return v2_error(404, "object-not-found", "Media not found")
    return web.Response(body=found[0], headers={"Content-Type": found[1]})


async def delete_media(request: web.Request) -> web.StreamResponse:
    key = (request.match_info["accountId"], request.match_info["mediaId"])
    request.app[SANDBOX].media.pop(key, None)
    return web.Response(status=204)


# -- admin ------------------------------------------------------------------------------------
async def inject_inbound(request: web.Request) -> web.StreamResponse:
    """Simulate a message arriving at one or more of the account's numbers."""
    body = await request.json()
    account = str(body["accountId"])
    mid = message_id()
    media_urls = []
    for i, m in enumerate(body.get("media") or []):
        name = f"{mid}/{i}/{m['name']}"
        request.app[SANDBOX].media[(account, name)] = (
            base64.b64decode(m["base64"]), m.get("contentType", "application/octet-stream"),
        )
        media_urls.append(f"{request.url.origin()}/users/{account}/media/{name}")
    recipients = body["to"] if isinstance(body["to"], list) else [body["to"]]
    owned = body.get("owned") or recipients
    events = []
    for to in owned:
        events.append({
            "type": "message-received", "time": now_iso(), "description": "Incoming message received",
            "to": to,
            "message": {
                "id": mid, "time": now_iso(), "to": recipients, "from": body["from"],
                "text": body.get("text", ""), "applicationId": body["applicationId"],
                "media": media_urls, "owner": to, "direction": "in",
                "segmentCount": segment_count(body.get("text", ""), media_urls),
            },
        })
    ok = True
    for ev in events:
        ok = await post_callback(request.app, [ev]) and ok
    return web.json_response({"id": mid, "delivered": ok, "events": events})


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "sandbox": True})


def build_sandbox_app(
    credentials: set[tuple[str, str]] | None = None,
    target: CallbackTarget | None = None,
    delay_s: float = 0.05,
) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=8 * 1024 * 1024)
    app[SANDBOX] = SandboxState(credentials=credentials, target=target, delay_s=delay_s)
    app[SANDBOX_TASKS] = set()
    app.router.add_get("/", healthz)
    app.router.add_post("/users/{accountId}/messages", create_message)
    app.router.add_get("/users/{accountId}/messages", search_messages)
    app.router.add_get("/users/{accountId}/media", list_media)
    app.router.add_put("/users/{accountId}/media/{mediaId:.+}", put_media)
    app.router.add_get("/users/{accountId}/media/{mediaId:.+}", get_media)
    app.router.add_delete("/users/{accountId}/media/{mediaId:.+}", delete_media)
    app.router.add_post("/sandbox/inbound", inject_inbound)
    app.router.add_post("/sandbox/lose", lose_callbacks)
    app.router.add_post("/sandbox/search-rate-limit", search_rate_limit)

    async def session_ctx(app: web.Application) -> Any:
        app[SANDBOX_SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        yield
        tasks: set[asyncio.Task[None]] = app[SANDBOX_TASKS]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app[SANDBOX_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    return app
