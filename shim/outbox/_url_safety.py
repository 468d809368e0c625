"""Outbound callback URL safety (SPEC §4), default deny: http(s) only; loopback, private, CGNAT,
link-local, reserved, documentation, benchmark, multicast and broadcast addresses refused unless
``callbacks.allow_cidrs`` opens them, including their IPv6 embeddings (IPv4-mapped,
IPv4-compatible, NAT64, 6to4, Teredo); cloud metadata refused always; shim's own listeners never
reachable. Checked on literal IPs and on resolved addresses (a resolver wrapper, so DNS
rebinding cannot sneak past)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from shim.config import Config, parse_listen

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Refused whatever allow_cidrs says: cloud metadata endpoints.
ALWAYS_DENIED = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack metadata
    "169.254.170.2/32",  # AWS ECS task metadata
    "fd00:ec2::254/128",  # AWS IPv6 metadata
    "100.100.100.200/32",  # Alibaba metadata
    "192.0.0.192/32",  # Oracle Cloud metadata
)

# Refused unless allow_cidrs opens them (Svix's list and the IANA special-purpose registries).
DEFAULT_DENIED = _nets(
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)

NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOOPBACK = _nets("127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128")


class UnsafeUrl(Exception):
    pass


class RefusedAddress(OSError):
    """A callback host resolved to a refused address (raised inside the connector)."""


def embedded_v4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo client, compatible)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if 1 < int(ip) <= 0xFFFFFFFF:  # IPv4-compatible ::a.b.c.d (deprecated, still routable on some stacks)
        return ipaddress.IPv4Address(int(ip))
    return None


def _in(ips: Iterable[Address], nets: Iterable[Network]) -> bool:
    nets = list(nets)
    return any(ip.version == n.version and ip in n for ip in ips for n in nets)


class AddressPolicy:
    """``self_ports``: shim's own listen ports — a loopback/own address on one of them is refused
    even when loopback is allowed, so a callback can never reach shim's ingest or admin API."""

    def __init__(
        self, allow: list[str], deny: list[str], *, self_ports: Iterable[int] = (), self_hosts: Iterable[str] = (),
    ) -> None:
        self.allow = [ipaddress.ip_network(c, strict=False) for c in allow]
        self.deny = [ipaddress.ip_network(c, strict=False) for c in deny]
        self.self_ports = {p for p in self_ports if p}
        self.self_nets: list[Network] = list(LOOPBACK)
        for host in self_hosts:
            try:
                self.self_nets.append(ipaddress.ip_network(host.strip("[]")))
            except ValueError:
                continue

    def permits(self, address: str, port: int | None = None) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        v4 = embedded_v4(ip)
        ips: list[Address] = [ip] if v4 is None else [ip, v4]
        if _in(ips, ALWAYS_DENIED) or _in(ips, self.deny):
            return False
        if port is not None and port in self.self_ports and _in(ips, self.self_nets):
            return False
        if _in(ips, self.allow):
            return True
        if _in(ips, DEFAULT_DENIED):
            return False
        return all(a.is_global and not a.is_multicast for a in ips)

    def check_url(self, url: str) -> URL:
        """Scheme and literal-IP checks; names are checked by ``SafeResolver`` at connect (on the
        addresses connected to)."""
        u = URL(url)
        if u.scheme not in ("http", "https") or not u.host:
            raise UnsafeUrl(f"not an http(s) URL: {u.scheme}://")
        try:
            ipaddress.ip_address(u.host.split("%", 1)[0])
        except ValueError:
            if u.host.rstrip(".").lower() == "localhost" or u.host.rstrip(".").lower().endswith(".localhost"):
                if not self.permits("127.0.0.1", u.port):
                    raise UnsafeUrl(f"address {u.host} is not allowed") from None
            return u
        if not self.permits(u.host, u.port):
            raise UnsafeUrl(f"address {u.host} is not allowed")
        return u

    def refuses_literal(self, url: str) -> bool:
        """True for a URL whose host is a literal IP (or localhost) this policy refuses."""
        try:
            self.check_url(url)
        except UnsafeUrl:
            return True
        except ValueError:
            return False
        return False


class SafeResolver(AbstractResolver):
    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.permits(r["host"], port)]
        if not allowed:
            raise RefusedAddress(f"refused: callback host {host} resolves only to refused addresses")
        if len(allowed) != len(results):
            # Any refused address makes the name suspect (rebinding): refuse it all.
            raise RefusedAddress(f"refused: callback host {host} resolves to a refused address")
        return allowed

    async def addresses(self, host: str, port: int) -> list[str]:
        """The ``H1Transport`` resolve hook: the addresses to connect to, every one permitted (else
        ``RefusedAddress``), resolved as aiohttp's connector does (``AF_UNSPEC``). A literal IP is
        not looked up, only checked again."""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return [r["host"] for r in await self.resolve(host, port, socket.AF_UNSPEC)]
        if not self.policy.permits(host, port):
            raise RefusedAddress(f"refused: callback address {host} is not allowed")
        return [host]

    async def close(self) -> None:
        await self.inner.close()


def policy_from_config(cfg: Config) -> AddressPolicy:
    """The configured policy, with shim's own listeners (main and admin) never reachable."""
    ports = [cfg.server.port]
    hosts = [cfg.server.host]
    if cfg.admin.listen:
        host, port = parse_listen(cfg.admin.listen)
        ports.append(port)
        hosts.append(host)
    return AddressPolicy(cfg.callbacks.allow_cidrs, cfg.callbacks.deny_cidrs, self_ports=ports, self_hosts=hosts)
