"""``python -m service doctor``: walk the operations guide's troubleshooting list.

Each check says what it found and, when something is wrong, what to do. The network
checks (``doctor_network``) go from the bottom up (DNS, TCP, TLS, AUTH) so that the first
failure names the real cause; checks that need a working connection are skipped after one
fails. The limiter's own Redis, when it has one, is ``doctor_limiter``'s.

A finding is ``ok``, a ``problem`` (something fails now: exit code 1), a ``warning``
(it works, but the guide advises against it: the security advice, memory nearing its
limit; exit code 0) or ``skipped``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from jobs.cron import SCHEDULE
from jobs.cron_store import CronStore
from jobs.heartbeat import live_workers
from jobs.maintenance import MEMORY_CRITICAL_RATIO, MEMORY_WARNING_RATIO
from service.doctor_network import (
    SLOW_PING_MS,
    STEP_TIMEOUT_S,
    Finding,
    ok,
    problem,
    reach,
    security,
    warning,
)
from service.redis import connection_pool
from service.settings import RedisURL, Settings

__all__ = ["AUTH_ADVICE", "Finding", "diagnose", "healthy", "render", "security", "step_timeout_s"]

OLDEST_GOOD_VERSION = (6, 2)


async def _redis_checks(url: RedisURL, settings: Settings, timeout_s: float) -> list[Finding]:
    pool = connection_pool(url, max_connections=2, timeout_s=timeout_s, retries=0, client_name="ottoai-doctor")
    client = Redis.from_pool(pool)
    findings: list[Finding] = []
    try:
        try:
            latencies = []
            for _ in range(5):
                started = time.perf_counter()
                await client.ping()
                latencies.append((time.perf_counter() - started) * 1000)
        except AuthenticationError as exc:
            return [problem("auth", f"authentication failed: {exc}", AUTH_ADVICE)]
        except ResponseError as exc:
            if "AUTH" in str(exc).upper() or "WRONGPASS" in str(exc).upper():
                return [problem("auth", f"authentication failed: {exc}", AUTH_ADVICE)]
            return [problem("ping", f"PING failed: {exc}", "see the Redis server's logs")]
        except (RedisError, OSError) as exc:
            return [problem("ping", f"PING failed: {exc}", "see the checks above")]
        findings.append(ok("auth", "authenticated" if url.password else "no password in the URL; server accepted"))
        median = statistics.median(latencies)
        findings.append(
            ok("ping", f"median {median:.1f} ms over 5")
            if median <= SLOW_PING_MS
            else problem("ping", f"median {median:.1f} ms over 5", "put Redis in the app's region (same Fly region)")
        )
        for check in (_version, _lua, _memory, _eviction, _persistence):
            try:
                findings.append(await check(client))
            except ResponseError as exc:  # managed Redis may refuse INFO sections or CONFIG
                findings.append(Finding(check.__name__.lstrip("_"), "skipped", f"not allowed here: {exc}"))
        if settings.enable_worker:
            findings.append(await _workers(client))
            if settings.enable_cron:
                findings.append(await _scheduler(client))
    finally:
        await client.aclose()
    return findings


async def _workers(client: Redis) -> Finding:
    workers = await live_workers(client)
    if not workers:
        return problem(
            "workers",
            "no live worker heartbeat: enqueued jobs will wait",
            "start a worker (python -m jobs; on Fly: fly scale count worker=1) or set ENABLE_WORKER=false",
        )
    freshest = min(w["beat_age_s"] for w in workers)
    return ok("workers", f"{len(workers)} live, last beat {freshest:.1f} s ago")


async def _scheduler(client: Redis) -> Finding:
    health = await CronStore(client, SCHEDULE).health()
    if not health.workers:
        return problem(
            "scheduler",
            "no live worker runs the cron schedule: cron jobs will not run",
            "start a worker with ENABLE_CRON on (python -m jobs), or set ENABLE_CRON=false",
        )
    if health.stalled:
        return problem(
            "scheduler",
            f"cron jobs with no pending run, or overdue past their grace: {', '.join(health.stalled)}",
            "see python -m jobs cron list; restarting a worker schedules every job again",
        )
    return ok("scheduler", f"{health.workers} worker(s) run cron, last beat {health.last_beat_age_s:.1f} s ago")


AUTH_ADVICE = (
    "check the user and password in the URL (redis://user:password@host:port/db); on Upstash/Fly Redis the user is "
    "'default'; a server without a password refuses AUTH"
)


async def _version(client: Redis) -> Finding:
    info = await client.info("server")
    version = str(info.get("redis_version", "?"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts and parts < OLDEST_GOOD_VERSION:
        return problem("version", f"Redis {version}", "use Redis 6.2 or newer")
    return ok("version", f"Redis {version}")


async def _lua(client: Redis) -> Finding:
    result = await client.eval("return ARGV[1]", 0, "lua-ok")  # type: ignore[misc]
    if result != b"lua-ok":
        return problem("lua", f"EVAL returned {result!r}", "the rate limiter needs Lua scripting (EVAL/EVALSHA)")
    return ok("lua", "EVAL works")


async def _memory(client: Redis) -> Finding:
    """A warning from 80 % of maxmemory (where the maintenance job warns too), a problem from 95 %."""
    info = await client.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if limit == 0:
        return ok("memory", f"{used / 2**20:.1f} MiB used, no maxmemory set")
    share = used / limit
    detail = f"{used / 2**20:.1f} MiB of {limit / 2**20:.1f} MiB ({share:.0%})"
    advice = "raise maxmemory or the plan, and check what grows (redis-cli --bigkeys)"
    if share >= MEMORY_CRITICAL_RATIO:
        return problem("memory", f"{detail}: writes will soon be refused (or keys evicted)", advice)
    if share >= MEMORY_WARNING_RATIO:
        return warning("memory", f"{detail}: nearing the limit", advice)
    return ok("memory", detail)


async def _eviction(client: Redis) -> Finding:
    info = await client.info("memory")
    policy = str(info.get("maxmemory_policy", "")) or None
    if policy is None:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    if policy != "noeviction":
        return problem(
            "eviction",
            f"maxmemory-policy is {policy}: under memory pressure Redis may drop queued jobs",
            'set it to noeviction: redis-cli -u "$REDIS_URL" config set maxmemory-policy noeviction',
        )
    return ok("eviction", "maxmemory-policy is noeviction")


async def _persistence(client: Redis) -> Finding:
    info = await client.info("persistence")
    aof = str(info.get("aof_enabled", "0")) == "1"
    try:
        rdb = bool((await client.config_get("save")).get("save"))
    except ResponseError:
        rdb = False
    if not aof and not rdb:
        return problem(
            "persistence",
            "neither AOF nor RDB snapshots are on: a restart loses queued jobs and rate-limit state",
            "turn AOF on (appendonly yes, appendfsync everysec) or choose a plan with persistence",
        )
    return ok("persistence", ", ".join(name for name, on in (("AOF", aof), ("RDB", rdb)) if on) + " on")


async def diagnose(settings: Settings) -> list[Finding]:
    """Every check, in order; the first network failure skips the checks that depend on it."""
    url = settings.require_redis()
    findings = [ok("config", f"{url.variable} = {url.redacted}")]
    for remark in settings.warnings:
        findings.append(problem("config", remark, "unset the variable you don't mean to use"))
    timeout_s = step_timeout_s(settings)
    network = await reach(url, timeout_s)
    findings.extend(network)
    if healthy(network):
        findings.extend(await _redis_checks(url, settings, timeout_s))
    return findings


def step_timeout_s(settings: Settings) -> float:
    """Each step waits at most REDIS_TIMEOUT_S (3 s when that is longer): a hung server ends the walk in one wait."""
    return min(STEP_TIMEOUT_S, settings.redis_timeout_s)


def healthy(findings: list[Finding]) -> bool:
    """No problem found (warnings do not count: exit code 0)."""
    return all(f.status != "problem" for f in findings)


def render(findings: list[Finding], as_json: bool) -> str:
    warnings = sum(f.status == "warning" for f in findings)
    if as_json:
        document: dict[str, Any] = {
            "healthy": healthy(findings),
            "warnings": warnings,
            "checks": [asdict(f) for f in findings],
        }
        return json.dumps(document, indent=2)
    lines = []
    width = max([12, *(len(finding.check) for finding in findings)])  # limiter/... checks are longer
    for finding in findings:
        lines.append(f"{finding.status:<8} {finding.check:<{width}} {finding.detail}")
        if finding.advice:
            lines.append(f"{'':<8} {'':<{width}} → {finding.advice}")
    if not healthy(findings):
        lines.append(f"{sum(f.status == 'problem' for f in findings)} problem(s) found")
    else:
        lines.append(f"healthy, {warnings} warning(s)" if warnings else "healthy")
    return "\n".join(lines)
