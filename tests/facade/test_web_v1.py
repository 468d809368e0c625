"""``read_json``: orjson's fast path must give what the stdlib gives, integers past 64 bits included
(orjson would read those as floats)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from shim.facade.web_v1 import read_json


class Body:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.headers: CIMultiDict[str] = CIMultiDict()

    async def read(self) -> bytes:
        return self.raw


@pytest.mark.parametrize("raw", [
    b'{"to": "+15551230001", "n": 123456789012345678}',  # 18 digits: orjson's
    b'[18446744073709551615]',  # the largest 64-bit unsigned: either way
    b'[18446744073709551617]',  # past 64 bits
    b'{"a": {"b": [-123456789012345678901234567890]}}',
    b'{"x": 1, "y": 99999999999999999999}',
    b'{"t": "1234567890123456789012", "n": 1}',  # 22 digits in a string only
    b'{"n": 1234567890123456789.5}',
])
async def test_read_json_equals_the_stdlib(raw: bytes) -> None:
    got: Any = await read_json(Body(raw))
    want = json.loads(raw)
    assert got == want
    assert json.dumps(got) == json.dumps(want)  # same types: an int is not read as a float
