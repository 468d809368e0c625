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


# The v2 ``tag`` of every send shim makes starts with this, then the send's correlation key: it
# is how an event finds its message when the send was never bound to its v2 id (a crash or a
# store failure after v2's 202, a timeout after v2 accepted), and how shim tells its own sends
# from messages sent natively on v2. The app's own tag stays in the store and is what callbacks
# and GET show.
SEND_KEY_PREFIX = "shim1:"
V2_MAX_TAG = 1024
_SEND_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def v2_tag(send_key: str, app_tag: str | None) -> str:
    """The key, then the app's tag when both fit in v2's 1024 characters (for people reading
    Bandwidth's own records; shim never reads the app's part back)."""
    tag = f"{SEND_KEY_PREFIX}{send_key}"
    if app_tag:
        wrapped = f"{tag}:{app_tag}"
        if len(wrapped) <= V2_MAX_TAG:
            return wrapped
    return tag


def send_key_of(tag: str | None) -> str | None:
    """The correlation key in a v2 tag, or None for a message shim did not send."""
    if not tag or not tag.startswith(SEND_KEY_PREFIX):
        return None
    key = tag[len(SEND_KEY_PREFIX):].split(":", 1)[0]
    return key if _SEND_KEY.match(key) else None


def pending_id(send_key: str) -> str:
    """The id a send is recorded under until its v2 id is known (never handed out)."""
    return f"pending-{send_key}"


def to_v2_request(
    req: SendRequest, user: UserConfig, public_url: str, v2_base: str, send_key: str
) -> dict[str, Any]:
    return _v2_body(user, req.to, req.from_, req.text, req.media, req.tag, public_url, v2_base, send_key)


def v2_request_of(rec: MessageRecord, user: UserConfig, public_url: str, v2_base: str) -> dict[str, Any] | None:
    """The v2 request shim made (or, in dry-run, would have made) for a stored v1 send: v2 keeps
    nothing, so the console shows it rebuilt by the same mapping, with the record's application
    and the user's current account and URLs. A dry-run record keeps no send key: its tag shows
    ``dry-run`` in the key's place. None for what shim did not send through v1 (inbound, native
    v2 sends, legacy records without a key)."""
    key = rec.send_key or ("dry-run" if rec.dry_run else None)
    if rec.direction != "out" or rec.native or key is None:
        return None
    body = _v2_body(user, rec.to, rec.from_, rec.text, rec.media, rec.tag, public_url, v2_base, key)
    if rec.application_id:
        body["applicationId"] = rec.application_id
    return body


def _v2_body(user: UserConfig, to: str, from_: str, text: str | None, media: list[str], tag: str | None,
             public_url: str, v2_base: str, send_key: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "applicationId": user.application_id,
        "to": [to],
        "from": from_,
    }
    if text is not None and text != "":
        body["text"] = text
    if media:
        body["media"] = [rewrite_outbound_media(u, public_url, user, v2_base) for u in media]
    body["tag"] = v2_tag(send_key, tag)
    return body


def record_from_send(req: SendRequest, user: UserConfig, send_key: str, received_us: int) -> MessageRecord:
    """The send's record as written *before* v2 is called (its intent), under ``pending_id``. Built
    from a validated ``SendRequest`` and the config: not validated again (the send's hot path)."""
    return MessageRecord.built({
        "id": pending_id(send_key),
        "user_id": user.user_id,
        "direction": "out",
        "from_": req.from_,
        "to": req.to,
        "text": req.text or "",
        "media": list(req.media),
        "state": "queued",
        "time_us": received_us,
        "segment_count": 1,
        "application_id": user.application_id,
        "callback_url": req.callback_url,
        "callback_method": req.callback_method,
        "callback_timeout": req.callback_timeout,
        "fallback_url": req.fallback_url,
        "tag": req.tag,
        "receipt_requested": req.receipt_requested,
        "delivery_state": None,
        "delivery_code": None,
        "delivery_description": None,
        "sent_notified": False,
        "send_key": send_key,
        "native": False,
        "dry_run": False,
        "seq": None,
    })


def bind_v2(rec: MessageRecord, v2_id: str, v2_time: str | None = None, segment_count: int | None = None) -> MessageRecord:
    """The intent bound to its v2 message: v2's id (the v1 id too), v2's time when it gave one."""
    time_us = parse_time_us(v2_time) if v2_time else None
    values = dict(rec.__dict__)  # what ``model_copy(update=...)`` does, without its generic work
    values["id"] = v2_id
    if time_us is not None:
        values["time_us"] = time_us
    if segment_count is not None:
        values["segment_count"] = segment_count
    return MessageRecord.built(values, rec.__pydantic_fields_set__ | {"id", "time_us", "segment_count"})


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
