"""JSON for the wire: what shim sends (v1 bodies, callbacks) is encoded here."""

from __future__ import annotations

import json
from typing import Any

import orjson


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
