"""``doctor``'s checks of the limiter's own Redis (``RATE_LIMIT_REDIS_URL``), when it has one.

The same network walk as the main Redis (``doctor.reach``), then what the limiter needs:
the password accepted, ``PING`` latency, Lua scripting and, on a Redis Cluster, the
cluster state, every slot served, and every primary reachable. Each finding's check is
prefixed ``limiter/`` so the two Redis servers' findings are told apart. Queue concerns
(eviction of jobs, persistence) do not apply: the limiter's keys expire on their own.
"""

from __future__ import annotations

import dataclasses
import time

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError

from service.doctor import AUTH_ADVICE, step_timeout_s
from service.doctor_network import SLOW_PING_MS, Finding, reach
from service.ratelimit.cluster import SLOTS, ClusterTransport, is_cluster
from service.redis import connection_pool
from service.settings import RedisURL, Settings

__all__ = ["diagnose_limiter_redis"]

PREFIX = "limiter/"


def _named(finding: Finding) -> Finding:
    return dataclasses.replace(finding, check=PREFIX + finding.check)


async def diagnose_limiter_redis(settings: Settings) -> list[Finding]:
    """The limiter's Redis findings; none when the limiter uses the main Redis (or is off)."""
    if not (settings.rate_limit_enabled and settings.separate_limiter_redis):
        return []
    url = settings.limiter_redis()
    timeout_s = step_timeout_s(settings)
    findings = [Finding("config", "ok", f"{url.variable} = {url.redacted} (the rate limiter's own Redis)")]
    network = await reach(url, timeout_s)
    findings.extend(network)
    if all(finding.status != "problem" for finding in network):
        findings.extend(await _server(url, timeout_s))
    return [_named(finding) for finding in findings]


async def _server(url: RedisURL, timeout_s: float) -> list[Finding]:
    pool = connection_pool(url, max_connections=2, timeout_s=timeout_s, retries=0, client_name="ottoai-doctor")
    client = Redis.from_pool(pool)
    try:
        started = time.perf_counter()
        try:
            await client.ping()
        except AuthenticationError as exc:
            return [Finding("auth", "problem", f"authentication failed: {exc}", AUTH_ADVICE)]
        except (RedisError, OSError) as exc:
            return [Finding("ping", "problem", f"PING failed: {exc}", "see the checks above")]
        ping_ms = (time.perf_counter() - started) * 1000
        findings = [
            Finding("ping", "ok", f"{ping_ms:.1f} ms")
            if ping_ms <= SLOW_PING_MS
            else Finding("ping", "problem", f"{ping_ms:.1f} ms", "put the limiter's Redis in the app's region"),
        ]
        if await client.eval("return ARGV[1]", 0, "lua-ok") != b"lua-ok":  # type: ignore[misc]
            findings.append(Finding("lua", "problem", "EVAL does not run scripts", "the limiter needs Lua scripting"))
        else:
            findings.append(Finding("lua", "ok", "EVAL works"))
        if await is_cluster(client):
            findings.extend(await _cluster(url, timeout_s))
        return findings
    finally:
        await client.aclose()


async def _cluster(url: RedisURL, timeout_s: float) -> list[Finding]:
    cluster = ClusterTransport(url, timeout_s=timeout_s, max_connections=2, client_name="ottoai-doctor")
    try:
        health = await cluster.health()
    except (RedisError, OSError, TimeoutError) as exc:
        return [Finding("cluster", "problem", f"cannot read the cluster: {exc}", "see the Redis servers' logs")]
    finally:
        await cluster.close()
    findings = [
        Finding("cluster", "ok", f"cluster_state ok, {len(health.primaries)} primaries")
        if health.state == "ok"
        else Finding(
            "cluster",
            "problem",
            f"cluster_state is {health.state}: the cluster refuses commands",
            "see CLUSTER INFO and CLUSTER NODES on each node; a dead primary with no replica stops the cluster",
        ),
        Finding("slots", "ok", f"all {SLOTS} slots served")
        if health.slots_covered == SLOTS
        else Finding(
            "slots",
            "problem",
            f"{health.slots_covered} of {SLOTS} slots served: callers in the others fail open or closed",
            "assign the missing slots (redis-cli --cluster fix) or bring back their primary",
        ),
    ]
    for address in health.unreachable:
        findings.append(
            Finding(
                "primary",
                "problem",
                f"{address} does not answer ({health.primaries[address]}): its callers fail open or closed",
                "check that node; the limiter reads the slot map again once a replica takes over",
            )
        )
    return findings
