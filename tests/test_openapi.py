"""The document and the runtime agree: each problem is the body and headers ``/openapi.json`` declares for it.

Schemathesis finds disagreements by chance; these requests make the representative errors
on purpose and check them against the document, so neither can drift from the other.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from marshmallow import Schema, fields
from openapi_schema_validator import OAS30Validator
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.registry import JobContext, Registry, Task
from jobs.tasks import TASKS
from service.app import create_app
from service.app_keys import API_KEYS
from service.backoff import Backoff
from service.settings import Settings
from tests.conftest import get_json, make_settings

Client = TestClient[web.Request, web.Application]


async def _document(client: Client) -> dict[str, Any]:
    return await get_json(client, "/openapi.json")


def _resolved(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` points at within ``document``."""
    while "$ref" in node:
        for part in node["$ref"].removeprefix("#/").split("/"):
            document = document[part]
        node = document
    return node


async def assert_as_documented(document: dict[str, Any], path: str, method: str, response: ClientResponse) -> None:
    """``response`` is one the operation ``method path`` documents: status, media type, body and required headers."""
    responses = document["paths"][path][method]["responses"]
    assert str(response.status) in responses, f"{response.status} is not documented for {method.upper()} {path}"
    documented = responses[str(response.status)]
    assert response.content_type in documented["content"]
    schema = documented["content"][response.content_type]["schema"]
    OAS30Validator({**schema, "components": document["components"]}).validate(await response.json())
    required = {name for name, header in documented["headers"].items() if _resolved(document, header)["required"]}
    assert required <= set(response.headers), f"missing {sorted(required - set(response.headers))}"


PING = b'{"task": "diagnostics.ping"}'
JSON = {"Content-Type": "application/json"}


async def test_every_operation_documents_the_problems_every_route_can_give(client: Client) -> None:
    document = await _document(client)
    operations = [(path, op) for path, item in document["paths"].items() for op in item.values()]
    assert operations
    for path, op in operations:
        responses = op["responses"]
        assert {"405", "413", "500"} <= set(responses), path
        if path.startswith("/v1/"):
            assert {"401", "429", "503"} <= set(responses), path
            assert op["security"] == [{"apiKeyBearer": []}, {"apiKey": []}], path
        for status, response in responses.items():
            assert "X-Request-ID" in response["headers"], (path, status)
            if int(status) >= 400 and path != "/ready":  # /ready's 503 is its answer, not a problem
                assert set(response["content"]) == {"application/problem+json"}, (path, status)


@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "operation", "status"),
    [
        ("GET", "/v1/jobs", {}, b"", ("/v1/jobs", "get"), 401),
        ("GET", "/v1/jobs/0123456789abcdef", {"key": ""}, b"", ("/v1/jobs/{job_id}", "get"), 404),
        ("PUT", "/v1/jobs", {"key": ""}, b"", ("/v1/jobs", "post"), 405),
        ("DELETE", "/health", {}, b"", ("/health", "get"), 405),
        ("POST", "/v1/jobs", {"key": "", **JSON}, b"{not json", ("/v1/jobs", "post"), 400),
        ("GET", "/v1/rate-limit", {"key": "", **JSON}, b"x" * (1024 * 1024 + 1), ("/v1/rate-limit", "get"), 413),
        ("POST", "/v1/jobs", {"key": "", "Content-Type": "text/plain"}, PING, ("/v1/jobs", "post"), 415),
        ("GET", "/v1/jobs?limit=0", {"key": ""}, b"", ("/v1/jobs", "get"), 422),
        ("POST", "/v1/jobs", {"key": "", "Idempotency-Key": "k" * 256, **JSON}, PING, ("/v1/jobs", "post"), 422),
    ],
)
async def test_problem_is_the_documented_body_and_headers(
    client: Client,
    api_key: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    operation: tuple[str, str],
    status: int,
) -> None:
    document = await _document(client)
    sent = {name: value for name, value in headers.items() if name != "key"}
    if "key" in headers:
        sent["X-API-Key"] = api_key
    response = await client.request(method, url, headers=sent, data=io.BytesIO(body))
    assert response.status == status
    assert response.content_type == "application/problem+json"
    await assert_as_documented(document, *operation, response)


async def test_quota_exceeded_is_the_documented_body_and_headers(
    aiohttp_client: AiohttpClient, redis: Redis, tmp_path: Path
) -> None:
    policies = tmp_path / "policies.toml"
    policies.write_text(
        '[plans.default]\n"*" = [{ name = "burst", capacity = 1, per_second = 0.01 }]\n'
        '[anonymous]\n"*" = [{ name = "address", capacity = 10, per_second = 1 }]\n'
    )
    client = await aiohttp_client(create_app(make_settings(RATE_LIMITS_FILE=str(policies))))
    key = await client.app[API_KEYS].create("acme")
    document = await _document(client)
    assert (await client.get("/v1/jobs", headers={"X-API-Key": key})).status == 200
    response = await client.get("/v1/jobs", headers={"X-API-Key": key})
    assert response.status == 429
    assert (await response.json())["violated-policies"] == ["burst"]
    await assert_as_documented(document, "/v1/jobs", "get", response)


class EchoArgs(Schema):
    text = fields.String(required=True)


async def test_enqueue_body_is_documented_for_each_task_a_tenant_may_enqueue(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    async def echo(job: JobContext, text: str) -> str:
        return text

    registry = Registry([*TASKS, Task("test.echo", echo, EchoArgs(), timeout_s=1.0, max_tries=1, backoff=Backoff())])
    document = await _document(await aiohttp_client(create_app(settings, registry=registry)))
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    enqueue = _resolved(document, body["content"]["application/json"]["schema"])
    assert set(enqueue["discriminator"]["mapping"]) == {task.name for task in registry if not task.internal}
    assert "maintenance.slowlog" not in enqueue["discriminator"]["mapping"]  # internal: run by cron and operators
    validator = OAS30Validator({**enqueue, "components": document["components"]})
    assert validator.is_valid({"task": "test.echo", "args": {"text": "hi"}})
    assert not validator.is_valid({"task": "test.echo", "args": {}})
    assert not validator.is_valid({"task": "diagnostics.sleep", "args": {"text": "hi"}})


def test_only_routes_with_a_request_schema_pass_through_validation(settings: Settings) -> None:
    # Validation is a wrapper on those handlers alone, not a middleware every request pays for.
    app = create_app(settings)
    validated = {
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None and hasattr(route.handler, "__wrapped__")
    }

    assert validated == {"POST /v1/jobs", "GET /v1/jobs"}
    assert len(app.middlewares) == 1  # the request middleware, which calls the /v1 gate itself
