"""``GET /v1/users/{userId}/messages``: query parsing, cursor and the ``Link`` header. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from multidict import MultiMapping

from shim.errors import InvalidProperty

from ._time import parse_time_us

DEFAULT_SIZE = 25
MAX_SIZE = 1000
# Cursors are store sequence numbers (signed 64-bit); a page past this is past any data.
MAX_CURSOR = 2**63 - 1
MAX_PAGE = 10**9

_ENUMS: dict[str, tuple[str, ...]] = {
    "direction": ("in", "out"),
    "state": ("received", "queued", "sending", "sent", "error"),
    "deliveryState": ("waiting", "delivered", "not-delivered"),
}
FILTER_KEYS = ("from", "to", "direction", "state", "deliveryState", "fromDateTime", "toDateTime")
CURSOR_KEYS = ("sortKeyLT", "sortKeyGT")


def _norm(value: str) -> str:
    return value.strip().lower().replace("-", "").replace("_", "")


def match_enum(key: str, value: str) -> str:
    """C# sends enum names (``NotDelivered``), others kebab-case: match ignoring case and ``-``."""
    for canonical in _ENUMS[key]:
        if _norm(canonical) == _norm(value):
            return canonical
    raise InvalidProperty(
        f"The query parameter '{key}' must be one of the following values: "
        + ", ".join(_ENUMS[key]),
        details={"parameterName": key},
    )


@dataclass
class ListQuery:
    from_: str | None = None
    to: str | None = None
    direction: str | None = None
    state: str | None = None
    delivery_state: str | None = None
    from_us: int | None = None
    to_us: int | None = None
    descending: bool = True
    size: int = DEFAULT_SIZE
    # Cursor: the seq of the last message of the previous page.
    after_seq: int | None = None
    offset: int = 0
    # The original filter params, echoed in the next Link.
    echo: dict[str, str] = field(default_factory=dict)


def _int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidProperty(
            f"The query parameter '{key}' must be an integer", details={"parameterName": key}
        ) from None


def parse_list_query(params: MultiMapping[str]) -> ListQuery:
    q = ListQuery()
    for key in (*FILTER_KEYS, "sortOrder"):
        value = params.get(key)
        if value is None or value == "":
            continue
        q.echo[key] = value
        if key == "from":
            q.from_ = value.strip()
        elif key == "to":
            q.to = value.strip()
        elif key == "direction":
            q.direction = match_enum(key, value)
        elif key == "state":
            q.state = match_enum(key, value)
        elif key == "deliveryState":
            q.delivery_state = match_enum(key, value)
        elif key in ("fromDateTime", "toDateTime"):
            us = parse_time_us(value)
            if us is None:
                raise InvalidProperty(
                    f"The query parameter '{key}' must be a date like 2014-05-25 10:30:00 "
                    "or ISO-8601",
                    details={"parameterName": key},
                )
            if key == "fromDateTime":
                q.from_us = us
            else:
                q.to_us = us
        elif key == "sortOrder":
            order = _norm(value)
            if order not in ("asc", "desc"):
                raise InvalidProperty(
                    "The query parameter 'sortOrder' must be one of the following values: asc, desc",
                    details={"parameterName": "sortOrder"},
                )
            q.descending = order == "desc"
    size = params.get("size")
    if size:
        n = _int("size", size)
        if n < 1:
            raise InvalidProperty(
                "The query parameter 'size' must be at least 1", details={"parameterName": "size"}
            )
        q.size = min(n, MAX_SIZE)
    for key in CURSOR_KEYS:
        cursor = params.get(key)
        if cursor:
            n = _int(key, cursor)
            if not 0 <= n <= MAX_CURSOR:
                raise InvalidProperty(
                    f"The query parameter '{key}' must be a cursor from a previous page's Link",
                    details={"parameterName": key},
                )
            q.after_seq = n
    page = params.get("page")
    if page and q.after_seq is None:
        # Legacy page numbers (Java SDK, PY 1.x): 0-based offsets in pages; a page past the
        # end is empty, however far past.
        q.offset = min(max(0, _int("page", page)), MAX_PAGE) * q.size
    return q


def next_link(public_url: str, path: str, q: ListQuery, last_seq: int) -> str:
    """``<URL>; rel="next"`` with every filter, the cursor and size; no raw ``,`` or ``;``."""
    params = dict(q.echo)
    params["sortKeyLT" if q.descending else "sortKeyGT"] = str(last_seq)
    params["size"] = str(q.size)
    url = f"{public_url}{path}?{urlencode(params, quote_via=quote, safe='')}"
    return f'<{url}>; rel="next"'
