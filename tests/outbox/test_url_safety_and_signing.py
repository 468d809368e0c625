"""The outbound address policy (default deny) and the v1 callback wire pieces: GET query, signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from shim.outbox import AddressPolicy, RefusedAddress, SafeResolver, UnsafeUrl, query_params, signature


def test_query_params_and_signature() -> None:
    assert query_params({"a": "x", "media": ["u1", "u2"], "n": 1, "b": True, "z": None}) == [
        ("a", "x"), ("media", "u1"), ("media", "u2"), ("n", "1"), ("b", "true")]
    key = base64.b64encode(b"raw-key-of-sixteen-bytes").decode()
    mac = hmac.new(b"raw-key-of-sixteen-bytes", b"evt_1.1700000000.{}", hashlib.sha256).digest()
    assert signature("whsec_" + key, "evt_1", 1700000000, "{}") == "v1," + base64.b64encode(mac).decode()
    other = "whsec_" + base64.b64encode(b"another-key-16-bytes").decode()
    both = signature(["whsec_" + key, other], "evt_1", 1700000000, "{}")
    assert both.split(" ")[0] == "v1," + base64.b64encode(mac).decode() and len(both.split(" ")) == 2


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1", "169.254.169.254", "0.0.0.0",
     "0.1.2.3", "192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1", "224.0.0.1", "239.255.255.250",
     "240.0.0.1", "255.255.255.255", "100.100.100.200", "::1", "::", "fe80::1", "fc00::1", "fd12::1",
     "fd00:ec2::254", "ff02::1", "2001:db8::1",
     "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "::10.0.0.1",
     "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a00:1", "2002:7f00:1::", "2002:a00:1::1",
     "2001:0:4136:e378:8000:63bf:80ff:fffe"],  # Teredo, client 127.0.0.1
)
def test_refused_by_default(address: str) -> None:
    assert not AddressPolicy([], []).permits(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34",
                                     "64:ff9b::5db8:d822", "2002:5db8:d822::1"])
def test_public_addresses_allowed(address: str) -> None:
    assert AddressPolicy([], []).permits(address)


def test_allow_and_deny_lists() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16"], ["10.9.0.0/16", "8.8.8.0/24"])
    assert policy.permits("127.0.0.5") and policy.permits("::ffff:127.0.0.5") and policy.permits("64:ff9b::a01:203")
    assert policy.permits("93.184.216.34") and not policy.permits("8.8.8.8")  # allow opens, it does not restrict
    assert not policy.permits("10.9.1.1") and not policy.permits("::ffff:10.9.1.1")  # deny wins
    assert policy.permits("169.254.1.1") and not policy.permits("169.254.169.254")  # metadata always refused
    assert not policy.permits("::1") and not policy.permits("192.168.0.1")
    with pytest.raises(UnsafeUrl):
        policy.check_url("ftp://example.com/x")
    with pytest.raises(UnsafeUrl):
        policy.check_url("http://169.254.169.254/latest")
    assert policy.check_url("https://example.com/x").host == "example.com"


def test_own_listeners_never_reachable() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"], [], self_ports=[8080, 8081], self_hosts=["10.0.0.5"])
    assert policy.permits("127.0.0.1", 9000) and not policy.permits("127.0.0.1", 8080)
    assert not policy.permits("::1", 8081) and not policy.permits("10.0.0.5", 8080)
    for url in ("http://127.0.0.1:8080/admin/dead-letters/replay", "http://localhost:8081/x", "http://[::1]:8080/",
                "http://[::ffff:127.0.0.1]:8080/callbacks/v2"):
        assert policy.refuses_literal(url), url
    assert not policy.refuses_literal("http://127.0.0.1:9000/cb") and not policy.refuses_literal("https://example.com/")


async def test_resolver_refuses_names_of_refused_addresses() -> None:
    resolver = SafeResolver(AddressPolicy([], []))
    try:
        with pytest.raises(RefusedAddress):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    resolver = SafeResolver(AddressPolicy(["127.0.0.0/8", "::1/128"], [], self_ports=[8080]))
    try:
        assert await resolver.resolve("localhost", 9000)
        with pytest.raises(RefusedAddress):
            await resolver.resolve("localhost", 8080)
    finally:
        await resolver.close()
