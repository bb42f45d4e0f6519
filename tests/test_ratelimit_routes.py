"""Route buckets of the default plan, seen through the real jobs API."""

from __future__ import annotations

import http_sfv
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

Client = TestClient[web.Request, web.Application]


async def test_enqueue_bucket_limits_post_v1_jobs_only(client: Client, api_key: str, redis: Redis) -> None:
    headers = {"X-API-Key": api_key}
    answers = [await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=headers) for _ in range(6)]
    assert [a.status for a in answers] == [202] * 5 + [429]

    refused = answers[-1]
    body = await refused.json()
    assert body["type"].endswith("quota-exceeded")
    assert body["violated-policies"] == ["enqueue"]
    assert int(refused.headers["Retry-After"]) >= 1
    policy = http_sfv.List()  # type: ignore[attr-defined]  # http-sfv re-exports without __all__
    policy.parse(refused.headers["RateLimit-Policy"].encode())
    assert [item.value for item in policy] == ["burst", "sustained", "enqueue"]
    assert await redis.zcard("arq:queue") == 5  # the refused request enqueued nothing

    listing = await client.get("/v1/jobs", headers=headers)
    assert listing.status == 200  # other routes spend only the plan's "*" buckets
    state = http_sfv.List()  # type: ignore[attr-defined]  # http-sfv re-exports without __all__
    state.parse(listing.headers["RateLimit"].encode())
    assert state[0].value == "burst"
