"""The stored JSON written with orjson (``doc``, ``spec_json``) is byte for byte what pydantic
wrote before, and reads back to the same record/spec."""

from __future__ import annotations

from typing import Any

import pytest

from shim.core import DeliverySpec, MessageRecord
from shim.store._messages import doc, record
from shim.store._outbox import spec_from_json, spec_json

from ..core.test_apply_status_reference import RECORDS, rec

MORE = [
    rec(text="\x00\x01\x1f\x7f\\/\"</script>\u2028\u2029\ufeff é 😀", tag="\t\n\r"),
    rec(time_us=2**63 - 1, callback_timeout=-(2**40), segment_count=0),
    MessageRecord.model_validate_json(rec(media=["a", "b"]).model_dump_json()),
]


@pytest.mark.parametrize("r", RECORDS + MORE)
def test_doc_is_pydantics_bytes(r: MessageRecord) -> None:
    r = r.model_copy(update={"seq": 7})
    assert doc(r) == r.model_dump_json(exclude={"seq"})
    back = record((7, doc(r)))
    assert back == r


def test_doc_falls_back_to_pydantic() -> None:
    """What orjson refuses goes to pydantic, which fails the same way it always did."""
    r = rec(text="a\ud800b")
    with pytest.raises(ValueError):
        r.model_dump_json()
    with pytest.raises(ValueError):
        doc(r)
    big = MessageRecord.model_construct(**(rec().__dict__ | {"time_us": 2**70}))
    assert doc(big) == big.model_dump_json(exclude={"seq"})
    # Read back as validation reads it: an integer, not orjson's float past 64 bits.
    assert type(record((1, doc(big))).time_us) is int
    same(record((1, doc(big))), validated(1, doc(big)))


BODIES: list[Any] = [
    {"eventType": "sms", "text": "hé 😀 \x00 \u2028", "segmentCount": 1, "media": ["https://x.io/a.png"]},
    [{"type": "message-delivered", "message": {"segmentCount": 2, "price": 0.0075, "big": 1e16, "tiny": 1e-7,
                                               "neg": -0.0, "n": None, "t": True, "i": -(2**63)}}],
    {"huge": 2**70},  # orjson refuses: pydantic writes it
    "plain",
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_spec_json_is_pydantics_bytes(body: Any, request_id: str | None) -> None:
    for spec in (DeliverySpec(event_id="e", order_key="o", url="https://cb.example/x", body=body),
                 DeliverySpec(event_id="e", order_key="o", user_id="u", url="https://cb.example/x",
                              fallback_url="https://fb", method="GET", timeout_ms=5, format="v2", body=body,
                              request_id="r0", reconciled=True)):
        want = spec.model_copy(update={"request_id": request_id}).model_dump_json()
        assert spec_json(spec, request_id) == want
        assert DeliverySpec.model_validate_json(spec_json(spec, request_id)) == DeliverySpec.model_validate_json(want)


def same_spec(a: DeliverySpec, b: DeliverySpec) -> None:
    assert type(a) is type(b) and a == b and a.model_fields_set == b.model_fields_set
    assert a.model_dump_json() == b.model_dump_json()
    assert [(k, type(v)) for k, v in a.__dict__.items()] == [(k, type(v)) for k, v in b.__dict__.items()]
    assert repr(a.body) == repr(b.body)  # -0.0, 1e16 and the like: the same floats, ints the same ints


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_spec_read_back_without_validation_equals_validated(body: Any, request_id: str | None) -> None:
    """A claimed callback's spec (as ``spec_json`` stored it) is rebuilt without validation: exactly
    what validating the stored text builds, the integer past 64 bits included."""
    for spec in (DeliverySpec(event_id="e", order_key="o", url="https://cb.example/x", body=body),
                 DeliverySpec(event_id="e", order_key="o", user_id="u", url="https://cb.example/x",
                              fallback_url="https://fb", method="GET", timeout_ms=5, format="v2", body=body,
                              request_id="r0", reconciled=True)):
        stored = spec_json(spec, request_id)
        same_spec(spec_from_json(stored), DeliverySpec.model_validate_json(stored))


def test_specs_of_other_shapes_are_validated() -> None:
    """Rows written otherwise (an older shim without ``reconciled``, another key order, escapes, a
    lone surrogate orjson refuses, a body of 19+ digit integers) are read as validation reads them."""
    import json

    spec = DeliverySpec(event_id="e", order_key="o", url="https://cb.example/x", body={"n": 12345678901234567890123})
    values = spec.model_dump()
    for stored in (json.dumps({k: v for k, v in values.items() if k != "reconciled"}),
                   json.dumps(dict(reversed(values.items()))), json.dumps(values, ensure_ascii=True, indent=1),
                   json.dumps(values | {"body": 1234567890123456789})):
        same_spec(spec_from_json(stored), DeliverySpec.model_validate_json(stored))
    refused = json.dumps(values | {"body": {"t": "a\ud800b"}})
    with pytest.raises(ValueError):
        DeliverySpec.model_validate_json(refused)
    with pytest.raises(ValueError):
        spec_from_json(refused)


def validated(seq: int, stored: str) -> MessageRecord:
    """What ``record`` built before: the document validated."""
    rec = MessageRecord.model_validate_json(stored)
    rec.seq = seq
    return rec


def same(a: MessageRecord, b: MessageRecord) -> None:
    assert type(a) is type(b) and a == b
    assert a.model_dump() == b.model_dump() and a.model_dump_json() == b.model_dump_json()
    assert a.model_fields_set == b.model_fields_set
    assert [(k, type(v)) for k, v in a.__dict__.items()] == [(k, type(v)) for k, v in b.__dict__.items()]
    assert doc(a) == doc(b) == b.model_dump_json(exclude={"seq"})


@pytest.mark.parametrize("r", RECORDS + MORE)
def test_record_built_without_validation_equals_validated(r: MessageRecord) -> None:
    """A document ``doc`` wrote is read back without validation: exactly the validated record
    (inbound, native, dry-run, media, callbacks, delivery states…)."""
    stored = doc(r)
    back = record((42, stored))
    same(back, validated(42, stored))
    # It goes on like the validated one: copied, changed, written again.
    changed = back.model_copy(update={"state": "sent", "sent_notified": True})
    same(changed, validated(42, stored).model_copy(update={"state": "sent", "sent_notified": True}))
    back.delivery_state = "delivered"
    assert "delivered" in doc(back)


def old_doc(r: MessageRecord, drop: tuple[str, ...], extra: dict[str, Any]) -> str:
    import json

    values = {k: v for k, v in r.model_dump(exclude={"seq"}).items() if k not in drop}
    return json.dumps(values | extra)


@pytest.mark.parametrize(("drop", "extra"), [
    (("dry_run",), {}),
    (("dry_run", "native"), {}),
    (("dry_run", "native", "send_key", "sent_notified"), {}),
    ((), {"time": "2026-01-01T00:00:00.000Z"}),  # before ``time`` was derived from ``time_us``
    (("dry_run",), {"time": "2026-01-01T00:00:00.000Z"}),  # as many keys as today, not today's
])
@pytest.mark.parametrize("r", RECORDS[:4])
def test_old_documents_still_read(r: MessageRecord, drop: tuple[str, ...], extra: dict[str, Any]) -> None:
    stored = old_doc(r, drop, extra)
    same(record((3, stored)), validated(3, stored))


def test_documents_in_another_key_order_or_escaped() -> None:
    """Key order (a document rewritten by hand or by a tool) and escapes do not matter: the same
    record, written back in the field order."""
    import json

    r = MORE[0]
    values = r.model_dump(exclude={"seq"})
    for stored in (json.dumps(dict(reversed(values.items()))), json.dumps(values, ensure_ascii=True),
                   json.dumps(values, indent=2)):
        same(record((1, stored)), validated(1, stored))
    lone = json.dumps(values | {"text": "a\ud800b"})  # orjson refuses: validated, refused as before
    with pytest.raises(ValueError):
        validated(1, lone)
    with pytest.raises(ValueError):
        record((1, lone))
