"""The network half of ``doctor``: from the URL to a server that speaks Redis, for any Redis URL.

DNS, the guide's security advice (a password, a strong one, TLS across a network), the TCP
connection and a TLS mismatch in either direction, bottom up, so that the first failure
names the real cause (``reach``). ``doctor`` walks it for ``REDIS_URL`` and
``doctor_limiter`` for ``RATE_LIMIT_REDIS_URL``; ``Finding`` is what every check returns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from service.settings import RedisURL

__all__ = [
    "SLOW_PING_MS",
    "STEP_TIMEOUT_S",
    "Finding",
    "Status",
    "ok",
    "problem",
    "reach",
    "security",
    "warning",
    "why",
]

Status = Literal["ok", "warning", "problem", "skipped"]
STEP_TIMEOUT_S = 3.0
SLOW_PING_MS = 25.0
MIN_PASSWORD_LENGTH = 16


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    advice: str = ""


def why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def problem(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "problem", detail, advice)


def warning(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "warning", detail, advice)


async def _dns(url: RedisURL, timeout_s: float) -> tuple[Finding, list[str]]:
    """The DNS finding, and the addresses the host resolves to."""
    assert url.host is not None
    assert url.port is not None
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM), timeout_s)
    except (TimeoutError, OSError) as exc:
        finding = problem(
            "dns",
            f"{url.host} does not resolve ({why(exc)})",
            "check the host name; Fly's private names (*.internal, Fly Redis) resolve only inside Fly's network, "
            "use the public rediss:// URL from elsewhere",
        )
        return finding, []
    addresses = sorted({str(info[4][0]) for info in infos})
    return ok("dns", f"{url.host} → {', '.join(addresses)}"), addresses


def _local(url: RedisURL, addresses: list[str]) -> str | None:
    """What makes the connection local (a unix socket, loopback), or ``None`` when it crosses a network."""
    if url.scheme == "unix":
        return "unix socket"
    if addresses and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        return "loopback"
    return None


def security(url: RedisURL, addresses: list[str]) -> list[Finding]:
    """The guide's security advice as warnings: a password, a strong one, and TLS to a public address.

    A unix socket or loopback (``make run``'s embedded Redis) crosses no network: nothing to warn of.
    """
    local = _local(url, addresses)
    if local is not None:
        return [ok("password", f"{local}: no network to guard"), ok("encryption", f"{local}: no network to guard")]
    findings = []
    if not url.password:
        findings.append(
            warning(
                "password",
                "no password in the URL: whoever reaches this Redis can read and change every key",
                "set a password (requirepass, or an ACL user) and put it in the URL; Fly Redis and Upstash have one",
            )
        )
    elif len(url.password) < MIN_PASSWORD_LENGTH:
        findings.append(
            warning(
                "password",
                f"the password is shorter than {MIN_PASSWORD_LENGTH} characters",
                "use a long random one (openssl rand -hex 24) and rotate it now and then",
            )
        )
    else:
        findings.append(ok("password", f"set, at least {MIN_PASSWORD_LENGTH} characters"))
    public = [address for address in addresses if ipaddress.ip_address(address.split("%")[0]).is_global]
    if url.tls:
        findings.append(ok("encryption", "TLS (rediss://)"))
    elif public:
        findings.append(
            warning(
                "encryption",
                f"plain redis:// to a public address ({', '.join(public)}): password and data cross the internet "
                "unencrypted",
                "use rediss:// (Upstash's public endpoint), or a private address (Fly's private network)",
            )
        )
    else:
        findings.append(ok("encryption", "plain redis:// on a private network"))
    return findings


async def _tcp(url: RedisURL, timeout_s: float) -> Finding:
    try:
        if url.scheme == "unix":
            assert url.path is not None
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(url.path), timeout_s)
        else:
            _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), timeout_s)
    except FileNotFoundError:
        return problem("connect", f"no socket at {url.path}", "is redis-server running with this unixsocket?")
    except ConnectionRefusedError:
        return problem(
            "connect",
            f"connection refused by {url.host or url.path}:{url.port or ''}",
            "nothing listens there: check the port, that Redis runs, and (on Fly) that app and Redis share a region",
        )
    except (TimeoutError, OSError) as exc:
        return problem(
            "connect",
            f"cannot connect to {url.host or url.path}:{url.port or ''} ({why(exc)})",
            "check firewalls and the address; a connect that times out usually means the host drops the traffic",
        )
    writer.close()
    return ok("connect", f"TCP connection to {url.host}:{url.port}" if url.host else f"socket {url.path}")


async def _tls(url: RedisURL, timeout_s: float) -> Finding:
    """Find a TLS mismatch in either direction, and certificate errors."""
    if url.scheme == "unix":
        return Finding("tls", "skipped", "unix socket")
    if not url.tls:
        # Speak plain RESP; a TLS server answers with an alert record (0x15) or hangs up.
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), timeout_s)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                first = await asyncio.wait_for(reader.read(1), timeout_s)
            finally:
                writer.close()
        except TimeoutError:
            # A TLS server hangs up on plain text at once; silence is a server that answers nothing.
            return problem(
                "answer",
                f"{url.host}:{url.port} accepts connections but answered nothing within {timeout_s:g} s",
                "Redis is paused, overloaded or stuck (a long command, a slow disk with appendfsync always): "
                "check its CPU, SLOWLOG and logs",
            )
        except OSError:
            first = b""
        if first in (b"", b"\x15"):
            return problem(
                "tls",
                "the server does not answer plain Redis on this port; it looks like a TLS port",
                "use rediss:// instead of redis:// (Upstash's public endpoints need TLS)",
            )
        return ok("tls", "plain connection (redis://); use rediss:// for traffic that leaves a private network")
    context = ssl.create_default_context()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(url.host, url.port, ssl=context, server_hostname=url.host), timeout_s
        )
        writer.close()
    except ssl.SSLCertVerificationError as exc:
        return problem(
            "tls",
            f"the server's certificate is not trusted: {exc.verify_message}",
            "check the host name matches the certificate and the CA is installed; don't turn verification off",
        )
    except (ssl.SSLError, TimeoutError, OSError) as exc:
        return problem(
            "tls",
            f"TLS handshake failed ({why(exc)}): the port seems to speak plain Redis",
            "use redis:// instead of rediss:// (Fly Redis's private URL is redis://)",
        )
    return ok("tls", "TLS handshake and certificate verified")


async def reach(url: RedisURL, timeout_s: float) -> list[Finding]:
    """The network walk to ``url`` (DNS, security advice, TCP, TLS), ending at the first problem."""
    findings: list[Finding] = []
    addresses: list[str] = []
    if url.scheme != "unix":
        finding, addresses = await _dns(url, timeout_s)
        findings.append(finding)
        if finding.status == "problem":
            return [*findings, Finding("redis", "skipped", "needs a working connection")]
    findings.extend(security(url, addresses))
    steps: list[Callable[[RedisURL, float], Awaitable[Finding]]] = [_tcp, _tls]
    for step in steps:
        finding = await step(url, timeout_s)
        findings.append(finding)
        if finding.status == "problem":
            return [*findings, Finding("redis", "skipped", "needs a working connection")]
    return findings
