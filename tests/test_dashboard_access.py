"""Who may open the dashboard and act from it: loopback, the internal token, or a session from the login form.

aiohttp's test client connects over loopback; a ``Fly-Client-IP`` header makes a request a
proxied one, from beyond loopback, as ``require_internal`` sees it. Cookies are sent by hand:
the client's cookie jar (rightly) keeps no ``Secure`` cookie for plain http to an address.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import cast

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service.app import create_app
from service.sessions import COOKIE_NAME, CSRF_HEADER, Sessions
from tests.conftest import ServiceTestServer, make_settings
from tests.servers import redis_url

Client = TestClient[web.Request, web.Application]

TOKEN = "internal-token-for-tests"
REMOTE = {"Fly-Client-IP": "203.0.113.9"}  # as Fly's proxy marks a request from the internet
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


async def _client(aiohttp_client: AiohttpClient, **env: str) -> Client:
    app = create_app(make_settings(METRICS_PORT="0", **env))
    return cast(Client, await aiohttp_client(ServiceTestServer(app)))


@pytest.fixture
async def open_client(aiohttp_client: AiohttpClient, redis: Redis) -> Client:
    """A service without ``INTERNAL_TOKEN``: the dashboard is open from loopback only."""
    return await _client(aiohttp_client)


@pytest.fixture
async def token_client(aiohttp_client: AiohttpClient, redis: Redis) -> Client:
    """A service with ``INTERNAL_TOKEN`` set."""
    return await _client(aiohttp_client, INTERNAL_TOKEN=TOKEN)


def _session_cookie(response: ClientResponse) -> tuple[str, dict[str, str | bool]]:
    """The session cookie a response sets: its value and its attributes, as the header wrote them."""
    [header] = [value for value in response.headers.getall("Set-Cookie") if value.startswith(COOKIE_NAME + "=")]
    morsel = SimpleCookie(header)[COOKIE_NAME]
    attributes = {name: morsel[name] for name in ("secure", "httponly", "samesite", "path", "max-age") if morsel[name]}
    return morsel.value, attributes


def _csrf_token(html: str) -> str:
    marker = '<meta name="csrf-token" content="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


async def _login(client: Client, token: str = TOKEN) -> ClientResponse:
    return await client.post("/dashboard/login", data={"token": token}, headers=REMOTE, allow_redirects=False)


async def test_loopback_visit_gets_the_page_and_a_secure_httponly_strict_session(open_client: Client) -> None:
    response = await open_client.get("/dashboard")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["Cache-Control"] == "no-store"
    _, attributes = _session_cookie(response)
    assert attributes == {"secure": True, "httponly": True, "samesite": "Strict", "path": "/", "max-age": "43200"}
    html = await response.text()
    assert _csrf_token(html)
    assert "<script>" not in html  # nothing inline: the CSP would refuse it
    assert " style=" not in html


async def test_beyond_loopback_without_a_configured_token_everything_is_403(open_client: Client) -> None:
    for method, path in (
        ("GET", "/dashboard"),
        ("GET", "/internal/dashboard.json"),
        ("POST", "/dashboard/login"),
        ("POST", "/internal/cron/cron-canary/pause"),
    ):
        response = await open_client.request(method, path, headers=REMOTE, allow_redirects=False)
        assert response.status == 403, (method, path)
        assert response.content_type == "application/problem+json"


async def test_beyond_loopback_a_wrong_bearer_token_is_401_and_the_right_one_opens(token_client: Client) -> None:
    wrong = await token_client.get(
        "/internal/dashboard.json", headers={**REMOTE, "Authorization": "Bearer not-the-token"}
    )
    assert wrong.status == 401
    assert wrong.content_type == "application/problem+json"
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="ottoai-internal"'
    right = await token_client.get("/internal/dashboard.json", headers={**REMOTE, "Authorization": f"Bearer {TOKEN}"})
    assert right.status == 200
    assert right.headers["Cache-Control"] == "no-store"


async def test_beyond_loopback_the_page_sends_a_browser_to_the_login_form(token_client: Client) -> None:
    response = await token_client.get("/dashboard", headers=REMOTE, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/login"
    form = await token_client.get("/dashboard/login", headers=REMOTE)
    assert form.status == 200
    assert form.headers["Content-Security-Policy"] == CSP
    assert '<form method="post" action="/dashboard/login">' in await form.text()


async def test_login_with_the_token_sets_the_session_cookie_that_opens_the_document(token_client: Client) -> None:
    response = await _login(token_client)
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard"
    cookie, attributes = _session_cookie(response)
    assert attributes == {"secure": True, "httponly": True, "samesite": "Strict", "path": "/", "max-age": "43200"}
    assert TOKEN not in cookie
    with_session = {**REMOTE, "Cookie": f"{COOKIE_NAME}={cookie}"}
    assert (await token_client.get("/internal/dashboard.json", headers=with_session)).status == 200
    page = await token_client.get("/dashboard", headers=with_session)
    assert page.status == 200
    assert "Set-Cookie" not in page.headers  # the session it came with is kept
    assert TOKEN not in await page.text()


async def test_login_with_a_wrong_token_sets_no_cookie_and_goes_back_to_the_form_that_says_so(
    token_client: Client,
) -> None:
    response = await _login(token_client, "not-the-token")
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard/login?failed"
    assert "Set-Cookie" not in response.headers
    form = await token_client.get("/dashboard/login?failed", headers=REMOTE)
    assert "That is not the internal token." in await form.text()
    assert (await token_client.get("/internal/dashboard.json", headers=REMOTE)).status == 401  # still no way in


async def test_login_form_takes_only_a_form(token_client: Client) -> None:
    response = await token_client.post("/dashboard/login", json={"token": TOKEN}, headers=REMOTE)
    assert response.status == 415
    assert response.content_type == "application/problem+json"


async def test_a_change_asked_with_the_session_but_without_its_csrf_token_is_refused(token_client: Client) -> None:
    cookie, _ = _session_cookie(await _login(token_client))
    with_session = {**REMOTE, "Cookie": f"{COOKIE_NAME}={cookie}"}
    token = _csrf_token(await (await token_client.get("/dashboard", headers=with_session)).text())

    without = await token_client.post("/internal/cron/cron-canary/pause", headers=with_session)
    assert without.status == 403
    assert (await without.json())["type"].endswith("/csrf-token-invalid")
    forged = await token_client.post(
        "/internal/cron/cron-canary/pause", headers={**with_session, CSRF_HEADER: "x" * len(token)}
    )
    assert forged.status == 403
    with_token = await token_client.post(
        "/internal/cron/cron-canary/pause", headers={**with_session, CSRF_HEADER: token}
    )
    assert with_token.status == 200
    assert (await with_token.json())["paused"] is True


async def test_logout_needs_the_csrf_token_and_clears_the_cookie(token_client: Client) -> None:
    cookie, _ = _session_cookie(await _login(token_client))
    with_session = {**REMOTE, "Cookie": f"{COOKIE_NAME}={cookie}"}
    token = _csrf_token(await (await token_client.get("/dashboard", headers=with_session)).text())
    assert (await token_client.post("/dashboard/logout", headers=with_session)).status == 403
    response = await token_client.post("/dashboard/logout", headers={**with_session, CSRF_HEADER: token})
    assert response.status == 200
    value, attributes = _session_cookie(response)
    assert value == ""
    assert attributes["max-age"] == "0"


@pytest.mark.parametrize(
    "page_headers",
    [
        {"Origin": "http://evil.example"},  # a form or fetch() of another site
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-origin", "Host": "rebound.example:8080"},  # DNS rebinding to 127.0.0.1
    ],
)
async def test_loopback_request_that_a_web_page_made_is_refused_without_a_session(
    open_client: Client, redis: Redis, page_headers: dict[str, str]
) -> None:
    refused = await open_client.post("/internal/cron/cron-canary/pause", headers=page_headers)
    assert refused.status == 403
    assert (await open_client.get("/internal/dashboard.json", headers=page_headers)).status == 403
    assert (await open_client.get("/internal/cron")).status == 200  # a script on loopback (curl) needs nothing
    assert b"cron-canary:paused" not in await redis.hkeys("jobs:cron")  # type: ignore[misc]  # redis-py types it as maybe-sync


async def test_typed_address_on_loopback_opens_the_page(open_client: Client) -> None:
    response = await open_client.get("/dashboard", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})
    assert response.status == 200


async def test_session_of_one_process_opens_another_with_the_same_token_only() -> None:
    _, cookie = Sessions(TOKEN).new()
    assert Sessions(TOKEN).verify(cookie) is not None
    assert Sessions("another-internal-token").verify(cookie) is None
    assert Sessions(None).verify(cookie) is None


def test_forged_mangled_or_expired_cookie_is_no_session() -> None:
    now = [1_000_000.0]
    sessions = Sessions(TOKEN, lifetime_s=60, clock=lambda: now[0])
    session, cookie = sessions.new()
    assert sessions.verify(cookie) == session
    expires, session_id, mac = cookie.split(".")
    assert sessions.verify(f"{int(expires) + 3600}.{session_id}.{mac}") is None  # a longer life is a new signature
    assert sessions.verify(f"{expires}.{session_id}.{mac[:-2]}AA") is None
    assert sessions.verify("garbage") is None
    assert sessions.verify("") is None
    now[0] += 60
    assert sessions.verify(cookie) is None


def test_login_checks_the_internal_token_and_never_passes_without_one() -> None:
    assert Sessions(TOKEN).token_matches(TOKEN)
    assert not Sessions(TOKEN).token_matches(TOKEN + "x")
    assert not Sessions(None).token_matches("")


async def test_page_and_static_files_are_served_without_any_secret(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    client = await _client(
        aiohttp_client, INTERNAL_TOKEN=TOKEN, WEBHOOK_SECRET="webhook-secret-1", METRICS_TOKEN="metrics-token-1"
    )
    page = await (await client.get("/dashboard")).text()
    document = await (await client.get("/internal/dashboard.json")).text()
    script = await client.get(_between(page, '<script src="', '"'))
    style = await client.get(_between(page, '<link rel="stylesheet" href="', '"'))
    assert script.status == style.status == 200
    assert script.content_type == "text/javascript"
    assert style.content_type == "text/css"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    shown = page + document + await script.text() + await style.text()
    for secret in (TOKEN, "webhook-secret-1", "metrics-token-1", redis_url()):
        assert secret not in shown


def _between(text: str, before: str, after: str) -> str:
    start = text.index(before) + len(before)
    return text[start : text.index(after, start)]
