from aiohttp import web
from aiohttp.test_utils import TestClient


async def test_health_answers_ok(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_v1_without_key_is_401_problem(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/v1/rate-limit")
    assert response.status == 401
    assert response.content_type == "application/problem+json"
