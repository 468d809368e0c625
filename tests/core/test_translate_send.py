"""v1 → v2 request mapping and v2 answer → v1 (tables). Every v2 body built here is validated
against the official spec shipped in the package (shim/data/messaging-v2.yml)."""

from __future__ import annotations

from typing import Any

import pytest

from shim.config import UserConfig
from shim.core import (
    MessageRecord,
    V2Message,
    bind_v2,
    message_request_errors,
    parse_send_item,
    pending_id,
    record_from_send,
    rewrite_inbound_media,
    rewrite_outbound_media,
    send_key_of,
    to_v2_request,
    v2_error_to_v1,
    v2_request_of,
    v2_tag,
)
from shim.errors import ShimError

from ..conftest import USER

PUBLIC = "https://shim.example.com"
V2 = "https://messaging.bandwidth.com/api/v2"
U = UserConfig.model_validate(USER)
APP = USER["application_id"]
KEY = "k1Jx9Zq_-0aB2cD3eF4gH5"
TAG = f"shim1:{KEY}"


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ({"from": "+15551230001", "to": "+15551230002", "text": "hi"},
         {"applicationId": APP, "to": ["+15551230002"], "from": "+15551230001", "text": "hi", "tag": TAG}),
        ({"from": "+15551230001", "to": "+15551230002", "text": "hi", "tag": "t", "callbackUrl": "https://a.b/c",
          "receiptRequested": "all", "callbackTimeout": "100", "fallbackUrl": "https://a.b/d"},
         {"applicationId": APP, "to": ["+15551230002"], "from": "+15551230001", "text": "hi", "tag": f"shim1:{KEY}:t"}),
        ({"from": "+15551230001", "to": "+15551230002", "media": "https://x.io/a.png"},
         {"applicationId": APP, "to": ["+15551230002"], "from": "+15551230001", "media": ["https://x.io/a.png"], "tag": TAG}),
        ({"from": "+15551230001", "to": "+15551230002", "text": "", "media": [f"{PUBLIC}/v1/users/u-test/media/p.png"]},
         {"applicationId": APP, "to": ["+15551230002"], "from": "+15551230001",
          "media": [f"{V2}/users/9900001/media/p.png"], "tag": TAG}),
        ({"from": "+15551230001", "to": "+15551230002", "text": "x",
          "media": ["https://api.catapult.inetwork.com/v1/users/u-test/media/old.gif",
                    "https://api.catapult.inetwork.com/v1/users/u-other/media/theirs.gif"]},
         {"applicationId": APP, "to": ["+15551230002"], "from": "+15551230001", "text": "x",
          "media": [f"{V2}/users/9900001/media/old.gif",
                    "https://api.catapult.inetwork.com/v1/users/u-other/media/theirs.gif"], "tag": TAG}),
    ],
)
def test_v1_to_v2(v1: dict[str, Any], v2: dict[str, Any]) -> None:
    body = to_v2_request(parse_send_item(v1), U, PUBLIC, V2, KEY)
    assert body == v2
    assert message_request_errors(body) == []


@pytest.mark.parametrize("v1", [
    {"from": "+15551230001", "to": "+15551230002", "text": "hi"},
    {"from": "+15551230001", "to": "+15551230002", "text": "hi", "tag": "t", "callbackUrl": "https://a.b/c"},
    {"from": "+15551230001", "to": "+15551230002", "text": "", "media": [f"{PUBLIC}/v1/users/u-test/media/p.png"]},
])
def test_the_console_rebuilds_the_v2_request_from_the_stored_record(v1: dict[str, Any]) -> None:
    req = parse_send_item(v1)
    rec = bind_v2(record_from_send(req, U, KEY, 0), "m-1")
    assert v2_request_of(rec, U, PUBLIC, V2) == to_v2_request(req, U, PUBLIC, V2, KEY)


def test_no_v2_request_for_what_shim_did_not_send_through_v1() -> None:
    rec = bind_v2(record_from_send(parse_send_item({"from": "+15551230001", "to": "+15551230002", "text": "x"}),
                                   U, KEY, 0), "m-1")
    assert v2_request_of(rec.model_copy(update={"native": True}), U, PUBLIC, V2) is None
    assert v2_request_of(rec.model_copy(update={"direction": "in"}), U, PUBLIC, V2) is None
    assert v2_request_of(rec.model_copy(update={"send_key": None}), U, PUBLIC, V2) is None


def test_media_rewrites() -> None:
    assert rewrite_outbound_media(f"{PUBLIC}/v1/users/u-test/media/a/b.png", PUBLIC, U, V2) == \
        f"{V2}/users/9900001/media/a/b.png"
    assert rewrite_outbound_media("https://cdn.example/x.png", PUBLIC, U, V2) == "https://cdn.example/x.png"
    assert rewrite_inbound_media(f"{V2}/users/9900001/media/1476/0/bw.png", PUBLIC, U) == \
        f"{PUBLIC}/v1/users/u-test/media/1476/0/bw.png"
    assert rewrite_inbound_media("https://other.example/y.png", PUBLIC, U) == "https://other.example/y.png"


def test_record_from_send() -> None:
    req = parse_send_item({"from": "+15551230001", "to": "+15551230002", "text": "hi", "receiptRequested": "all",
                           "callbackUrl": "https://cb.example/x", "callbackHttpMethod": "GET"})
    v2 = V2Message.model_validate({"id": "14762070468292kw2fuqty55yp2b2", "time": "2021-07-21T21:00:45.179Z",
                                   "segmentCount": 2, "to": ["+15551230002"], "from": "+15551230001"})
    intent = record_from_send(req, U, KEY, 0)
    assert (intent.id, intent.send_key, intent.time_us, intent.tag) == (pending_id(KEY), KEY, 0, None)
    rec = bind_v2(intent, v2.id, v2.time, v2.segmentCount)
    assert rec.to_v1() == {
        "id": "14762070468292kw2fuqty55yp2b2", "messageId": "14762070468292kw2fuqty55yp2b2",
        "from": "+15551230001", "to": "+15551230002", "direction": "out", "text": "hi", "media": [],
        "state": "queued", "time": "2021-07-21T21:00:45Z", "segmentCount": 2,  # whole seconds (Java)
        "callbackUrl": "https://cb.example/x", "receiptRequested": "all",
    }
    assert rec.callback_method == "GET"
    # Without a v2 time the intent's (shim's clock at the send) stays.
    assert bind_v2(intent, "x" * 29).time == "1970-01-01T00:00:00.000Z"  # callbacks keep milliseconds


@pytest.mark.parametrize("item", [
    {"from": "+15551230001", "to": "+15551230002", "text": "hi"},
    {"from": "+15551230001", "to": "+15551230002", "text": "hi", "receiptRequested": "error", "tag": "t",
     "callbackUrl": "https://cb.example/x", "callbackHttpMethod": "get", "callbackTimeout": "250",
     "fallbackUrl": "https://cb.example/y"},
    {"from": "+15551230001", "to": "+15551230002", "media": "https://x.io/a.png"},
])
def test_records_built_without_validation_equal_validated_ones(item: dict[str, Any]) -> None:
    """The send path skips pydantic validation of what it checked itself (``model_construct``):
    the result must be exactly what validation would have built."""
    req = parse_send_item(item)
    assert type(req).model_validate(req.model_dump()) == req
    made = type(req).model_construct(**req.model_dump())
    assert list(req.__dict__.items()) == list(made.__dict__.items())
    assert req.model_fields_set == made.model_fields_set and req.__pydantic_extra__ is None
    intent = record_from_send(req, U, KEY, 1_700_000_000_000_000)
    assert MessageRecord.model_validate(intent.model_dump()) == intent
    assert MessageRecord.model_validate_json(intent.model_dump_json()).model_dump() == intent.model_dump()
    # ...and what ``model_construct`` built before: the same values, in declaration order (the
    # stored document is written from ``__dict__``), the same fields set.
    constructed = MessageRecord.model_construct(**intent.model_dump())
    assert list(intent.__dict__.items()) == list(constructed.__dict__.items())
    assert intent.model_fields_set == constructed.model_fields_set
    assert intent.__pydantic_extra__ is None and intent.__pydantic_private__ is None
    for v2_time, segments in ((None, None), ("2021-07-21T21:00:45.179Z", 3)):
        bound = bind_v2(intent, "m-bound", v2_time, segments)
        update: dict[str, Any] = {"id": "m-bound"}
        if v2_time is not None:
            update |= {"time_us": 1626901245179000, "segment_count": 3}
        copied = intent.model_copy(update=update)
        assert list(bound.__dict__.items()) == list(copied.__dict__.items())
        assert bound.model_fields_set == copied.model_fields_set | {"id", "time_us", "segment_count"}
        assert bound.__dict__ is not intent.__dict__ and intent.id != "m-bound"


@pytest.mark.parametrize(
    ("key", "app_tag", "tag", "back"),
    [
        (KEY, None, f"shim1:{KEY}", KEY),
        (KEY, "order-7", f"shim1:{KEY}:order-7", KEY),
        (KEY, "a:b", f"shim1:{KEY}:a:b", KEY),
        (KEY, "x" * 1000, f"shim1:{KEY}", KEY),  # too long to carry both: the key alone
        (KEY, "x" * (1024 - 29), f"shim1:{KEY}:" + "x" * 995, KEY),  # exactly 1024
    ],
)
def test_v2_tag_carries_the_key(key: str, app_tag: str | None, tag: str, back: str) -> None:
    assert v2_tag(key, app_tag) == tag and len(tag) <= 1024
    assert send_key_of(tag) == back


@pytest.mark.parametrize("tag", [None, "", "order-7", "shim1:", "shim1:short", "shim1:bad key with spaces!!",
                                 "shim2:k1Jx9Zq_-0aB2cD3eF4gH5", "SHIM1:k1Jx9Zq_-0aB2cD3eF4gH5"])
def test_tags_without_a_key_are_native(tag: str | None) -> None:
    assert send_key_of(tag) is None


@pytest.mark.parametrize(
    ("status", "body", "v1_status", "category", "code"),
    [
        (400, {"type": "request-validation", "description": "Your request could not be accepted",
               "fieldErrors": [{"fieldName": "to", "description": "'+1invalid' must be E164"}]},
         400, "bad-request", "validation-error"),
        (400, None, 400, "bad-request", "validation-error"),
        (429, {"type": "max-message-queue-size-exceeded", "description": "full"}, 403, "limit", "message-rate-limit"),
        (401, {"type": "unauthorized", "description": "Authentication Failed"}, 503, "unavailable",
         "message-gateway-unavailable"),
        (403, {"type": "forbidden", "description": "Access Denied"}, 503, "unavailable", "message-gateway-unavailable"),
        (500, None, 503, "unavailable", "message-gateway-unavailable"),
        (502, "<html>", 503, "unavailable", "message-gateway-unavailable"),
        (404, {"status": 404, "error": "Not Found"}, 503, "unavailable", "message-gateway-unavailable"),
    ],
)
def test_v2_error_to_v1(status: int, body: Any, v1_status: int, category: str, code: str) -> None:
    err = v2_error_to_v1(status, body)
    assert isinstance(err, ShimError)
    assert (err.status, err.category, err.code) == (v1_status, category, code)


def test_field_errors_become_details() -> None:
    err = v2_error_to_v1(400, {"type": "request-validation", "description": "bad", "fieldErrors": [
        {"fieldName": "to", "description": "a"}, {"fieldName": "to", "description": "b"}]})
    assert err.details == {"to": "a", "to#2": "b"}
