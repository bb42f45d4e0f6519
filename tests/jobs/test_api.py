"""The jobs API end to end: HTTP → Redis → a real arq worker → HTTP."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.running import running_worker
from jobs.worker import Worker
from service.app import create_app
from service.app_keys import API_KEYS
from tests.jobs.support import Attempts, Client, auth, enqueue, job, jobs_settings, wait_for


def _at(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value)


async def test_ping_job_completes_with_the_id_of_the_worker_that_ran_it(
    client: Client, api_key: str, worker: Worker
) -> None:
    response = await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=auth(api_key))
    assert response.status == 202
    accepted = await response.json()
    assert response.headers["Location"] == f"/v1/jobs/{accepted['id']}"
    assert accepted["status"] in ("queued", "in_progress", "complete")

    done = await wait_for(client, api_key, accepted["id"])
    assert done["status"] == "complete"
    assert done["result"] == {"pong": True, "worker": worker.worker_id}
    assert done["tries"] == 1
    assert _at(done["enqueued_at"]) <= _at(done["started_at"]) <= _at(done["finished_at"])
    assert "error" not in done


async def test_failing_job_is_retried_then_fails_with_its_error(
    client: Client, api_key: str, worker: Worker, attempts: Attempts
) -> None:
    job_id = await enqueue(client, api_key, "test.fail")
    body = await wait_for(client, api_key, job_id)

    assert body["status"] == "failed"
    assert body["tries"] == 3
    assert body["error"] == {"type": "ValueError", "message": "boom"}
    assert "result" not in body
    assert len(attempts.times) == 3


async def test_retry_waits_out_its_delay_as_deferred_then_runs(
    client: Client, api_key: str, worker: Worker, attempts: Attempts
) -> None:
    job_id = await enqueue(client, api_key, "test.flaky")
    seen = set()
    while (body := await job(client, api_key, job_id))["status"] not in ("failed", "complete"):
        seen.add(body["status"])
        await asyncio.sleep(0.01)

    assert body["status"] == "complete"
    assert body["tries"] == 2
    assert "deferred" in seen
    first, second = attempts.times
    assert second - first >= 0.3


async def test_job_that_runs_past_its_timeout_fails_with_a_timeout_error(
    client: Client, api_key: str, worker: Worker
) -> None:
    job_id = await enqueue(client, api_key, "test.slow")
    body = await wait_for(client, api_key, job_id)
    assert body["status"] == "failed"
    assert body["error"]["type"] == "JobTimeout"
    assert "0.3 s" in body["error"]["message"]


async def test_jobs_and_results_are_stored_as_json_never_pickle(client: Client, api_key: str, redis: Redis) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 0})
    stored_job = await redis.get(f"arq:job:{job_id}")
    assert stored_job is not None
    assert json.loads(stored_job)["k"] == {"seconds": 0}  # a pickle would not parse

    async with running_worker(jobs_settings()):
        await wait_for(client, api_key, job_id)
    stored_result = await redis.get(f"arq:result:{job_id}")
    assert stored_result is not None
    assert json.loads(stored_result)["r"]["slept_s"] == 0


async def test_a_result_reads_back_exactly_as_the_job_returned_it(client: Client, api_key: str, worker: Worker) -> None:
    data = {"past_64_bits": 2**64, "below_64_bits": -(2**63) - 1, "fraction": 0.1, "text": "naïve ✓", "none": None}
    job_id = await enqueue(client, api_key, "test.echo", {"data": data})

    done = await wait_for(client, api_key, job_id)
    listed = await client.get("/v1/jobs", headers=auth(api_key))

    assert done["status"] == "complete"
    assert done["result"] == data
    assert type(done["result"]["past_64_bits"]) is int  # not rounded to a float on the way
    assert listed.headers["Content-Type"] == "application/json; charset=utf-8"
    [entry] = [entry for entry in (await listed.json())["jobs"] if entry["id"] == job_id]
    assert entry["result"] == data


async def test_deleting_a_queued_job_aborts_it_and_it_never_runs(client: Client, api_key: str) -> None:
    # A worker without cron: a cron slot inside the test (the canary's, every 15 minutes) would add to its count.
    async with running_worker(jobs_settings(ENABLE_CRON="false")) as worker:
        job_id = await enqueue(client, api_key, "diagnostics.ping", defer_seconds=0.3)
        response = await client.delete(f"/v1/jobs/{job_id}", headers=auth(api_key))
        assert response.status == 202
        assert (await response.json())["status"] == "aborted"

        # A job due just after the aborted one: once it is done, the worker has passed the aborted one's time.
        later = await enqueue(client, api_key, "diagnostics.ping", defer_seconds=0.4)
        assert (await wait_for(client, api_key, later))["status"] == "complete"
    body = await job(client, api_key, job_id)
    assert body["status"] == "aborted"
    assert body["error"]["type"] == "JobAborted"
    assert "started_at" not in body
    assert worker.jobs_complete == 1  # the later job only


async def test_deleting_a_running_job_cancels_it(client: Client, api_key: str, worker: Worker) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 30})
    await wait_for(client, api_key, job_id, ("in_progress",))

    response = await client.delete(f"/v1/jobs/{job_id}", headers=auth(api_key))
    assert response.status == 202
    body = await wait_for(client, api_key, job_id, timeout_s=5)
    assert body["status"] == "aborted"
    assert body["error"]["type"] == "JobAborted"
    assert "finished_at" in body


async def test_deleting_a_finished_job_is_a_conflict(client: Client, api_key: str, worker: Worker) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.ping")
    await wait_for(client, api_key, job_id)
    response = await client.delete(f"/v1/jobs/{job_id}", headers=auth(api_key))
    assert response.status == 409
    assert response.content_type == "application/problem+json"


async def test_deferred_job_waits_then_starts_at_its_time(client: Client, api_key: str, worker: Worker) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.ping", defer_seconds=1.5)
    assert (await job(client, api_key, job_id))["status"] == "deferred"

    body = await wait_for(client, api_key, job_id)
    delay_s = (_at(body["started_at"]) - _at(body["enqueued_at"])).total_seconds()
    assert 1.5 <= delay_s <= 2.0


async def test_same_idempotency_key_and_body_return_the_same_job(client: Client, api_key: str) -> None:
    request = {"task": "diagnostics.sleep", "args": {"seconds": 1}}
    headers = {**auth(api_key), "Idempotency-Key": "order-42"}
    first = await client.post("/v1/jobs", json=request, headers=headers)
    second = await client.post("/v1/jobs", json=request, headers=headers)
    assert first.status == second.status == 202
    assert (await first.json())["id"] == (await second.json())["id"]
    assert second.headers["Idempotent-Replayed"] == "true"

    listed = await client.get("/v1/jobs", headers=auth(api_key))
    assert len((await listed.json())["jobs"]) == 1


async def test_same_idempotency_key_with_another_body_is_409(client: Client, api_key: str) -> None:
    headers = {**auth(api_key), "Idempotency-Key": "order-42"}
    first = await client.post("/v1/jobs", json={"task": "diagnostics.sleep", "args": {"seconds": 1}}, headers=headers)
    assert first.status == 202
    again = await client.post("/v1/jobs", json={"task": "diagnostics.sleep", "args": {"seconds": 2}}, headers=headers)
    assert again.status == 409
    assert (await again.json())["type"].endswith("idempotency-conflict")


async def test_idempotency_keys_belong_to_their_tenant(client: Client, api_key: str, other_key: str) -> None:
    request = {"task": "diagnostics.ping"}
    mine = await client.post("/v1/jobs", json=request, headers={**auth(api_key), "Idempotency-Key": "k"})
    theirs = await client.post("/v1/jobs", json=request, headers={**auth(other_key), "Idempotency-Key": "k"})
    assert (await mine.json())["id"] != (await theirs.json())["id"]


async def test_another_tenants_job_is_not_found_anywhere(client: Client, api_key: str, other_key: str) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 5}, defer_seconds=60)

    assert (await client.get(f"/v1/jobs/{job_id}", headers=auth(other_key))).status == 404
    assert (await client.delete(f"/v1/jobs/{job_id}", headers=auth(other_key))).status == 404
    listed = await client.get("/v1/jobs", headers=auth(other_key))
    assert (await listed.json())["jobs"] == []
    assert (await job(client, api_key, job_id))["status"] == "deferred"  # untouched by the other tenant


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "no.such.task"}, "task"),
        ({"task": "diagnostics.sleep", "args": {}}, "args"),
        ({"task": "diagnostics.sleep", "args": {"seconds": 301}}, "args"),
        ({"task": "diagnostics.sleep", "args": {"seconds": 1, "extra": True}}, "args"),
        ({"task": "diagnostics.ping", "args": {}, "priority": 1}, "priority"),
        ({"task": "diagnostics.ping", "defer_seconds": -1}, "defer_seconds"),
        ({"args": {}}, "task"),
    ],
)
async def test_unknown_task_or_bad_arguments_are_refused_with_422(
    client: Client, api_key: str, redis: Redis, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/jobs", json=body, headers=auth(api_key))
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert field in (await response.json())["errors"]
    assert await redis.zcard("arq:queue") == 0


async def test_enqueue_is_503_when_background_jobs_are_disabled(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(jobs_settings(ENABLE_WORKER="false"))
    )
    key = await client.app[API_KEYS].create("acme")
    response = await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=auth(key))
    assert response.status == 503
    assert "disabled" in (await response.json())["detail"]


async def test_list_is_newest_first_filtered_by_status_and_paged_by_cursor(client: Client, api_key: str) -> None:
    queued = [await enqueue(client, api_key, "diagnostics.ping") for _ in range(3)]
    deferred = [await enqueue(client, api_key, "diagnostics.ping", defer_seconds=60) for _ in range(2)]

    everything = await (await client.get("/v1/jobs?limit=100", headers=auth(api_key))).json()
    assert [j["id"] for j in everything["jobs"]] == (queued + deferred)[::-1]
    assert everything["next_cursor"] is None

    only_deferred = await (await client.get("/v1/jobs?status=deferred", headers=auth(api_key))).json()
    assert [j["id"] for j in only_deferred["jobs"]] == deferred[::-1]

    pages: list[str] = []
    cursor = None
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=auth(api_key))).json()
        pages += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == (queued + deferred)[::-1]


async def _all_pages(client: Client, key: str, query: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        url = f"/v1/jobs?{query}" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=auth(key))).json()
        ids += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_paging_shows_jobs_enqueued_in_the_same_microsecond_once_each(
    client: Client, api_key: str, redis: Redis
) -> None:
    job_ids = [await enqueue(client, api_key, "diagnostics.ping") for _ in range(5)]
    await redis.zadd("jobs:index:acme", dict.fromkeys(job_ids, 1_764_412_800_000_000))

    for query in ("limit=1", "limit=2", "limit=1&status=queued"):
        assert await _all_pages(client, api_key, query) == sorted(job_ids, reverse=True), query


async def test_the_list_drops_index_entries_of_jobs_that_are_gone(client: Client, api_key: str, redis: Redis) -> None:
    kept, gone, also_kept = [await enqueue(client, api_key, "diagnostics.ping") for _ in range(3)]
    await redis.delete(f"arq:job:{gone}")

    assert await _all_pages(client, api_key, "limit=1") == [also_kept, kept]
    assert await redis.zscore("jobs:index:acme", gone) is None
    assert (await client.get(f"/v1/jobs/{gone}", headers=auth(api_key))).status == 404


async def test_list_refuses_bad_query_with_422(client: Client, api_key: str) -> None:
    for query in ("limit=101", "status=sleeping", "cursor=not-a-cursor", "colour=blue"):
        response = await client.get(f"/v1/jobs?{query}", headers=auth(api_key))
        assert response.status == 422, query


async def test_jobs_routes_are_in_the_openapi_document(client: Client) -> None:
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    assert {"post", "get"} <= set(paths["/v1/jobs"])
    assert {"get", "delete"} <= set(paths["/v1/jobs/{job_id}"])


async def test_jobs_routes_need_an_api_key(client: Client) -> None:
    assert (await client.post("/v1/jobs", json={"task": "diagnostics.ping"})).status == 401
    assert (await client.get("/v1/jobs")).status == 401
