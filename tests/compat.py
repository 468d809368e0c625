"""The compatibility matrix (``docs/compatibility.md``), generated from the test suite's own markers.

A test proves a row of the matrix with a marker (registered in ``pyproject.toml``)::

    @pytest.mark.compat("POST /v1/users/{userId}/messages", "receiptRequested", "supported", note="...")

(or ``compat = pytest.mark.compat`` then ``@compat(...)``). The arguments must be literals (or
module-level string constants, f-strings and ``+`` of them): the
markers are read from the source with ``ast`` — no test is run or imported — so the generator is
fast and deterministic, and ``tests/conftest.py`` checks at collection that what pytest sees is
what this scanner reads. ``tests/test_compat.py`` fails when the committed document differs from
what the markers say, or when a v1 endpoint/field of ``REQUIRED`` has no marker.

    python -m tests.compat           # rewrite docs/compatibility.md
    python -m tests.compat --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
DOC = ROOT / "docs" / "compatibility.md"
STATUSES = ("supported", "partial", "not supported")

# Every v1 endpoint and field (SPEC §3, the v1 API reference), in the order the document lists them;
# each (endpoint, field) must be proved by at least one marker.
REQUIRED: dict[str, tuple[str, ...]] = {
    "all v1 endpoints": ("HTTP Basic auth", "Content-Type", "error body", "Deprecation, Sunset, Link rel=\"deprecation\"",
                         "429 too-many-requests (resource rate limits)"),
    "every path": ("error bodies",),
    "POST /v1/users/{userId}/messages": (
        "single object", "array (batch)", "Location", "id", "Content-Type", "from", "to", "text", "media",
        "receiptRequested", "callbackUrl", "callbackHttpMethod", "callbackTimeout", "fallbackUrl", "tag",
        "null values", "unknown fields", "v1 validation errors", "v2 errors", "outcome unknown",
        "number-access-denied, message-delay-limit, insufficient-available-balance, restricted-number"),
    "GET /v1/users/{userId}/messages/{messageId}": (
        "id, messageId", "from, to, direction", "text", "media", "state", "time", "segmentCount",
        "callbackUrl, callbackTimeout, fallbackUrl, tag, receiptRequested", "deliveryState", "deliveryCode",
        "deliveryDescription", "skipMMSCarrierValidation", "unknown id"),
    "GET /v1/users/{userId}/messages": (
        "from, to", "direction, state, deliveryState, sortOrder", "fromDateTime, toDateTime", "size", "Link",
        "sortKeyLT cursor", "page", "unknown parameters"),
    "PATCH /v1/users/{userId}/messages/{messageId}": ("text",),
    "GET /v1/users/{userId}/media": ("mediaName, content, contentLength",),
    "GET|PUT|DELETE /v1/users/{userId}/media/{mediaName}": ("PUT", "GET", "DELETE", "HEAD", "size limit",
                                                            "v1 media URLs in sends", "inbound media URLs"),
    "GET /v1/users/{userId}/account": ("balance, accountType",),
    "v1 callbacks (callbackUrl)": (
        "eventType, state, deliveryState, deliveryCode, time", "receiptRequested none|all|error",
        "callbackHttpMethod GET", "URL userinfo", "fallbackUrl", "retries", "webhook-id, webhook-signature"),
    "v1 inbound (incomingMessageUrl)": ("sms, mms", "group messages"),
    "other v1 resources": (
        "/applications", "/phoneNumbers", "/account/transactions", "/errors", "/calls, /bridges, /conferences, "
        "/recordings, /domains", "/availableNumbers, /numberInfo"),
}


@dataclass(frozen=True)
class Marker:
    endpoint: str
    field: str
    status: str
    note: str
    test: str  # tests/path.py::test_name


class MarkerError(Exception):
    pass


def _compat_call(node: ast.expr, aliases: set[str]) -> ast.Call | None:
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr == "compat" and isinstance(f.value, ast.Attribute) and f.value.attr == "mark":
        return node
    if isinstance(f, ast.Name) and f.id in aliases:
        return node
    return None


def _eval(node: ast.expr, consts: dict[str, str]) -> object:
    """A literal, a module-level string constant, or an f-string / ``+`` of those."""
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            inner = v.value if isinstance(v, ast.FormattedValue) and v.conversion == -1 and v.format_spec is None else v
            parts.append(str(_eval(inner, consts)))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _eval(node.left, consts), _eval(node.right, consts)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        raise ValueError("not a string")
    return ast.literal_eval(node)


def _marker(call: ast.Call, test: str, where: str, consts: dict[str, str]) -> Marker:
    try:
        args = [_eval(a, consts) for a in call.args]
        kwargs = {kw.arg: _eval(kw.value, consts) for kw in call.keywords}
    except ValueError:
        raise MarkerError(f"{where}: compat marker arguments must be literals or module-level string constants") from None
    if len(args) != 3 or set(kwargs) - {"note"} or not all(isinstance(a, str) and a for a in args):
        raise MarkerError(f"{where}: compat(endpoint, field, status, note=...) with non-empty strings")
    if args[2] not in STATUSES:
        raise MarkerError(f"{where}: status {args[2]!r} is not one of {', '.join(STATUSES)}")
    note = kwargs.get("note", "")
    if not isinstance(note, str):
        raise MarkerError(f"{where}: note must be a string")
    return Marker(args[0], args[1], args[2], " ".join(note.split()), test)


def scan_source(source: str, rel: str) -> tuple[Marker, ...]:
    """The compat markers of one test module's source (``rel``: its path in the repository)."""
    tree = ast.parse(source, rel)
    aliases = {
        t.id for node in tree.body if isinstance(node, ast.Assign)
        for t in node.targets if isinstance(t, ast.Name)
        if isinstance(node.value, ast.Attribute) and node.value.attr == "compat"
    }
    consts = {
        t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for t in node.targets if isinstance(t, ast.Name)
    }
    out: list[Marker] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                call = _compat_call(deco, aliases)
                if call is not None:
                    out.append(_marker(call, f"{rel}::{node.name}", f"{rel}:{deco.lineno}", consts))
    return tuple(out)


@cache
def scan_file(path: Path) -> tuple[Marker, ...]:
    return scan_source(path.read_text(), path.resolve().relative_to(ROOT).as_posix())


def scan(root: Path = TESTS) -> list[Marker]:
    markers: list[Marker] = []
    for path in sorted(root.rglob("test_*.py")):
        markers += scan_file(path)
    return markers


def _order(endpoint: str, field: str) -> tuple[int, int, str, str]:
    endpoints = list(REQUIRED)
    e = endpoints.index(endpoint) if endpoint in REQUIRED else len(endpoints)
    fields = REQUIRED.get(endpoint, ())
    f = fields.index(field) if field in fields else len(fields)
    return e, f, endpoint, field


def missing(markers: list[Marker]) -> list[str]:
    have = {(m.endpoint, m.field) for m in markers}
    return [f"{e} / {f}" for e, fields in REQUIRED.items() for f in fields if (e, f) not in have]


def render(markers: list[Marker]) -> str:
    rows: dict[tuple[str, str], list[Marker]] = {}
    for m in markers:
        rows.setdefault((m.endpoint, m.field), []).append(m)
    for (endpoint, field), ms in rows.items():
        statuses = {m.status for m in ms}
        if len(statuses) > 1:
            raise MarkerError(f"{endpoint} / {field}: markers disagree ({', '.join(sorted(statuses))})")
    keys = sorted(rows, key=lambda k: _order(*k))
    counts = {s: sum(1 for k in keys if rows[k][0].status == s) for s in STATUSES}
    lines = [
        "# v1 compatibility matrix",
        "",
        "<!-- Generated by `python -m tests.compat` from the `@pytest.mark.compat` markers of the test suite.",
        "     Do not edit: `tests/test_compat.py` fails when this file and the markers disagree. -->",
        "",
        "What a legacy v1 (Catapult) app gets from shim, endpoint by endpoint and field by field. Each row names",
        "the tests that prove it; the notes give the known divergences from v1. Legacy SDKs whose exact wire",
        "behaviour is replayed: node-bandwidth 4, Python `bandwidth-sdk` 1.x/3.x, ruby-bandwidth 3.0,",
        "java-bandwidth 1.16, Bandwidth.Net 4 (`tests/facade/test_sdk_*.py`).",
        "",
        f"**Summary:** {len(keys)} rows — {counts['supported']} supported, {counts['partial']} partial, "
        f"{counts['not supported']} not supported.",
        "",
    ]
    current = None
    for key in keys:
        endpoint, field = key
        if endpoint != current:
            current = endpoint
            lines += ["", f"## `{endpoint}`", "", "| field | status | notes | proved by |", "|---|---|---|---|"]
        ms = rows[key]
        notes: list[str] = []
        for m in ms:
            if m.note and m.note not in notes:
                notes.append(m.note)
        tests = sorted({m.test for m in ms})
        cell = "; ".join(notes).replace("|", "\\|")
        proof = "<br>".join(f"`{t}`" for t in tests)
        lines.append(f"| {field.replace('|', chr(92) + '|')} | {ms[0].status} | {cell} | {proof} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render(scan())
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python -m tests.compat", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
