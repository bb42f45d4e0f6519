"""The web app's foundations: health, OpenAPI, the problem+json error path, body limit."""

from __future__ import annotations

import io

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service.app import create_app
from service.settings import Settings

Client = TestClient[web.Request, web.Application]


async def test_health_answers_without_touching_redis(aiohttp_client: AiohttpClient) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})  # nothing listens there
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["service"] == "ottoai-backend"
    assert body["version"]


async def test_every_response_carries_a_request_id(client: Client) -> None:
    mine = await client.get("/health", headers={"X-Request-ID": "req-123"})
    assert mine.headers["X-Request-ID"] == "req-123"
    generated = await client.get("/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert len(generated.headers["X-Request-ID"]) == 32


async def test_openapi_document_is_valid_openapi3_and_lists_every_route(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    validate(document)
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = {
        (route.resource.canonical, route.method)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        and not route.resource.canonical.startswith(("/static", "/docs", "/openapi.json"))
    }
    assert served, "the app serves no API routes"
    assert served <= documented, f"undocumented routes: {sorted(served - documented)}"


async def test_swagger_ui_is_served(client: Client) -> None:
    response = await client.get("/docs")
    assert response.status == 200
    assert "swagger" in (await response.text()).lower()


async def test_unknown_route_is_problem_json(client: Client) -> None:
    response = await client.get("/no/such/thing")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == 404


async def test_wrong_method_is_405_problem_json(client: Client) -> None:
    response = await client.delete("/health")
    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert "GET" in (await response.json())["detail"]


async def test_unexpected_exception_gives_problem_json_without_traceback(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals: /srv/app.py line 42")

    app = create_app(settings)
    app.router.add_get("/explode", explode)
    client = await aiohttp_client(app)
    response = await client.get("/explode")
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    text = await response.text()
    assert "Traceback" not in text
    assert "secret internals" not in text
    assert "RuntimeError" not in text
    assert (await response.json())["status"] == 500


async def test_body_over_one_mebibyte_is_413_problem_json(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    async def echo_size(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    app = create_app(settings)
    app.router.add_post("/echo", echo_size)
    client = await aiohttp_client(app)
    small = await client.post("/echo", data=b"x" * 1024)
    assert (await small.json())["bytes"] == 1024
    response = await client.post("/echo", data=io.BytesIO(b"x" * (1024 * 1024 + 1)))
    assert response.status == 413
    assert response.content_type == "application/problem+json"
    assert "1 MiB" in (await response.json())["detail"]


async def test_redis_outage_on_v1_is_503_problem_not_500(aiohttp_client: AiohttpClient) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT_S": "0.5"})
    client = await aiohttp_client(create_app(settings))
    response = await client.get(
        "/v1/rate-limit", headers={"X-API-Key": "otto_" + "0" * 48}
    )  # well formed, so Redis is asked
    assert response.status == 503
    assert response.content_type == "application/problem+json"


async def test_body_that_is_not_json_is_400_naming_the_problem(client: Client, api_key: str) -> None:
    response = await client.post(
        "/v1/jobs", data=b"{not json", headers={"X-API-Key": api_key, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    body = await response.json()
    reason = "Expecting property name enclosed in double quotes at line 1, column 2"
    assert body["detail"] == f"the request body is not valid JSON: {reason}"
    assert body["errors"] == {"json": [reason]}
