"""The dashboard's browser sessions: a signed, expiring cookie and its CSRF token; nothing is stored.

A cookie is an expiry and a random id signed with HMAC-SHA256 under a key derived from
``INTERNAL_TOKEN``, so every web process accepts it and rotating the token ends every
session (without a token the key is random per process: sessions then serve loopback visits
to one process, which is all that is open anyway). Who may use them is ``service.operators``'s
rule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "SESSION_LIFETIME_S",
    "Session",
    "Sessions",
]

COOKIE_NAME = "__Host-ottoai-dashboard"  # __Host-: Secure, Path=/ and no Domain, or the browser refuses it
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME_S = 12 * 3600
_KEY_LABEL = b"ottoai-backend dashboard session v1"


@dataclass(frozen=True)
class Session:
    """A verified session: its random id and when it ends (Unix seconds)."""

    id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Sessions:
    """Mint and verify session cookies and their CSRF tokens; nothing is stored."""

    def __init__(
        self,
        internal_token: str | None,
        *,
        lifetime_s: int = SESSION_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secret = internal_token.encode() if internal_token is not None else secrets.token_bytes(32)
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()
        self._internal_token = internal_token
        self.lifetime_s = lifetime_s
        self._clock = clock

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def new(self) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_hex(16), int(self._clock()) + self.lifetime_s)
        payload = f"{session.expires_at}.{session.id}"
        return session, f"{payload}.{self._mac(payload)}"

    def verify(self, cookie: str | None) -> Session | None:
        """The session of a cookie value, or None when it is missing, forged, mangled or expired."""
        if not cookie or len(cookie) > 200:
            return None
        expires, _, rest = cookie.partition(".")
        session_id, _, mac = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(mac, self._mac(f"{expires}.{session_id}")):
            return None
        if int(expires) <= self._clock():
            return None
        return Session(session_id, int(expires))

    def csrf_token(self, session: Session) -> str:
        """The token a page of this session sends in ``X-CSRF-Token`` with every change it asks for."""
        return self._mac(f"csrf.{session.id}")

    def csrf_matches(self, session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf_token(session).encode())

    def token_matches(self, presented: str) -> bool:
        """Whether ``presented`` is ``INTERNAL_TOKEN`` (the login form's check); never true without one."""
        token = self._internal_token
        return token is not None and hmac.compare_digest(presented.encode(), token.encode())

    def set_cookie(self, response: web.StreamResponse, cookie: str) -> None:
        response.set_cookie(
            COOKIE_NAME, cookie, max_age=self.lifetime_s, path="/", secure=True, httponly=True, samesite="Strict"
        )
