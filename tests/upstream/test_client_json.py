"""orjson writes the v2 send body byte for byte as ``json.dumps`` did, and its refusals fall back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shim.upstream.client_v2 import _dumps


@pytest.mark.parametrize("body", [
    {"applicationId": "a", "to": ["+15554443333"], "from": "+15553334444", "text": "héllo 😀 \"q\" \\ \n\t\u2028", "tag": None},
    {"media": ["https://x/a b"], "priority": "high", "n": 1, "f": 1.5, "b": True},
    {"big": 2**70},
])
def test_same_bytes_as_json(body: dict[str, Any]) -> None:
    assert _dumps(body) == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
