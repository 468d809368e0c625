"""Outbound callback URL safety: http(s) only, link-local and cloud metadata refused always,
checked on the resolved addresses (a resolver wrapper, so DNS rebinding cannot sneak past)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_DENIED: tuple[Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, incl. 169.254.169.254 metadata
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IPv6 metadata
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba metadata
    ipaddress.ip_network("0.0.0.0/32"),
)


class UnsafeUrl(Exception):
    pass


class AddressPolicy:
    def __init__(self, allow: list[str], deny: list[str]) -> None:
        self.allow = [ipaddress.ip_network(c, strict=False) for c in allow]
        self.deny = list(ALWAYS_DENIED) + [ipaddress.ip_network(c, strict=False) for c in deny]

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            return False
        return not self.allow or any(ip in net for net in self.allow)

    def check_url(self, url: str) -> URL:
        """Scheme and literal-IP checks; names are checked by ``SafeResolver`` at connect."""
        u = URL(url)
        if u.scheme not in ("http", "https") or not u.host:
            raise UnsafeUrl(f"not an http(s) URL: {u.scheme}://")
        try:
            ipaddress.ip_address(u.host)
        except ValueError:
            return u
        if not self.permits(u.host):
            raise UnsafeUrl(f"address {u.host} is not allowed")
        return u


class SafeResolver(AbstractResolver):
    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.permits(r["host"])]
        if not allowed:
            raise OSError(f"callback host {host} resolves only to refused addresses")
        if len(allowed) != len(results):
            # Any refused address makes the name suspect (rebinding): refuse it all.
            raise OSError(f"callback host {host} resolves to a refused address")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
