"""Every error shim can produce, single or batch, has a category the C# SDK can parse.

Bandwidth.Net (``src/Bandwidth.Net/Api/Error.cs``) deserializes ``category`` into the enum
``ErrorCategory`` (authentication, authorization, not-found, bad-request, conflict, unavailable,
credit, limit, payment, forbidden) and ``JsonStringEnumConverter.cs`` throws on anything else —
one unknown category in a batch result loses the whole batch. Errors are made in two ways: a class
of the hierarchy in ``shim/errors.py``, or ``ShimError(..., category=...)``; both are checked here,
the second by reading every ``category=`` in shim's source.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import shim
from shim import errors
from shim.errors import V1_CATEGORIES, ShimError, error_body
from shim.facade._send import batch_item_error

SHIM = Path(shim.__file__).parent


def all_subclasses(cls: type[ShimError]) -> list[type[ShimError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += all_subclasses(sub)
    return out


def test_the_categories_are_the_csharp_enum() -> None:
    assert {"authentication", "authorization", "not-found", "bad-request", "conflict", "unavailable", "credit",
            "limit", "payment", "forbidden"} == V1_CATEGORIES


@pytest.mark.compat("all v1 endpoints", "error body", "supported")
def test_every_class_of_the_hierarchy_has_a_known_category() -> None:
    import shim.web_server  # noqa: F401 - defines a subclass of its own
    classes = all_subclasses(ShimError)
    assert len(classes) >= 18
    for cls in classes:
        assert cls.category in V1_CATEGORIES, cls
        assert 400 <= cls.status < 600, cls


@pytest.mark.compat("all v1 endpoints", "error body", "supported")
def test_every_category_keyword_in_the_source_is_known() -> None:
    """``category=...`` anywhere in shim: a literal from V1_CATEGORIES (a computed one would escape
    this check, so there is none)."""
    seen = 0
    for path in sorted(SHIM.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "category":
                        where = f"{path.relative_to(SHIM)}:{node.lineno}"
                        assert isinstance(kw.value, ast.Constant), f"{where}: category must be a literal"
                        assert kw.value.value in V1_CATEGORIES, f"{where}: {kw.value.value!r}"
                        seen += 1
    assert seen >= 5


def test_batch_items_report_known_categories_for_every_error() -> None:
    for cls in all_subclasses(ShimError):
        params = inspect.signature(cls.__init__).parameters
        args = ["x"] * sum(1 for p in list(params.values())[1:]
                           if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD)
        if cls is errors.MultiMessageLimit:
            args = [51, 50]  # type: ignore[list-item]
        err = cls(*args)
        body = error_body(batch_item_error(err))
        assert body["category"] in V1_CATEGORIES
        assert set(body) == {"category", "code", "message", "details"}
    internal = error_body(batch_item_error(None))
    assert (internal["category"], internal["code"]) == ("unavailable", "internal-error")
    assert batch_item_error(ShimError("boom")).status == 503


def test_every_delivery_code_is_an_int_for_csharp() -> None:
    """``deliveryCode`` is a string on the wire (v1, Java's ``SmsEvent``) that C#'s ``int DeliveryCode``
    must parse: digits for every v2 error code Bandwidth lists, for an unknown one and for none."""
    from shim.core import map_error_code
    from shim.core._delivery_codes import V1_DESCRIPTIONS, v2_names

    for v2_code in [*v2_names(), 4000, 1, -5, 2**31 - 1, None]:
        code, description = map_error_code(v2_code, "whatever")
        assert code.isdigit() and int(code) in V1_DESCRIPTIONS, (v2_code, code)
        assert description
