"""The one error hierarchy of shim, and the single place it becomes a v1 error body.

Tree::

    ShimError                       500 unavailable/internal-error
    ├── BadRequest                  400 bad-request/bad-request
    │   ├── MissingProperty         400 bad-request/missing-property
    │   ├── BlankProperty           400 bad-request/blank-property
    │   ├── InvalidProperty         400 bad-request/validation-error
    │   ├── CallbackInvalidUrl      400 bad-request/callback-invalid-url
    │   └── BodyTooLarge            413 bad-request/request-too-large
    ├── AccessDenied                401 authorization/access-denied
    ├── Forbidden                   403 (limit|forbidden)/...
    ├── NotFound                    404 not-found/...
    ├── MethodNotAllowed            405 bad-request/method-not-allowed
    └── Unavailable                 503 unavailable/...
        └── OutcomeUnknown          503 unavailable/message-gateway-unavailable (sent, no answer)

v1 SDKs read ``message`` (node, Ruby), ``code`` (Python) or ``message ?? code`` (C#), so every
error carries all four keys ``category``, ``code``, ``message``, ``details``. Every ``category`` is
one of ``V1_CATEGORIES``: the C# SDK (Bandwidth.Net ``Api/Error.cs`` ``ErrorCategory``) parses it
into a fixed enum and throws on anything else, so an internal error is ``unavailable``, never v1's
``backend`` (``tests/test_errors.py`` walks the hierarchy and every ``category=`` in the source).
"""

from __future__ import annotations

from typing import Any

# The categories every legacy SDK can parse: Bandwidth.Net's ``ErrorCategory`` enum, kebab-cased.
V1_CATEGORIES = frozenset({
    "authentication", "authorization", "not-found", "bad-request", "conflict", "unavailable",
    "credit", "limit", "payment", "forbidden",
})


class ShimError(Exception):
    status: int = 500
    category: str = "unavailable"
    code: str = "internal-error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, str] | None = None,
        status: int | None = None,
        category: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        if status is not None:
            self.status = status
        if category is not None:
            self.category = category
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status} {self.category}/{self.code}: {self.message})"


class BadRequest(ShimError):
    status = 400
    category = "bad-request"
    code = "bad-request"


class MissingProperty(BadRequest):
    code = "missing-property"

    def __init__(self, prop: str) -> None:
        super().__init__(
            f"The 'message' resource property '{prop}' is required but was not specified",
            details={"propertyName": prop},
        )


class BlankProperty(BadRequest):
    code = "blank-property"

    def __init__(self, prop: str) -> None:
        super().__init__(
            f"The 'message' resource property '{prop}' must contain at least one "
            "non-whitespace character",
            details={"propertyName": prop},
        )


class InvalidProperty(BadRequest):
    code = "validation-error"


class CallbackInvalidUrl(BadRequest):
    code = "callback-invalid-url"

    def __init__(self, prop: str, url: str) -> None:
        super().__init__(f"The URL {url} is not a valid {prop}", details={"propertyName": prop})


class BodyTooLarge(BadRequest):
    status = 413
    code = "request-too-large"


class AccessDenied(ShimError):
    status = 401
    category = "authorization"
    code = "access-denied"

    def __init__(self) -> None:
        super().__init__(
            "The authenticated user does not have sufficient permissions to access this resource"
        )


class Forbidden(ShimError):
    status = 403
    category = "forbidden"
    code = "forbidden"


class MultiMessageLimit(Forbidden):
    category = "limit"
    code = "multi-message-limit"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"The number of messages [{count}] in the multi message request is greater "
            f"than the limit [{limit}].",
        )


class MessageRateLimit(Forbidden):
    category = "limit"
    code = "message-rate-limit"


class MediaSizeOverflow(Forbidden):
    code = "media-size-overflow"


class NotFound(ShimError):
    status = 404
    category = "not-found"
    code = "resource-not-found"


class MessageNotFound(NotFound):
    code = "message-not-found"

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"The message '{message_id}' could not be found", details={"messageId": message_id}
        )


class MediaNotFound(NotFound):
    code = "media-not-found"

    def __init__(self, name: str) -> None:
        super().__init__(f"The media '{name}' could not be found", details={"mediaName": name})


class MethodNotAllowed(ShimError):
    status = 405
    category = "bad-request"
    code = "method-not-allowed"


class Unavailable(ShimError):
    status = 503
    category = "unavailable"
    code = "message-gateway-unavailable"


class OutcomeUnknown(Unavailable):
    """The send went out and no answer came back: v2 may or may not have accepted it. Resending
    may send the SMS twice, so the body says so."""

    def __init__(self, send_key: str = "") -> None:
        details = {"outcome": "unknown", "reason": "the messaging gateway did not answer after the request was sent"}
        if send_key:
            details["correlationKey"] = send_key
        super().__init__(
            "The messaging gateway did not answer; the message may have been sent. Check before resending",
            details=details,
        )


class MediaUnavailable(Unavailable):
    code = "media-unavailable"


class StoreUnavailable(Unavailable):
    code = "store-unavailable"


def error_body(err: ShimError, request_details: dict[str, str] | None = None) -> dict[str, Any]:
    """The v1 error body: the only place a ShimError is turned into wire JSON."""
    details = [{"name": k, "value": str(v)} for k, v in err.details.items()]
    for k, v in (request_details or {}).items():
        details.append({"name": k, "value": v})
    return {"category": err.category, "code": err.code, "message": err.message, "details": details}
