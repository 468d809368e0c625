"""HTTP Basic, shared by every side of shim."""

from __future__ import annotations

from shim.basic_auth import basic_credentials, basic_header, check_pair


def test_empty_passwords_never_match() -> None:
    assert check_pair(("tok", "pw"), "tok", "pw")
    assert not check_pair(("tok", ""), "tok", "") and not check_pair(("", ""), "", "")
    assert not check_pair(basic_credentials(basic_header("tok", "")), "tok", "")
