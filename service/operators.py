"""Who may use the operators' routes (``/internal/*`` and ``/dashboard``).

Three ways in, checked in this order:

1. ``Authorization: Bearer $INTERNAL_TOKEN`` (scripts, from anywhere). A web page cannot
   forge it: a cross-origin request carrying it needs a CORS preflight, which this service
   never grants.
2. The dashboard's session cookie (``__Host-ottoai-dashboard``: ``Secure; HttpOnly;
   SameSite=Strict``), set by the login form or on a loopback visit to ``/dashboard``:
   signed and expiring, nothing stored (``service.sessions``). A request that changes
   something also needs the session's CSRF token in ``X-CSRF-Token``, which only a page of
   this origin can read (from the dashboard's HTML). SameSite=Strict alone is not enough: every port of ``localhost`` is
   the same *site*, so a page of another local server would get the cookie sent.
3. Loopback without credentials (``service.callers.require_internal``), unless a web page made
   the request (it carries ``Origin``, or ``Sec-Fetch-Site`` other than ``none``). The
   browser is on loopback too, so without that rule any site the operator visits could
   POST to ``http://127.0.0.1:8080/internal/cron/.../pause``, and a DNS-rebinding page
   could read the answers. ``curl`` and scripts send neither header; a person's browser
   gets the session of step 2 by opening ``/dashboard`` (a typed address or a bookmark is
   ``Sec-Fetch-Site: none``).
"""

from __future__ import annotations

from aiohttp import web

from service.app_keys import OPERATOR_SESSIONS, SETTINGS
from service.callers import bearer_token_matches, require_internal
from service.errors import Problem
from service.sessions import COOKIE_NAME, CSRF_HEADER, Session

__all__ = ["require_operator"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def require_operator(request: web.Request) -> Session | None:
    """Let an operator through (see the module's docstring), or raise 401/403; the session used, if any."""
    internal_token = request.app[SETTINGS].internal_token
    if bearer_token_matches(request, internal_token):
        return None
    sessions = request.app[OPERATOR_SESSIONS]
    session = sessions.verify(request.cookies.get(COOKIE_NAME))
    if session is not None:
        if request.method not in _SAFE_METHODS and not sessions.csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise Problem(
                403,
                f"a change asked for with the dashboard's session needs its CSRF token in {CSRF_HEADER}",
                type_="csrf-token-invalid",
            )
        return session
    require_internal(request, internal_token)
    return None
