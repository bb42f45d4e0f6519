"""Where ``webhook.deliver`` may connect: the URL, its host and port, and every address it resolves to.

A destination must pass two lists: the deployment's ``WEBHOOK_ALLOWED_HOSTS`` (the outer
fence) and the calling tenant's own receivers (``python -m service webhooks hosts``).
In both, an entry is ``host`` or ``host:port``:

- ``host:port`` allows that port only;
- a bare ``host`` allows the web's ports only, 80 and 443 (never "any port": a listed
  name must not become a way to reach the other services of that machine);
- every address the host resolves to must be public, unless that very address is listed
  (``127.0.0.1:8081``): loopback, private, link-local, shared (CGNAT), NAT64
  (``64:ff9b::/96``, ``64:ff9b:1::/48``), 6to4 (``2002::/16``), Teredo (``2001::/32``),
  IPv4-compatible, site-local, multicast and every other non-global address are refused,
  since the IPv6 transition ranges lead to IPv4 addresses that a plain check would not
  see. A listed *name* that resolves to such an address is refused too, which is what a
  DNS-rebinding attack looks like.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from yarl import URL

from jobs.registry import PermanentError, RetryLater
from service.settings import split_host_port

__all__ = [
    "WEB_PORTS",
    "Destination",
    "DestinationRefused",
    "IPAddress",
    "check_destination",
    "is_public",
    "listed",
    "outside_fence",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
WEB_PORTS = (80, 443)

# Not reachable as themselves, or leading to other addresses; Python's is_global lets these through.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in (
        "64:ff9b::/96",  # NAT64, well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64, local use (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "2001::/32",  # Teredo (RFC 4380)
        "::/96",  # IPv4-compatible (deprecated, RFC 4291)
        "fec0::/10",  # site-local (deprecated, RFC 3879)
    )
)


class DestinationRefused(PermanentError):
    """The URL's host is not allowed, or resolves to an address that is not."""


def listed(host: str, port: int, entries: tuple[str, ...]) -> bool:
    """Whether ``entries`` allow ``host`` on ``port``: ``host:port`` exactly, or a bare ``host`` on 80 or 443."""
    bracketed = f"[{host}]" if ":" in host else host
    return f"{bracketed}:{port}" in entries or (port in WEB_PORTS and (host in entries or bracketed in entries))


def outside_fence(entries: tuple[str, ...], fence: tuple[str, ...]) -> list[str]:
    """The receiver ``entries`` that ``WEBHOOK_ALLOWED_HOSTS`` (``fence``) does not allow, wholly or in part."""
    outside = []
    for entry in entries:
        host, port = split_host_port(entry)
        ports = (int(port),) if port else WEB_PORTS
        if not all(listed(host, each, fence) for each in ports):
            outside.append(entry)
    return outside


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is an ordinary address of the public internet."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast or not address.is_global:
        return False
    return not any(address in network for network in _NOT_PUBLIC if network.version == address.version)


class Destination:
    """A parsed webhook URL: its host (lower case, no trailing dot) and port."""

    def __init__(self, url: str) -> None:
        try:
            parsed = URL(url)
            port = parsed.port
        except (ValueError, TypeError):  # yarl: a port out of range, a malformed host
            raise DestinationRefused(f"not a valid URL: {url!r}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise DestinationRefused(f"only http and https URLs with a host can be called, got {url!r}")
        self.url = url
        self.host = parsed.host.lower().rstrip(".")
        self.port = port or (443 if parsed.scheme == "https" else 80)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def check_destination(
    url: str, *, fence: tuple[str, ...], receivers: tuple[str, ...], tenant: str
) -> tuple[Destination, list[tuple[int, IPAddress]]]:
    """The destination of ``url`` and the addresses it may be reached at; ``DestinationRefused`` when the
    rules above refuse it, ``RetryLater`` when its name does not resolve now."""
    destination = Destination(url)
    host, port = destination.host, destination.port
    if not listed(host, port, receivers):
        raise DestinationRefused(
            f"{destination} is not among the webhook receivers of tenant {tenant!r} "
            f"(python -m service webhooks hosts --tenant {tenant} HOST...)"
        )
    if not listed(host, port, fence):
        raise DestinationRefused(f"{destination} is not allowed by WEBHOOK_ALLOWED_HOSTS")
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise RetryLater(f"cannot resolve {host}") from None
    addresses: list[tuple[int, IPAddress]] = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        text = str(address)
        if not is_public(address) and not (listed(text, port, fence) and listed(text, port, receivers)):
            raise DestinationRefused(
                f"{host} resolves to {address}, which is not a public address; "
                "it can only be called when that address is listed itself (tenant receivers and WEBHOOK_ALLOWED_HOSTS)"
            )
        addresses.append((family, address))
    if not addresses:
        raise RetryLater(f"{host} has no address")
    return destination, addresses
