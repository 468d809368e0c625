"""v1 send item parsing: input → SendRequest or v1 error code (a table)."""

from __future__ import annotations

from typing import Any

import pytest

from shim.core import parse_send_item
from shim.errors import ShimError

BASE = {"from": "+15551230001", "to": "+15551230002", "text": "hi"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"text": "hi", "media": [], "callback_method": "POST", "receipt_requested": None}),
        ({"media": "https://x.io/a.png"}, {"media": ["https://x.io/a.png"]}),
        ({"media": ["https://x.io/a.png", "http://y.io/b"]}, {"media": ["https://x.io/a.png", "http://y.io/b"]}),
        ({"media": None, "tag": None, "callbackUrl": None}, {"media": [], "tag": None, "callback_url": None}),
        ({"callbackTimeout": "2000"}, {"callback_timeout": 2000}),
        ({"callbackTimeout": 1}, {"callback_timeout": 1}),
        ({"callbackTimeout": 10000.0}, {"callback_timeout": 10000}),
        ({"callbackHttpMethod": "get"}, {"callback_method": "GET"}),
        ({"callbackHttpMethod": "Post"}, {"callback_method": "POST"}),
        ({"receiptRequested": "ALL"}, {"receipt_requested": "all"}),
        ({"receiptRequested": "none", "media": "https://x.io/a"}, {"receipt_requested": "none"}),
        ({"callbackUrl": "https://u:p@cb.example/x"}, {"callback_url": "https://u:p@cb.example/x"}),
        ({"unknownField": 1, "skipMMSCarrierValidation": True}, {"text": "hi"}),
        ({"text": None, "media": "https://x.io/a"}, {"text": None}),
        ({"text": "", "media": "https://x.io/a"}, {"text": ""}),
        ({"to": " +15551230002 "}, {"to": "+15551230002"}),
        ({"tag": "t" * 1024}, {"tag": "t" * 1024}),
    ],
)
@pytest.mark.compat("POST /v1/users/{userId}/messages", "callbackHttpMethod", "supported",
                    note="GET | POST in any case, default POST (C# never sends it)")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "callbackTimeout", "supported",
                    note="milliseconds as an integer or a numeric string, 1..10000, default 10000")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "tag", "supported",
                    note="up to 1024 characters (v2's limit); shown in GET and every callback of the message (v1 said "
                         "tags do not persist beyond the request)")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "unknown fields", "supported",
                    note="ignored (skipMMSCarrierValidation included)")
def test_accepted(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    req = parse_send_item(BASE | extra)
    for key, value in expected.items():
        assert getattr(req, key) == value


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ([], "validation-error"),
        ({"to": "+1", "text": "x"}, "missing-property"),
        ({"from": None, "to": "+1", "text": "x"}, "missing-property"),
        ({"from": "", "to": "+1", "text": "x"}, "blank-property"),
        ({"from": "+1", "to": "+2"}, "missing-property"),
        ({"from": "+1", "to": "+2", "text": "   "}, "blank-property"),
        (BASE | {"text": "x" * 2049}, "validation-error"),
        (BASE | {"to": ["+2"]}, "validation-error"),
        (BASE | {"receiptRequested": "yes"}, "validation-error"),
        (BASE | {"media": "https://x.io/a", "receiptRequested": "error"}, "validation-error"),
        (BASE | {"media": "file:///etc/passwd"}, "validation-error"),
        (BASE | {"media": {"url": "x"}}, "validation-error"),
        (BASE | {"callbackTimeout": 0}, "validation-error"),
        (BASE | {"callbackTimeout": True}, "validation-error"),
        (BASE | {"callbackTimeout": "20.5"}, "validation-error"),
        (BASE | {"callbackTimeout": "\u00b2"}, "validation-error"),  # "²": str.isdigit() says yes, int() no
        (BASE | {"callbackHttpMethod": "PATCH"}, "validation-error"),
        (BASE | {"callbackUrl": "javascript:alert(1)"}, "callback-invalid-url"),
        (BASE | {"callbackUrl": "http://"}, "callback-invalid-url"),
        (BASE | {"fallbackUrl": "http://x:99999/"}, "callback-invalid-url"),
        (BASE | {"tag": "t" * 1025}, "validation-error"),
        (BASE | {"tag": 5}, "validation-error"),
    ],
)
@pytest.mark.compat("POST /v1/users/{userId}/messages", "from", "supported",
                    note="required, not blank; v1's ownership check (401 number-access-denied) is v2's: see below")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "to", "supported",
                    note="one E.164 string; an array is a 400 validation-error (v1 had no group messages)")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "text", "supported",
                    note="up to 2048 characters (longer: 400 validation-error); may be absent or empty when media is set")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "receiptRequested", "supported",
                    note="none | all | error (any case); all/error together with media is a 400 validation-error (v1 "
                         "forbade the pair without documenting the error)")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "callbackUrl", "supported",
                    note="absolute http(s) URL; userinfo becomes Basic auth; invalid, or a refused literal address "
                         "(loopback, private … unless callbacks.allow_cidrs), is 400 callback-invalid-url")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "fallbackUrl", "supported",
                    note="as callbackUrl; tried when the callbackUrl attempt fails")
@pytest.mark.compat("POST /v1/users/{userId}/messages", "v1 validation errors", "supported",
                    note="400 bad-request with v1 codes missing-property, blank-property, validation-error, "
                         "callback-invalid-url and v1's messages")
def test_rejected(item: Any, code: str) -> None:
    with pytest.raises(ShimError) as exc:
        parse_send_item(item)
    assert exc.value.code == code
    assert exc.value.status == 400
