"""Who is calling: the API key a request presents, its client address, and the loopback-or-token rule.

The ``/v1`` gate reads the key and, for a caller without a valid one, the address it is
rate-limited by; internal routes (``/metrics``, ``/internal/*``, the dashboard) are open from
loopback and otherwise need their bearer token. The keys themselves are ``service.auth``'s.
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from aiohttp import web

from service.errors import Problem

__all__ = [
    "address_caller",
    "bearer_token_matches",
    "client_address",
    "key_required",
    "made_by_a_page",
    "presented_key",
    "require_internal",
]


def presented_key(request: web.Request) -> str | None:
    """The API key of the request, from ``Authorization: Bearer`` or ``X-API-Key``; ``None`` when none is sent.

    An ``Authorization`` header wins even when it is not a Bearer key: then the answer is
    ``""``, which no key matches, so the request is refused rather than judged by ``X-API-Key``.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def client_address(request: web.Request, trust_proxy_headers: bool) -> str:
    """The caller's IP address; proxy headers count only when the deployment trusts them.

    Behind Fly's proxy, ``Fly-Client-IP`` is set by the proxy itself; failing that, the
    right-most ``X-Forwarded-For`` hop is the one the proxy added (the left ones are
    whatever the client sent).
    """
    if trust_proxy_headers:
        for candidate in (
            request.headers.get("Fly-Client-IP", ""),
            request.headers.get("X-Forwarded-For", "").rpartition(",")[2],
        ):
            try:
                return str(ipaddress.ip_address(candidate.strip()))
            except ValueError:
                continue
    return request.remote or "unknown"


@lru_cache(maxsize=4096)
def address_caller(address: str) -> str:
    """The rate-limit caller of a request without a valid key: its IPv4 address, or its IPv6 /64.

    One IPv6 client usually holds a whole /64 and can rotate through it at will.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"ip:{address}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"ip:{ip}"


def key_required(request: web.Request) -> Problem:
    """The 401 of a ``/v1/`` request without a valid key."""
    detail = "API key is not valid" if presented_key(request) is not None else "API key required"
    return Problem(
        401,
        f"{detail}: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        type_="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="ottoai"'},
    )


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def made_by_a_page(request: web.Request) -> bool:
    """Whether a web page in a browser sent the request (not a person typing an address, not a script).

    Browsers add ``Origin`` to every cross-origin request that is not a GET, and
    ``Sec-Fetch-Site`` (``none`` for an address typed or bookmarked) to requests for
    loopback addresses; ``curl`` and HTTP libraries send neither.
    """
    return "Origin" in request.headers or request.headers.get("Sec-Fetch-Site", "none") != "none"


def bearer_token_matches(request: web.Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (never true without a token)."""
    if token is None:
        return False
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def require_internal(request: web.Request, token: str | None) -> None:
    """Open from loopback; elsewhere the bearer ``token`` is needed (403 when none is set).

    A loopback request that a web page made needs the token too: the operator's browser is
    on loopback, and any site it shows could otherwise reach these routes
    (``service.operators`` gives the dashboard's own page a session instead).
    """
    loopback = _is_loopback(request) and "Fly-Client-IP" not in request.headers
    if loopback and not made_by_a_page(request):
        return
    if bearer_token_matches(request, token):
        return
    if token is None:
        detail = (
            "a request made by a web page needs the token, even from loopback"
            if loopback
            else "this route is only open from loopback unless its token is configured"
        )
        raise Problem(403, detail, type_="forbidden")
    raise Problem(
        401,
        "a valid bearer token is required",
        type_="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="ottoai-internal"'},
    )
