"""JSON for the wire: what shim sends (v1 bodies, callbacks) is encoded here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

# A run of 19 digits or more: an integer orjson would read as a float past 64 bits.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def v1_json_bytes(data: Any) -> bytes:
    """JSON for the wire that never fails on a string Python holds but UTF-8 cannot carry (a lone
    surrogate from a ``\\ud800`` escape): such characters become ``?``. orjson first (the common
    case, several times faster); the stdlib for what it refuses."""
    try:
        return orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        pass
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def stored_fields(text: str | bytes, fields: Sequence[str]) -> dict[str, Any] | None:
    """A JSON object shim wrote from a validated model, read back as exactly ``fields`` (in that
    order), ready for ``built_model``; None when it is anything else (other fields, JSON orjson
    refuses, a 19+ digit run orjson would read as a float): the caller validates it then."""
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_RUN in raw.translate(_DIGITS_AS_ZERO):
        return None
    try:
        loaded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(loaded) is not dict or len(loaded) != len(fields):
        return None
    try:
        return {name: loaded[name] for name in fields}
    except KeyError:
        return None
