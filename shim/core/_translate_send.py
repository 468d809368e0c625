"""v1 send → v2 request, and v2 answer → stored record or v1 error. Pure: no I/O."""

from __future__ import annotations

import re
from typing import Any

from shim.config import UserConfig
from shim.errors import (
    BadRequest,
    InvalidProperty,
    MediaNotFound,
    MediaSizeOverflow,
    MediaUnavailable,
    MessageRateLimit,
    ShimError,
    Unavailable,
)

from ._message import MessageRecord
from ._time import parse_time_us
from ._v1_send import SendRequest
from ._v2 import V2Message

LEGACY_V1_BASE = "https://api.catapult.inetwork.com"
_MEDIA_PATH = re.compile(r"^/v1/users/(?P<user>[^/]+)/media/(?P<name>.+)$")


def v2_media_url(v2_base: str, account_id: str, media_name: str) -> str:
    return f"{v2_base.rstrip('/')}/users/{account_id}/media/{media_name}"


def v1_media_url(public_url: str, user_id: str, media_name: str) -> str:
    return f"{public_url}/v1/users/{user_id}/media/{media_name}"


def rewrite_outbound_media(url: str, public_url: str, user: UserConfig, v2_base: str) -> str:
    """shim's own or the old Catapult media URLs become the user's v2 media URL."""
    for base in (public_url, LEGACY_V1_BASE):
        if url.startswith(base + "/"):
            m = _MEDIA_PATH.match(url[len(base):])
            if m and m.group("user") == user.user_id:
                return v2_media_url(v2_base, user.account_id, m.group("name"))
    return url


def rewrite_inbound_media(url: str, public_url: str, user: UserConfig) -> str:
    """v2 media URLs need v2 credentials: hand the app shim's v1 media URL instead."""
    marker = f"/users/{user.account_id}/media/"
    idx = url.find(marker)
    if idx < 0:
        return url
    return v1_media_url(public_url, user.user_id, url[idx + len(marker):])


def to_v2_request(
    req: SendRequest, user: UserConfig, public_url: str, v2_base: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "applicationId": user.application_id,
        "to": [req.to],
        "from": req.from_,
    }
    if req.text is not None and req.text != "":
        body["text"] = req.text
    if req.media:
        body["media"] = [rewrite_outbound_media(u, public_url, user, v2_base) for u in req.media]
    if req.tag is not None:
        body["tag"] = req.tag
    return body


def record_from_send(
    req: SendRequest, v2: V2Message, user: UserConfig, received_us: int
) -> MessageRecord:
    time_us = parse_time_us(v2.time) if v2.time else None
    if time_us is None:
        time_us = received_us
    return MessageRecord(
        id=v2.id,
        user_id=user.user_id,
        direction="out",
        from_=req.from_,
        to=req.to,
        text=req.text or "",
        media=list(req.media),
        state="queued",
        time_us=time_us,
        segment_count=v2.segmentCount,
        application_id=user.application_id,
        callback_url=req.callback_url,
        callback_method=req.callback_method,
        callback_timeout=req.callback_timeout,
        fallback_url=req.fallback_url,
        tag=req.tag,
        receipt_requested=req.receipt_requested,
    )


def v2_error_to_v1(status: int, body: Any, *, media_name: str | None = None) -> ShimError:
    """Map a non-2xx v2 answer to the v1 error the legacy app sees (SPEC §3): the one place for
    both the messages and the media resources (``media_name`` set for the latter)."""
    description = ""
    if isinstance(body, dict):
        description = str(body.get("description") or body.get("message") or "")
    if status in (401, 403):
        service = "media service" if media_name is not None else "messaging gateway"
        return Unavailable(
            f"The {service} rejected shim's upstream credentials", details={"upstreamStatus": str(status)},
        )
    if media_name is not None:
        if status == 404:
            return MediaNotFound(media_name)
        if status == 413:
            return MediaSizeOverflow("The media file is larger than the limit", details={"mediaName": media_name})
        if 400 <= status < 500:
            return BadRequest(f"The media service rejected the request ({status})", details={"mediaName": media_name})
        return MediaUnavailable("The media service is unavailable", details={"upstreamStatus": str(status)})
    if status == 400:
        details: dict[str, str] = {}
        field_errors = body.get("fieldErrors") if isinstance(body, dict) else None
        if isinstance(field_errors, list):
            for fe in field_errors:
                if isinstance(fe, dict):
                    name = str(fe.get("fieldName") or "field")
                    key, n = name, 2
                    while key in details:
                        key, n = f"{name}#{n}", n + 1
                    details[key] = str(fe.get("description") or "")
        msg = description or "The message was rejected by the messaging gateway"
        if details:
            msg = f"{msg}: " + "; ".join(f"{k}: {v}" for k, v in details.items())
        return InvalidProperty(msg, details=details)
    if status == 429:
        return MessageRateLimit(description or "Message rate limit exceeded")
    return Unavailable(
        "The messaging gateway is unavailable", details={"upstreamStatus": str(status)}
    )
