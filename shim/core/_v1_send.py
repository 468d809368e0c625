"""Parsing one v1 send item into a validated request, with v1's error codes.

Tolerates every legacy SDK's quirks (v1-api.md §2.1): JSON ``null`` means absent (Python SDK
sends all ten keys), ``media`` may be a string (Java), ``callbackTimeout`` may be a numeric
string, ``callbackHttpMethod`` any case, unknown keys are ignored.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from shim.errors import BlankProperty, CallbackInvalidUrl, InvalidProperty, MissingProperty

from ._message import built_model

MAX_TEXT = 2048
MAX_TAG = 1024
MAX_MEDIA_URL = 4096


Receipt = Literal["none", "all", "error"]
Method = Literal["GET", "POST"]


class SendRequest(BaseModel):
    from_: str
    to: str
    text: str | None = None
    media: list[str] = Field(default_factory=list)
    receipt_requested: Receipt | None = None
    callback_url: str | None = None
    callback_method: Method = "POST"
    callback_timeout: int | None = None
    fallback_url: str | None = None
    tag: str | None = None


def _unicode(key: str, value: str) -> str:
    """JSON can carry a lone surrogate (``"\\ud800"``) that no store or encoder can: rejected
    before anything is sent, without echoing the value."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidProperty(
                f"The 'message' resource property '{key}' contains an invalid Unicode character "
                "(an unpaired surrogate)",
                details={"propertyName": key},
            ) from None
    return value


def _string(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidProperty(
            f"The 'message' resource property '{key}' must be a string",
            details={"propertyName": key},
        )
    return _unicode(key, value)


def _required(item: dict[str, Any], key: str) -> str:
    value = _string(item, key)
    if value is None:
        raise MissingProperty(key)
    if not value.strip():
        raise BlankProperty(key)
    return value.strip()


def _enum(item: dict[str, Any], key: str, allowed: tuple[str, ...], upper: bool = False) -> str | None:
    value = _string(item, key)
    if value is None:
        return None
    norm = value.strip().upper() if upper else value.strip().lower()
    if norm not in allowed:
        raise InvalidProperty(
            f"The 'message' resource property '{key}' must be one of the following values: "
            + ", ".join(allowed),
            details={"propertyName": key},
        )
    return norm


def is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _url(item: dict[str, Any], key: str) -> str | None:
    value = _string(item, key)
    if value is None:
        return None
    value = value.strip()
    if not is_http_url(value):
        raise CallbackInvalidUrl(key, value)
    return value


def _timeout(item: dict[str, Any]) -> int | None:
    value = item.get("callbackTimeout")
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # not "²"
        number = int(value.strip())
    if number is None or not 1 <= number <= 10000:
        raise InvalidProperty(
            "The 'message' resource property 'callbackTimeout' must be an integer "
            "number of milliseconds between 1 and 10000",
            details={"propertyName": "callbackTimeout"},
        )
    return number


def _media(item: dict[str, Any]) -> list[str]:
    value = item.get("media")
    if value is None:
        return []
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidProperty(
            "The 'message' resource property 'media' must be a URL or a list of URLs",
            details={"propertyName": "media"},
        )
    out = []
    for u in urls:
        u = _unicode("media", u).strip()
        if not is_http_url(u) or len(u) > MAX_MEDIA_URL:
            raise InvalidProperty(
                f"The media URL {u} is not a valid http(s) URL",
                details={"propertyName": "media"},
            )
        out.append(u)
    return out


def parse_send_item(item: Any) -> SendRequest:
    """One v1 message object → SendRequest, or the v1 error the real API would give."""
    if not isinstance(item, dict):
        raise InvalidProperty("A message must be a JSON object")
    from_ = _required(item, "from")
    to = _required(item, "to")
    media = _media(item)
    text = _string(item, "text")
    if text is None and not media:
        raise MissingProperty("text")
    if text is not None and not media and not text.strip():
        raise BlankProperty("text")
    if text is not None and len(text) > MAX_TEXT:
        raise InvalidProperty(
            "The message text must be 2,048 characters or less", details={"propertyName": "text"}
        )
    receipt = _enum(item, "receiptRequested", ("none", "all", "error"))
    if media and receipt in ("all", "error"):
        raise InvalidProperty(
            "Can not send 'media' and 'receiptRequested' in the same request",
            details={"propertyName": "receiptRequested"},
        )
    tag = _string(item, "tag")
    if tag is not None and len(tag) > MAX_TAG:
        raise InvalidProperty(
            "The 'message' resource property 'tag' must be 1024 characters or less",
            details={"propertyName": "tag"},
        )
    method = _enum(item, "callbackHttpMethod", ("GET", "POST"), upper=True) or "POST"
    # Every field was checked above, with v1's own errors: constructed without a second validation
    # (this is on every send's path).
    return built_model(SendRequest, {
        "from_": from_,
        "to": to,
        "text": text,
        "media": media,
        "receipt_requested": receipt,
        "callback_url": _url(item, "callbackUrl"),
        "callback_method": method,
        "callback_timeout": _timeout(item),
        "fallback_url": _url(item, "fallbackUrl"),
        "tag": tag,
    })
