"""``docs/compatibility.md`` is generated from the suite's ``compat`` markers (``tests/compat.py``):
it cannot drift from what is tested, and every v1 endpoint/field has a row."""

from __future__ import annotations

import pytest

from . import compat


def test_committed_matrix_matches_the_markers() -> None:
    expected = compat.render(compat.scan())
    assert compat.DOC.exists(), "docs/compatibility.md is missing: run python -m tests.compat"
    assert compat.DOC.read_text() == expected, "docs/compatibility.md is out of date: run python -m tests.compat"


def test_every_v1_endpoint_and_field_has_a_row() -> None:
    assert compat.missing(compat.scan()) == []


@pytest.mark.parametrize(("source", "says"), [
    ('@pytest.mark.compat("GET /x", "f", "mostly")', "is not one of"),
    ('@pytest.mark.compat("GET /x", G(), "supported")', "must be literals"),
    ('@pytest.mark.compat("GET /x", F + 1, "supported")', "must be literals"),
    ('@pytest.mark.compat("GET /x", "supported")', "compat\\(endpoint, field, status"),
    ('@compat("GET /x", "f", "supported", notes="x")', "compat\\(endpoint, field, status"),
])
def test_scanner_rejects_bad_markers(source: str, says: str) -> None:
    module = f"import pytest\ncompat = pytest.mark.compat\nF = 'f'\n{source}\ndef test_a() -> None: pass\n"
    with pytest.raises(compat.MarkerError, match=says):
        compat.scan_source(module, "tests/test_x.py")


def test_scanner_reads_both_spellings() -> None:
    module = ("import pytest\ncompat = pytest.mark.compat\n"
              'N = "n"\n@compat("GET /x", "f", "partial", note="a\\n  b")\n'
              '@pytest.mark.compat("GET /y", "g", "supported", note=f"{N}!" + N)\n'
              "async def test_a() -> None: pass\n")
    assert compat.scan_source(module, "tests/test_x.py") == (
        compat.Marker("GET /x", "f", "partial", "a b", "tests/test_x.py::test_a"),
        compat.Marker("GET /y", "g", "supported", "n!n", "tests/test_x.py::test_a"),
    )


def test_markers_of_one_row_must_agree() -> None:
    a = compat.Marker("GET /x", "f", "supported", "", "t::a")
    b = compat.Marker("GET /x", "f", "partial", "", "t::b")
    with pytest.raises(compat.MarkerError, match="disagree"):
        compat.render([a, b])
    text = compat.render([a, compat.Marker("GET /x", "g", "not supported", "a | b", "t::c")])
    assert "| g | not supported | a \\| b | `t::c` |" in text and "1 supported, 0 partial, 1 not supported" in text
