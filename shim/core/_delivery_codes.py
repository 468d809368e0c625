"""v2 ``errorCode`` → v1 ``deliveryCode``/``deliveryDescription`` (v2-api.md §4 mapping hint).

v1 codes are the last three digits of their v2 twins (4720 → 720 …); spam 4470 ≈ 189.
A v2 code with no v1 twin keeps its meaning in the description, with v1's generic 999 as code
so typed clients (C# parses an int) still read it.
"""

from __future__ import annotations

import csv
import io
from functools import cache
from importlib import resources

V1_DESCRIPTIONS: dict[int, str] = {
    0: "Message Delivered to Carrier",
    187: "Spam Detected – Statistical",
    188: "Spam Detected -Keyword",
    189: "Spam Detected",
    482: "Loop Detected",
    600: "Destination Carrier Queue Full",
    610: "submit_sm or submit_multi failed",
    620: "Destination App Error",
    630: "NACK",
    650: "Destination Failure",
    700: "Invalid Service Type",
    720: "Invalid Destination Address",
    740: "Invalid Source Address",
    750: "Destination Rejected Message",
    751: "Destination Rejected Message too large",
    770: "Destination Rejected due to spam",
    775: "Rejected due to user opt out",
    902: "Message Expired",
    999: "Unknown Error",
}

V2_TO_V1: dict[int, int] = {
    4470: 189,
    4700: 700,
    4720: 720,
    4740: 740,
    4750: 750,
    4751: 751,
    4770: 770,
    4775: 775,
    5600: 600,
    5610: 610,
    5620: 620,
    5630: 630,
    5650: 650,
    5999: 999,
    9902: 902,
    9999: 999,
}


@cache
def v2_names() -> dict[int, str]:
    text = resources.files("shim.data").joinpath("messaging-v2-error-codes.csv").read_text("utf-8")
    names = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            code = int(row["code"])
        except (TypeError, ValueError):
            continue
        names[code] = row.get("description") or row.get("friendly_description") or ""
    return names


def map_error_code(v2_code: int | None, description: str | None = None) -> tuple[str, str]:
    """Return (deliveryCode, deliveryDescription) for a v2 ``message-failed``."""
    if v2_code is not None and v2_code in V2_TO_V1:
        v1 = V2_TO_V1[v2_code]
        return str(v1), V1_DESCRIPTIONS[v1]
    name = v2_names().get(v2_code) if v2_code is not None else None
    meaning = name or (description or "").strip() or "unknown-error"
    suffix = f" (v2 {v2_code})" if v2_code is not None else ""
    return "999", f"{meaning}{suffix}"
